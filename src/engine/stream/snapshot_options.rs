//! The `initialSnapshot` option (`stream/snapshot.rs` runs the copy it asks for). Apart from
//! the copy so that the stream's options (`spec.rs`) can hold it without importing the copy.

use mongodb::bson::{Bson, Document};

use crate::engine::errors::{EngineError, ErrorCode};
use crate::engine::options::{optional_document, optional_string, optional_whole, type_name};

/// What to do when the copy's start time fell off the oplog before the stream began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotLostPolicy {
    /// Report it (`historyLost`), then fail.
    #[default]
    Error,
    /// Report it, then copy again from the beginning with a new start time.
    Restart,
}

/// The `initialSnapshot` option: `true`, or `{ batchSize?, filter?, onHistoryLost? }`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SnapshotOptions {
    /// Which documents the copy delivers (the stream's pipeline filters change events, not
    /// documents, so the copy has its own).
    pub filter: Document,
    pub batch_size: Option<u32>,
    pub on_history_lost: SnapshotLostPolicy,
}

const SNAPSHOT_FIELDS: &[&str] = &["batchSize", "filter", "onHistoryLost"];

impl SnapshotOptions {
    /// Parses `initialSnapshot` (absent, null or false: none).
    pub fn parse(doc: &Document) -> Result<Option<Self>, EngineError> {
        let given = match doc.get("initialSnapshot") {
            None | Some(Bson::Null) | Some(Bson::Boolean(false)) => return Ok(None),
            Some(Bson::Boolean(true)) => return Ok(Some(SnapshotOptions::default())),
            Some(Bson::Document(d)) => d,
            Some(other) => {
                return Err(EngineError::invalid_option(
                    "initialSnapshot",
                    "true or a document { batchSize, filter, onHistoryLost }",
                    type_name(other),
                ))
            }
        };
        if let Some(unknown) = given
            .keys()
            .find(|k| !SNAPSHOT_FIELDS.contains(&k.as_str()))
        {
            return Err(EngineError::new(
                ErrorCode::InvalidOption,
                format!("unknown option \"initialSnapshot.{unknown}\""),
            ));
        }
        let prefixed = |e: EngineError| {
            let mut e = e;
            e.message = e
                .message
                .replacen("option \"", "option \"initialSnapshot.", 1);
            e
        };
        let filter = optional_document(given, "filter")
            .map_err(prefixed)?
            .unwrap_or_default();
        let batch_size = optional_whole(given, "batchSize", u32::MAX as u64)
            .map_err(prefixed)?
            .map(|n| n as u32);
        let on_history_lost = match optional_string(given, "onHistoryLost")
            .map_err(prefixed)?
            .as_deref()
        {
            None | Some("error") => SnapshotLostPolicy::Error,
            Some("restart") => SnapshotLostPolicy::Restart,
            Some(other) => {
                return Err(EngineError::invalid_option(
                    "initialSnapshot.onHistoryLost",
                    "'error' or 'restart'",
                    &format!("'{other}'"),
                ))
            }
        };
        Ok(Some(SnapshotOptions {
            filter,
            batch_size,
            on_history_lost,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn options_parse_and_name_the_field() {
        assert_eq!(SnapshotOptions::parse(&doc! {}).unwrap(), None);
        assert_eq!(
            SnapshotOptions::parse(&doc! {"initialSnapshot": false}).unwrap(),
            None
        );
        assert_eq!(
            SnapshotOptions::parse(&doc! {"initialSnapshot": true}).unwrap(),
            Some(SnapshotOptions::default())
        );
        let full = SnapshotOptions::parse(&doc! {"initialSnapshot": {"batchSize": 500, "filter": {"a": 1}, "onHistoryLost": "restart"}})
            .unwrap()
            .unwrap();
        assert_eq!(full.batch_size, Some(500));
        assert_eq!(full.filter, doc! {"a": 1});
        assert_eq!(full.on_history_lost, SnapshotLostPolicy::Restart);
        let cases = [
            (doc! {"initialSnapshot": 1}, "option \"initialSnapshot\" must be true or a document { batchSize, filter, onHistoryLost }, got number"),
            (doc! {"initialSnapshot": {"bogus": 1}}, "unknown option \"initialSnapshot.bogus\""),
            (doc! {"initialSnapshot": {"batchSize": "x"}}, "option \"initialSnapshot.batchSize\" must be a non-negative integer, got string"),
            (doc! {"initialSnapshot": {"onHistoryLost": "skip"}}, "option \"initialSnapshot.onHistoryLost\" must be 'error' or 'restart', got 'skip'"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                SnapshotOptions::parse(&input).unwrap_err().message,
                expected
            );
        }
    }
}
