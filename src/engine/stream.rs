//! The handle of one change stream: `next()` pulls items from the worker's one-slot
//! channel (so at most one batch is prefetched), `close()` tears it down in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{RawDocumentBuf, Timestamp};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::errors::{EngineError, ErrorCode};
use super::spec::WatchSpec;
use super::status::{Health, Shared, StreamState};
use super::worker::Worker;

/// Why a stream ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Closed,
    /// The watched collection/database was dropped or renamed.
    Invalidated,
}

/// A batch as handed to the consumer.
pub struct EventBatch {
    /// `count` BSON documents back to back.
    pub events: Vec<u8>,
    pub count: usize,
    /// The resume token after the whole batch.
    pub end_token: Option<RawDocumentBuf>,
    pub last_cluster_time: Option<Timestamp>,
}

impl std::fmt::Debug for EventBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBatch")
            .field("count", &self.count)
            .field("bytes", &self.events.len())
            .field("last_cluster_time", &self.last_cluster_time)
            .finish()
    }
}

/// What `next()` yields.
#[derive(Debug)]
pub enum StreamItem {
    Batch(EventBatch),
    Reconnecting {
        attempt: u32,
        delay: Duration,
        error: EngineError,
    },
    Resumed {
        attempts: u32,
        downtime: Duration,
    },
    /// No progress for `silent`; a re-open follows (as `Reconnecting`).
    Stalled {
        silent: Duration,
    },
    /// Fatal: the stream is closed.
    Failed(EngineError),
    Ended(EndReason),
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One change stream. `next()` and `close()` may be called from any task.
pub struct ChangeStreamEngine {
    /// Process-unique; names the stream in logs (the `stream` field of its span).
    id: u64,
    spec: Arc<WatchSpec>,
    shared: Arc<Shared>,
    rx: tokio::sync::Mutex<mpsc::Receiver<StreamItem>>,
    /// The sender, until the worker is started with it.
    unstarted: Mutex<Option<mpsc::Sender<StreamItem>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl ChangeStreamEngine {
    pub fn new(spec: WatchSpec) -> Self {
        let (tx, rx) = mpsc::channel(1);
        ChangeStreamEngine {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            spec: Arc::new(spec),
            shared: Arc::new(Shared::new()),
            rx: tokio::sync::Mutex::new(rx),
            unstarted: Mutex::new(Some(tx)),
            worker: Mutex::new(None),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn spec(&self) -> &WatchSpec {
        &self.spec
    }

    pub fn state(&self) -> StreamState {
        self.shared.state()
    }

    pub fn health(&self) -> Health {
        self.shared.snapshot()
    }

    /// The server's oplog window and where this stream's position stands in it.
    pub async fn oplog_window(&self) -> Result<super::oplog::OplogWindow, EngineError> {
        let client = super::client_pool::client_for(&self.spec.uri).await?;
        super::oplog::read_window(&client, self.health().position_time).await
    }

    /// The next item. Must run inside a Tokio runtime (the worker is spawned on it).
    pub async fn next(&self) -> StreamItem {
        self.start_worker();
        let mut rx = self.rx.lock().await;
        // Closed by the user: whatever is still queued no longer matters. (A stream that
        // ended by itself, e.g. after an invalidate, still hands out its last items.)
        if self.shared.cancel.is_cancelled() {
            return StreamItem::Ended(EndReason::Closed);
        }
        match rx.recv().await {
            Some(item) => item,
            None if self.state().is_terminal() => StreamItem::Ended(EndReason::Closed),
            // The worker vanished without saying why: only a panic does that. Never let
            // that look like a clean end.
            None => {
                let error = EngineError::new(
                    ErrorCode::ClientError,
                    "internal error: the change stream worker stopped unexpectedly",
                );
                self.shared.fail(&error);
                StreamItem::Failed(error)
            }
        }
    }

    /// Forbids re-opens, cancels a pending backoff or in-flight command, kills the
    /// cursor, and waits for the worker to finish. Idempotent.
    pub async fn close(&self) {
        self.shared.begin_close();
        self.shared.cancel.cancel();
        drop(self.take_unstarted());
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(worker) = worker {
            // The worker only ends by itself; a panic inside it is already reported by
            // `next()`, so its JoinError carries nothing more to say here.
            let _ = worker.await;
        }
        self.shared.finish_close();
    }

    fn take_unstarted(&self) -> Option<mpsc::Sender<StreamItem>> {
        self.unstarted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn start_worker(&self) {
        let Some(tx) = self.take_unstarted() else {
            return;
        };
        if !self.shared.transition(StreamState::Opening) {
            return;
        }
        let worker = Worker::new(self.spec.clone(), self.shared.clone(), tx);
        let span =
            tracing::info_span!("change_stream", stream = self.id, ns = %self.spec.namespace());
        let handle = tokio::spawn(worker.run().instrument(span));
        *self.worker.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }
}

impl Drop for ChangeStreamEngine {
    /// A stream dropped without `close()` (e.g. garbage-collected in JS) must not leave a
    /// worker re-opening forever.
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}
