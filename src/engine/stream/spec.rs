//! The immutable arguments of a watch, parsed and validated from one BSON document
//! (what the native layer receives from JS). Mutable resume state lives in `resume.rs`.

use std::collections::HashMap;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::options::{ReadPreference, ReadPreferenceOptions};

use super::snapshot_options::SnapshotOptions;
use crate::engine::durable::position::ReaderKind;
use crate::engine::errors::{EngineError, ErrorCode};
use crate::engine::options::{
    optional_bool, optional_document, optional_string, optional_whole, type_name,
};
use crate::engine::reader::options::ReaderOptions;
use crate::engine::reader::source::ReaderSpec;

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

    /// The token it starts after, if it is one.
    pub fn token(&self) -> Option<&Document> {
        match self {
            StartPoint::ResumeAfter(t) | StartPoint::StartAfter(t) => Some(t),
            StartPoint::Now | StartPoint::StartAtOperationTime(_) => None,
        }
    }
}

/// What to do when the position fell off the oplog (286).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HistoryLostPolicy {
    #[default]
    Error,
    ResumeFromNow,
    /// Copy the collection again (as an initial snapshot), then stream from the copy's
    /// start time: bounded recovery instead of a hand-run resync. Collection streams only.
    Resnapshot,
}

/// What to do after an `invalidate` event (drop/rename of what is watched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidatePolicy {
    #[default]
    Close,
    /// Continue with `startAfter` the invalidate token.
    Restart,
}

/// What to do with an event larger than the server's 16 MB limit (BSONObjectTooLarge,
/// 10334), once `$changeStreamSplitLargeEvent` has split it into fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LargeEventPolicy {
    /// Join the fragments and hand out the event whole.
    #[default]
    Split,
    /// Fail the stream, naming the event.
    Error,
    /// Hand out a `largeEventSkipped` notice instead, and move the position past it.
    Skip,
}

/// How the events of one multi-document transaction are handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransactionMode {
    /// One by one, like every other event.
    #[default]
    Separate,
    /// Together, as one `transaction` document; positions only at transaction boundaries.
    Group,
}

/// Immutable watch arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchSpec {
    /// The connection, backoff, stall watchdog and durability.
    pub common: ReaderOptions,
    pub scope: Scope,
    pub pipeline: Vec<Document>,
    /// Options that go into the `$changeStream` stage besides the start point.
    pub stage_options: Document,
    pub start: StartPoint,
    pub batch_size: Option<u32>,
    pub max_await_time: Option<Duration>,
    pub collation: Option<Document>,
    pub comment: Option<Bson>,
    /// Fields of the `aggregate` command itself, as the driver sends them: `readConcern`,
    /// `maxTimeMS`, `hint`, `let`, `allowDiskUse`, `bypassDocumentValidation`.
    pub command_options: Document,
    /// Where the `aggregate` (and its getMores) may run; `None`: the connection's default.
    pub read_preference: Option<ReadPreference>,
    pub on_history_lost: HistoryLostPolicy,
    pub on_invalidate: InvalidatePolicy,
    /// Open with `$changeStreamSplitLargeEvent` from the start (otherwise it is added only
    /// after the server failed the stream with 10334).
    pub split_large_events: bool,
    pub on_large_event: LargeEventPolicy,
    pub transactions: TransactionMode,
    /// `initialSnapshot`: copy the collection first (`stream/snapshot.rs`).
    pub snapshot: Option<SnapshotOptions>,
}

/// A watch's own options (besides `ReaderOptions`).
const WATCH_FIELDS: &[&str] = &[
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
    "readConcern",
    "readPreference",
    "maxTimeMS",
    "hint",
    "let",
    "allowDiskUse",
    "bypassDocumentValidation",
    "onHistoryLost",
    "onInvalidate",
    "splitLargeEvents",
    "onLargeEvent",
    "transactions",
    "initialSnapshot",
];

impl WatchSpec {
    /// Parses and validates. Every error names the option and the expected type.
    pub fn from_document(doc: &Document) -> Result<Self, EngineError> {
        let common = ReaderOptions::parse(doc, WATCH_FIELDS)?;
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
        let command_options = parse_command_options(doc)?;
        let read_preference = parse_read_preference(doc)?;
        let on_history_lost = match optional_string(doc, "onHistoryLost")?.as_deref() {
            None | Some("error") => HistoryLostPolicy::Error,
            Some("resumeFromNow") => HistoryLostPolicy::ResumeFromNow,
            Some("resnapshot") => HistoryLostPolicy::Resnapshot,
            Some(other) => {
                return Err(EngineError::invalid_option(
                    "onHistoryLost",
                    "'error', 'resumeFromNow' or 'resnapshot'",
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
        let split_large_events = optional_bool(doc, "splitLargeEvents")?.unwrap_or(false);
        let on_large_event = match optional_string(doc, "onLargeEvent")?.as_deref() {
            None | Some("split") => LargeEventPolicy::Split,
            Some("error") => LargeEventPolicy::Error,
            Some("skip") => LargeEventPolicy::Skip,
            Some(other) => {
                return Err(EngineError::invalid_option(
                    "onLargeEvent",
                    "'split', 'error' or 'skip'",
                    &format!("'{other}'"),
                ))
            }
        };
        let transactions = match optional_string(doc, "transactions")?.as_deref() {
            None | Some("separate") => TransactionMode::Separate,
            Some("group") => TransactionMode::Group,
            Some(other) => {
                return Err(EngineError::invalid_option(
                    "transactions",
                    "'separate' or 'group'",
                    &format!("'{other}'"),
                ))
            }
        };
        let snapshot = SnapshotOptions::parse(doc)?;
        // What copies the collection, for messages: None if nothing does.
        let copier = match (&snapshot, on_history_lost) {
            (Some(_), _) => Some("option \"initialSnapshot\""),
            (None, HistoryLostPolicy::Resnapshot) => Some("onHistoryLost: 'resnapshot'"),
            (None, _) => None,
        };
        let partitioned = common
            .group
            .as_ref()
            .is_some_and(|g| g.partitions.is_some());
        if let Some(what) = copier {
            if !matches!(scope, Scope::Collection { .. }) {
                return Err(EngineError::new(
                    ErrorCode::InvalidOption,
                    format!(
                        "{what} copies one collection: use it on a collection stream, not a \
                         database or cluster stream (watch each collection with its own name)"
                    ),
                ));
            }
            if partitioned {
                return Err(EngineError::new(
                    ErrorCode::InvalidOption,
                    format!(
                        "{what} cannot be used with \"group.partitions\": a copy is one \
                         position, not one per partition (use a group without partitions)"
                    ),
                ));
            }
        }
        if partitioned && transactions == TransactionMode::Group {
            return Err(EngineError::new(
                ErrorCode::InvalidOption,
                "option \"transactions\": 'group' cannot be used with \"group.partitions\": a \
                 transaction's documents fall in different partitions, read by different members",
            ));
        }
        if snapshot.is_some() && start != StartPoint::Now {
            return Err(EngineError::new(
                ErrorCode::InvalidOption,
                "option \"initialSnapshot\" chooses the start (the copy's start time): it \
                 cannot be used with \"resumeAfter\", \"startAfter\" or \"startAtOperationTime\"",
            ));
        }
        Ok(WatchSpec {
            snapshot,
            common,
            scope,
            pipeline,
            stage_options,
            start,
            batch_size,
            max_await_time,
            collation,
            comment,
            command_options,
            read_preference,
            on_history_lost,
            on_invalidate,
            split_large_events,
            on_large_event,
            transactions,
        })
    }

    /// The database the `aggregate` runs against.
    pub fn command_db(&self) -> &str {
        match &self.scope {
            Scope::Cluster => "admin",
            Scope::Database(db) | Scope::Collection { db, .. } => db,
        }
    }
}

impl ReaderSpec for WatchSpec {
    const KIND: ReaderKind = ReaderKind::ChangeStream;

    fn common(&self) -> &ReaderOptions {
        &self.common
    }

    /// A change stream's events are shaped by the pipeline, and the `$changeStream` and
    /// collation options.
    /// With an initial snapshot, its filter too (what the copy delivers); without one the
    /// shape is exactly what records were always written with.
    fn shape(&self) -> Document {
        let mut shape = doc! {
            "pipeline": self.pipeline.iter().cloned().map(Bson::Document).collect::<Vec<_>>(),
            "stage": self.stage_options.clone(),
            "collation": self.collation.clone().map(Bson::Document).unwrap_or(Bson::Null),
        };
        // `let` variables shape what the pipeline computes. Only when given, so positions
        // stored before the option existed keep their fingerprint.
        if let Some(vars) = self.command_options.get("let") {
            shape.insert("let", vars.clone());
        }
        if let Some(snapshot) = &self.snapshot {
            shape.insert("snapshotFilter", snapshot.filter.clone());
        }
        shape
    }

    /// A namespace label for logs and stored records (never contains the URI).
    fn namespace(&self) -> String {
        match &self.scope {
            Scope::Cluster => String::from("<cluster>"),
            Scope::Database(db) => db.clone(),
            Scope::Collection { db, coll } => format!("{db}.{coll}"),
        }
    }
}

/// The `aggregate` command's own options, checked and copied as the driver sends them.
fn parse_command_options(doc: &Document) -> Result<Document, EngineError> {
    let mut out = Document::new();
    if let Some(rc) = optional_document(doc, "readConcern")? {
        match rc.get("level") {
            None | Some(Bson::String(_)) => {}
            Some(other) => {
                return Err(EngineError::invalid_option(
                    "readConcern.level",
                    "a string",
                    type_name(other),
                ))
            }
        }
        out.insert("readConcern", rc);
    }
    if let Some(ms) = optional_whole(doc, "maxTimeMS", u32::MAX as u64)? {
        out.insert("maxTimeMS", ms as i64);
    }
    match doc.get("hint") {
        None | Some(Bson::Null) => {}
        Some(h @ (Bson::String(_) | Bson::Document(_))) => {
            out.insert("hint", h.clone());
        }
        Some(other) => {
            return Err(EngineError::invalid_option(
                "hint",
                "an index name or an index specification document",
                type_name(other),
            ))
        }
    }
    if let Some(vars) = optional_document(doc, "let")? {
        out.insert("let", vars);
    }
    if let Some(flag) = optional_bool(doc, "allowDiskUse")? {
        out.insert("allowDiskUse", flag);
    }
    // The driver sends it only when true.
    if optional_bool(doc, "bypassDocumentValidation")? == Some(true) {
        out.insert("bypassDocumentValidation", true);
    }
    Ok(out)
}

/// `readPreference: { mode, tags?, maxStalenessSeconds? }` (the facade turns the driver's
/// ReadPreference into this).
fn parse_read_preference(doc: &Document) -> Result<Option<ReadPreference>, EngineError> {
    let Some(rp) = optional_document(doc, "readPreference")? else {
        return Ok(None);
    };
    let mode = optional_string(&rp, "mode")?.ok_or_else(|| {
        EngineError::invalid_option("readPreference.mode", "a read preference mode", "nothing")
    })?;
    let tag_sets = match rp.get("tags") {
        None | Some(Bson::Null) => None,
        Some(Bson::Array(sets)) => Some(
            sets.iter()
                .map(|set| match set {
                    Bson::Document(d) => d
                        .iter()
                        .map(|(k, v)| match v {
                            Bson::String(v) => Ok((k.clone(), v.clone())),
                            other => Err(EngineError::invalid_option(
                                "readPreference.tags",
                                "an array of documents of strings",
                                type_name(other),
                            )),
                        })
                        .collect::<Result<HashMap<_, _>, _>>(),
                    other => Err(EngineError::invalid_option(
                        "readPreference.tags",
                        "an array of documents of strings",
                        type_name(other),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(other) => {
            return Err(EngineError::invalid_option(
                "readPreference.tags",
                "an array of documents of strings",
                type_name(other),
            ))
        }
    };
    let tag_sets = tag_sets.filter(|t| !t.is_empty());
    let max_staleness = match rp.get("maxStalenessSeconds") {
        // The driver's "no maximum".
        Some(Bson::Int32(-1)) | Some(Bson::Int64(-1)) => None,
        _ => optional_whole(&rp, "maxStalenessSeconds", u32::MAX as u64)?.map(Duration::from_secs),
    };
    let options = || {
        Some(
            ReadPreferenceOptions::builder()
                .tag_sets(tag_sets.clone())
                .max_staleness(max_staleness)
                .build(),
        )
    };
    let plain = tag_sets.is_none() && max_staleness.is_none();
    Ok(Some(match mode.as_str() {
        "primary" if plain => ReadPreference::Primary,
        "primary" => {
            return Err(EngineError::new(
                ErrorCode::InvalidOption,
                "option \"readPreference\": mode 'primary' cannot have tags or maxStalenessSeconds",
            ))
        }
        "primaryPreferred" => ReadPreference::PrimaryPreferred { options: options() },
        "secondary" => ReadPreference::Secondary { options: options() },
        "secondaryPreferred" => ReadPreference::SecondaryPreferred { options: options() },
        "nearest" => ReadPreference::Nearest { options: options() },
        other => {
            return Err(EngineError::invalid_option(
                "readPreference.mode",
                "'primary', 'primaryPreferred', 'secondary', 'secondaryPreferred' or 'nearest'",
                &format!("'{other}'"),
            ))
        }
    }))
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
            ErrorCode::InvalidOption,
            "options \"resumeAfter\", \"startAfter\" and \"startAtOperationTime\" are mutually exclusive",
        )),
    }
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
    use crate::engine::backoff::BackoffPolicy;
    use crate::engine::durable::store::StoreConfig;

    #[test]
    fn command_options_go_to_the_aggregate() {
        let spec = test_spec(doc! {
            "readConcern": {"level": "majority"},
            "maxTimeMS": 5000,
            "hint": {"_id": 1},
            "let": {"x": 1},
            "allowDiskUse": true,
            "bypassDocumentValidation": false,
            "readPreference": {"mode": "secondaryPreferred", "tags": [{"dc": "a"}], "maxStalenessSeconds": 120},
        });
        assert_eq!(
            spec.command_options,
            doc! {"readConcern": {"level": "majority"}, "maxTimeMS": 5000_i64, "hint": {"_id": 1}, "let": {"x": 1}, "allowDiskUse": true}
        );
        let Some(ReadPreference::SecondaryPreferred { options: Some(o) }) = &spec.read_preference
        else {
            panic!("{:?}", spec.read_preference);
        };
        assert_eq!(o.max_staleness, Some(Duration::from_secs(120)));
        assert_eq!(o.tag_sets.as_ref().map(|t| t.len()), Some(1));
        let bad = WatchSpec::from_document(
            &doc! {"uri": "mongodb://h", "readPreference": {"mode": "sometimes"}},
        )
        .unwrap_err();
        assert!(
            bad.message
                .starts_with("option \"readPreference.mode\" must be"),
            "{}",
            bad.message
        );
        let bad = WatchSpec::from_document(&doc! {"uri": "mongodb://h", "hint": 1}).unwrap_err();
        assert_eq!(
            bad.message,
            "option \"hint\" must be an index name or an index specification document, got number"
        );
    }

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
        assert_eq!(spec.common.backoff, BackoffPolicy::default());
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
        let d = spec.common.durability.unwrap();
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
        assert_eq!(named.common.durability.unwrap().store, StoreConfig::Memory);

        let cases = [
            (doc! {"uri": "mongodb://h", "tokenStore": {"type": "memory"}}, "option \"name\" must be a string naming the consumer when \"tokenStore\" is given, got nothing"),
            (doc! {"uri": "mongodb://h", "name": "n", "tokenStore": {"type": "disk"}}, "option \"tokenStore.type\" must be 'memory', 'file' or 'mongodb', got 'disk'"),
            (doc! {"uri": "mongodb://h", "name": "n", "tokenStore": {"type": "file"}}, "option \"tokenStore.path\" must be a non-empty string, got nothing"),
            (doc! {"uri": "mongodb://h", "name": "n", "checkpoint": {"everyMs": "x"}}, "option \"checkpoint.everyMs\" must be a non-negative integer, got string"),
            (doc! {"uri": "mongodb://h", "name": "n", "tokenStore": {"type": "memory", "extra": 1}}, "unknown option \"tokenStore.extra\""),
            (doc! {"uri": "mongodb://h", "name": "n", "tokenStore": {"type": "file", "path": "/p", "mode": 420}}, "unknown option \"tokenStore.mode\""),
            (doc! {"uri": "mongodb://h", "name": "n", "tokenStore": {"type": "mongodb", "db": "d", "collection": "c", "coll": "x"}}, "unknown option \"tokenStore.coll\""),
            (doc! {"uri": "mongodb://h", "onHistoryLost": "skip"}, "option \"onHistoryLost\" must be 'error', 'resumeFromNow' or 'resnapshot', got 'skip'"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                WatchSpec::from_document(&input).unwrap_err().message,
                expected
            );
        }
    }

    #[test]
    fn the_fingerprint_keeps_the_shape_records_were_written_with() {
        // Records already stored hold fingerprints of exactly this document.
        let spec = test_spec(doc! {"pipeline": [{"$match": {"a": 1}}], "batchSize": 5});
        let written = crate::engine::durable::position::fingerprint_of(doc! {
            "namespace": "d.c",
            "pipeline": [{"$match": {"a": 1}}],
            "stage": {},
            "collation": Bson::Null,
        });
        assert_eq!(spec.owner("n").fingerprint, written);
    }

    #[test]
    fn large_event_and_transaction_options_parse() {
        let plain = test_spec(doc! {});
        assert!(!plain.split_large_events);
        assert_eq!(plain.on_large_event, LargeEventPolicy::Split);
        assert_eq!(plain.transactions, TransactionMode::Separate);
        let spec = test_spec(
            doc! {"splitLargeEvents": true, "onLargeEvent": "skip", "transactions": "group"},
        );
        assert!(spec.split_large_events);
        assert_eq!(spec.on_large_event, LargeEventPolicy::Skip);
        assert_eq!(spec.transactions, TransactionMode::Group);
        assert_eq!(
            spec.shape(),
            plain.shape(),
            "positions stay valid across these options"
        );
        let cases = [
            (
                doc! {"uri": "mongodb://h", "onLargeEvent": "drop"},
                "option \"onLargeEvent\" must be 'split', 'error' or 'skip', got 'drop'",
            ),
            (
                doc! {"uri": "mongodb://h", "transactions": true},
                "option \"transactions\" must be a non-empty string, got boolean",
            ),
            (
                doc! {"uri": "mongodb://h", "splitLargeEvents": 1},
                "option \"splitLargeEvents\" must be a boolean, got number",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                WatchSpec::from_document(&input).unwrap_err().message,
                expected
            );
        }
    }

    #[test]
    fn partitions_refuse_a_copy_and_whole_transactions() {
        for copy in [
            doc! {"initialSnapshot": true},
            doc! {"onHistoryLost": "resnapshot"},
        ] {
            let mut partitioned = doc! {"uri": "mongodb://h", "db": "d", "collection": "c", "name": "n", "group": {"partitions": 4}};
            partitioned.extend(copy);
            let refused = WatchSpec::from_document(&partitioned).unwrap_err();
            assert!(
                refused
                    .message
                    .contains("cannot be used with \"group.partitions\""),
                "{}",
                refused.message
            );
        }
        let whole_transactions = WatchSpec::from_document(
            &doc! {"uri": "mongodb://h", "db": "d", "collection": "c", "name": "n", "group": {"partitions": 4}, "transactions": "group"},
        )
        .unwrap_err();
        assert!(
            whole_transactions.message.starts_with(
                "option \"transactions\": 'group' cannot be used with \"group.partitions\""
            ),
            "{}",
            whole_transactions.message
        );
    }

    #[test]
    fn a_snapshot_is_for_collection_streams_without_a_start_option() {
        let db_stream = WatchSpec::from_document(
            &doc! {"uri": "mongodb://h", "db": "d", "initialSnapshot": true},
        )
        .unwrap_err();
        assert!(
            db_stream
                .message
                .contains("not a database or cluster stream"),
            "{}",
            db_stream.message
        );
        let cluster =
            WatchSpec::from_document(&doc! {"uri": "mongodb://h", "onHistoryLost": "resnapshot"})
                .unwrap_err();
        assert!(
            cluster
                .message
                .starts_with("onHistoryLost: 'resnapshot' copies one collection"),
            "{}",
            cluster.message
        );
        let started = WatchSpec::from_document(
            &doc! {"uri": "mongodb://h", "db": "d", "collection": "c", "initialSnapshot": true, "startAtOperationTime": Timestamp { time: 1, increment: 1 }},
        )
        .unwrap_err();
        assert!(
            started.message.contains("cannot be used with"),
            "{}",
            started.message
        );
        let ok = test_spec(
            doc! {"initialSnapshot": {"filter": {"a": 1}}, "onHistoryLost": "resnapshot"},
        );
        assert_eq!(ok.on_history_lost, HistoryLostPolicy::Resnapshot);
        // The copy's filter is part of the shape; a stream without a snapshot keeps its own.
        assert_ne!(
            ok.owner("n").fingerprint,
            test_spec(doc! {}).owner("n").fingerprint
        );
        assert_eq!(
            test_spec(doc! {"onHistoryLost": "resnapshot"})
                .owner("n")
                .fingerprint,
            test_spec(doc! {}).owner("n").fingerprint
        );
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
        assert_eq!(spec.common.backoff.initial, Duration::from_millis(5));
        assert_eq!(spec.common.backoff.multiplier, 3.0);
        assert_eq!(spec.common.backoff.max, Duration::from_millis(50));
        assert_eq!(spec.common.backoff.max_retries, Some(4));
        assert_eq!(spec.batch_size, Some(10));
        assert_eq!(spec.max_await_time, Some(Duration::from_millis(250)));
    }
}
