//! The handle of one change stream: `next()` pulls items from the worker's one-slot
//! channel (so at most one batch is prefetched), `close()` tears it down in order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{RawDocumentBuf, Timestamp};

use super::checkpoint::CheckpointPolicy;
use super::errors::EngineError;
use super::handle::{Handle, Received};
use super::position::{stream_owner, Position};
use super::spec::WatchSpec;
use super::status::{Health, StreamState};
use super::store::TokenStore;
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
    /// The cluster time of that position (its last event's, else the reply's operation
    /// time), when known.
    pub position_time: Option<Timestamp>,
}

impl std::fmt::Debug for EventBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBatch")
            .field("count", &self.count)
            .field("bytes", &self.events.len())
            .field("position_time", &self.position_time)
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

impl super::reporter::FailureItem for StreamItem {
    const WHAT: &'static str = "change stream";
    fn reconnecting(attempt: u32, delay: Duration, error: EngineError) -> Self {
        StreamItem::Reconnecting {
            attempt,
            delay,
            error,
        }
    }
    fn stalled(silent: Duration) -> Self {
        StreamItem::Stalled { silent }
    }
    fn failed(error: EngineError) -> Self {
        StreamItem::Failed(error)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One change stream. `next()` and `close()` may be called from any task.
pub struct ChangeStreamEngine {
    /// Process-unique; names the stream in logs (the `stream` field of its span).
    id: u64,
    spec: Arc<WatchSpec>,
    handle: Handle<StreamItem>,
    /// The times of the last few event-less batches handed out, by end token: a quiet
    /// position committed later is stored with its own time, not with a newer one the
    /// worker has read ahead since.
    quiet_times: Mutex<VecDeque<(RawDocumentBuf, Timestamp)>>,
}

/// Event-less batches whose time is remembered (the one-slot channel plus the facade's
/// read-ahead hold fewer).
const QUIET_TIMES_KEPT: usize = 4;

impl ChangeStreamEngine {
    /// `custom_store`: the application's own store, for `tokenStore: { type: 'custom' }`.
    pub fn new(
        spec: WatchSpec,
        custom_store: Option<Arc<dyn TokenStore>>,
    ) -> Result<Self, EngineError> {
        let handle = Handle::new(
            spec.durability.as_ref(),
            |name| stream_owner(name, &spec),
            &spec.uri,
            custom_store,
        )?;
        Ok(ChangeStreamEngine {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            spec: Arc::new(spec),
            handle,
            quiet_times: Mutex::new(VecDeque::new()),
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
        if let Some(ck) = &self.handle.checkpointer {
            ck.commit(Position::after_event(event, end_token)?, events);
        }
        Ok(())
    }

    /// The checkpoint policy, for a named consumer.
    pub fn checkpoint_policy(&self) -> Option<&CheckpointPolicy> {
        self.handle.checkpoint_policy()
    }

    /// The position advanced without an event (postBatchResumeToken of a quiet stream) to
    /// the end token of an event-less batch; its cluster time is that batch's (the reply's
    /// operation time).
    pub fn commit_token(&self, token: &[u8]) -> Result<(), EngineError> {
        if let Some(ck) = &self.handle.checkpointer {
            let time = self
                .quiet_times
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .rev()
                .find(|(sent, _)| sent.as_bytes() == token)
                .map(|(_, time)| *time);
            ck.commit(Position::token_only(token, time)?, 0);
        }
        Ok(())
    }

    /// How many more processed events may be unsaved before `checkpoint.maxUnsavedEvents`
    /// is reached (`u64::MAX` without a token store): the consumer may take that many more.
    pub fn room(&self) -> u64 {
        self.handle.room()
    }

    /// Waits until `room()` is not 0, or the stream is closed.
    pub async fn wait_for_room(&self) {
        self.handle.wait_for_room().await
    }

    /// Processed events not yet stored (0 without a token store).
    pub fn pending_checkpoint(&self) -> u64 {
        self.handle.pending_checkpoint()
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn spec(&self) -> &WatchSpec {
        &self.spec
    }

    pub fn state(&self) -> StreamState {
        self.handle.shared.state()
    }

    pub fn health(&self) -> Health {
        self.handle.shared.snapshot()
    }

    /// The server's oplog window and where this stream's position stands in it.
    pub async fn oplog_window(&self) -> Result<super::oplog::OplogWindow, EngineError> {
        let client = super::client_pool::client_for(&self.spec.uri).await?;
        super::oplog::read_window(&client, self.health().position_time).await
    }

    /// The next item. Must run inside a Tokio runtime (the worker is spawned on it).
    pub async fn next(&self) -> StreamItem {
        let span =
            || tracing::info_span!("change_stream", stream = self.id, ns = %self.spec.namespace());
        self.handle.start(span, |tx| {
            let worker = Worker::new(
                self.spec.clone(),
                self.handle.shared.clone(),
                tx,
                self.handle.checkpointer.clone(),
            );
            worker.run()
        });
        match self.handle.recv().await {
            Received::Item(StreamItem::Batch(batch)) => {
                if let (0, Some(token), Some(time)) =
                    (batch.count, &batch.end_token, batch.position_time)
                {
                    let mut times = self.quiet_times.lock().unwrap_or_else(|p| p.into_inner());
                    if times.len() == QUIET_TIMES_KEPT {
                        times.pop_front();
                    }
                    times.push_back((token.clone(), time));
                }
                StreamItem::Batch(batch)
            }
            Received::Item(item) => item,
            Received::Closed => StreamItem::Ended(EndReason::Closed),
            Received::Drained if self.state().is_terminal() => StreamItem::Ended(EndReason::Closed),
            Received::Drained => self.handle.vanished(),
        }
    }

    /// Forbids re-opens, cancels a pending backoff or in-flight command, kills the
    /// cursor, waits for the worker to finish, then stores the last processed position.
    /// Idempotent. Fails only if that last position could not be stored.
    pub async fn close(&self) -> Result<(), EngineError> {
        self.handle.close().await
    }
}
