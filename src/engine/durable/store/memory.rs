//! The in-process store: positions survive a stream, not the process.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use mongodb::bson::Document;
use once_cell::sync::Lazy;

use super::TokenStore;
use crate::engine::errors::EngineError;

static POSITIONS: Lazy<Mutex<HashMap<String, Document>>> = Lazy::new(Default::default);

pub struct MemoryStore;

impl TokenStore for MemoryStore {
    fn load<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Document>, EngineError>> {
        let record = POSITIONS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        Box::pin(async move { Ok(record) })
    }

    fn save<'a>(
        &'a self,
        name: &'a str,
        record: Document,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        POSITIONS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), record);
        Box::pin(async { Ok(()) })
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
