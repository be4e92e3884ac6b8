//! The plain-data shapes the native layer hands to JS (see docs/native-contract.md), each
//! converted from its engine type in one place.

use std::time::{SystemTime, UNIX_EPOCH};

use napi::bindgen_prelude::Buffer;
use napi_derive::napi;

use crate::engine::group::GroupHealth;
use crate::engine::reader::{Batch, Health, Marks, ReaderItem};
use crate::engine::stream::oplog::OplogWindow;
use crate::engine::EngineError;

/// An engine error; `code` is one of `errorCodes()`.
#[napi(object)]
pub struct NativeErrorInfo {
    pub code: String,
    pub message: String,
    pub server_code: Option<i32>,
    pub code_name: Option<String>,
    pub labels: Vec<String>,
}

impl From<EngineError> for NativeErrorInfo {
    fn from(e: EngineError) -> Self {
        NativeErrorInfo {
            code: e.code.as_str().to_string(),
            message: e.message,
            server_code: e.server_code,
            code_name: e.code_name,
            labels: e.labels,
        }
    }
}

/// A cluster time.
#[napi(object)]
pub struct NativeTimestamp {
    pub t: u32,
    pub i: u32,
}

impl From<mongodb::bson::Timestamp> for NativeTimestamp {
    fn from(ts: mongodb::bson::Timestamp) -> Self {
        NativeTimestamp {
            t: ts.time,
            i: ts.increment,
        }
    }
}

/// One item of `nextBatch()`. Document numbers (`ordinal`, marks) are exact up to 2^53.
#[napi(
    discriminant = "kind",
    discriminant_case = "camelCase",
    object_from_js = false
)]
pub enum NativeItem {
    /// `count` BSON documents back to back in `events`. `seq` names the batch in
    /// `commit()`; its first document is number `ordinal` (see `NativeMarks`). A change
    /// stream's `endToken` is the resume token after the whole batch (the token after
    /// event i < count-1 is its `_id`); `count` may then be 0: the position moved with no
    /// event.
    Batch {
        seq: f64,
        ordinal: f64,
        events: Buffer,
        count: u32,
        end_token: Option<Buffer>,
        /// A partitioned group member's: each event's partition.
        partitions: Option<Vec<u32>>,
    },
    /// A resumable failure: the engine waits `delayMs`, then re-opens (attempt ≥ 1).
    Reconnecting {
        attempt: u32,
        delay_ms: f64,
        error: NativeErrorInfo,
    },
    /// The first real progress after an outage.
    Resumed { attempts: u32, downtime_ms: f64 },
    /// No progress for `silentMs`; a re-open follows.
    Stalled { silent_ms: f64 },
    /// A change stream's position fell off the oplog: events in (from, to] may be missing;
    /// `endToken` is the lost position.
    HistoryLost {
        from: Option<NativeTimestamp>,
        to: Option<NativeTimestamp>,
        end_token: Option<Buffer>,
    },
    /// A tailable cursor's documents after its last key were overwritten unread.
    PositionLost { error: NativeErrorInfo },
    /// A group member took the lease at `epoch` (`sinceMs`: epoch milliseconds): it
    /// reads from the stored position now.
    LeaseAcquired {
        epoch: f64,
        member: String,
        since_ms: f64,
        /// A partitioned group: the partition whose lease it is.
        partition: Option<u32>,
    },
    /// A group member stopped holding the lease ('takenOver' | 'fenced' | 'renewFailed' |
    /// 'unresponsive' | 'rebalanced'): nothing read under it is handed out any more.
    LeaseLost {
        epoch: f64,
        reason: String,
        partition: Option<u32>,
    },
    /// Fatal: the reader is closed; later calls resolve `end`.
    Error { error: NativeErrorInfo },
    /// The reader ended: 'closed' | 'invalidate' | 'exhausted' | 'stopped'.
    End { reason: String },
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_millis() as f64
}

impl From<Batch> for NativeItem {
    fn from(b: Batch) -> Self {
        NativeItem::Batch {
            seq: b.seq as f64,
            ordinal: b.ordinal as f64,
            events: b.docs.into(),
            count: b.count as u32,
            end_token: b.end_token.map(|t| t.into_bytes().into()),
            partitions: b.partitions,
        }
    }
}

impl From<ReaderItem> for NativeItem {
    fn from(item: ReaderItem) -> Self {
        match item {
            ReaderItem::Batch(b) => b.into(),
            ReaderItem::Reconnecting {
                attempt,
                delay,
                error,
            } => NativeItem::Reconnecting {
                attempt,
                delay_ms: ms(delay),
                error: error.into(),
            },
            ReaderItem::Resumed { attempts, downtime } => NativeItem::Resumed {
                attempts,
                downtime_ms: ms(downtime),
            },
            ReaderItem::Stalled { silent } => NativeItem::Stalled {
                silent_ms: ms(silent),
            },
            ReaderItem::HistoryLost { from, to, token } => NativeItem::HistoryLost {
                from: from.map(Into::into),
                to: to.map(Into::into),
                end_token: token.map(|t| t.into_bytes().into()),
            },
            ReaderItem::PositionLost { error } => NativeItem::PositionLost {
                error: error.into(),
            },
            ReaderItem::LeaseAcquired {
                epoch,
                member,
                since,
                partition,
            } => NativeItem::LeaseAcquired {
                epoch: epoch as f64,
                member,
                since_ms: epoch_ms(since),
                partition,
            },
            ReaderItem::LeaseLost {
                epoch,
                reason,
                partition,
            } => NativeItem::LeaseLost {
                epoch: epoch as f64,
                reason: reason.as_str().to_string(),
                partition,
            },
            ReaderItem::Failed(error) => NativeItem::Error {
                error: error.into(),
            },
            ReaderItem::Ended(reason) => NativeItem::End {
                reason: reason.as_str().to_string(),
            },
        }
    }
}

/// Where the consumer stands against the checkpoint policy, by document number: hand out
/// only documents numbered below `limit` (more would leave too many unsaved), and commit
/// once the documents below `reportAt` are processed. Both only move forward; without a
/// token store both are huge.
#[napi(object)]
pub struct NativeMarks {
    pub limit: f64,
    pub report_at: f64,
}

impl From<Marks> for NativeMarks {
    fn from(m: Marks) -> Self {
        NativeMarks {
            limit: m.limit as f64,
            report_at: m.report_at as f64,
        }
    }
}

/// The engine's part of `health()`; times are epoch milliseconds.
#[napi(object)]
pub struct NativeHealth {
    pub state: String,
    pub last_token_at: Option<f64>,
    pub last_reply_at: Option<f64>,
    pub lag_ms: Option<f64>,
    /// Cluster time of the position, seconds part.
    pub position_time_seconds: Option<u32>,
    pub reconnects: f64,
    pub current_backoff_ms: Option<f64>,
    pub last_error: Option<NativeErrorInfo>,
    pub events_read: f64,
    /// A consumer group member's role and lease.
    pub group: Option<NativeGroupHealth>,
    pub batches_read: f64,
    /// Outages begun, and the time spent down in all of them (the current one included).
    pub outages: f64,
    pub downtime_ms: f64,
    /// How long the outage under way has lasted; null when not reconnecting.
    pub current_outage_ms: Option<f64>,
    pub stalls: f64,
    /// Positions written to the token store, failed tries, when one was last written.
    pub checkpoints_saved: f64,
    pub checkpoint_failures: f64,
    pub last_checkpoint_at: Option<f64>,
}

/// A group member, for `health().group`; times are epoch milliseconds.
#[napi(object)]
pub struct NativeGroupHealth {
    pub member: String,
    /// 'holder' | 'standby' | 'stopped'.
    pub role: String,
    pub holder: Option<String>,
    pub epoch: Option<f64>,
    pub since_ms: Option<f64>,
    pub lease_ms: f64,
    pub takeovers: f64,
    /// A partitioned group: the partitions this member holds (ascending), how many there
    /// are, and how many members it counts alive.
    pub partitions: Option<Vec<u32>>,
    pub partition_count: Option<u32>,
    pub members_alive: Option<u32>,
    /// A partitioned group: where its events are split, 'server' | 'client' (null until the
    /// stream first opened).
    pub split: Option<String>,
}

impl From<GroupHealth> for NativeGroupHealth {
    fn from(g: GroupHealth) -> Self {
        NativeGroupHealth {
            member: g.member,
            role: g.role.as_str().to_string(),
            holder: g.holder,
            epoch: g.epoch.map(|e| e as f64),
            since_ms: g.since.map(epoch_ms),
            lease_ms: ms(g.lease),
            takeovers: g.takeovers as f64,
            partitions: g.partitions,
            partition_count: g.partition_count,
            members_alive: g.members_alive,
            split: g.split.map(str::to_string),
        }
    }
}

fn epoch_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as f64)
        .unwrap_or(0.0)
}

impl From<Health> for NativeHealth {
    fn from(h: Health) -> Self {
        NativeHealth {
            state: h.state.as_str().to_string(),
            last_token_at: h.last_token_at.map(epoch_ms),
            last_reply_at: h.last_reply_at.map(epoch_ms),
            lag_ms: h.lag(SystemTime::now()).map(ms),
            position_time_seconds: h.position_time.map(|t| t.time),
            reconnects: h.reconnects as f64,
            current_backoff_ms: h.current_backoff.map(ms),
            last_error: h.last_error.map(Into::into),
            events_read: h.events_read as f64,
            group: h.group.map(Into::into),
            batches_read: h.batches_read as f64,
            outages: h.outages as f64,
            downtime_ms: ms(h.downtime),
            current_outage_ms: h.current_outage.map(ms),
            stalls: h.stalls as f64,
            checkpoints_saved: h.checkpoints_saved as f64,
            checkpoint_failures: h.checkpoint_failures as f64,
            last_checkpoint_at: h.last_checkpoint_at.map(epoch_ms),
        }
    }
}

/// `oplogWindow()`: times are cluster-time seconds; `reason` says why it is unknown.
#[napi(object)]
pub struct NativeOplogWindow {
    pub available: bool,
    pub oldest_seconds: Option<u32>,
    pub newest_seconds: Option<u32>,
    pub position_seconds: Option<u32>,
    pub window_ms: Option<f64>,
    pub headroom_ms: Option<f64>,
    pub lost: Option<bool>,
    pub low: Option<bool>,
    pub reason: Option<String>,
    /// The window could not be read (the facade rejects with it).
    pub error: Option<NativeErrorInfo>,
}

impl NativeOplogWindow {
    pub(crate) fn new(read: Result<OplogWindow, EngineError>, low_fraction: f64) -> Self {
        let w = match read {
            Ok(w) => w,
            Err(e) => {
                return NativeOplogWindow {
                    error: Some(e.into()),
                    ..Self::new(
                        Ok(OplogWindow::Unknown {
                            reason: String::new(),
                        }),
                        low_fraction,
                    )
                }
            }
        };
        let to_ms = |s: Option<i64>| s.map(|s| (s * 1000) as f64);
        let mut out = NativeOplogWindow {
            available: false,
            oldest_seconds: None,
            newest_seconds: None,
            position_seconds: None,
            window_ms: to_ms(w.window_secs()),
            headroom_ms: to_ms(w.headroom_secs()),
            lost: w.lost(),
            low: w.is_low(low_fraction),
            reason: None,
            error: None,
        };
        match w {
            OplogWindow::Known {
                oldest,
                newest,
                position,
            } => {
                out.available = true;
                out.oldest_seconds = Some(oldest.time);
                out.newest_seconds = Some(newest.time);
                out.position_seconds = position.map(|p| p.time);
                if position.is_none() {
                    out.reason = Some("the stream's position has no known cluster time yet".into());
                }
            }
            OplogWindow::Unknown { reason } => out.reason = Some(reason),
        }
        out
    }
}
