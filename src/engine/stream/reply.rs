//! Reading a change stream reply: its events (copied whole, unparsed), and what moves the
//! position — the tokens, the times, an `invalidate` at the end.

use mongodb::bson::{RawDocument, RawDocumentBuf, Timestamp};

use crate::engine::errors::{EngineError, ErrorCode};
use crate::engine::reader::reply::read_docs;

/// One server reply, ready to hand out.
#[derive(Debug, Default)]
pub struct ParsedBatch {
    /// `count` BSON documents back to back.
    pub events: Vec<u8>,
    pub count: usize,
    pub last_event_id: Option<RawDocumentBuf>,
    pub post_batch_token: Option<RawDocumentBuf>,
    pub operation_time: Option<Timestamp>,
    /// The last event's `clusterTime`, when present.
    pub last_cluster_time: Option<Timestamp>,
    /// The batch ends with an `invalidate` event: the server closes the cursor after it.
    pub invalidated: bool,
}

pub fn parse_reply(reply: &RawDocument) -> Result<ParsedBatch, EngineError> {
    let docs = read_docs(reply, "change stream")?;
    // read_docs found the cursor document.
    let cursor = reply.get_document("cursor").ok();
    let mut out = ParsedBatch {
        events: docs.bytes,
        count: docs.count,
        post_batch_token: cursor
            .and_then(|c| c.get_document("postBatchResumeToken").ok())
            .map(|d| d.to_raw_document_buf()),
        operation_time: reply.get_timestamp("operationTime").ok(),
        ..ParsedBatch::default()
    };
    if let Some(event) = docs.last {
        // The spec requires `_id` (the token) on every event; a pipeline that removes it
        // makes the stream unresumable, which the server reports as 280 itself.
        let id = event
            .get_document("_id")
            .map_err(|_| {
                EngineError::new(
                    ErrorCode::ChangeStreamFatal,
                    "a change event has no _id resume token (did the pipeline remove it?)",
                )
            })?
            .to_raw_document_buf();
        out.last_event_id = Some(id);
        out.last_cluster_time = event.get_timestamp("clusterTime").ok();
        out.invalidated = event.get_str("operationType").ok() == Some("invalidate");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, Document};

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    #[test]
    fn concatenates_events_and_reads_tokens() {
        let e1 = doc! {"_id": {"_data": "01"}, "operationType": "insert", "clusterTime": Timestamp{time: 5, increment: 1}};
        let e2 = doc! {"_id": {"_data": "02"}, "operationType": "invalidate", "clusterTime": Timestamp{time: 6, increment: 1}};
        let reply = raw(doc! {
            "cursor": {"id": 0i64, "nextBatch": [e1.clone(), e2.clone()], "postBatchResumeToken": {"_data": "03"}},
            "operationTime": Timestamp{time: 7, increment: 0}, "ok": 1,
        });
        let b = parse_reply(&reply).unwrap();
        assert_eq!(b.count, 2);
        let mut expected = raw(e1).into_bytes();
        expected.extend(raw(e2).into_bytes());
        assert_eq!(b.events, expected);
        assert_eq!(b.last_event_id, Some(raw(doc! {"_data": "02"})));
        assert_eq!(b.post_batch_token, Some(raw(doc! {"_data": "03"})));
        assert_eq!(
            b.operation_time,
            Some(Timestamp {
                time: 7,
                increment: 0
            })
        );
        assert_eq!(
            b.last_cluster_time,
            Some(Timestamp {
                time: 6,
                increment: 1
            })
        );
        assert!(b.invalidated);
    }

    #[test]
    fn event_without_id_is_fatal() {
        let reply = raw(
            doc! {"cursor": {"id": 1i64, "firstBatch": [{"operationType": "insert"}]}, "ok": 1},
        );
        assert_eq!(
            parse_reply(&reply).unwrap_err().code,
            ErrorCode::ChangeStreamFatal
        );
    }
}
