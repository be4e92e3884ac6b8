use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use napi::bindgen_prelude::Buffer;
use napi::{Error, Result, Status};
use napi_derive::napi;

use super::args::{custom_store, invalid_arg, spec_document};
use super::logging::{self, LoggerFn};
use super::store::StoreFn;
use crate::engine::{
    ChangeStreamEngine, EndReason, EngineError, Health, OplogWindow, StreamItem, WatchSpec,
};

/// `NativeErrorInfo` of docs/native-contract.md.
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

/// One item of `nextBatch()`; which fields are set depends on `kind`.
#[napi(object)]
pub struct NativeItem {
    pub kind: String,
    pub events: Option<Buffer>,
    pub count: Option<u32>,
    pub end_token: Option<Buffer>,
    pub attempt: Option<u32>,
    pub delay_ms: Option<f64>,
    pub attempts: Option<u32>,
    pub downtime_ms: Option<f64>,
    pub error: Option<NativeErrorInfo>,
    pub reason: Option<String>,
    pub silent_ms: Option<f64>,
    /// historyLost: the interval (cluster times as `{t, i}`) whose events may be missing.
    pub from: Option<NativeTimestamp>,
    pub to: Option<NativeTimestamp>,
}

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
}

fn oplog_window(w: OplogWindow, low_fraction: f64) -> NativeOplogWindow {
    let ms = |s: Option<i64>| s.map(|s| (s * 1000) as f64);
    let mut out = NativeOplogWindow {
        available: false,
        oldest_seconds: None,
        newest_seconds: None,
        position_seconds: None,
        window_ms: ms(w.window_secs()),
        headroom_ms: ms(w.headroom_secs()),
        lost: w.lost(),
        low: w.is_low(low_fraction),
        reason: None,
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
            lag_ms: h.lag(SystemTime::now()).map(|d| d.as_millis() as f64),
            position_time_seconds: h.position_time.map(|t| t.time),
            reconnects: h.reconnects as f64,
            current_backoff_ms: h.current_backoff.map(|d| d.as_millis() as f64),
            last_error: h.last_error.map(Into::into),
            events_read: h.events_read as f64,
        }
    }
}

impl NativeItem {
    pub(crate) fn of(kind: &str) -> Self {
        NativeItem {
            kind: kind.to_string(),
            events: None,
            count: None,
            end_token: None,
            attempt: None,
            delay_ms: None,
            attempts: None,
            downtime_ms: None,
            error: None,
            reason: None,
            silent_ms: None,
            from: None,
            to: None,
        }
    }
}

impl From<StreamItem> for NativeItem {
    fn from(item: StreamItem) -> Self {
        match item {
            StreamItem::Batch(b) => NativeItem {
                events: Some(b.events.into()),
                count: Some(b.count as u32),
                end_token: b.end_token.map(|t| t.into_bytes().into()),
                ..NativeItem::of("batch")
            },
            StreamItem::Reconnecting {
                attempt,
                delay,
                error,
            } => NativeItem {
                attempt: Some(attempt),
                delay_ms: Some(delay.as_millis() as f64),
                error: Some(error.into()),
                ..NativeItem::of("reconnecting")
            },
            StreamItem::Resumed { attempts, downtime } => NativeItem {
                attempts: Some(attempts),
                downtime_ms: Some(downtime.as_millis() as f64),
                ..NativeItem::of("resumed")
            },
            StreamItem::Stalled { silent } => NativeItem {
                silent_ms: Some(silent.as_millis() as f64),
                ..NativeItem::of("stalled")
            },
            StreamItem::HistoryLost { from, to, token } => NativeItem {
                from: from.map(Into::into),
                to: to.map(Into::into),
                // The lost position.
                end_token: token.map(|t| t.into_bytes().into()),
                ..NativeItem::of("historyLost")
            },
            StreamItem::Failed(error) => NativeItem {
                error: Some(error.into()),
                ..NativeItem::of("error")
            },
            StreamItem::Ended(reason) => NativeItem {
                reason: Some(
                    match reason {
                        EndReason::Closed => "closed",
                        EndReason::Invalidated => "invalidate",
                    }
                    .to_string(),
                ),
                ..NativeItem::of("end")
            },
        }
    }
}

#[napi]
pub struct NativeChangeStream {
    engine: Arc<ChangeStreamEngine>,
}

impl Drop for NativeChangeStream {
    fn drop(&mut self) {
        logging::unregister(self.engine.id());
    }
}

#[napi]
impl NativeChangeStream {
    /// `spec`: one BSON document with every option (docs/native-contract.md); `store`: the
    /// application's token store when `tokenStore.type` is "custom".
    #[napi(constructor)]
    pub fn new(spec: Buffer, store: Option<StoreFn>) -> Result<Self> {
        let spec = WatchSpec::from_document(&spec_document(&spec)?).map_err(invalid_arg)?;
        let engine = ChangeStreamEngine::new(spec, custom_store(store)).map_err(invalid_arg)?;
        Ok(NativeChangeStream {
            engine: Arc::new(engine),
        })
    }

    #[napi]
    pub async fn next_batch(&self) -> Result<NativeItem> {
        Ok(self.engine.next().await.into())
    }

    /// Resolves with the error when the last processed position could not be stored.
    #[napi]
    pub async fn close(&self) -> Result<Option<NativeErrorInfo>> {
        let closed = self.engine.close().await;
        logging::unregister(self.engine.id());
        Ok(closed.err().map(Into::into))
    }

    /// How many more processed events the consumer may take before
    /// `checkpoint.maxUnsavedEvents` are unsaved (a huge number without a token store). It
    /// counts only what `commit()` reported: the facade subtracts what it has not reported.
    #[napi]
    pub fn room(&self) -> f64 {
        self.engine.room() as f64
    }

    /// Resolves once `room()` is not 0, or the stream is closed.
    #[napi]
    pub async fn wait_for_room(&self) -> Result<()> {
        self.engine.wait_for_room().await;
        Ok(())
    }

    /// The consumer processed `events` more events (default 1), the last of them `event`;
    /// `end_token` when it ended its batch. Without an event: the position advanced to
    /// `end_token` on a quiet stream.
    #[napi]
    pub fn commit(
        &self,
        event: Option<Buffer>,
        end_token: Option<Buffer>,
        events: Option<u32>,
    ) -> Result<()> {
        let committed = match (&event, &end_token) {
            (Some(e), end) => self.engine.commit_event(
                e.as_ref(),
                end.as_ref().map(|b| b.as_ref()),
                events.unwrap_or(1) as u64,
            ),
            (None, Some(token)) => self.engine.commit_token(token.as_ref()),
            (None, None) => Ok(()),
        };
        committed.map_err(invalid_arg)
    }

    /// The checkpoint policy's `everyEvents` (null without a token store): committing at
    /// least this often keeps the stored position as fresh as the policy asks.
    #[napi(getter)]
    pub fn checkpoint_every(&self) -> Option<u32> {
        self.engine
            .checkpoint_policy()
            .map(|p| p.every_events.min(u32::MAX as u64) as u32)
    }

    /// Processed events whose position is not stored yet.
    #[napi]
    pub fn pending_checkpoint(&self) -> f64 {
        self.engine.pending_checkpoint() as f64
    }

    /// Sends this stream's log events to `logger(record)` (weakly referenced: it never
    /// keeps the process alive).
    #[napi(ts_args_type = "logger: (record: LogRecord) => void")]
    pub fn set_logger(&self, logger: LoggerFn) {
        logging::register(self.engine.id(), logger);
    }

    /// The oplog window and the position's headroom in it; `low` uses `lowFraction`.
    #[napi]
    pub async fn oplog_window(&self, low_fraction: f64) -> Result<NativeOplogWindow> {
        match self.engine.oplog_window().await {
            Ok(w) => Ok(oplog_window(w, low_fraction)),
            Err(e) => Err(Error::new(Status::GenericFailure, e.message)),
        }
    }

    /// The engine's view of the stream, synchronously (`health()` builds on it).
    #[napi]
    pub fn health(&self) -> NativeHealth {
        self.engine.health().into()
    }
}
