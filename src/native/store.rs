//! The application's own token store (`tokenStore: { load, save }`), called from the
//! engine through a thread-safe function. The JS side wraps the user's methods so that
//! each call returns a Promise and records travel as BSON.

use futures_util::future::BoxFuture;
use mongodb::bson::Document;
use napi::bindgen_prelude::{Buffer, Promise};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::Status;
use napi_derive::napi;

use crate::engine::durable::store::{TokenStore, EPOCH_FIELD};
use crate::engine::options::as_f64;
use crate::engine::{EngineError, ErrorCode};

/// One call into the application's store.
#[napi(object)]
pub struct StoreRequest {
    /// "load", "save" or "fence".
    pub op: String,
    pub name: String,
    /// The record to save, as BSON.
    pub record: Option<Buffer>,
    /// A group member's epoch: `fence` raises the record's epoch to it; `save` writes only
    /// if the stored epoch is at most it. Both then resolve to BSON `{ ok: boolean }`.
    pub epoch: Option<f64>,
}

/// Weak: a store never keeps the process alive by itself.
pub type StoreFn =
    ThreadsafeFunction<StoreRequest, Promise<Option<Buffer>>, StoreRequest, Status, false, true>;

pub struct JsStore {
    call: StoreFn,
    /// The application's store has `fence()`.
    fencing: bool,
}

impl JsStore {
    pub fn new(call: StoreFn, fencing: bool) -> Self {
        JsStore { call, fencing }
    }

    /// A fenced call's answer: `{ ok: boolean }`.
    async fn fenced(&self, request: StoreRequest) -> Result<bool, EngineError> {
        let op = request.op.clone();
        let reply = self.request(request).await?;
        reply
            .and_then(|bytes| Document::from_reader(bytes.as_ref()).ok())
            .and_then(|d| d.get_bool("ok").ok())
            .ok_or_else(|| {
                EngineError::new(
                    ErrorCode::TokenStore,
                    format!("the custom token store's {op}() did not answer true or false"),
                )
            })
    }

    fn encode(record: &Document) -> Result<Buffer, EngineError> {
        let mut bytes = Vec::new();
        record.to_writer(&mut bytes).map_err(|e| {
            EngineError::new(
                ErrorCode::ClientError,
                format!("cannot encode a record: {e}"),
            )
        })?;
        Ok(bytes.into())
    }

    async fn request(&self, request: StoreRequest) -> Result<Option<Buffer>, EngineError> {
        let op = request.op.clone();
        let fail = |e: napi::Error| {
            // A promise that never settles may be garbage-collected before the engine's
            // deadline: napi then cancels the wait. Say what happened, not napi's words.
            let why = if e.reason.contains("canceled") {
                "it returned a promise that was dropped without settling".to_string()
            } else {
                e.reason
            };
            EngineError::resumable(
                ErrorCode::TokenStore,
                format!("the custom token store's {op}() failed: {why}"),
            )
        };
        let promise = self.call.call_async(request).await.map_err(&fail)?;
        promise.await.map_err(&fail)
    }
}

impl TokenStore for JsStore {
    fn load<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Document>, EngineError>> {
        Box::pin(async move {
            let reply = self
                .request(StoreRequest {
                    op: "load".into(),
                    name: name.to_string(),
                    record: None,
                    epoch: None,
                })
                .await?;
            reply
                .map(|bytes| {
                    Document::from_reader(bytes.as_ref()).map_err(|e| {
                        EngineError::new(
                            ErrorCode::TokenStore,
                            format!("the custom token store's load() returned an unreadable record: {e}"),
                        )
                    })
                })
                .transpose()
        })
    }

    fn save<'a>(
        &'a self,
        name: &'a str,
        record: Document,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            self.request(StoreRequest {
                op: "save".into(),
                name: name.to_string(),
                record: Some(Self::encode(&record)?),
                epoch: None,
            })
            .await
            .map(|_| ())
        })
    }

    fn describe(&self) -> String {
        "the custom token store".into()
    }

    fn fencing(&self) -> bool {
        self.fencing
    }

    fn fence<'a>(
        &'a self,
        name: &'a str,
        epoch: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, EngineError>> {
        Box::pin(async move {
            let request = StoreRequest {
                op: "fence".into(),
                name: name.to_string(),
                record: None,
                epoch: Some(epoch as f64),
            };
            if self.fenced(request).await? {
                return Ok(None);
            }
            // Refused: the stored record says by which epoch, if it can be read.
            let stored = self
                .load(name)
                .await?
                .and_then(|d| d.get(EPOCH_FIELD).and_then(as_f64))
                .map_or(epoch, |e| e.max(0.0) as u64);
            Ok(Some(stored.max(epoch)))
        })
    }

    fn save_fenced<'a>(
        &'a self,
        name: &'a str,
        mut record: Document,
        epoch: u64,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async move {
            record.insert(EPOCH_FIELD, epoch as i64);
            self.fenced(StoreRequest {
                op: "save".into(),
                name: name.to_string(),
                record: Some(Self::encode(&record)?),
                epoch: Some(epoch as f64),
            })
            .await
        })
    }
}
