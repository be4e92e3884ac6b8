//! A change stream: a `reader::Source` that opens `$changeStream` aggregates, keeps the
//! spec's cached resume token (`resume.rs`), and re-opens with THE start option
//! `choose_start` picks. Everything else is the reader runtime's.

pub mod assemble;
pub mod oplog;
pub mod reply;
pub mod resume;
pub mod snapshot;
pub mod snapshot_options;
pub mod spec;
pub mod token_time;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{Document, RawDocument, RawDocumentBuf, Timestamp};
use mongodb::options::SelectionCriteria;
use mongodb::raw_batch_cursor::RawBatchCursor;
use mongodb::Client;

use crate::engine::client_pool::client_for;
use crate::engine::cursor::CursorSpec;
use crate::engine::durable::position::Position;
use crate::engine::errors::{EngineError, ErrorCode, Rules};
use crate::engine::group::server_split::PartitionFilter;
use crate::engine::reader::reply::doc_at;
use crate::engine::reader::source::{Adapted, AfterLoss, Exhausted, ReadBatch, Reply, Source};
use crate::engine::reader::{EndReason, Reader, ReaderItem};
use assemble::Assembler;
use oplog::{read_window, OplogWindow};
use reply::parse_reply;
use resume::{aggregate_command, choose_start, ResumeState};
use snapshot::{
    check_start_time, copy_spec, next_window_check, position_after, read_start_time,
    wrap_as_events, Phase, SnapshotLostPolicy,
};
use spec::{HistoryLostPolicy, InvalidatePolicy, Scope, StartPoint, TransactionMode, WatchSpec};
use token_time::keystring_token_time;

/// One change stream.
pub type ChangeStreamEngine = Reader<StreamSource>;

/// How long a getMore may take when the user sets no `maxAwaitTimeMS` (the server's
/// default await time).
const SERVER_DEFAULT_AWAIT: Duration = Duration::from_secs(1);

/// Whether the stream opens with `$changeStreamSplitLargeEvent`. A stream that never meets
/// a large event never pays for it: the stage is added only on request or after the server
/// failed the stream with 10334, and then stays for this stream's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SplitStage {
    Off,
    /// `splitLargeEvents: true`.
    Requested,
    /// Turned on by a BSONObjectTooLarge (or a resume token only the stage can resume).
    AfterFailure,
}

impl SplitStage {
    fn is_on(self) -> bool {
        self != SplitStage::Off
    }
}

pub struct StreamSource {
    spec: Arc<WatchSpec>,
    resume: ResumeState,
    /// The last batch ended with an `invalidate` event.
    invalidated: bool,
    /// Whether this server advances an idle stream's position (a no-op heartbeat): only
    /// then does "no advance for stallTimeoutMS" mean a stall.
    idle_advance_seen: bool,
    /// When the position last moved (or the cursor was opened).
    last_progress: Instant,
    split: SplitStage,
    /// Joins split events, groups transactions, and holds what is incomplete.
    assembler: Assembler,
    /// Copying (an initial snapshot, or a re-copy after a loss) or streaming.
    phase: Phase,
    /// The copy's find (a collection stream only).
    copy_spec: Option<Arc<CursorSpec>>,
    /// A partitioned member's partitions (`group.partitions`).
    partitions: Option<PartitionFilter>,
}

impl StreamSource {
    /// On a server known to advance idle streams, no advance for `stallTimeoutMS` while
    /// replies keep coming is a stall too (the cursor answers but is stuck).
    fn idle_stall(&self) -> Option<Duration> {
        let stall = self.spec.common.stall_timeout?;
        let silent = self.last_progress.elapsed();
        (self.idle_advance_seen && silent > stall).then_some(silent)
    }

    /// Whether replies go through the assembler (else their events are handed out as read).
    fn assembles(&self) -> bool {
        self.split.is_on() || self.spec.transactions == TransactionMode::Group
    }

    /// The position, for messages: the token as extended JSON, or what stands for it.
    fn position_for_message(&self) -> String {
        match self.resume.token().and_then(|t| t.to_document().ok()) {
            Some(token) => mongodb::bson::Bson::Document(token)
                .into_relaxed_extjson()
                .to_string(),
            None => String::from("(the stream's start: no resume token yet)"),
        }
    }

    /// `(db, collection)` of a collection stream.
    fn collection(&self) -> Option<(&str, &str)> {
        match &self.spec.scope {
            Scope::Collection { db, coll } => Some((db, coll)),
            _ => None,
        }
    }

    /// Copies again from the beginning, with a new start time (read at the next open).
    fn restart_copy(&mut self) {
        self.resume.forget_position();
        self.phase = Phase::Starting;
    }

    /// What a lost copy start time leads to: the snapshot's policy, or — for a re-copy of a
    /// plain stream (`onHistoryLost: 'resnapshot'`) — another re-copy.
    fn copy_lost_policy(&self) -> SnapshotLostPolicy {
        match (&self.spec.snapshot, self.spec.on_history_lost) {
            (Some(options), _) => options.on_history_lost,
            (None, HistoryLostPolicy::Resnapshot) => SnapshotLostPolicy::Restart,
            (None, _) => SnapshotLostPolicy::Error,
        }
    }
}

impl Source for StreamSource {
    type Spec = WatchSpec;
    const WHAT: &'static str = "change stream";

    fn new(spec: Arc<WatchSpec>) -> Self {
        let copy_spec = match &spec.scope {
            Scope::Collection { db, coll } => Some(Arc::new(copy_spec(&spec, db, coll))),
            _ => None,
        };
        StreamSource {
            resume: ResumeState::new(&spec),
            phase: Phase::initial(&spec),
            copy_spec,
            partitions: None,
            invalidated: false,
            idle_advance_seen: false,
            last_progress: Instant::now(),
            split: if spec.split_large_events {
                SplitStage::Requested
            } else {
                SplitStage::Off
            },
            assembler: Assembler::new(
                spec.on_large_event,
                spec.transactions == TransactionMode::Group,
            ),
            spec,
        }
    }

    /// The change-streams spec's rule: labels decide on 4.4+ servers.
    fn rules(wire_version: Option<i32>) -> Rules {
        Rules::ChangeStream { wire_version }
    }

    fn await_time(&self) -> Duration {
        self.spec.max_await_time.unwrap_or(SERVER_DEFAULT_AWAIT)
    }

    /// An explicit `resumeAfter`/`startAfter`/`startAtOperationTime` wins over a stored
    /// position.
    fn has_start(&self) -> bool {
        self.spec.start != StartPoint::Now
    }

    fn restore(&mut self, position: Position) -> Option<Timestamp> {
        match position {
            Position::Stream {
                token,
                cluster_time,
                start_after,
            } => {
                self.resume.restore(token, start_after);
                self.phase = Phase::Streaming { seam: None };
                cluster_time
            }
            Position::StreamAt { cluster_time } => {
                self.resume.restore_time(cluster_time);
                self.phase = Phase::Streaming { seam: None };
                Some(cluster_time)
            }
            // A copy stopped in the middle: continue after its last key, then stream from
            // its original start time.
            Position::Snapshot {
                start_time,
                last_key,
            } => {
                self.resume.restore_time(start_time);
                self.phase = match &self.copy_spec {
                    Some(copy) => Phase::copying(copy, start_time, Some(last_key)),
                    // Not a collection stream (allowPositionMismatch): nothing to copy.
                    None => Phase::Streaming {
                        seam: Some(start_time),
                    },
                };
                Some(start_time)
            }
            // load_position refuses a cursor's record.
            Position::Cursor { .. } => None,
        }
    }

    async fn open(&mut self, client: &Client) -> Result<RawBatchCursor, mongodb::error::Error> {
        if let Phase::Starting = self.phase {
            // The seam: the start time is read BEFORE the copy's first find.
            let (Some(copy), Some((db, coll))) = (self.copy_spec.clone(), self.collection()) else {
                return Err(mongodb::error::Error::custom(
                    "an initial snapshot needs a collection stream".to_string(),
                ));
            };
            let start_time = read_start_time(client, db, coll).await?;
            tracing::info!(start_time = ?start_time, "initial snapshot: copying the collection");
            self.phase = Phase::copying(&copy, start_time, None);
        }
        if let Phase::Copying { copy, .. } = &mut self.phase {
            return copy.open(client).await;
        }
        let start = choose_start(&self.spec, &self.resume);
        tracing::debug!(start = start.kind(), "opening the change stream cursor");
        self.last_progress = Instant::now();
        // It opens after the last position handed out: what was held is read again.
        self.assembler.reset();
        let stage = match &self.partitions {
            Some(filter) => {
                filter
                    .stage(client, self.spec.command_db(), start.token())
                    .await?
            }
            None => None,
        };
        open_cursor(
            client,
            &self.spec,
            start,
            self.split.is_on(),
            stage.as_ref(),
        )
        .await
    }

    fn filter_partitions(&mut self, filter: PartitionFilter) {
        self.partitions = Some(filter);
    }

    /// During a copy (and at the seam, before the stream moved past its start time): is the
    /// start time still in the oplog? A server may not say so itself (a
    /// `startAtOperationTime` older than the oplog is answered with 286 by mongod, but not
    /// by every server), and a copy that outlived the window must not go on unnoticed.
    async fn check_open(
        &mut self,
        client: &Client,
    ) -> Result<Option<EngineError>, mongodb::error::Error> {
        let Some(start_time) = self.phase.copy_start() else {
            return Ok(None);
        };
        let began = Instant::now();
        let checked = check_start_time(client, start_time).await;
        if let Phase::Copying {
            window_checked,
            window_check_every,
            ..
        } = &mut self.phase
        {
            *window_checked = Instant::now();
            *window_check_every = next_window_check(began.elapsed());
        }
        checked
    }

    fn position_check_due(&self) -> bool {
        matches!(&self.phase, Phase::Copying { window_checked, window_check_every, .. } if window_checked.elapsed() >= *window_check_every)
    }

    fn on_reply(&mut self, reply: &RawDocument, opening: bool) -> Result<Reply, EngineError> {
        if let Phase::Copying {
            copy, start_time, ..
        } = &mut self.phase
        {
            let start_time = *start_time;
            let read = copy.on_reply(reply, opening)?;
            let Some((db, coll)) = self.collection() else {
                return Ok(read);
            };
            return Ok(match read {
                Reply::Batch { batch, progress } => Reply::Batch {
                    batch: wrap_as_events(batch, db, coll, start_time)?,
                    progress,
                },
                other => other,
            });
        }
        let parsed = parse_reply(reply)?;
        if opening {
            self.resume.record_open(&self.spec, parsed.operation_time);
        }
        let read = parsed.count;
        let parsed = if self.assembles() {
            self.assembler.feed(parsed, self.split.is_on())?
        } else {
            parsed
        };
        if parsed.count == 0 && read > 0 && self.assembler.holds() {
            // Only part of a split event or a transaction: nothing to hand out or position
            // at yet, but the server is answering with events.
            self.last_progress = Instant::now();
            return Ok(Reply::Nothing { progress: true });
        }
        // After an invalidate, the position is the invalidate event's own token: the only
        // one `startAfter` can continue from.
        let end_token = if parsed.invalidated {
            parsed.last_event_id.clone()
        } else {
            parsed.post_batch_token.clone()
        };
        let advanced = self
            .resume
            .record_batch(parsed.count, parsed.last_event_id, end_token);
        self.invalidated = parsed.invalidated;
        if !advanced {
            return Ok(match self.idle_stall() {
                Some(silent) => Reply::Stalled(silent),
                None => Reply::Nothing { progress: false },
            });
        }
        self.last_progress = Instant::now();
        if let Phase::Streaming { seam } = &mut self.phase {
            // The stream moved past the copy's start time: a later loss is the stream's.
            *seam = None;
        }
        if parsed.count == 0 && !opening {
            self.idle_advance_seen = true;
        }
        let token_time = || self.resume.token().and_then(|t| keystring_token_time(t));
        let position_time = match parsed.last_cluster_time {
            Some(time) => Some(time),
            // An empty reply's operationTime is the server's "now": when it answers an open
            // (a resume, maybe far behind) it is not the position's time.
            None if opening => token_time(),
            None => parsed.operation_time.or_else(token_time),
        };
        Ok(Reply::Batch {
            progress: parsed.count > 0 || !opening,
            batch: ReadBatch {
                docs: parsed.events,
                count: parsed.count,
                end_token: self.resume.token().cloned(),
                position_time,
            },
        })
    }

    /// The server ends a change stream cursor only after an invalidate (drop, rename,
    /// dropDatabase) — also when the pipeline filtered that event out.
    fn on_exhausted(&mut self) -> Exhausted {
        if let Phase::Copying { start_time, .. } = self.phase {
            // The copy is complete: stream every change from its start time.
            tracing::info!(start_time = ?start_time, "initial snapshot complete; streaming from its start time");
            self.resume.restore_time(start_time);
            self.phase = Phase::Streaming {
                seam: Some(start_time),
            };
            return Exhausted::Reopen(Duration::ZERO);
        }
        let saw_invalidate = std::mem::take(&mut self.invalidated);
        if self.spec.on_invalidate == InvalidatePolicy::Close {
            return Exhausted::End(EndReason::Invalidated);
        }
        if !saw_invalidate {
            // Without the invalidate event there is no token `startAfter` can continue
            // from; guessing a position could skip events.
            return Exhausted::Fail(EngineError::new(
                ErrorCode::ChangeStreamFatal,
                "the server ended the change stream without an invalidate event (does the \
                 pipeline filter it out?); onInvalidate: 'restart' needs invalidate events to \
                 pass the pipeline",
            ));
        }
        // Restart: continue with `startAfter` the invalidate token, so a dropped collection
        // that is re-created keeps streaming.
        tracing::info!("restarting after invalidate");
        self.resume.restart_after_invalidate();
        Exhausted::Reopen(Duration::ZERO)
    }

    /// 10334: re-open from the last position with `$changeStreamSplitLargeEvent` (once; the
    /// policy then decides what the too-large event becomes). A server without the stage
    /// fails the re-open: that error says which event and what to do.
    fn adapt(&mut self, error: EngineError) -> Adapted {
        if error.is_event_too_large() {
            if self.split == SplitStage::Off {
                tracing::warn!(
                    "a change event is larger than 16 MB; re-opening with $changeStreamSplitLargeEvent"
                );
                self.split = SplitStage::AfterFailure;
                return Adapted::Reopen;
            }
            let mut explained = EngineError::new(
                ErrorCode::ChangeStreamFatal,
                format!(
                    "the change event after resume token {} is larger than 16 MB even with \
                     $changeStreamSplitLargeEvent (the stage splits only by top-level field: \
                     is one field over 16 MB?); $project fewer fields, or start after that \
                     event ({})",
                    self.position_for_message(),
                    error.message
                ),
            );
            explained.server_code = error.server_code;
            explained.code_name = error.code_name;
            return Adapted::Handle(explained);
        }
        if self.split == SplitStage::Off && error.message.contains("changeStreamSplitLargeEvent") {
            // A stored token of a split event (saved while the stage was on) resumes only
            // with the stage.
            tracing::warn!(
                "the resume token needs $changeStreamSplitLargeEvent; re-opening with it"
            );
            self.split = SplitStage::AfterFailure;
            return Adapted::Reopen;
        }
        if error.is_unknown_stage() && self.split.is_on() {
            let why = match self.split {
                SplitStage::AfterFailure => {
                    "the server failed the stream with BSONObjectTooLarge \
                    (10334): the event after it is larger than 16 MB, and"
                }
                _ => "splitLargeEvents is on, but",
            };
            let mut explained = EngineError::new(
                ErrorCode::InvalidPipeline,
                format!(
                    "at resume token {}: {why} this server does not support \
                     $changeStreamSplitLargeEvent (MongoDB 7.0+ or 6.0.9+). To go on: upgrade \
                     the server; or make the event smaller (request fewer images: fullDocument / \
                     fullDocumentBeforeChange, or $project fewer fields); or start after that \
                     event (startAtOperationTime past it). The server said: {}",
                    self.position_for_message(),
                    error.message
                ),
            );
            explained.server_code = error.server_code;
            explained.code_name = error.code_name;
            return Adapted::Handle(explained);
        }
        Adapted::Handle(error)
    }

    fn is_loss(&self, error: &EngineError) -> bool {
        error.code == ErrorCode::ChangeStreamHistoryLost
    }

    /// Says which interval may be missing: from the position to the oldest entry still in
    /// the oplog.
    async fn loss_item(
        &mut self,
        _error: &EngineError,
        client: &Client,
        position_time: Option<Timestamp>,
    ) -> ReaderItem {
        let to = match read_window(client, position_time).await {
            Ok(OplogWindow::Known { oldest, .. }) => Some(oldest),
            _ => None,
        };
        tracing::error!(from = ?position_time, ?to, "change stream history lost");
        ReaderItem::HistoryLost {
            from: position_time,
            to,
            token: self.resume.token().cloned(),
        }
    }

    fn after_loss(&mut self) -> AfterLoss {
        if self.phase.copy_start().is_some() {
            return match self.copy_lost_policy() {
                SnapshotLostPolicy::Error => AfterLoss::Fail,
                SnapshotLostPolicy::Restart => {
                    self.restart_copy();
                    AfterLoss::Continue
                }
            };
        }
        match self.spec.on_history_lost {
            HistoryLostPolicy::Error => AfterLoss::Fail,
            HistoryLostPolicy::ResumeFromNow => {
                self.resume.forget_position();
                AfterLoss::Continue
            }
            HistoryLostPolicy::Resnapshot if self.copy_spec.is_some() => {
                self.restart_copy();
                AfterLoss::Continue
            }
            HistoryLostPolicy::Resnapshot => AfterLoss::Fail,
        }
    }

    fn position_at(
        _spec: &WatchSpec,
        batch: &ReadBatch,
        n: usize,
    ) -> Result<Option<Position>, EngineError> {
        // A copied document's position is the copy's progress.
        if let Some(position) = position_after(batch, n)? {
            return Ok(Some(position));
        }
        let bad = || EngineError::new(ErrorCode::ClientError, "commit: a batch without its token");
        if n == 0 {
            // A batch without events moved the position by its token alone.
            if batch.count > 0 {
                return Ok(None);
            }
            let token = batch.end_token.as_ref().ok_or_else(bad)?;
            return Position::token_only(token.as_bytes(), batch.position_time).map(Some);
        }
        let event = doc_at(&batch.docs, n - 1)?;
        let end = if n == batch.count {
            Some(batch.end_token.as_ref().ok_or_else(bad)?.as_bytes())
        } else {
            None
        };
        Position::after_event(event.as_bytes(), end).map(Some)
    }
}

impl Reader<StreamSource> {
    /// The server's oplog window and where this stream's position stands in it.
    pub async fn oplog_window(&self) -> Result<OplogWindow, EngineError> {
        let client = client_for(&self.spec().common.uri).await?;
        read_window(&client, self.health().position_time).await
    }
}

async fn open_cursor(
    client: &Client,
    spec: &WatchSpec,
    start: StartPoint,
    split_large_events: bool,
    partition_stage: Option<&Document>,
) -> Result<RawBatchCursor, mongodb::error::Error> {
    let command = RawDocumentBuf::from_document(&aggregate_command(
        spec,
        &start,
        split_large_events,
        partition_stage,
    ))?;
    let db = client.database(spec.command_db());
    let mut action = db.run_raw_cursor_command(command);
    if let Some(n) = spec.batch_size {
        action = action.batch_size(n);
    }
    if let Some(t) = spec.max_await_time {
        action = action.max_time(t);
    }
    if let Some(c) = &spec.comment {
        action = action.comment(c.clone());
    }
    if let Some(rp) = &spec.read_preference {
        action = action.selection_criteria(SelectionCriteria::ReadPreference(rp.clone()));
    }
    action.batch().await
}
