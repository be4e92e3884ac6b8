//! Durable positions: what a named reader stores (`position`), when it stores it
//! (`checkpoint`), and where (`store`). Knows nothing of how a reader reads.

pub mod checkpoint;
pub mod position;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{Bson, Document};

use crate::engine::errors::EngineError;
use crate::engine::options::{
    optional_bool, optional_string, optional_whole, prefix, reject_unknown, type_name,
};
use checkpoint::{CheckpointPolicy, Checkpointer};
use position::Owner;
use store::{open_store, StoreConfig, TokenStore};

/// A named reader whose position is kept in a token store.
#[derive(Debug, Clone, PartialEq)]
pub struct Durability {
    pub name: String,
    pub store: StoreConfig,
    pub checkpoint: CheckpointPolicy,
    /// Use a stored position even if it was written for another namespace or pipeline.
    pub allow_mismatch: bool,
}

impl Durability {
    /// The options that make a reader durable (`name` and its store and policy).
    pub const FIELDS: &'static [&'static str] =
        &["name", "tokenStore", "checkpoint", "allowPositionMismatch"];

    /// Parses the durability options of a reader's options document (`None`: not named).
    pub fn parse(doc: &Document) -> Result<Option<Self>, EngineError> {
        let name = optional_string(doc, "name")?;
        let store = match doc.get("tokenStore") {
            None | Some(Bson::Null) => None,
            Some(Bson::Document(d)) => Some(parse_store(d)?),
            Some(other) => {
                return Err(EngineError::invalid_option(
                    "tokenStore",
                    "an object ({ type: 'memory' | 'file' | 'mongodb' } or { load, save })",
                    type_name(other),
                ))
            }
        };
        let checkpoint = match doc.get("checkpoint") {
            None | Some(Bson::Null) => CheckpointPolicy::default(),
            Some(Bson::Document(d)) => parse_checkpoint(d)?,
            Some(other) => {
                return Err(EngineError::invalid_option(
                    "checkpoint",
                    "an object",
                    type_name(other),
                ))
            }
        };
        let allow_mismatch = optional_bool(doc, "allowPositionMismatch")?.unwrap_or(false);
        match (name, store) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(EngineError::invalid_option(
                "name",
                "a string naming the consumer when \"tokenStore\" is given",
                "nothing",
            )),
            (Some(name), store) => Ok(Some(Durability {
                name,
                store: store.unwrap_or(StoreConfig::Memory),
                checkpoint,
                allow_mismatch,
            })),
        }
    }

    /// The checkpointer of a reader owned by `owner`, over the configured store (`custom`:
    /// the application's own, for `tokenStore: { type: 'custom' }`).
    pub fn checkpointer(
        &self,
        owner: Owner,
        reader_uri: &str,
        custom: Option<Arc<dyn TokenStore>>,
    ) -> Result<Checkpointer, EngineError> {
        Ok(Checkpointer::new(
            owner,
            self.allow_mismatch,
            open_store(&self.store, reader_uri, custom)?,
            self.checkpoint.clone(),
        ))
    }
}

fn parse_store(d: &Document) -> Result<StoreConfig, EngineError> {
    let field = |n: &str| format!("tokenStore.{n}");
    let string = |n: &str| -> Result<String, EngineError> {
        optional_string(d, n)
            .map_err(|e| prefix(e, "tokenStore."))?
            .ok_or_else(|| EngineError::invalid_option(&field(n), "a non-empty string", "nothing"))
    };
    let kind = optional_string(d, "type").map_err(|e| prefix(e, "tokenStore."))?;
    // Each type's own options: any other key is a mistake (a typo would be ignored).
    let fields: &[&str] = match kind.as_deref() {
        Some("file") => &["type", "path"],
        Some("mongodb") => &["type", "uri", "db", "collection"],
        // The facade says whether the application's store has fence() (groups need it).
        Some("custom") => &["type", "fence"],
        _ => &["type"],
    };
    reject_unknown(d, &[fields], "tokenStore.")?;
    match kind.as_deref() {
        Some("memory") => Ok(StoreConfig::Memory),
        Some("file") => Ok(StoreConfig::File {
            path: string("path")?,
        }),
        Some("mongodb") => Ok(StoreConfig::MongoDb {
            uri: optional_string(d, "uri").map_err(|e| prefix(e, "tokenStore."))?,
            db: string("db")?,
            collection: string("collection")?,
        }),
        Some("custom") => Ok(StoreConfig::Custom),
        other => Err(EngineError::invalid_option(
            "tokenStore.type",
            "'memory', 'file' or 'mongodb'",
            &other.map_or("nothing".to_string(), |t| format!("'{t}'")),
        )),
    }
}

fn parse_checkpoint(d: &Document) -> Result<CheckpointPolicy, EngineError> {
    const FIELDS: &[&str] = &["everyEvents", "everyMs", "maxUnsavedEvents"];
    reject_unknown(d, &[FIELDS], "checkpoint.")?;
    let mut policy = CheckpointPolicy::default();
    let whole =
        |n: &str| optional_whole(d, n, u32::MAX as u64).map_err(|e| prefix(e, "checkpoint."));
    if let Some(n) = whole("everyEvents")? {
        policy.every_events = n.max(1);
    }
    if let Some(ms) = whole("everyMs")? {
        policy.every = Duration::from_millis(ms);
    }
    policy.max_unsaved_events = match whole("maxUnsavedEvents")? {
        Some(n) => n,
        None => policy.max_unsaved_events.max(policy.every_events * 10),
    };
    if policy.max_unsaved_events < policy.every_events {
        return Err(EngineError::invalid_option(
            "checkpoint.maxUnsavedEvents",
            "at least checkpoint.everyEvents",
            &policy.max_unsaved_events.to_string(),
        ));
    }
    Ok(policy)
}
