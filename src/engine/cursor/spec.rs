//! The immutable arguments of a restartable read, parsed from one BSON document, and the
//! ONE function that builds its `find` command from them and the last key seen.

use std::time::Duration;

use mongodb::bson::{doc, Bson, Document, RawBsonRef, RawDocument};

use crate::engine::durable::position::ReaderKind;
use crate::engine::errors::EngineError;
use crate::engine::options::{
    optional_bool, optional_document, optional_string, optional_whole, required_string,
};
use crate::engine::reader::options::ReaderOptions;
use crate::engine::reader::source::ReaderSpec;

/// What to do when a tailable cursor's position was overwritten (136 CappedPositionLost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PositionLostPolicy {
    /// Report the loss, then fail.
    #[default]
    Error,
    /// Report the loss, then continue with the oldest document still there whose key is
    /// after the last key seen.
    RestartFromOldest,
}

/// Immutable cursor arguments. `last_key` is where the read starts (a restart).
#[derive(Debug, Clone, PartialEq)]
pub struct CursorSpec {
    /// The connection, backoff, stall watchdog and durability.
    pub common: ReaderOptions,
    pub db: String,
    pub collection: String,
    pub filter: Document,
    pub projection: Option<Document>,
    /// A unique, ordered field (dotted path allowed): the read's position.
    pub key: String,
    pub batch_size: Option<u32>,
    pub tailable: bool,
    pub await_data: bool,
    pub max_await_time: Option<Duration>,
    pub on_position_lost: PositionLostPolicy,
    /// How long a tailable read waits before re-issuing a dead (id 0) cursor.
    pub tail_retry: Duration,
    pub last_key: Option<Bson>,
}

/// Default wait before a dead tailable cursor is re-issued.
pub const DEFAULT_TAIL_RETRY: Duration = Duration::from_millis(200);

/// A cursor's own options (besides `ReaderOptions`).
const CURSOR_FIELDS: &[&str] = &[
    "db",
    "collection",
    "filter",
    "projection",
    "key",
    "batchSize",
    "tailable",
    "awaitData",
    "maxAwaitTimeMS",
    "onPositionLost",
    "tailRetryMS",
    "lastKey",
];

impl CursorSpec {
    /// Parses and validates. Every error names the option and the expected type.
    pub fn from_document(doc: &Document) -> Result<Self, EngineError> {
        let common = ReaderOptions::parse(doc, CURSOR_FIELDS)?;
        let db = required_string(doc, "db")?;
        let collection = required_string(doc, "collection")?;
        let filter = optional_document(doc, "filter")?.unwrap_or_default();
        let projection = optional_document(doc, "projection")?.filter(|p| !p.is_empty());
        let key = optional_string(doc, "key")?.unwrap_or_else(|| "_id".to_string());
        if key.starts_with('$') {
            return Err(EngineError::invalid_option(
                "key",
                "a field name",
                &format!("'{key}'"),
            ));
        }
        if let Some(p) = &projection {
            check_projection_keeps(p, &key)?;
        }
        let batch_size = optional_whole(doc, "batchSize", u32::MAX as u64)?.map(|n| n as u32);
        let tailable = optional_bool(doc, "tailable")?.unwrap_or(false);
        let await_data = optional_bool(doc, "awaitData")?.unwrap_or(false);
        if await_data && !tailable {
            return Err(EngineError::invalid_option(
                "awaitData",
                "used with \"tailable: true\"",
                "a non-tailable cursor",
            ));
        }
        let max_await_time =
            optional_whole(doc, "maxAwaitTimeMS", u32::MAX as u64)?.map(Duration::from_millis);
        if max_await_time.is_some() && !await_data {
            return Err(EngineError::invalid_option(
                "maxAwaitTimeMS",
                "used with \"awaitData: true\"",
                "a cursor without awaitData",
            ));
        }
        let tail_retry = optional_whole(doc, "tailRetryMS", u32::MAX as u64)?
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_TAIL_RETRY);
        let on_position_lost = match optional_string(doc, "onPositionLost")?.as_deref() {
            None | Some("error") => PositionLostPolicy::Error,
            Some("restartFromOldest") => PositionLostPolicy::RestartFromOldest,
            Some(other) => {
                return Err(EngineError::invalid_option(
                    "onPositionLost",
                    "'error' or 'restartFromOldest'",
                    &format!("'{other}'"),
                ))
            }
        };
        let last_key = match doc.get("lastKey") {
            None | Some(Bson::Null) | Some(Bson::Undefined) => None,
            Some(Bson::Array(_)) | Some(Bson::Document(_)) => {
                return Err(EngineError::invalid_option(
                    "lastKey",
                    "a scalar BSON value",
                    "a document or array",
                ))
            }
            Some(v) => Some(v.clone()),
        };
        Ok(CursorSpec {
            common,
            db,
            collection,
            filter,
            projection,
            key,
            batch_size,
            tailable,
            await_data,
            max_await_time,
            on_position_lost,
            tail_retry,
            last_key,
        })
    }

    /// THE find command: the user's filter, after `last_key` when there is one, in key order
    /// (natural order for a tailable cursor, which resumes by key too).
    pub fn find_command(&self, last_key: Option<&Bson>) -> Document {
        let filter = match last_key {
            None => self.filter.clone(),
            Some(last) => {
                let after = doc! { self.key.as_str(): { "$gt": last.clone() } };
                if self.filter.is_empty() {
                    after
                } else {
                    doc! { "$and": [self.filter.clone(), after] }
                }
            }
        };
        let mut command = doc! { "find": self.collection.as_str(), "filter": filter };
        if !self.tailable {
            command.insert("sort", doc! { self.key.as_str(): 1 });
        }
        if let Some(p) = &self.projection {
            command.insert("projection", p.clone());
        }
        if let Some(n) = self.batch_size {
            command.insert("batchSize", n as i64);
        }
        if self.tailable {
            command.insert("tailable", true);
            if self.await_data {
                command.insert("awaitData", true);
            }
        }
        command
    }
}

impl ReaderSpec for CursorSpec {
    const KIND: ReaderKind = ReaderKind::Cursor;

    fn common(&self) -> &ReaderOptions {
        &self.common
    }

    /// The documents read are shaped by the filter, projection, key and cursor type.
    fn shape(&self) -> Document {
        doc! {
            "filter": self.filter.clone(),
            "projection": self.projection.clone().map(Bson::Document).unwrap_or(Bson::Null),
            "key": self.key.as_str(),
            "tailable": self.tailable,
        }
    }

    /// `db.collection`, for logs (never the URI).
    fn namespace(&self) -> String {
        format!("{}.{}", self.db, self.collection)
    }
}

/// The key of a document (dotted path), or `None` when it has none.
pub fn key_of(doc: &RawDocument, key: &str) -> Option<Bson> {
    let mut current = doc;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let value = current.get(part).ok()??;
        if parts.peek().is_none() {
            return Bson::try_from(value.to_raw_bson()).ok();
        }
        match value {
            RawBsonRef::Document(d) => current = d,
            _ => return None,
        }
    }
    None
}

/// The key must reach the consumer: it is the read's position.
fn check_projection_keeps(projection: &Document, key: &str) -> Result<(), EngineError> {
    let truthy = |v: &Bson| match v {
        Bson::Boolean(b) => *b,
        Bson::Int32(n) => *n != 0,
        Bson::Int64(n) => *n != 0,
        Bson::Double(n) => *n != 0.0,
        // Expressions and operators ($slice, $elemMatch, ...) include.
        _ => true,
    };
    let root = key.split('.').next().unwrap_or(key);
    let excluded = projection
        .iter()
        .any(|(k, v)| (k == key || k == root) && !truthy(v));
    let inclusion = projection.iter().any(|(k, v)| k != "_id" && truthy(v));
    let included = key == "_id"
        || projection
            .iter()
            .any(|(k, v)| (k == key || k == root) && truthy(v));
    if excluded || (inclusion && !included) {
        return Err(EngineError::invalid_option(
            "projection",
            &format!("a projection that keeps the key field \"{key}\""),
            "one that removes it",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::RawDocumentBuf;

    fn base() -> Document {
        doc! {"uri": "mongodb://h", "db": "d", "collection": "c"}
    }

    fn with(extra: Document) -> Result<CursorSpec, EngineError> {
        let mut d = base();
        d.extend(extra);
        CursorSpec::from_document(&d)
    }

    #[test]
    fn defaults_and_first_command() {
        let spec = with(doc! {}).unwrap();
        assert_eq!(spec.key, "_id");
        assert_eq!(
            spec.find_command(None),
            doc! {"find": "c", "filter": {}, "sort": {"_id": 1}}
        );
    }

    #[test]
    fn resumes_after_the_last_key() {
        let spec = with(
            doc! {"filter": {"a": 1}, "key": "seq", "batchSize": 50, "projection": {"seq": 1}},
        )
        .unwrap();
        assert_eq!(
            spec.find_command(Some(&Bson::Int32(7))),
            doc! {
                "find": "c",
                "filter": {"$and": [{"a": 1}, {"seq": {"$gt": 7}}]},
                "sort": {"seq": 1},
                "projection": {"seq": 1},
                "batchSize": 50i64,
            }
        );
        let plain = with(doc! {"key": "seq"}).unwrap();
        assert_eq!(
            plain
                .find_command(Some(&Bson::Int32(7)))
                .get_document("filter")
                .unwrap(),
            &doc! {"seq": {"$gt": 7}}
        );
    }

    #[test]
    fn tailable_uses_natural_order() {
        let spec = with(doc! {"tailable": true, "awaitData": true, "maxAwaitTimeMS": 100}).unwrap();
        let cmd = spec.find_command(None);
        assert!(cmd.get("sort").is_none());
        assert_eq!(cmd.get_bool("tailable"), Ok(true));
        assert_eq!(cmd.get_bool("awaitData"), Ok(true));
    }

    #[test]
    fn errors_name_the_option() {
        let msg = |d: Document| with(d).unwrap_err().message;
        assert_eq!(
            msg(doc! {"batchSize": "x"}),
            "option \"batchSize\" must be a non-negative integer, got string"
        );
        assert!(msg(doc! {"projection": {"seq": 0}, "key": "seq"}).contains("\"projection\""));
        assert!(msg(doc! {"projection": {"a": 1}, "key": "seq"}).contains("\"projection\""));
        assert!(msg(doc! {"awaitData": true}).contains("\"awaitData\""));
        assert!(msg(doc! {"onPositionLost": "x"}).contains("\"onPositionLost\""));
        assert!(msg(doc! {"nope": 1}).contains("unknown option \"nope\""));
        assert!(msg(doc! {"lastKey": {"a": 1}}).contains("\"lastKey\""));
        assert!(msg(doc! {"backoff": {"multiplier": 0.5}}).contains("backoff.multiplier"));
        assert!(
            CursorSpec::from_document(&doc! {"uri": "mongodb://h", "db": "d"})
                .unwrap_err()
                .message
                .contains("\"collection\"")
        );
        // Projections that keep the key are fine.
        with(doc! {"projection": {"_id": 0}, "key": "seq"}).unwrap();
        with(doc! {"projection": {"a": 1}}).unwrap();
        with(doc! {"projection": {"s": 1}, "key": "s.t"}).unwrap();
        assert!(msg(doc! {"tokenStore": {"type": "file", "path": "/p"}}).contains("\"name\""));
        assert!(msg(doc! {"name": "n", "checkpoint": {"everyEvents": "x"}})
            .contains("checkpoint.everyEvents"));
    }

    #[test]
    fn a_named_cursor_has_a_store_and_an_owner_shaped_by_what_it_reads() {
        let spec = with(doc! {"name": "n", "tokenStore": {"type": "file", "path": "/p"}}).unwrap();
        assert_eq!(spec.common.durability.as_ref().unwrap().name, "n");
        assert_eq!(
            spec.common.stall_timeout,
            Some(crate::engine::reader::options::DEFAULT_STALL_TIMEOUT)
        );
        let owner = spec.owner("n");
        assert_eq!(owner.kind, ReaderKind::Cursor);
        assert_eq!(owner.namespace, "d.c");
        let same = with(doc! {"batchSize": 7, "stallTimeoutMS": 0}).unwrap();
        assert_eq!(same.common.stall_timeout, None);
        assert_eq!(same.owner("n"), owner, "batching and timeouts do not count");
        let filtered = with(doc! {"filter": {"a": 1}}).unwrap();
        assert_ne!(filtered.owner("n").fingerprint, owner.fingerprint);
    }

    #[test]
    fn reads_dotted_keys() {
        let d = RawDocumentBuf::from_document(&doc! {"a": {"b": 5}, "c": 1}).unwrap();
        assert_eq!(key_of(&d, "a.b"), Some(Bson::Int32(5)));
        assert_eq!(key_of(&d, "c"), Some(Bson::Int32(1)));
        assert_eq!(key_of(&d, "c.x"), None);
        assert_eq!(key_of(&d, "z"), None);
    }
}
