//! The stored position of a named consumer: what a token store keeps.

use mongodb::bson::{doc, Bson, DateTime, Document, RawDocumentBuf, Timestamp};

use super::errors::{EngineError, ErrorCode};
use super::spec::WatchSpec;

/// Format version of stored records; bumped when the shape changes incompatibly.
pub const RECORD_VERSION: i32 = 1;

/// One consumer's position.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionRecord {
    pub name: String,
    pub token: RawDocumentBuf,
    /// Cluster time of the last processed event, when known.
    pub cluster_time: Option<Timestamp>,
    /// Must be re-opened with `startAfter` (an invalidate token).
    pub start_after: bool,
    pub fingerprint: String,
    pub namespace: String,
    pub written_at: DateTime,
}

impl PositionRecord {
    pub fn to_document(&self) -> Document {
        let token = self.token.to_document().unwrap_or_default();
        doc! {
            "version": RECORD_VERSION,
            "name": &self.name,
            "token": token,
            "clusterTime": self.cluster_time.map(Bson::Timestamp).unwrap_or(Bson::Null),
            "startAfter": self.start_after,
            "fingerprint": &self.fingerprint,
            "namespace": &self.namespace,
            "writtenAt": self.written_at,
        }
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
            Ok(RECORD_VERSION) => {}
            Ok(v) => return Err(corrupt(&format!("unsupported format version {v}"))),
            Err(_) => return Err(corrupt("no format version")),
        }
        let token = doc
            .get_document("token")
            .map_err(|_| corrupt("no token"))
            .and_then(|t| RawDocumentBuf::from_document(t).map_err(|_| corrupt("bad token")))?;
        Ok(PositionRecord {
            name: doc
                .get_str("name")
                .map_err(|_| corrupt("no name"))?
                .to_string(),
            token,
            cluster_time: doc.get_timestamp("clusterTime").ok(),
            start_after: doc.get_bool("startAfter").unwrap_or(false),
            fingerprint: doc
                .get_str("fingerprint")
                .map_err(|_| corrupt("no fingerprint"))?
                .to_string(),
            namespace: doc
                .get_str("namespace")
                .map_err(|_| corrupt("no namespace"))?
                .to_string(),
            written_at: doc
                .get_datetime("writtenAt")
                .copied()
                .map_err(|_| corrupt("no writtenAt"))?,
        })
    }

    /// Refuses a record written for another stream shape: resuming a different pipeline
    /// silently skips or repeats events.
    pub fn check_matches(
        &self,
        name: &str,
        spec: &WatchSpec,
        source: &str,
    ) -> Result<(), EngineError> {
        let mismatch = |what: String| {
            EngineError::new(
                ErrorCode::PositionMismatch,
                format!("the stored position \"{name}\" in {source} {what}; set allowPositionMismatch to use it anyway, or choose another name"),
            )
        };
        if self.name != name {
            return Err(mismatch(format!("belongs to \"{}\"", self.name)));
        }
        if self.namespace != spec.namespace() {
            return Err(mismatch(format!(
                "was written for namespace {}, not {}",
                self.namespace,
                spec.namespace()
            )));
        }
        let expected = fingerprint(spec);
        if self.fingerprint != expected {
            return Err(mismatch(
                "was written for a different pipeline or different watch options".to_string(),
            ));
        }
        Ok(())
    }
}

/// A stable hash (FNV-1a, 64 bit) of what shapes the events: namespace, pipeline, and the
/// `$changeStream` and collation options. Batch size, timeouts and backoff do not count.
pub fn fingerprint(spec: &WatchSpec) -> String {
    let shape = doc! {
        "namespace": spec.namespace(),
        "pipeline": spec.pipeline.iter().cloned().map(Bson::Document).collect::<Vec<_>>(),
        "stage": spec.stage_options.clone(),
        "collation": spec.collation.clone().map(Bson::Document).unwrap_or(Bson::Null),
    };
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

    fn spec(extra: Document) -> WatchSpec {
        let mut d = doc! {"uri": "mongodb://h", "db": "d", "collection": "c"};
        d.extend(extra);
        WatchSpec::from_document(&d).unwrap()
    }

    fn record(s: &WatchSpec) -> PositionRecord {
        PositionRecord {
            name: "n".into(),
            token: RawDocumentBuf::from_document(&doc! {"_data": "01"}).unwrap(),
            cluster_time: Some(Timestamp {
                time: 5,
                increment: 1,
            }),
            start_after: false,
            fingerprint: fingerprint(s),
            namespace: s.namespace(),
            written_at: DateTime::from_millis(1000),
        }
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
        assert!(r.check_matches("n", &s, "x").is_ok());
        let e = r.check_matches("other", &s, "x").unwrap_err();
        assert_eq!(e.code, ErrorCode::PositionMismatch);
        let e = r
            .check_matches("n", &spec(doc! {"pipeline": [{"$match": {"a": 1}}]}), "x")
            .unwrap_err();
        assert!(e.message.contains("different pipeline"), "{}", e.message);
        let other_ns =
            WatchSpec::from_document(&doc! {"uri": "mongodb://h", "db": "d", "collection": "z"})
                .unwrap();
        assert!(r
            .check_matches("n", &other_ns, "x")
            .unwrap_err()
            .message
            .contains("namespace d.c"));
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
