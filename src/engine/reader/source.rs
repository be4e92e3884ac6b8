//! What a reader reads: the small trait the one runtime (`run.rs`) drives, implemented by
//! the change stream (`engine::stream`) and the restartable cursor (`engine::cursor`). The
//! runtime owns everything else: the client, backoff, the stall watchdog, outage reports,
//! the channel to the consumer, checkpoints and the ordered close.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Document, RawDocument, RawDocumentBuf, Timestamp};
use mongodb::raw_batch_cursor::RawBatchCursor;
use mongodb::Client;

use super::item::{EndReason, ReaderItem};
use super::options::ReaderOptions;
use crate::engine::durable::position::{fingerprint_of, Owner, Position, ReaderKind};
use crate::engine::errors::{EngineError, Rules};
use crate::engine::group::server_split::PartitionFilter;

/// A reader's immutable arguments.
pub trait ReaderSpec: Send + Sync + 'static {
    /// What kind of reader stores positions under this spec.
    const KIND: ReaderKind;
    /// The options every reader shares.
    fn common(&self) -> &ReaderOptions;
    /// `db.coll` (or `db`, `<cluster>`) for logs and stored records; never the URI.
    fn namespace(&self) -> String;
    /// What shapes what is read, besides the namespace: a stored position is refused when
    /// it differs. Batching, timeouts and backoff do not count.
    fn shape(&self) -> Document;

    /// Who a stored position of this reader belongs to.
    fn owner(&self, name: &str) -> Owner {
        let namespace = self.namespace();
        let mut shape = doc! { "namespace": namespace.as_str() };
        shape.extend(self.shape());
        Owner {
            kind: Self::KIND,
            name: name.to_string(),
            namespace,
            fingerprint: fingerprint_of(shape),
        }
    }
}

/// One batch read from the server, ready to hand out.
#[derive(Debug, Default)]
pub struct ReadBatch {
    /// `count` BSON documents back to back.
    pub docs: Vec<u8>,
    pub count: usize,
    /// A change stream's position after the whole batch (its resume token).
    pub end_token: Option<RawDocumentBuf>,
    /// The cluster time of that position, when known.
    pub position_time: Option<Timestamp>,
}

/// What a reply meant.
pub enum Reply {
    /// Hand this batch out. `progress`: it ends an outage (an event, or a getMore that
    /// moved the position).
    Batch { batch: ReadBatch, progress: bool },
    /// Nothing to hand out.
    Nothing { progress: bool },
    /// Replies keep coming but the position has not moved for this long.
    Stalled(Duration),
}

/// What a cursor that the server ended (no more batches) means.
pub enum Exhausted {
    /// The reader ends with this reason (items received are handed out first).
    End(EndReason),
    /// Open a new cursor, after this pause.
    Reopen(Duration),
    /// The reader fails.
    Fail(EngineError),
}

/// What to do after a reported loss of position.
pub enum AfterLoss {
    Fail,
    /// Go on from where the source now stands (it moved itself past the loss).
    Continue,
}

/// What a failure means to the source, before the runtime's usual handling.
pub enum Adapted {
    /// The source changed how it opens (e.g. a change stream now splits large events): re-open
    /// at once from where it stands, without counting an outage.
    Reopen,
    /// Handle this (possibly explained) error as usual: retry, loss, or fail.
    Handle(EngineError),
}

/// How a reader reads. `&mut self` is the mutable resume state; the spec is immutable.
pub trait Source: Send + Sync + Sized + 'static {
    type Spec: ReaderSpec;
    /// What is read, for logs and messages ("change stream", "cursor").
    const WHAT: &'static str;

    fn new(spec: Arc<Self::Spec>) -> Self;

    /// Which resumability rule its read's server errors follow, given the server's wire
    /// version (`errors.rs` applies it).
    fn rules(wire_version: Option<i32>) -> Rules;

    /// How long the server may hold a round trip by design (its await time): the stall
    /// watchdog waits this plus `stallTimeoutMS`.
    fn await_time(&self) -> Duration;

    /// Whether the user gave a start position, which wins over a stored one.
    fn has_start(&self) -> bool;

    /// Continues from a stored position; returns its cluster time, when known.
    fn restore(&mut self, position: Position) -> Option<Timestamp>;

    /// A partitioned member's partitions, for its next opens (only a change stream is
    /// partitioned: it may push the filter to the server, `group::server_split`).
    fn filter_partitions(&mut self, _filter: PartitionFilter) {}

    /// Opens a server cursor where the reader stands.
    fn open<'a>(
        &'a mut self,
        client: &'a Client,
    ) -> impl Future<Output = Result<RawBatchCursor, mongodb::error::Error>> + Send + 'a;

    /// After an open: `Some(error)` when the position turns out to be lost.
    fn check_open<'a>(
        &'a mut self,
        client: &'a Client,
    ) -> impl Future<Output = Result<Option<EngineError>, mongodb::error::Error>> + Send + 'a;

    /// Whether `check_open` should run again now, on the open cursor (a long copy compares
    /// its start time with the oplog on the way, not only at opens).
    fn position_check_due(&self) -> bool {
        false
    }

    /// Reads one reply; `opening`: it answers the open.
    fn on_reply(&mut self, reply: &RawDocument, opening: bool) -> Result<Reply, EngineError>;

    /// The server ended the cursor.
    fn on_exhausted(&mut self) -> Exhausted;

    /// A failed open or read, first shown to the source: it may get past it by opening
    /// differently (once), or explain it better. Default: handle as usual.
    fn adapt(&mut self, error: EngineError) -> Adapted {
        Adapted::Handle(error)
    }

    /// Whether `error` means the position is gone (rather than a failure to retry).
    fn is_loss(&self, error: &EngineError) -> bool;

    /// The item that reports a lost position (`error` says how it was found).
    fn loss_item<'a>(
        &'a mut self,
        error: &'a EngineError,
        client: &'a Client,
        position_time: Option<Timestamp>,
    ) -> impl Future<Output = ReaderItem> + Send + 'a;

    /// After the loss was reported: fail, or move past it (the user's policy).
    fn after_loss(&mut self) -> AfterLoss;

    /// The position after the first `n` documents of a handed-out batch (`n` ≤ its count;
    /// `n` = count: after the whole batch). `None`: no position there (n = 0 of a batch
    /// with documents).
    fn position_at(
        spec: &Self::Spec,
        batch: &ReadBatch,
        n: usize,
    ) -> Result<Option<Position>, EngineError>;
}
