//! A restartable long read (a huge `find`, or a tailable cursor on a capped collection):
//! the same shape as a change stream — a background worker, a one-slot channel, the
//! stream's backoff and error classification — but positioned by a unique, ordered key
//! instead of a resume token. Re-opens continue after the last key received.

mod spec;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::RawDocument;
use tokio_util::sync::CancellationToken;

use super::checkpoint::CheckpointPolicy;
use super::errors::{EngineError, ErrorCode};
use super::handle::{Handle, Received};
use super::position::Position;
use super::status::Health;
use super::store::TokenStore;

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

impl super::reporter::FailureItem for CursorItem {
    const WHAT: &'static str = "cursor";
    fn reconnecting(attempt: u32, delay: Duration, error: EngineError) -> Self {
        CursorItem::Reconnecting {
            attempt,
            delay,
            error,
        }
    }
    fn stalled(silent: Duration) -> Self {
        CursorItem::Stalled { silent }
    }
    fn failed(error: EngineError) -> Self {
        CursorItem::Failed(error)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1 << 32);

/// One restartable cursor. `next()`, `stop()` and `close()` may be called from any task.
pub struct CursorEngine {
    id: u64,
    spec: Arc<CursorSpec>,
    handle: Handle<CursorItem>,
    /// Cancelled by `stop()` (and by `close()`, its parent): the worker requests nothing more.
    stop: CancellationToken,
}

impl CursorEngine {
    /// `custom_store`: the application's own store, for `tokenStore: { type: 'custom' }`.
    pub fn new(
        spec: CursorSpec,
        custom_store: Option<Arc<dyn TokenStore>>,
    ) -> Result<Self, EngineError> {
        let handle = Handle::new(
            spec.durability.as_ref(),
            |name| spec.owner(name),
            &spec.uri,
            custom_store,
        )?;
        let stop = handle.shared.cancel.child_token();
        Ok(CursorEngine {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            spec: Arc::new(spec),
            handle,
            stop,
        })
    }

    /// The consumer processed `documents` more documents, the last of them `document`
    /// (BSON): its key is the stored position. No-op without a token store.
    pub fn commit_document(&self, document: &[u8], documents: u64) -> Result<(), EngineError> {
        let Some(ck) = &self.handle.checkpointer else {
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
        self.handle.checkpoint_policy()
    }

    /// How many more processed documents may be unsaved before `checkpoint.maxUnsavedEvents`
    /// is reached (`u64::MAX` without a token store): the consumer may take that many more.
    pub fn room(&self) -> u64 {
        self.handle.room()
    }

    /// Waits until `room()` is not 0, or the cursor is closed.
    pub async fn wait_for_room(&self) {
        self.handle.wait_for_room().await
    }

    /// Processed documents not yet stored (0 without a token store).
    pub fn pending_checkpoint(&self) -> u64 {
        self.handle.pending_checkpoint()
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn spec(&self) -> &CursorSpec {
        &self.spec
    }

    pub fn health(&self) -> Health {
        self.handle.shared.snapshot()
    }

    /// The next item. Must run inside a Tokio runtime (the worker is spawned on it).
    pub async fn next(&self) -> CursorItem {
        if !self.stop.is_cancelled() {
            let span =
                || tracing::info_span!("cursor", stream = self.id, ns = %self.spec.namespace());
            self.handle.start(span, |tx| {
                let worker = CursorWorker::new(
                    self.spec.clone(),
                    self.handle.shared.clone(),
                    self.stop.clone(),
                    tx,
                    self.handle.checkpointer.clone(),
                );
                worker.run()
            });
        }
        // After stop(): what was received (the one-slot prefetch) is still handed out.
        match self.handle.recv().await {
            Received::Item(item) => item,
            Received::Closed => CursorItem::Ended(CursorEnd::Closed),
            Received::Drained if self.stop.is_cancelled() => {
                self.handle.shared.end();
                CursorItem::Ended(CursorEnd::Stopped)
            }
            Received::Drained if self.handle.shared.state().is_terminal() => {
                CursorItem::Ended(CursorEnd::Closed)
            }
            Received::Drained => self.handle.vanished(),
        }
    }

    /// Requests no further batches: cancels a pending backoff or in-flight command (the
    /// server cursor is killed). Items already received are still returned by `next()`,
    /// then `Ended(Stopped)`. Idempotent.
    pub fn stop(&self) {
        self.stop.cancel();
        // Never started: nothing was received.
        self.handle.forget_unstarted();
    }

    /// Stops, discards what is queued, waits for the worker to finish, then stores the
    /// last processed position. Idempotent. Fails only if that position could not be stored.
    pub async fn close(&self) -> Result<(), EngineError> {
        self.handle.close().await
    }
}
