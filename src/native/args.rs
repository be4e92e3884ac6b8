//! Constructor arguments shared by the native classes: the BSON spec, the application's
//! store, and engine errors as `InvalidArg`.

use std::sync::Arc;

use mongodb::bson::Document;
use napi::bindgen_prelude::Buffer;
use napi::{Error, Result, Status};

use super::store::{JsStore, StoreFn};
use crate::engine::durable::store::TokenStore;
use crate::engine::EngineError;

/// The options document the facade serialized.
pub(crate) fn spec_document(spec: &Buffer) -> Result<Document> {
    Document::from_reader(spec.as_ref()).map_err(|e| {
        Error::new(
            Status::InvalidArg,
            format!("the options could not be read as BSON: {e}"),
        )
    })
}

/// The application's `{ load, save }` (and `fence`: `tokenStore.fence` is true), for
/// `tokenStore: { type: 'custom' }`.
pub(crate) fn custom_store(store: Option<StoreFn>, spec: &Document) -> Option<Arc<dyn TokenStore>> {
    let fencing = spec
        .get_document("tokenStore")
        .ok()
        .and_then(|d| d.get_bool("fence").ok())
        .unwrap_or(false);
    store.map(|s| Arc::new(JsStore::new(s, fencing)) as Arc<dyn TokenStore>)
}

/// A bad option or value: the message names it.
pub(crate) fn invalid_arg(e: EngineError) -> Error {
    Error::new(Status::InvalidArg, e.message)
}
