//! `NativeReader`: the napi face of `engine::reader::Reader`, ONE class for the change
//! stream and the restartable cursor. Converts options and items; no policy here.

use std::sync::Arc;

use napi::bindgen_prelude::Buffer;
use napi::Result;
use napi_derive::napi;

use super::args::{custom_store, invalid_arg, spec_document};
use super::logging::{self, LoggerFn};
use super::store::StoreFn;
use super::types::{NativeErrorInfo, NativeHealth, NativeItem, NativeMarks, NativeOplogWindow};
use crate::engine::cursor::{CursorEngine, CursorSpec};
use crate::engine::stream::spec::WatchSpec;
use crate::engine::stream::ChangeStreamEngine;
use crate::engine::{EngineError, ErrorCode};

enum AnyReader {
    ChangeStream(ChangeStreamEngine),
    Cursor(CursorEngine),
}

/// Runs `$body` with `$r` bound to whichever reader this is (they share every method).
macro_rules! with_reader {
    ($reader:expr, $r:ident => $body:expr) => {
        match &*$reader {
            AnyReader::ChangeStream($r) => $body,
            AnyReader::Cursor($r) => $body,
        }
    };
}

#[napi]
pub struct NativeReader {
    reader: Arc<AnyReader>,
}

impl Drop for NativeReader {
    fn drop(&mut self) {
        logging::unregister(self.id());
    }
}

impl NativeReader {
    fn id(&self) -> u64 {
        with_reader!(self.reader, r => r.id())
    }
}

#[napi]
impl NativeReader {
    /// A change stream. `spec`: one BSON document with every option
    /// (docs/native-contract.md); `store`: the application's token store when
    /// `tokenStore.type` is "custom".
    #[napi(factory)]
    pub fn change_stream(spec: Buffer, store: Option<StoreFn>) -> Result<Self> {
        let doc = spec_document(&spec)?;
        let store = custom_store(store, &doc);
        let spec = WatchSpec::from_document(&doc).map_err(invalid_arg)?;
        let reader = ChangeStreamEngine::new(spec, store).map_err(invalid_arg)?;
        Ok(NativeReader {
            reader: Arc::new(AnyReader::ChangeStream(reader)),
        })
    }

    /// A restartable cursor; arguments as `changeStream`.
    #[napi(factory)]
    pub fn cursor(spec: Buffer, store: Option<StoreFn>) -> Result<Self> {
        let doc = spec_document(&spec)?;
        let store = custom_store(store, &doc);
        let spec = CursorSpec::from_document(&doc).map_err(invalid_arg)?;
        let reader = CursorEngine::new(spec, store).map_err(invalid_arg)?;
        Ok(NativeReader {
            reader: Arc::new(AnyReader::Cursor(reader)),
        })
    }

    /// The next item. Never two calls outstanding.
    #[napi]
    pub async fn next_batch(&self) -> Result<NativeItem> {
        Ok(with_reader!(self.reader, r => r.next().await).into())
    }

    /// The consumer processed every document handed out before batch `seq` and the first
    /// `n` of it (`n` = the batch's count: all of it, and for a change stream the position
    /// after it even with no event). Returns the new marks.
    #[napi]
    pub fn commit(&self, seq: f64, n: u32) -> Result<NativeMarks> {
        let marks = with_reader!(self.reader, r => r.commit(seq as u64, n as usize));
        marks.map(Into::into).map_err(invalid_arg)
    }

    /// The current marks (they move forward as positions are saved).
    #[napi]
    pub fn marks(&self) -> NativeMarks {
        with_reader!(self.reader, r => r.marks()).into()
    }

    /// Resolves once documents past the current `marks().limit` may be handed out, or the
    /// reader is closed; with the store's error once saving failed for good.
    #[napi]
    pub async fn wait_for_room(&self) -> Result<Option<NativeErrorInfo>> {
        let waited = with_reader!(self.reader, r => r.wait_for_room().await);
        Ok(waited.err().map(Into::into))
    }

    /// The checkpoint policy's `everyEvents` (null without a token store).
    #[napi(getter)]
    pub fn checkpoint_every(&self) -> Option<u32> {
        with_reader!(self.reader, r => r.checkpoint_every()).map(|n| n.min(u32::MAX as u64) as u32)
    }

    /// Committed documents whose position is not stored yet.
    #[napi]
    pub fn pending_checkpoint(&self) -> f64 {
        with_reader!(self.reader, r => r.pending_checkpoint()) as f64
    }

    /// A group member: how many more milliseconds it may hand out what it read (0: it does
    /// not hold the lease; drop what is buffered). `null`: not in a group. `seq`: the batch
    /// being handed out (a partitioned member may have dropped it).
    #[napi]
    pub fn lease_valid_ms(&self, seq: Option<f64>) -> Option<f64> {
        let seq = seq.filter(|s| s.is_finite() && *s >= 0.0).map(|s| s as u64);
        with_reader!(self.reader, r => r.lease_valid_for(seq)).map(|d| d.as_millis() as f64)
    }

    /// The application's event loop is alive: a group member renews its lease only while
    /// this keeps coming (call it a few times per lease).
    #[napi]
    pub fn heartbeat(&self) {
        with_reader!(self.reader, r => r.heartbeat());
    }

    /// The engine's view of the reader, synchronously (`health()` builds on it).
    #[napi]
    pub fn health(&self) -> NativeHealth {
        with_reader!(self.reader, r => r.health()).into()
    }

    /// Requests no further batches; what was received is still returned, then `end`
    /// ('stopped').
    #[napi]
    pub fn stop(&self) {
        with_reader!(self.reader, r => r.stop());
    }

    /// Resolves with the error when the last processed position could not be stored.
    #[napi]
    pub async fn close(&self) -> Result<Option<NativeErrorInfo>> {
        let closed = with_reader!(self.reader, r => r.close().await);
        logging::unregister(self.id());
        Ok(closed.err().map(Into::into))
    }

    /// Sends this reader's log events to `logger(record)` (weakly referenced: it never
    /// keeps the process alive).
    #[napi(ts_args_type = "logger: (record: LogRecord) => void")]
    pub fn set_logger(&self, logger: LoggerFn) {
        logging::register(self.id(), logger);
    }

    /// A change stream's oplog window and its position's headroom in it (`low` uses
    /// `lowFraction`); `error` says why it could not be read.
    #[napi]
    pub async fn oplog_window(&self, low_fraction: f64) -> Result<NativeOplogWindow> {
        let window = match &*self.reader {
            AnyReader::ChangeStream(r) => r.oplog_window().await,
            AnyReader::Cursor(_) => Err(EngineError::new(
                ErrorCode::InvalidOption,
                "oplogWindow() is for change streams; a cursor has no oplog position",
            )),
        };
        Ok(NativeOplogWindow::new(window, low_fraction))
    }

    /// The stable error codes (`NativeErrorInfo.code`), from the engine's one list.
    #[napi]
    pub fn error_codes() -> Vec<String> {
        ErrorCode::ALL
            .iter()
            .map(|c| c.as_str().to_string())
            .collect()
    }
}
