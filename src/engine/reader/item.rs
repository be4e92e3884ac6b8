//! What a reader hands its consumer, one item at a time: the same items for a change
//! stream and a cursor (each uses the ones that apply to it).

use std::time::{Duration, SystemTime};

use mongodb::bson::{RawDocumentBuf, Timestamp};

use crate::engine::errors::EngineError;
use crate::engine::group::LossReason;

/// Why a reader ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// `close()`.
    Closed,
    /// A change stream's collection/database was dropped or renamed.
    Invalidated,
    /// A non-tailable cursor returned every matching document.
    Exhausted,
    /// `stop()`: no further batches were requested; everything received was handed out.
    Stopped,
}

impl EndReason {
    /// The public names (the facade's `end`/`close` reasons).
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::Invalidated => "invalidate",
            EndReason::Exhausted => "exhausted",
            EndReason::Stopped => "stopped",
        }
    }
}

/// A batch as handed to the consumer.
pub struct Batch {
    /// Numbers the batches handed out (0, 1, …): a commit names a batch by it.
    pub seq: u64,
    /// How many documents were handed out before this batch: document i of it is number
    /// `ordinal + i`, the numbering the consumer's marks use.
    pub ordinal: u64,
    /// `count` BSON documents back to back.
    pub docs: Vec<u8>,
    pub count: usize,
    /// A change stream's resume token after the whole batch.
    pub end_token: Option<RawDocumentBuf>,
    /// A partitioned group member's: the partition of each document (for the listeners'
    /// context: which lease, at which epoch, the event was read under).
    pub partitions: Option<Vec<u32>>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("seq", &self.seq)
            .field("count", &self.count)
            .field("bytes", &self.docs.len())
            .finish()
    }
}

/// What `next()` yields.
#[derive(Debug)]
pub enum ReaderItem {
    Batch(Batch),
    /// A resumable failure: the reader waits `delay`, then re-opens (attempt ≥ 1).
    Reconnecting {
        attempt: u32,
        delay: Duration,
        error: EngineError,
    },
    /// The first real progress after an outage.
    Resumed {
        attempts: u32,
        downtime: Duration,
    },
    /// No progress for `silent`; a re-open follows (as `Reconnecting`).
    Stalled {
        silent: Duration,
    },
    /// A change stream's position fell off the oplog: events in (from, to] may be missing.
    /// Followed by `Failed` (policy "error") or by events from "now" (policy
    /// "resumeFromNow").
    HistoryLost {
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        /// The lost position (the last token the stream had).
        token: Option<RawDocumentBuf>,
    },
    /// A tailable cursor's documents after the last key were overwritten before they were
    /// read (136 CappedPositionLost). Followed by `Failed` (policy "error") or by a re-open
    /// after the last key (policy "restartFromOldest").
    PositionLost {
        error: EngineError,
    },
    /// A group member took the lease: it reads from the stored position now.
    LeaseAcquired {
        epoch: u64,
        member: String,
        since: SystemTime,
        /// A partitioned group: the partition whose lease it is.
        partition: Option<u32>,
    },
    /// A group member stopped holding the lease: nothing more of that tenure is handed
    /// out; it waits as a standby.
    LeaseLost {
        epoch: u64,
        reason: LossReason,
        /// A partitioned group: the partition whose lease it was.
        partition: Option<u32>,
    },
    /// Fatal: the reader is closed.
    Failed(EngineError),
    Ended(EndReason),
}
