//! Positions in a MongoDB collection (this deployment or another): one document per
//! name, replaced whole (upsert), so a write is all-or-nothing.

use futures_util::future::BoxFuture;
use mongodb::bson::{doc, Document};
use mongodb::options::ReplaceOptions;

use super::{TokenStore, EPOCH_FIELD, WRITE_SEQ_FIELD};
use crate::engine::client_pool::SharedCollection;
use crate::engine::errors::{is_duplicate_key, EngineError, ErrorCode};

/// `name`'s record, if its epoch is below `epoch` or it has none. An upsert with this filter
/// fails with a duplicate key when the record holds `epoch` or a higher one: the fence.
fn below_epoch(name: &str, epoch: u64) -> Document {
    let epoch = epoch.min(i64::MAX as u64) as i64;
    doc! {"_id": name, "$or": [{EPOCH_FIELD: {"$lt": epoch}}, {EPOCH_FIELD: {"$exists": false}}]}
}

pub struct MongoStore {
    /// Held for the store's life: the shared client stays up while the store may write.
    records: SharedCollection,
}

/// `name`'s record if a fenced write of `epoch` numbered as in `record` may replace it: an
/// earlier epoch, or this epoch with a lower write number (or none yet), or no epoch at all.
fn newer_write(name: &str, epoch: u64, record: &Document) -> Document {
    let epoch = epoch.min(i64::MAX as u64) as i64;
    let mut same_epoch = vec![doc! {EPOCH_FIELD: epoch, WRITE_SEQ_FIELD: {"$exists": false}}];
    if let Ok(seq) = record.get_i64(WRITE_SEQ_FIELD) {
        same_epoch.push(doc! {EPOCH_FIELD: epoch, WRITE_SEQ_FIELD: {"$lt": seq}});
    } else {
        same_epoch.push(doc! {EPOCH_FIELD: epoch});
    }
    let mut or = vec![
        doc! {EPOCH_FIELD: {"$lt": epoch}},
        doc! {EPOCH_FIELD: {"$exists": false}},
    ];
    or.extend(same_epoch);
    doc! {"_id": name, "$or": or}
}

impl MongoStore {
    pub fn new(uri: String, db: String, collection: String) -> Self {
        MongoStore {
            records: SharedCollection::new(uri, db, collection),
        }
    }

    async fn collection(&self) -> Result<mongodb::Collection<Document>, EngineError> {
        self.records.get().await
    }

    fn error(&self, what: &str, e: &mongodb::error::Error) -> EngineError {
        let cause = EngineError::from_driver(e);
        EngineError {
            code: ErrorCode::TokenStore,
            message: format!("{what} {}: {}", self.describe(), cause.message),
            resumable: cause.resumable,
            ..cause
        }
    }
}

impl TokenStore for MongoStore {
    fn load<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Document>, EngineError>> {
        Box::pin(async move {
            let found = self
                .collection()
                .await?
                .find_one(doc! {"_id": name})
                .await
                .map_err(|e| self.error("cannot read", &e))?;
            Ok(found.map(|mut d| {
                d.remove("_id");
                d
            }))
        })
    }

    fn save<'a>(
        &'a self,
        name: &'a str,
        record: Document,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let mut stored = doc! {"_id": name};
            stored.extend(record);
            self.collection()
                .await?
                .replace_one(doc! {"_id": name}, stored)
                .with_options(ReplaceOptions::builder().upsert(true).build())
                .await
                .map_err(|e| self.error("cannot write", &e))?;
            Ok(())
        })
    }

    fn describe(&self) -> String {
        format!("mongodb {}", self.records.namespace())
    }

    fn fencing(&self) -> bool {
        true
    }

    fn fence<'a>(
        &'a self,
        name: &'a str,
        epoch: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, EngineError>> {
        Box::pin(async move {
            let collection = self.collection().await?;
            let stored_epoch = epoch.min(i64::MAX as u64) as i64;
            let fenced = collection
                // Strictly below: a tenure never shares its epoch with an earlier one (a lease
                // collection that was reset starts again at 1, and is lifted above the store).
                .update_one(
                    below_epoch(name, epoch),
                    doc! {"$set": {EPOCH_FIELD: stored_epoch}, "$unset": {WRITE_SEQ_FIELD: ""}},
                )
                .upsert(true)
                .await;
            match fenced {
                Ok(_) => Ok(None),
                Err(e) if is_duplicate_key(&e) => {
                    let found = collection
                        .find_one(doc! {"_id": name})
                        .await
                        .map_err(|e| self.error("cannot read", &e))?;
                    let stored = found
                        .as_ref()
                        .and_then(|d| d.get(EPOCH_FIELD))
                        .and_then(crate::engine::options::as_f64)
                        .map_or(epoch, |e| e.max(0.0) as u64);
                    Ok(Some(stored))
                }
                Err(e) => Err(self.error("cannot fence", &e)),
            }
        })
    }

    fn save_fenced<'a>(
        &'a self,
        name: &'a str,
        record: Document,
        epoch: u64,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async move {
            let mut stored = doc! {"_id": name};
            stored.extend(record);
            stored.insert(EPOCH_FIELD, epoch.min(i64::MAX as u64) as i64);
            let saved = self
                .collection()
                .await?
                .replace_one(newer_write(name, epoch, &stored), stored)
                .with_options(ReplaceOptions::builder().upsert(true).build())
                .await;
            match saved {
                Ok(_) => Ok(true),
                Err(e) if is_duplicate_key(&e) => Ok(false),
                Err(e) => Err(self.error("cannot write", &e)),
            }
        })
    }
}
