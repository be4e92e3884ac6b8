//! Token stores: where a named consumer's position is kept between processes.

mod file;
mod memory;
mod mongo;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use mongodb::bson::Document;

use crate::engine::durable::position::PositionRecord;
use crate::engine::errors::{EngineError, ErrorCode};

pub use file::FileStore;
pub use memory::MemoryStore;
pub use mongo::MongoStore;

/// A place to keep positions. Implementations may be remote and slow; callers retry.
pub trait TokenStore: Send + Sync {
    /// The record saved under `name`, if any.
    fn load<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Document>, EngineError>>;
    /// Replaces the record under `name`; must be all-or-nothing.
    fn save<'a>(
        &'a self,
        name: &'a str,
        record: Document,
    ) -> BoxFuture<'a, Result<(), EngineError>>;
    /// Where it stores, for messages ("file /path", "mongodb db.coll"); no credentials.
    fn describe(&self) -> String;

    /// Whether it can fence (a consumer group needs `fence` and `save_fenced`).
    fn fencing(&self) -> bool {
        false
    }

    /// Raises the epoch of `name`'s record to `epoch` (creating a record holding only the
    /// epoch if there is none), atomically, unless it holds `epoch` or a higher one. `None`:
    /// done; `Some(stored)`: refused, the record's epoch is `stored`.
    fn fence<'a>(
        &'a self,
        _name: &'a str,
        _epoch: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, EngineError>> {
        Box::pin(async move { Err(self.no_fencing()) })
    }

    /// Replaces `name`'s record (with `epoch` in it) only if the stored epoch is at most
    /// `epoch`, atomically. False: refused (a later holder fenced this one).
    fn save_fenced<'a>(
        &'a self,
        _name: &'a str,
        _record: Document,
        _epoch: u64,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async move { Err(self.no_fencing()) })
    }

    fn no_fencing(&self) -> EngineError {
        EngineError::new(
            ErrorCode::InvalidOption,
            format!("{} cannot fence writes", self.describe()),
        )
    }
}

/// The field of a stored record that holds the epoch of the group member that wrote it.
pub const EPOCH_FIELD: &str = "epoch";

/// The field numbering a group member's writes within its tenure (a fence clears it): a
/// write that lands late never replaces a newer one of the same tenure.
pub const WRITE_SEQ_FIELD: &str = "writeSeq";

/// How long one call into a store may take before it counts as failed (and is retried like
/// any failure): a store that never answers must not hang a start, the saves or a close.
pub const STORE_CALL_DEADLINE: Duration = Duration::from_secs(10);

/// Runs one call `op` into `store`, failing it after `deadline`.
pub async fn within<T>(
    deadline: Duration,
    store: &dyn TokenStore,
    op: &str,
    call: impl Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    match tokio::time::timeout(deadline, call).await {
        Ok(answer) => answer,
        Err(_) => Err(EngineError::resumable(
            ErrorCode::TokenStore,
            format!(
                "{}'s {op}() did not settle within {} ms",
                store.describe(),
                deadline.as_millis()
            ),
        )),
    }
}

/// Loads and parses `name`'s record.
pub async fn load_record(
    store: &dyn TokenStore,
    name: &str,
) -> Result<Option<PositionRecord>, EngineError> {
    let loaded = within(STORE_CALL_DEADLINE, store, "load", store.load(name)).await?;
    match loaded {
        None => Ok(None),
        // Fenced by a group member before any position was written.
        Some(doc) if !doc.contains_key("version") && doc.contains_key(EPOCH_FIELD) => Ok(None),
        Some(doc) => PositionRecord::from_document(&doc, &store.describe()).map(Some),
    }
}

/// The store a spec asks for (`tokenStore`).
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    Memory,
    File {
        path: String,
    },
    MongoDb {
        uri: Option<String>,
        db: String,
        collection: String,
    },
    /// The application's own `{ load, save }` (and `fence`, for groups), supplied by the
    /// native layer.
    Custom,
}

/// Builds the configured store; `custom` is the application's store when configured so.
pub fn open_store(
    config: &StoreConfig,
    stream_uri: &str,
    custom: Option<Arc<dyn TokenStore>>,
) -> Result<Arc<dyn TokenStore>, EngineError> {
    Ok(match config {
        StoreConfig::Memory => Arc::new(MemoryStore),
        StoreConfig::File { path } => Arc::new(FileStore::new(path.into())),
        StoreConfig::MongoDb {
            uri,
            db,
            collection,
        } => Arc::new(MongoStore::new(
            uri.clone().unwrap_or_else(|| stream_uri.to_string()),
            db.clone(),
            collection.clone(),
        )),
        StoreConfig::Custom => custom.ok_or_else(|| {
            EngineError::new(
                ErrorCode::InvalidOption,
                "option \"tokenStore\" is a custom store but no load/save functions were given",
            )
        })?,
    })
}
