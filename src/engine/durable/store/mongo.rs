//! Positions in a MongoDB collection (this deployment or another): one document per
//! name, replaced whole (upsert), so a write is all-or-nothing.

use futures_util::future::BoxFuture;
use mongodb::bson::{doc, Document};
use mongodb::options::ReplaceOptions;

use super::TokenStore;
use crate::engine::client_pool::{client_for, ClientLease};
use crate::engine::errors::{EngineError, ErrorCode};

pub struct MongoStore {
    uri: String,
    db: String,
    collection: String,
    /// Held for the store's life: the shared client stays up while the store may write.
    client: tokio::sync::OnceCell<ClientLease>,
}

impl MongoStore {
    pub fn new(uri: String, db: String, collection: String) -> Self {
        MongoStore {
            uri,
            db,
            collection,
            client: tokio::sync::OnceCell::new(),
        }
    }

    async fn collection(&self) -> Result<mongodb::Collection<Document>, EngineError> {
        let client = self
            .client
            .get_or_try_init(|| client_for(&self.uri))
            .await?;
        Ok(client.database(&self.db).collection(&self.collection))
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
        format!("mongodb {}.{}", self.db, self.collection)
    }
}
