//! A restartable long read (a huge `find`, or a tailable cursor on a capped collection):
//! the same shape as a change stream — a background worker, a one-slot channel, the
//! stream's backoff and error classification — but positioned by a unique, ordered key
//! instead of a resume token. Re-opens continue after the last key received.

mod spec;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use mongodb::bson::RawDocument;

use super::checkpoint::{CheckpointPolicy, Checkpointer};
use super::errors::{EngineError, ErrorCode};
use super::position::Position;
use super::status::{Health, Shared, StreamState};
use super::store::{open_store, TokenStore};

pub use spec::{key_of, CursorSpec, PositionLostPolicy, DEFAULT_TAIL_RETRY};
use worker::CursorWorker;

/// Why a cursor ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorEnd {
    /// A non-tailable read returned every matching document.
    Exhausted,
    /// `stop()`: no further batches were requested; everything received was handed out.
    Stopped,
    /// `close()`.
    Closed,
}

impl CursorEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            CursorEnd::Exhausted => "exhausted",
            CursorEnd::Stopped => "stopped",
            CursorEnd::Closed => "closed",
        }
    }
}

/// What `next()` yields.
#[derive(Debug)]
pub enum CursorItem {
    /// `count` BSON documents back to back, in key order (natural order when tailable).
    Batch {
        docs: Vec<u8>,
        count: usize,
    },
    Reconnecting {
        attempt: u32,
        delay: Duration,
        error: EngineError,
    },
    Resumed {
        attempts: u32,
        downtime: Duration,
    },
    /// 136 CappedPositionLost: documents after the last key were overwritten before they
    /// were read. Followed by `Failed` (policy "error") or by a re-open after the last key
    /// (policy "restartFromOldest").
    PositionLost {
        error: EngineError,
    },
    /// No reply for `silent`; a re-open after the last key follows (as `Reconnecting`).
    Stalled {
        silent: Duration,
    },
    /// Fatal: the cursor is closed.
    Failed(EngineError),
    Ended(CursorEnd),
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1 << 32);

/// One restartable cursor. `next()`, `stop()` and `close()` may be called from any task.
pub struct CursorEngine {
    id: u64,
    spec: Arc<CursorSpec>,
    shared: Arc<Shared>,
    /// Cancelled by `stop()` (and by `close()`, its parent): the worker requests nothing more.
    stop: CancellationToken,
    rx: tokio::sync::Mutex<mpsc::Receiver<CursorItem>>,
    unstarted: Mutex<Option<mpsc::Sender<CursorItem>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Present for a named reader (a token store).
    checkpointer: Option<Arc<Checkpointer>>,
    checkpoint_task: Mutex<Option<JoinHandle<()>>>,
}

impl CursorEngine {
    /// `custom_store`: the application's own store, for `tokenStore: { type: 'custom' }`.
    pub fn new(
        spec: CursorSpec,
        custom_store: Option<Arc<dyn TokenStore>>,
    ) -> Result<Self, EngineError> {
        let checkpointer = match &spec.durability {
            None => None,
            Some(d) => Some(Arc::new(Checkpointer::new(
                spec.owner(&d.name),
                open_store(&d.store, &spec.uri, custom_store)?,
                d.checkpoint.clone(),
            ))),
        };
        let shared = Arc::new(Shared::new());
        let stop = shared.cancel.child_token();
        let (tx, rx) = mpsc::channel(1);
        Ok(CursorEngine {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            spec: Arc::new(spec),
            shared,
            stop,
            rx: tokio::sync::Mutex::new(rx),
            unstarted: Mutex::new(Some(tx)),
            worker: Mutex::new(None),
            checkpointer,
            checkpoint_task: Mutex::new(None),
        })
    }

    /// The consumer processed `documents` more documents, the last of them `document`
    /// (BSON): its key is the stored position. No-op without a token store.
    pub fn commit_document(&self, document: &[u8], documents: u64) -> Result<(), EngineError> {
        let Some(ck) = &self.checkpointer else {
            return Ok(());
        };
        let bad = |what: &str| EngineError::new(ErrorCode::ClientError, format!("commit: {what}"));
        let doc = RawDocument::from_bytes(document).map_err(|_| bad("not a BSON document"))?;
        let last_key = key_of(doc, &self.spec.key).ok_or_else(|| {
            bad(&format!(
                "the document has no key field \"{}\"",
                self.spec.key
            ))
        })?;
        ck.commit(Position::Cursor { last_key }, documents);
        Ok(())
    }

    /// The checkpoint policy, for a named reader.
    pub fn checkpoint_policy(&self) -> Option<&CheckpointPolicy> {
        self.checkpointer.as_ref().map(|c| c.policy())
    }

    /// Whether fewer than `checkpoint.maxUnsavedEvents` processed documents are unsaved
    /// (always true without a token store).
    pub fn has_room(&self) -> bool {
        self.checkpointer.as_ref().is_none_or(|c| c.has_room())
    }

    /// Waits until `has_room()`, or the cursor is closed.
    pub async fn wait_for_room(&self) {
        if let Some(ck) = &self.checkpointer {
            tokio::select! {
                _ = ck.wait_for_room() => {},
                _ = self.shared.cancel.cancelled() => {},
            }
        }
    }

    /// Processed documents not yet stored (0 without a token store).
    pub fn pending_checkpoint(&self) -> u64 {
        self.checkpointer.as_ref().map_or(0, |c| c.unsaved_events())
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn spec(&self) -> &CursorSpec {
        &self.spec
    }

    pub fn health(&self) -> Health {
        self.shared.snapshot()
    }

    /// The next item. Must run inside a Tokio runtime (the worker is spawned on it).
    pub async fn next(&self) -> CursorItem {
        if !self.stop.is_cancelled() {
            self.start_worker();
        }
        // Bounded unsaved progress: while the store is down, hand out nothing more.
        self.wait_for_room().await;
        let mut rx = self.rx.lock().await;
        if self.shared.cancel.is_cancelled() {
            return CursorItem::Ended(CursorEnd::Closed);
        }
        // After stop(): what was received (the one-slot prefetch) is still handed out.
        match rx.recv().await {
            Some(item) => item,
            None if self.stop.is_cancelled() => {
                self.shared.end();
                CursorItem::Ended(CursorEnd::Stopped)
            }
            None if self.shared.state().is_terminal() => CursorItem::Ended(CursorEnd::Closed),
            None => {
                let error = EngineError::new(
                    ErrorCode::ClientError,
                    "internal error: the cursor worker stopped unexpectedly",
                );
                self.shared.fail(&error);
                CursorItem::Failed(error)
            }
        }
    }

    /// Requests no further batches: cancels a pending backoff or in-flight command (the
    /// server cursor is killed). Items already received are still returned by `next()`,
    /// then `Ended(Stopped)`. Idempotent.
    pub fn stop(&self) {
        self.stop.cancel();
        // Never started: nothing was received.
        drop(self.take_unstarted());
    }

    /// Stops, discards what is queued, waits for the worker to finish, then stores the
    /// last processed position. Idempotent. Fails only if that position could not be stored.
    pub async fn close(&self) -> Result<(), EngineError> {
        self.shared.begin_close();
        self.shared.cancel.cancel();
        drop(self.take_unstarted());
        for task in [&self.worker, &self.checkpoint_task] {
            let handle = task.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(handle) = handle {
                // A panic in the worker is already reported by `next()`.
                let _ = handle.await;
            }
        }
        self.shared.finish_close();
        match &self.checkpointer {
            Some(ck) => ck.flush().await,
            None => Ok(()),
        }
    }

    fn take_unstarted(&self) -> Option<mpsc::Sender<CursorItem>> {
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
        let span = tracing::info_span!("cursor", stream = self.id, ns = %self.spec.namespace());
        if let Some(ck) = &self.checkpointer {
            let handle = ck.spawn(
                self.shared.clone(),
                tx.clone(),
                CursorItem::Failed,
                span.clone(),
            );
            *self
                .checkpoint_task
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(handle);
        }
        let worker = CursorWorker::new(
            self.spec.clone(),
            self.shared.clone(),
            self.stop.clone(),
            tx,
            self.checkpointer.clone(),
        );
        let handle = tokio::spawn(worker.run().instrument(span));
        *self.worker.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }
}

impl Drop for CursorEngine {
    /// A cursor dropped without `close()` must not leave a worker re-opening forever.
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}
