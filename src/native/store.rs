//! The application's own token store (`tokenStore: { load, save }`), called from the
//! engine through a thread-safe function. The JS side wraps the user's methods so that
//! each call returns a Promise and records travel as BSON.

use futures_util::future::BoxFuture;
use mongodb::bson::Document;
use napi::bindgen_prelude::{Buffer, Promise};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::Status;
use napi_derive::napi;

use crate::engine::durable::store::TokenStore;
use crate::engine::{EngineError, ErrorCode};

/// One call into the application's store.
#[napi(object)]
pub struct StoreRequest {
    /// "load" or "save".
    pub op: String,
    pub name: String,
    /// The record to save, as BSON.
    pub record: Option<Buffer>,
}

/// Weak: a store never keeps the process alive by itself.
pub type StoreFn =
    ThreadsafeFunction<StoreRequest, Promise<Option<Buffer>>, StoreRequest, Status, false, true>;

pub struct JsStore {
    call: StoreFn,
}

impl JsStore {
    pub fn new(call: StoreFn) -> Self {
        JsStore { call }
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
            let mut bytes = Vec::new();
            record.to_writer(&mut bytes).map_err(|e| {
                EngineError::new(
                    ErrorCode::ClientError,
                    format!("cannot encode a record: {e}"),
                )
            })?;
            self.request(StoreRequest {
                op: "save".into(),
                name: name.to_string(),
                record: Some(bytes.into()),
            })
            .await
            .map(|_| ())
        })
    }

    fn describe(&self) -> String {
        "the custom token store".into()
    }
}
