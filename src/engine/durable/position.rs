//! The stored position of a named consumer: what a token store keeps. A change stream
//! stores its resume token; a restartable cursor the key of the last document processed.

use mongodb::bson::{doc, Bson, DateTime, Document, RawDocument, RawDocumentBuf, Timestamp};

use crate::engine::errors::{EngineError, ErrorCode};

/// Format version of stored records; bumped when the shape changes incompatibly.
pub const RECORD_VERSION: i32 = 1;

/// The version of a record holding an initial snapshot's progress (`snapshot` field). A
/// release that knows only version 1 refuses it rather than reading it as a position at a
/// time (which would skip the rest of the copy); every other record stays version 1, so a
/// downgrade keeps working for them.
pub const SNAPSHOT_RECORD_VERSION: i32 = 2;

/// What kind of reader wrote a record (`kind` in the stored document).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderKind {
    ChangeStream,
    Cursor,
}

impl ReaderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReaderKind::ChangeStream => "changeStream",
            ReaderKind::Cursor => "cursor",
        }
    }
}

/// Who a record belongs to: the consumer's name, and the shape of what it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub kind: ReaderKind,
    pub name: String,
    pub namespace: String,
    pub fingerprint: String,
}

/// Where a consumer is.
#[derive(Debug, Clone, PartialEq)]
pub enum Position {
    /// A change stream's resume token.
    Stream {
        token: RawDocumentBuf,
        /// Cluster time of the last processed event, when known.
        cluster_time: Option<Timestamp>,
        /// Must be re-opened with `startAfter` (an invalidate token).
        start_after: bool,
    },
    /// A change stream that opens with `startAtOperationTime` at `cluster_time`: a position
    /// moved back to a time (`positions rewind --to <time>`), before any event gave it a
    /// token. Stored as a change stream record whose `token` is null.
    StreamAt { cluster_time: Timestamp },
    /// A restartable cursor: the key of the last document processed, exactly as stored in
    /// the collection (an Int64 stays an Int64).
    Cursor { last_key: Bson },
    /// A change stream in its initial snapshot: the copy processed every document up to
    /// `last_key` (in `_id` order); then it streams from `start_time`, read before the copy
    /// began. Stored as a change stream record (version 2) with a null `token`,
    /// `clusterTime` = the start time, and `snapshot: { startTime, lastKey }`.
    Snapshot {
        start_time: Timestamp,
        last_key: Bson,
    },
}

impl Position {
    /// A change stream's position after `event` (one change event's BSON): its `_id`, or
    /// `end_token` when the event ends its batch.
    pub fn after_event(event: &[u8], end_token: Option<&[u8]>) -> Result<Self, EngineError> {
        let bad = || EngineError::new(ErrorCode::ClientError, "commit: not a change event");
        let event = RawDocument::from_bytes(event).map_err(|_| bad())?;
        let token = match end_token {
            Some(bytes) => RawDocument::from_bytes(bytes).map_err(|_| bad())?,
            None => event.get_document("_id").map_err(|_| bad())?,
        };
        Ok(Position::Stream {
            token: token.to_raw_document_buf(),
            cluster_time: event.get_timestamp("clusterTime").ok(),
            start_after: event.get_str("operationType").ok() == Some("invalidate"),
        })
    }

    /// A change stream's position that advanced without an event (postBatchResumeToken).
    pub fn token_only(token: &[u8], cluster_time: Option<Timestamp>) -> Result<Self, EngineError> {
        let token = RawDocument::from_bytes(token)
            .map_err(|_| EngineError::new(ErrorCode::ClientError, "commit: not a token"))?;
        Ok(Position::Stream {
            token: token.to_raw_document_buf(),
            cluster_time,
            start_after: false,
        })
    }
}

/// One consumer's position.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionRecord {
    pub owner: Owner,
    pub position: Position,
    pub written_at: DateTime,
}

impl PositionRecord {
    pub fn to_document(&self) -> Document {
        let owner = &self.owner;
        let version = match self.position {
            Position::Snapshot { .. } => SNAPSHOT_RECORD_VERSION,
            _ => RECORD_VERSION,
        };
        let mut doc = doc! {
            "version": version,
            "kind": owner.kind.as_str(),
            "name": &owner.name,
        };
        match &self.position {
            Position::Stream {
                token,
                cluster_time,
                start_after,
            } => {
                doc.insert("token", token.to_document().unwrap_or_default());
                doc.insert(
                    "clusterTime",
                    cluster_time.map(Bson::Timestamp).unwrap_or(Bson::Null),
                );
                doc.insert("startAfter", *start_after);
            }
            Position::StreamAt { cluster_time } => {
                doc.insert("token", Bson::Null);
                doc.insert("clusterTime", *cluster_time);
                doc.insert("startAfter", false);
            }
            Position::Cursor { last_key } => {
                doc.insert("lastKey", last_key.clone());
            }
            Position::Snapshot {
                start_time,
                last_key,
            } => {
                doc.insert("token", Bson::Null);
                doc.insert("clusterTime", *start_time);
                doc.insert("startAfter", false);
                doc.insert(
                    "snapshot",
                    doc! { "startTime": *start_time, "lastKey": last_key.clone() },
                );
            }
        }
        doc.insert("fingerprint", &owner.fingerprint);
        doc.insert("namespace", &owner.namespace);
        doc.insert("writtenAt", self.written_at);
        doc
    }

    /// Reads a stored record; `source` names where it came from, for the error.
    pub fn from_document(doc: &Document, source: &str) -> Result<Self, EngineError> {
        let corrupt = |what: &str| {
            EngineError::new(
                ErrorCode::TokenStore,
                format!("the stored position in {source} is unreadable: {what}"),
            )
        };
        match doc.get_i32("version") {
            Ok(RECORD_VERSION | SNAPSHOT_RECORD_VERSION) => {}
            Ok(v) => return Err(corrupt(&format!("unsupported format version {v}"))),
            Err(_) => return Err(corrupt("no format version")),
        }
        // Records written before `kind` existed are change streams'.
        let kind = match doc.get_str("kind") {
            Err(_) | Ok("changeStream") => ReaderKind::ChangeStream,
            Ok("cursor") => ReaderKind::Cursor,
            Ok(other) => return Err(corrupt(&format!("unknown kind \"{other}\""))),
        };
        let position = match kind {
            ReaderKind::ChangeStream if doc.get("snapshot").is_some() => {
                let snapshot = doc
                    .get_document("snapshot")
                    .map_err(|_| corrupt("a snapshot field that is not a document"))?;
                Position::Snapshot {
                    start_time: snapshot
                        .get_timestamp("startTime")
                        .map_err(|_| corrupt("a snapshot without startTime"))?,
                    last_key: snapshot
                        .get("lastKey")
                        .filter(|k| !matches!(k, Bson::Null | Bson::Array(_)))
                        .cloned()
                        .ok_or_else(|| corrupt("a snapshot without lastKey"))?,
                }
            }
            ReaderKind::ChangeStream if doc.get("token") == Some(&Bson::Null) => {
                Position::StreamAt {
                    cluster_time: doc
                        .get_timestamp("clusterTime")
                        .map_err(|_| corrupt("no token and no clusterTime"))?,
                }
            }
            ReaderKind::ChangeStream => Position::Stream {
                token: doc
                    .get_document("token")
                    .map_err(|_| corrupt("no token"))
                    .and_then(|t| {
                        RawDocumentBuf::from_document(t).map_err(|_| corrupt("bad token"))
                    })?,
                cluster_time: doc.get_timestamp("clusterTime").ok(),
                start_after: doc.get_bool("startAfter").unwrap_or(false),
            },
            ReaderKind::Cursor => Position::Cursor {
                last_key: doc
                    .get("lastKey")
                    .filter(|k| !matches!(k, Bson::Null | Bson::Document(_) | Bson::Array(_)))
                    .cloned()
                    .ok_or_else(|| corrupt("no lastKey"))?,
            },
        };
        let text = |field: &str| {
            doc.get_str(field)
                .map(str::to_string)
                .map_err(|_| corrupt(&format!("no {field}")))
        };
        Ok(PositionRecord {
            owner: Owner {
                kind,
                name: text("name")?,
                namespace: text("namespace")?,
                fingerprint: text("fingerprint")?,
            },
            position,
            written_at: doc
                .get_datetime("writtenAt")
                .copied()
                .map_err(|_| corrupt("no writtenAt"))?,
        })
    }

    /// Refuses a record written by another consumer shape: resuming a different pipeline
    /// or filter silently skips or repeats what is read. `allow_mismatch` accepts another
    /// name, namespace or shape, never another kind of reader.
    pub fn check_matches(
        &self,
        expected: &Owner,
        allow_mismatch: bool,
        source: &str,
    ) -> Result<(), EngineError> {
        let name = &expected.name;
        let mismatch = |what: String| {
            EngineError::new(
                ErrorCode::PositionMismatch,
                format!("the stored position \"{name}\" in {source} {what}; set allowPositionMismatch to use it anyway, or choose another name"),
            )
        };
        let found = &self.owner;
        if found.kind != expected.kind {
            // Never usable, even with allowPositionMismatch: a token is not a key.
            return Err(EngineError::new(
                ErrorCode::PositionMismatch,
                format!(
                    "the stored position \"{name}\" in {source} was written by a {}, not a {}; choose another name",
                    found.kind.as_str(),
                    expected.kind.as_str()
                ),
            ));
        }
        if allow_mismatch {
            return Ok(());
        }
        if found.name != *name {
            return Err(mismatch(format!("belongs to \"{}\"", found.name)));
        }
        if found.namespace != expected.namespace {
            return Err(mismatch(format!(
                "was written for namespace {}, not {}",
                found.namespace, expected.namespace
            )));
        }
        if found.fingerprint != expected.fingerprint {
            let what = match expected.kind {
                ReaderKind::ChangeStream => "a different pipeline or different watch options",
                ReaderKind::Cursor => "a different filter, projection, key or cursor type",
            };
            return Err(mismatch(format!("was written for {what}")));
        }
        Ok(())
    }
}

/// A stable hash (FNV-1a, 64 bit) of a document's canonical Extended JSON.
pub fn fingerprint_of(shape: Document) -> String {
    let bytes = Bson::Document(shape).into_canonical_extjson().to_string();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes.as_bytes() {
        hash ^= *b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::engine::stream::spec::{test_spec as spec, WatchSpec};

    use crate::engine::reader::source::ReaderSpec;

    fn stream_owner(name: &str, spec: &WatchSpec) -> Owner {
        spec.owner(name)
    }

    fn fingerprint(spec: &WatchSpec) -> String {
        spec.owner("n").fingerprint
    }

    fn record(s: &WatchSpec) -> PositionRecord {
        PositionRecord {
            owner: stream_owner("n", s),
            position: Position::Stream {
                token: RawDocumentBuf::from_document(&doc! {"_data": "01"}).unwrap(),
                cluster_time: Some(Timestamp {
                    time: 5,
                    increment: 1,
                }),
                start_after: false,
            },
            written_at: DateTime::from_millis(1000),
        }
    }

    #[test]
    fn a_stream_position_reads_the_event() {
        let event = |id: &str, op: &str| {
            RawDocumentBuf::from_document(&doc! {"_id": {"_data": id}, "operationType": op, "clusterTime": Timestamp{time: 9, increment: 1}})
                .unwrap()
                .into_bytes()
        };
        let Position::Stream {
            token,
            cluster_time,
            start_after,
        } = Position::after_event(&event("01", "insert"), None).unwrap()
        else {
            panic!("a stream position")
        };
        assert_eq!(token.to_document().unwrap(), doc! {"_data": "01"});
        assert_eq!(
            cluster_time,
            Some(Timestamp {
                time: 9,
                increment: 1
            })
        );
        assert!(!start_after);
        let end = RawDocumentBuf::from_document(&doc! {"_data": "pb"}).unwrap();
        let p = Position::after_event(&event("02", "invalidate"), Some(end.as_bytes())).unwrap();
        assert!(matches!(p, Position::Stream { token, start_after: true, .. } if token == end));
    }

    #[test]
    fn round_trips_through_a_document() {
        let s = spec(doc! {});
        let r = record(&s);
        assert_eq!(
            PositionRecord::from_document(&r.to_document(), "x").unwrap(),
            r
        );
    }

    #[test]
    fn a_position_at_a_time_has_a_null_token_and_its_cluster_time() {
        let s = spec(doc! {});
        let at = Timestamp {
            time: 77,
            increment: 0,
        };
        let r = PositionRecord {
            position: Position::StreamAt { cluster_time: at },
            ..record(&s)
        };
        let stored = r.to_document();
        assert_eq!(stored.get("token"), Some(&Bson::Null));
        assert_eq!(stored.get_timestamp("clusterTime"), Ok(at));
        assert_eq!(PositionRecord::from_document(&stored, "x").unwrap(), r);
        let mut timeless = stored.clone();
        timeless.insert("clusterTime", Bson::Null);
        let e = PositionRecord::from_document(&timeless, "x").unwrap_err();
        assert!(
            e.message.contains("no token and no clusterTime"),
            "{}",
            e.message
        );
    }

    #[test]
    fn fingerprint_ignores_batching_but_not_pipeline() {
        let base = fingerprint(&spec(doc! {}));
        assert_eq!(
            base,
            fingerprint(&spec(doc! {"batchSize": 5, "maxAwaitTimeMS": 10}))
        );
        assert_ne!(
            base,
            fingerprint(&spec(doc! {"pipeline": [{"$match": {"a": 1}}]}))
        );
        assert_ne!(
            base,
            fingerprint(&spec(doc! {"fullDocument": "updateLookup"}))
        );
    }

    #[test]
    fn mismatches_are_refused_with_a_reason() {
        let s = spec(doc! {});
        let r = record(&s);
        assert!(r.check_matches(&stream_owner("n", &s), false, "x").is_ok());
        let piped = spec(doc! {"pipeline": [{"$match": {"a": 1}}]});
        assert!(r
            .check_matches(&stream_owner("other", &piped), true, "x")
            .is_ok());
        let e = r
            .check_matches(&stream_owner("other", &s), false, "x")
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::PositionMismatch);
        let piped = spec(doc! {"pipeline": [{"$match": {"a": 1}}]});
        let e = r
            .check_matches(&stream_owner("n", &piped), false, "x")
            .unwrap_err();
        assert!(e.message.contains("different pipeline"), "{}", e.message);
        let other_ns =
            WatchSpec::from_document(&doc! {"uri": "mongodb://h", "db": "d", "collection": "z"})
                .unwrap();
        assert!(r
            .check_matches(&stream_owner("n", &other_ns), false, "x")
            .unwrap_err()
            .message
            .contains("namespace d.c"));
    }

    #[test]
    fn cursor_records_keep_the_exact_key_and_refuse_a_stream() {
        let owner = Owner {
            kind: ReaderKind::Cursor,
            name: "n".into(),
            namespace: "d.c".into(),
            fingerprint: "f".into(),
        };
        let r = PositionRecord {
            owner: owner.clone(),
            position: Position::Cursor {
                last_key: Bson::Int64((1 << 53) + 1),
            },
            written_at: DateTime::from_millis(1000),
        };
        let doc = r.to_document();
        assert_eq!(doc.get_i64("lastKey"), Ok((1 << 53) + 1));
        let back = PositionRecord::from_document(&doc, "x").unwrap();
        assert_eq!(back, r);
        assert!(back.check_matches(&owner, false, "x").is_ok());
        let s = spec(doc! {});
        let e = back
            .check_matches(&stream_owner("n", &s), false, "x")
            .unwrap_err();
        assert!(e.message.contains("written by a cursor"), "{}", e.message);
        // allowPositionMismatch accepts another shape, never another kind of reader.
        let e = back
            .check_matches(&stream_owner("n", &s), true, "x")
            .unwrap_err();
        assert!(e.message.contains("written by a cursor"), "{}", e.message);
        // Records written before `kind` existed read as a change stream's.
        let mut old = record(&s).to_document();
        old.remove("kind");
        assert_eq!(
            PositionRecord::from_document(&old, "x").unwrap(),
            record(&s)
        );
    }

    #[test]
    fn a_snapshot_record_is_version_2_and_keeps_its_start_time_and_exact_key() {
        let s = spec(doc! {});
        let start_time = Timestamp {
            time: 88,
            increment: 3,
        };
        let r = PositionRecord {
            position: Position::Snapshot {
                start_time,
                last_key: Bson::Int64((1 << 53) + 1),
            },
            ..record(&s)
        };
        let stored = r.to_document();
        assert_eq!(stored.get_i32("version"), Ok(SNAPSHOT_RECORD_VERSION));
        assert_eq!(stored.get("token"), Some(&Bson::Null));
        assert_eq!(stored.get_timestamp("clusterTime"), Ok(start_time));
        assert_eq!(PositionRecord::from_document(&stored, "x").unwrap(), r);
        // Every other record stays version 1 (older releases read it).
        assert_eq!(record(&s).to_document().get_i32("version"), Ok(1));
        let mut keyless = stored.clone();
        keyless.insert("snapshot", doc! {"startTime": start_time});
        let e = PositionRecord::from_document(&keyless, "x").unwrap_err();
        assert!(e.message.contains("without lastKey"), "{}", e.message);
        let mut future = stored;
        future.insert("version", 3);
        let e = PositionRecord::from_document(&future, "x").unwrap_err();
        assert!(
            e.message.contains("unsupported format version 3"),
            "{}",
            e.message
        );
    }

    #[test]
    fn records_never_hold_the_connection_string() {
        let s = WatchSpec::from_document(
            &doc! {"uri": "mongodb://alice:s3cr3t@db1:27017/?authSource=admin", "db": "d", "collection": "c"},
        )
        .unwrap();
        let text = Bson::Document(record(&s).to_document())
            .into_canonical_extjson()
            .to_string();
        assert!(
            !text.contains("s3cr3t") && !text.contains("alice") && !text.contains("db1"),
            "{text}"
        );
    }

    #[test]
    fn corrupt_records_name_the_source() {
        let e =
            PositionRecord::from_document(&doc! {"version": 1}, "file /tmp/p.json").unwrap_err();
        assert_eq!(e.code, ErrorCode::TokenStore);
        assert!(e.message.contains("file /tmp/p.json"));
    }
}
