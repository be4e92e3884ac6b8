//! The handle of one change stream: `next()` pulls items from the worker's one-slot
//! channel (so at most one batch is prefetched), `close()` tears it down in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{RawDocumentBuf, Timestamp};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::checkpoint::Checkpointer;
use super::errors::{EngineError, ErrorCode};
use super::position::{stream_owner, Position};
use super::spec::WatchSpec;
use super::status::{Health, Shared, StreamState};
use super::store::{open_store, TokenStore};
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
    /// The position fell off the oplog: events in (from, to] may be missing. Followed by
    /// `Failed` (policy "error") or by events from "now" (policy "resumeFromNow").
    HistoryLost {
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        /// The lost position (the last token the stream had).
        token: Option<RawDocumentBuf>,
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
    /// Present for a named consumer (a token store).
    checkpointer: Option<Arc<Checkpointer>>,
    checkpoint_task: Mutex<Option<JoinHandle<()>>>,
}

impl ChangeStreamEngine {
    /// `custom_store`: the application's own store, for `tokenStore: { type: 'custom' }`.
    pub fn new(
        spec: WatchSpec,
        custom_store: Option<Arc<dyn TokenStore>>,
    ) -> Result<Self, EngineError> {
        let checkpointer = match &spec.durability {
            None => None,
            Some(d) => Some(Arc::new(Checkpointer::new(
                stream_owner(&d.name, &spec),
                open_store(&d.store, &spec.uri, custom_store)?,
                d.checkpoint.clone(),
            ))),
        };
        let (tx, rx) = mpsc::channel(1);
        Ok(ChangeStreamEngine {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            spec: Arc::new(spec),
            shared: Arc::new(Shared::new()),
            rx: tokio::sync::Mutex::new(rx),
            unstarted: Mutex::new(Some(tx)),
            worker: Mutex::new(None),
            checkpointer,
            checkpoint_task: Mutex::new(None),
        })
    }

    /// The consumer processed `events` more events, the last of them `event` (BSON);
    /// `end_token` is the batch's end token when that event ended its batch. No-op without
    /// a token store.
    pub fn commit_event(
        &self,
        event: &[u8],
        end_token: Option<&[u8]>,
        events: u64,
    ) -> Result<(), EngineError> {
        if let Some(ck) = &self.checkpointer {
            ck.commit(Position::after_event(event, end_token)?, events);
        }
        Ok(())
    }

    /// The checkpoint policy, for a named consumer.
    pub fn checkpoint_policy(&self) -> Option<&super::checkpoint::CheckpointPolicy> {
        self.spec.durability.as_ref().map(|d| &d.checkpoint)
    }

    /// The position advanced without an event (postBatchResumeToken of a quiet stream);
    /// its cluster time is the engine's position time (the reply's operation time).
    pub fn commit_token(&self, token: &[u8]) -> Result<(), EngineError> {
        if let Some(ck) = &self.checkpointer {
            let time = self.shared.snapshot().position_time;
            ck.commit(Position::token_only(token, time)?, 0);
        }
        Ok(())
    }

    /// Whether fewer than `checkpoint.maxUnsavedEvents` processed events are unsaved (always
    /// true without a token store): the consumer may take another event.
    pub fn has_room(&self) -> bool {
        self.checkpointer.as_ref().is_none_or(|c| c.has_room())
    }

    /// Waits until `has_room()`, or the stream is closed.
    pub async fn wait_for_room(&self) {
        if let Some(ck) = &self.checkpointer {
            tokio::select! {
                _ = ck.wait_for_room() => {},
                _ = self.shared.cancel.cancelled() => {},
            }
        }
    }

    /// Processed events not yet stored (0 without a token store).
    pub fn pending_checkpoint(&self) -> u64 {
        self.checkpointer.as_ref().map_or(0, |c| c.unsaved_events())
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
        if let Some(ck) = &self.checkpointer {
            // Bounded unsaved progress: while the store is down, hand out nothing more.
            tokio::select! {
                _ = ck.wait_for_room() => {},
                _ = self.shared.cancel.cancelled() => return StreamItem::Ended(EndReason::Closed),
            }
        }
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
    /// cursor, waits for the worker to finish, then stores the last processed position.
    /// Idempotent. Fails only if that last position could not be stored.
    pub async fn close(&self) -> Result<(), EngineError> {
        self.shared.begin_close();
        self.shared.cancel.cancel();
        drop(self.take_unstarted());
        for task in [&self.worker, &self.checkpoint_task] {
            let handle = task.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(handle) = handle {
                // Tasks only end by themselves; a panic inside the worker is already
                // reported by `next()`, so a JoinError carries nothing more to say here.
                let _ = handle.await;
            }
        }
        self.shared.finish_close();
        match &self.checkpointer {
            Some(ck) => ck.flush().await,
            None => Ok(()),
        }
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
        let span =
            tracing::info_span!("change_stream", stream = self.id, ns = %self.spec.namespace());
        if let Some(ck) = &self.checkpointer {
            let handle = ck.spawn(
                self.shared.clone(),
                tx.clone(),
                StreamItem::Failed,
                span.clone(),
            );
            *self
                .checkpoint_task
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(handle);
        }
        let worker = Worker::new(
            self.spec.clone(),
            self.shared.clone(),
            tx,
            self.checkpointer.clone(),
        );
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
