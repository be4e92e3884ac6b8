//! `NativeCursor`: the napi face of `engine::cursor::CursorEngine`. Converts the spec and
//! the items; no policy here. Items reuse the stream's `NativeItem` shape.

use std::sync::Arc;

use mongodb::bson::Document;
use napi::bindgen_prelude::Buffer;
use napi::{Error, Result, Status};
use napi_derive::napi;

use super::logging::{self, LoggerFn};
use super::stream::{NativeHealth, NativeItem};
use crate::engine::cursor::{CursorEngine, CursorItem, CursorSpec};

fn item(kind: &str) -> NativeItem {
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

impl From<CursorItem> for NativeItem {
    fn from(i: CursorItem) -> Self {
        match i {
            CursorItem::Batch { docs, count } => NativeItem {
                events: Some(docs.into()),
                count: Some(count as u32),
                ..item("batch")
            },
            CursorItem::Reconnecting {
                attempt,
                delay,
                error,
            } => NativeItem {
                attempt: Some(attempt),
                delay_ms: Some(delay.as_millis() as f64),
                error: Some(error.into()),
                ..item("reconnecting")
            },
            CursorItem::Resumed { attempts, downtime } => NativeItem {
                attempts: Some(attempts),
                downtime_ms: Some(downtime.as_millis() as f64),
                ..item("resumed")
            },
            CursorItem::PositionLost { error } => NativeItem {
                error: Some(error.into()),
                ..item("positionLost")
            },
            CursorItem::Failed(error) => NativeItem {
                error: Some(error.into()),
                ..item("error")
            },
            CursorItem::Ended(end) => NativeItem {
                reason: Some(end.as_str().to_string()),
                ..item("end")
            },
        }
    }
}

#[napi]
pub struct NativeCursor {
    engine: Arc<CursorEngine>,
}

impl Drop for NativeCursor {
    fn drop(&mut self) {
        logging::unregister(self.engine.id());
    }
}

#[napi]
impl NativeCursor {
    /// `spec`: one BSON document with every option (docs/native-contract.md).
    #[napi(constructor)]
    pub fn new(spec: Buffer) -> Result<Self> {
        let doc = Document::from_reader(spec.as_ref()).map_err(|e| {
            Error::new(
                Status::InvalidArg,
                format!("the options could not be read as BSON: {e}"),
            )
        })?;
        let spec = CursorSpec::from_document(&doc)
            .map_err(|e| Error::new(Status::InvalidArg, e.message))?;
        Ok(NativeCursor {
            engine: Arc::new(CursorEngine::new(spec)),
        })
    }

    #[napi]
    pub async fn next_batch(&self) -> Result<NativeItem> {
        Ok(self.engine.next().await.into())
    }

    /// Requests no further batches; what was received is still returned, then `end`.
    #[napi]
    pub fn stop(&self) {
        self.engine.stop();
    }

    #[napi]
    pub async fn close(&self) -> Result<()> {
        self.engine.close().await;
        logging::unregister(self.engine.id());
        Ok(())
    }

    #[napi(ts_args_type = "logger: (record: LogRecord) => void")]
    pub fn set_logger(&self, logger: LoggerFn) {
        logging::register(self.engine.id(), logger);
    }

    #[napi]
    pub fn health(&self) -> NativeHealth {
        self.engine.health().into()
    }
}
