//! `NativeCursor`: the napi face of `engine::cursor::CursorEngine`. Converts the spec and
//! the items; no policy here. Items reuse the stream's `NativeItem` shape.

use std::sync::Arc;

use napi::bindgen_prelude::Buffer;
use napi::Result;
use napi_derive::napi;

use super::args::{custom_store, invalid_arg, spec_document};
use super::logging::{self, LoggerFn};
use super::store::StoreFn;
use super::stream::{NativeErrorInfo, NativeHealth, NativeItem};
use crate::engine::cursor::{CursorEngine, CursorItem, CursorSpec};

impl From<CursorItem> for NativeItem {
    fn from(i: CursorItem) -> Self {
        match i {
            CursorItem::Batch { docs, count } => NativeItem {
                events: Some(docs.into()),
                count: Some(count as u32),
                ..NativeItem::of("batch")
            },
            CursorItem::Reconnecting {
                attempt,
                delay,
                error,
            } => NativeItem {
                attempt: Some(attempt),
                delay_ms: Some(delay.as_millis() as f64),
                error: Some(error.into()),
                ..NativeItem::of("reconnecting")
            },
            CursorItem::Resumed { attempts, downtime } => NativeItem {
                attempts: Some(attempts),
                downtime_ms: Some(downtime.as_millis() as f64),
                ..NativeItem::of("resumed")
            },
            CursorItem::PositionLost { error } => NativeItem {
                error: Some(error.into()),
                ..NativeItem::of("positionLost")
            },
            CursorItem::Stalled { silent } => NativeItem {
                silent_ms: Some(silent.as_millis() as f64),
                ..NativeItem::of("stalled")
            },
            CursorItem::Failed(error) => NativeItem {
                error: Some(error.into()),
                ..NativeItem::of("error")
            },
            CursorItem::Ended(end) => NativeItem {
                reason: Some(end.as_str().to_string()),
                ..NativeItem::of("end")
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
    /// `spec`: one BSON document with every option (docs/native-contract.md); `store`: the
    /// application's `{ load, save }` for `tokenStore: { type: 'custom' }`.
    #[napi(constructor)]
    pub fn new(spec: Buffer, store: Option<StoreFn>) -> Result<Self> {
        let spec = CursorSpec::from_document(&spec_document(&spec)?).map_err(invalid_arg)?;
        let engine = CursorEngine::new(spec, custom_store(store)).map_err(invalid_arg)?;
        Ok(NativeCursor {
            engine: Arc::new(engine),
        })
    }

    /// The consumer processed `documents` more documents (default 1), the last of them
    /// `document`: its key is the position to store.
    #[napi]
    pub fn commit(&self, document: Buffer, documents: Option<u32>) -> Result<()> {
        self.engine
            .commit_document(document.as_ref(), documents.unwrap_or(1) as u64)
            .map_err(invalid_arg)
    }

    /// The checkpoint policy's `everyEvents` (null without a token store).
    #[napi(getter)]
    pub fn checkpoint_every(&self) -> Option<u32> {
        self.engine
            .checkpoint_policy()
            .map(|p| p.every_events.min(u32::MAX as u64) as u32)
    }

    /// How many more processed documents the consumer may take before
    /// `checkpoint.maxUnsavedEvents` are unsaved (a huge number without a token store). It
    /// counts only what `commit()` reported: the facade subtracts what it has not reported.
    #[napi]
    pub fn room(&self) -> f64 {
        self.engine.room() as f64
    }

    /// Resolves once `room()` is not 0, or the cursor is closed.
    #[napi]
    pub async fn wait_for_room(&self) -> Result<()> {
        self.engine.wait_for_room().await;
        Ok(())
    }

    /// Processed documents whose position is not stored yet.
    #[napi]
    pub fn pending_checkpoint(&self) -> f64 {
        self.engine.pending_checkpoint() as f64
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

    /// Resolves with the error when the last processed position could not be stored.
    #[napi]
    pub async fn close(&self) -> Result<Option<NativeErrorInfo>> {
        let closed = self.engine.close().await;
        logging::unregister(self.engine.id());
        Ok(closed.err().map(Into::into))
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
