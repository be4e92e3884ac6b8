//! The immutable arguments of a watch, parsed and validated from one BSON document
//! (what the native layer receives from JS). Mutable resume state lives in `resume.rs`.

use std::time::Duration;

use mongodb::bson::{Bson, Document, Timestamp};

use super::backoff::BackoffPolicy;
use super::checkpoint::CheckpointPolicy;
use super::errors::EngineError;
use super::fields::{
    as_f64, describe, optional_bool, optional_document, optional_string, optional_whole, prefix,
    reject_unknown, type_name,
};
use super::store::StoreConfig;

/// What is watched.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    Cluster,
    Database(String),
    Collection { db: String, coll: String },
}

/// Where a stream starts, as given by the user (or chosen for a re-open).
#[derive(Debug, Clone, PartialEq)]
pub enum StartPoint {
    /// No start option: the server's "now".
    Now,
    ResumeAfter(Document),
    StartAfter(Document),
    StartAtOperationTime(Timestamp),
}

impl StartPoint {
    /// The option's name, for logs (a token itself is never logged).
    pub fn kind(&self) -> &'static str {
        match self {
            StartPoint::Now => "now",
            StartPoint::ResumeAfter(_) => "resumeAfter",
            StartPoint::StartAfter(_) => "startAfter",
            StartPoint::StartAtOperationTime(_) => "startAtOperationTime",
        }
    }
}

/// A named consumer whose position is kept in a token store.
#[derive(Debug, Clone, PartialEq)]
pub struct Durability {
    pub name: String,
    pub store: StoreConfig,
    pub checkpoint: CheckpointPolicy,
    /// Use a stored position even if it was written for another namespace or pipeline.
    pub allow_mismatch: bool,
}

/// What to do when the position fell off the oplog (286).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HistoryLostPolicy {
    #[default]
    Error,
    ResumeFromNow,
}

/// What to do after an `invalidate` event (drop/rename of what is watched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidatePolicy {
    #[default]
    Close,
    /// Continue with `startAfter` the invalidate token.
    Restart,
}

/// Immutable watch arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchSpec {
    pub uri: String,
    pub scope: Scope,
    pub pipeline: Vec<Document>,
    /// Options that go into the `$changeStream` stage besides the start point.
    pub stage_options: Document,
    pub start: StartPoint,
    pub batch_size: Option<u32>,
    pub max_await_time: Option<Duration>,
    pub collation: Option<Document>,
    pub comment: Option<Bson>,
    pub backoff: BackoffPolicy,
    /// Re-open when no reply comes within the await time plus this, or (on a server that
    /// advances idle streams) the position does not move for this long. `None`: off.
    pub stall_timeout: Option<Duration>,
    pub durability: Option<Durability>,
    pub on_history_lost: HistoryLostPolicy,
    pub on_invalidate: InvalidatePolicy,
}

/// Default `stallTimeoutMS`: well above mongod's 10 s idle no-op interval.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

const KNOWN_FIELDS: &[&str] = &[
    "uri",
    "db",
    "collection",
    "pipeline",
    "fullDocument",
    "fullDocumentBeforeChange",
    "resumeAfter",
    "startAfter",
    "startAtOperationTime",
    "batchSize",
    "maxAwaitTimeMS",
    "showExpandedEvents",
    "collation",
    "comment",
    "backoff",
    "stallTimeoutMS",
    "name",
    "tokenStore",
    "checkpoint",
    "allowPositionMismatch",
    "onHistoryLost",
    "onInvalidate",
];

impl WatchSpec {
    /// Parses and validates. Every error names the option and the expected type.
    pub fn from_document(doc: &Document) -> Result<Self, EngineError> {
        reject_unknown(doc, KNOWN_FIELDS, "")?;
        let uri = match doc.get("uri") {
            Some(Bson::String(s))
                if s.starts_with("mongodb://") || s.starts_with("mongodb+srv://") =>
            {
                s.clone()
            }
            Some(Bson::String(_)) => {
                return Err(EngineError::invalid_option(
                    "uri",
                    "a connection string starting with mongodb:// or mongodb+srv://",
                    "another string",
                ))
            }
            Some(other) => {
                return Err(EngineError::invalid_option(
                    "uri",
                    "a non-empty connection string",
                    type_name(other),
                ))
            }
            None => {
                return Err(EngineError::invalid_option(
                    "uri",
                    "a non-empty connection string",
                    "nothing",
                ))
            }
        };
        let db = optional_string(doc, "db")?;
        let coll = optional_string(doc, "collection")?;
        let scope = match (db, coll) {
            (None, None) => Scope::Cluster,
            (Some(db), None) => Scope::Database(db),
            (Some(db), Some(coll)) => Scope::Collection { db, coll },
            (None, Some(_)) => {
                return Err(EngineError::invalid_option(
                    "db",
                    "a database name when \"collection\" is given",
                    "nothing",
                ))
            }
        };
        let pipeline = match doc.get("pipeline") {
            None | Some(Bson::Null) => Vec::new(),
            Some(Bson::Array(stages)) => stages
                .iter()
                .map(|s| match s {
                    Bson::Document(d) => Ok(d.clone()),
                    other => Err(EngineError::invalid_option(
                        "pipeline",
                        "an array of stage documents",
                        &format!("an array containing {}", type_name(other)),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(EngineError::invalid_option(
                    "pipeline",
                    "an array of stage documents",
                    type_name(other),
                ))
            }
        };

        let mut stage_options = Document::new();
        for name in ["fullDocument", "fullDocumentBeforeChange"] {
            if let Some(value) = optional_string(doc, name)? {
                stage_options.insert(name, value);
            }
        }
        if let Some(flag) = optional_bool(doc, "showExpandedEvents")? {
            stage_options.insert("showExpandedEvents", flag);
        }

        let start = parse_start(doc)?;
        let batch_size = optional_whole(doc, "batchSize", u32::MAX as u64)?.map(|n| n as u32);
        let max_await_time =
            optional_whole(doc, "maxAwaitTimeMS", u32::MAX as u64)?.map(Duration::from_millis);
        let collation = optional_document(doc, "collation")?;
        let comment = doc
            .get("comment")
            .filter(|c| !matches!(c, Bson::Null))
            .cloned();
        let backoff = match doc.get("backoff") {
            None | Some(Bson::Null) => BackoffPolicy::default(),
            Some(Bson::Document(b)) => parse_backoff(b)?,
            Some(other) => {
                return Err(EngineError::invalid_option(
                    "backoff",
                    "an object",
                    type_name(other),
                ))
            }
        };
        // 0 turns the watchdog off; absent means the default.
        let stall_timeout = match doc.get("stallTimeoutMS") {
            None => Some(DEFAULT_STALL_TIMEOUT),
            Some(_) => optional_whole(doc, "stallTimeoutMS", u32::MAX as u64)?
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
        };
        let durability = parse_durability(doc)?;
        let on_history_lost = match optional_string(doc, "onHistoryLost")?.as_deref() {
            None | Some("error") => HistoryLostPolicy::Error,
            Some("resumeFromNow") => HistoryLostPolicy::ResumeFromNow,
            Some(other) => {
                return Err(EngineError::invalid_option(
                    "onHistoryLost",
                    "'error' or 'resumeFromNow'",
                    &format!("'{other}'"),
                ))
            }
        };
        let on_invalidate = match optional_string(doc, "onInvalidate")?.as_deref() {
            None | Some("close") => InvalidatePolicy::Close,
            Some("restart") => InvalidatePolicy::Restart,
            Some(other) => {
                return Err(EngineError::invalid_option(
                    "onInvalidate",
                    "'close' or 'restart'",
                    &format!("'{other}'"),
                ))
            }
        };
        Ok(WatchSpec {
            uri,
            scope,
            pipeline,
            stage_options,
            start,
            batch_size,
            max_await_time,
            collation,
            comment,
            backoff,
            stall_timeout,
            durability,
            on_history_lost,
            on_invalidate,
        })
    }

    /// The database the `aggregate` runs against.
    pub fn command_db(&self) -> &str {
        match &self.scope {
            Scope::Cluster => "admin",
            Scope::Database(db) | Scope::Collection { db, .. } => db,
        }
    }

    /// A namespace label for logs and stored records (never contains the URI).
    pub fn namespace(&self) -> String {
        match &self.scope {
            Scope::Cluster => String::from("<cluster>"),
            Scope::Database(db) => db.clone(),
            Scope::Collection { db, coll } => format!("{db}.{coll}"),
        }
    }
}

fn parse_durability(doc: &Document) -> Result<Option<Durability>, EngineError> {
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

fn parse_store(d: &Document) -> Result<StoreConfig, EngineError> {
    let field = |n: &str| format!("tokenStore.{n}");
    let string = |n: &str| -> Result<String, EngineError> {
        optional_string(d, n)
            .map_err(|e| prefix(e, "tokenStore."))?
            .ok_or_else(|| EngineError::invalid_option(&field(n), "a non-empty string", "nothing"))
    };
    match optional_string(d, "type")
        .map_err(|e| prefix(e, "tokenStore."))?
        .as_deref()
    {
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
    reject_unknown(d, FIELDS, "checkpoint.")?;
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

fn parse_start(doc: &Document) -> Result<StartPoint, EngineError> {
    let resume_after = optional_document(doc, "resumeAfter")?;
    let start_after = optional_document(doc, "startAfter")?;
    let at_time = match doc.get("startAtOperationTime") {
        None | Some(Bson::Null) => None,
        Some(Bson::Timestamp(ts)) => Some(*ts),
        Some(other) => {
            return Err(EngineError::invalid_option(
                "startAtOperationTime",
                "a BSON Timestamp",
                type_name(other),
            ))
        }
    };
    match (resume_after, start_after, at_time) {
        (None, None, None) => Ok(StartPoint::Now),
        (Some(token), None, None) => Ok(StartPoint::ResumeAfter(token)),
        (None, Some(token), None) => Ok(StartPoint::StartAfter(token)),
        (None, None, Some(ts)) => Ok(StartPoint::StartAtOperationTime(ts)),
        _ => Err(EngineError::new(
            super::errors::ErrorCode::InvalidOption,
            "options \"resumeAfter\", \"startAfter\" and \"startAtOperationTime\" are mutually exclusive",
        )),
    }
}

fn parse_backoff(b: &Document) -> Result<BackoffPolicy, EngineError> {
    const FIELDS: &[&str] = &["initialDelayMS", "multiplier", "maxDelayMS", "maxRetries"];
    reject_unknown(b, FIELDS, "backoff.")?;
    let mut policy = BackoffPolicy::default();
    if let Some(ms) =
        optional_whole(b, "initialDelayMS", u32::MAX as u64).map_err(|e| prefix(e, "backoff."))?
    {
        policy.initial = Duration::from_millis(ms);
    }
    if let Some(ms) =
        optional_whole(b, "maxDelayMS", u32::MAX as u64).map_err(|e| prefix(e, "backoff."))?
    {
        policy.max = Duration::from_millis(ms);
    }
    match b.get("multiplier") {
        None | Some(Bson::Null) => {}
        Some(v) => match as_f64(v) {
            Some(m) if m >= 1.0 && m.is_finite() => policy.multiplier = m,
            _ => {
                return Err(EngineError::invalid_option(
                    "backoff.multiplier",
                    "a number ≥ 1",
                    &describe(v),
                ))
            }
        },
    }
    policy.max_retries = optional_whole(b, "maxRetries", u32::MAX as u64)
        .map_err(|e| prefix(e, "backoff."))?
        .map(|n| n as u32);
    Ok(policy)
}

/// A collection stream's spec on a dummy URI plus `extra` options, for unit tests.
#[cfg(test)]
pub(crate) fn test_spec(extra: Document) -> WatchSpec {
    let mut d = mongodb::bson::doc! {"uri": "mongodb://h", "db": "d", "collection": "c"};
    d.extend(extra);
    WatchSpec::from_document(&d).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn minimal_collection_spec() {
        let spec =
            WatchSpec::from_document(&doc! {"uri": "mongodb://h", "db": "d", "collection": "c"})
                .unwrap();
        assert_eq!(
            spec.scope,
            Scope::Collection {
                db: "d".into(),
                coll: "c".into()
            }
        );
        assert_eq!(spec.start, StartPoint::Now);
        assert_eq!(spec.backoff, BackoffPolicy::default());
        assert_eq!(spec.command_db(), "d");
    }

    #[test]
    fn errors_name_the_option_and_type() {
        let cases = [
            (
                doc! {"uri": 1},
                "option \"uri\" must be a non-empty connection string, got number",
            ),
            (
                doc! {"uri": "mongodb://h", "batchSize": "x"},
                "option \"batchSize\" must be a non-negative integer, got string",
            ),
            (
                doc! {"uri": "mongodb://h", "batchSize": -1},
                "option \"batchSize\" must be a non-negative integer, got -1",
            ),
            (
                doc! {"uri": "mongodb://h", "maxAwaitTimeMS": 1.5},
                "option \"maxAwaitTimeMS\" must be a non-negative integer, got 1.5",
            ),
            (
                doc! {"uri": "mongodb://h", "pipeline": "x"},
                "option \"pipeline\" must be an array of stage documents, got string",
            ),
            (
                doc! {"uri": "mongodb://h", "backoff": {"initialDelayMS": "x"}},
                "option \"backoff.initialDelayMS\" must be a non-negative integer, got string",
            ),
            (
                doc! {"uri": "mongodb://h", "backoff": {"multiplier": 0.5}},
                "option \"backoff.multiplier\" must be a number ≥ 1, got 0.5",
            ),
            (
                doc! {"uri": "mongodb://h", "startAtOperationTime": 5},
                "option \"startAtOperationTime\" must be a BSON Timestamp, got number",
            ),
            (
                doc! {"uri": "mongodb://h", "bogus": 1},
                "unknown option \"bogus\"",
            ),
        ];
        for (input, expected) in cases {
            let err = WatchSpec::from_document(&input).unwrap_err();
            assert_eq!(err.message, expected);
        }
    }

    #[test]
    fn durability_options_parse_and_validate() {
        let spec = WatchSpec::from_document(&doc! {
            "uri": "mongodb://h", "db": "d", "collection": "c", "name": "orders-sync",
            "tokenStore": {"type": "file", "path": "/tmp/p.json"},
            "checkpoint": {"everyEvents": 10, "everyMs": 250},
            "onHistoryLost": "resumeFromNow", "onInvalidate": "restart",
        })
        .unwrap();
        let d = spec.durability.unwrap();
        assert_eq!(d.name, "orders-sync");
        assert_eq!(
            d.store,
            StoreConfig::File {
                path: "/tmp/p.json".into()
            }
        );
        assert_eq!(d.checkpoint.every_events, 10);
        assert_eq!(d.checkpoint.every, Duration::from_millis(250));
        assert_eq!(d.checkpoint.max_unsaved_events, 10_000);
        assert_eq!(spec.on_history_lost, HistoryLostPolicy::ResumeFromNow);
        assert_eq!(spec.on_invalidate, InvalidatePolicy::Restart);

        let named = WatchSpec::from_document(&doc! {"uri": "mongodb://h", "name": "n"}).unwrap();
        assert_eq!(named.durability.unwrap().store, StoreConfig::Memory);

        let cases = [
            (doc! {"uri": "mongodb://h", "tokenStore": {"type": "memory"}}, "option \"name\" must be a string naming the consumer when \"tokenStore\" is given, got nothing"),
            (doc! {"uri": "mongodb://h", "name": "n", "tokenStore": {"type": "disk"}}, "option \"tokenStore.type\" must be 'memory', 'file' or 'mongodb', got 'disk'"),
            (doc! {"uri": "mongodb://h", "name": "n", "tokenStore": {"type": "file"}}, "option \"tokenStore.path\" must be a non-empty string, got nothing"),
            (doc! {"uri": "mongodb://h", "name": "n", "checkpoint": {"everyMs": "x"}}, "option \"checkpoint.everyMs\" must be a non-negative integer, got string"),
            (doc! {"uri": "mongodb://h", "onHistoryLost": "skip"}, "option \"onHistoryLost\" must be 'error' or 'resumeFromNow', got 'skip'"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                WatchSpec::from_document(&input).unwrap_err().message,
                expected
            );
        }
    }

    #[test]
    fn start_options_are_exclusive() {
        let err = WatchSpec::from_document(
            &doc! {"uri": "mongodb://h", "resumeAfter": {"_data": "a"}, "startAfter": {"_data": "a"}},
        )
        .unwrap_err();
        assert!(err.message.contains("mutually exclusive"));
    }

    #[test]
    fn backoff_and_stage_options_parse() {
        let spec = WatchSpec::from_document(&doc! {
            "uri": "mongodb://h", "db": "d",
            "fullDocument": "updateLookup", "showExpandedEvents": true,
            "backoff": {"initialDelayMS": 5, "multiplier": 3, "maxDelayMS": 50, "maxRetries": 4},
            "batchSize": 10i64, "maxAwaitTimeMS": 250.0,
        })
        .unwrap();
        assert_eq!(spec.scope, Scope::Database("d".into()));
        assert_eq!(
            spec.stage_options,
            doc! {"fullDocument": "updateLookup", "showExpandedEvents": true}
        );
        assert_eq!(spec.backoff.initial, Duration::from_millis(5));
        assert_eq!(spec.backoff.multiplier, 3.0);
        assert_eq!(spec.backoff.max, Duration::from_millis(50));
        assert_eq!(spec.backoff.max_retries, Some(4));
        assert_eq!(spec.batch_size, Some(10));
        assert_eq!(spec.max_await_time, Some(Duration::from_millis(250)));
    }
}
