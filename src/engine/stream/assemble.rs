//! Turning the events of a reply into the units a consumer may be handed, one at a time, and
//! positioned after: a large event's fragments (`$changeStreamSplitLargeEvent`) become the
//! one event they were split from, and (`transactions: 'group'`) the events of one
//! multi-document transaction become one `transaction` document. What is not complete at
//! the end of a reply is held here until a later reply completes it; the position handed
//! out with a batch never passes it, so no stored position is ever inside a fragment group
//! or a transaction (`StreamSource::on_reply` uses the units' tokens, not the reply's
//! postBatchResumeToken, while something is held).
//!
//! Every unit keeps `_id` = the token after it (the last fragment's, the transaction's last
//! event's) and its `clusterTime`, so `Position::after_event` positions after it whole.

use std::borrow::Cow;
use std::collections::HashSet;

use mongodb::bson::{Bson, RawArrayBuf, RawBsonRef, RawDocument, RawDocumentBuf};

use super::reply::ParsedBatch;
use super::spec::LargeEventPolicy;
use crate::engine::errors::{EngineError, ErrorCode, EVENT_TOO_LARGE};
use crate::engine::reader::reply::doc_at;

/// The field `$changeStreamSplitLargeEvent` marks fragments with (`{fragment, of}`; some
/// servers mark unsplit events `{1, 1}` too).
const SPLIT_EVENT: &str = "splitEvent";

/// The `operationType` of the documents this module makes. No server event has them; the
/// facade reads them only when the option that makes them is on.
pub const TRANSACTION: &str = "transaction";
pub const LARGE_EVENT_SKIPPED: &str = "largeEventSkipped";

/// The fragments of one split event read so far.
struct Fragments {
    parts: Vec<RawDocumentBuf>,
    of: i64,
}

/// The events of the transaction read last, held until an event of another (or none) shows
/// it ended, or the server's position moved past it.
struct OpenTransaction {
    /// `lsid` (its BSON bytes) and `txnNumber`: what the events of one transaction share.
    key: (Vec<u8>, i64),
    events: Vec<RawDocumentBuf>,
}

/// What is held between replies, besides the options that decide what is held.
pub struct Assembler {
    policy: LargeEventPolicy,
    group_transactions: bool,
    fragments: Option<Fragments>,
    transaction: Option<OpenTransaction>,
}

/// The units of one reply, back to back.
#[derive(Default)]
struct Units {
    bytes: Vec<u8>,
    count: usize,
    /// Where the last unit starts in `bytes`.
    last_at: Option<usize>,
}

impl Units {
    fn push(&mut self, unit: &RawDocument) {
        self.last_at = Some(self.bytes.len());
        self.bytes.extend_from_slice(unit.as_bytes());
        self.count += 1;
    }
}

impl Assembler {
    pub fn new(policy: LargeEventPolicy, group_transactions: bool) -> Self {
        Assembler {
            policy,
            group_transactions,
            fragments: None,
            transaction: None,
        }
    }

    /// A re-open reads again from the position handed out last: what was held is read again.
    pub fn reset(&mut self) {
        self.fragments = None;
        self.transaction = None;
    }

    /// Whether part of a unit is held (then the reply's own position must not be used).
    pub fn holds(&self) -> bool {
        self.fragments.is_some() || self.transaction.is_some()
    }

    /// Rewrites one reply into whole units. `split`: the stream runs with
    /// `$changeStreamSplitLargeEvent` (events may be fragments, or marked `{1, 1}`).
    pub fn feed(&mut self, parsed: ParsedBatch, split: bool) -> Result<ParsedBatch, EngineError> {
        let mut units = Units {
            bytes: Vec::with_capacity(parsed.events.len()),
            ..Units::default()
        };
        let mut at = 0usize;
        for _ in 0..parsed.count {
            let event = doc_at(&parsed.events[at..], 0)?;
            at += event.as_bytes().len();
            let whole = if split {
                match self.fragment(event)? {
                    Some(whole) => whole,
                    None => continue,
                }
            } else {
                Cow::Borrowed(event)
            };
            if self.group_transactions {
                self.transaction(whole, &mut units)?;
            } else {
                units.push(&whole);
            }
        }
        // The server scanned past the held transaction (its position is no longer the last
        // event's token): nothing more of it can come.
        if let (Some(open), Some(pbrt)) = (&self.transaction, &parsed.post_batch_token) {
            let last_id = open.events.last().and_then(|e| e.get_document("_id").ok());
            if last_id != Some(pbrt.as_ref()) {
                self.close_transaction(&mut units)?;
            }
        }
        let holds = self.holds();
        let mut out = ParsedBatch {
            events: Vec::new(),
            count: units.count,
            // While something is held, the reply's own position is past it.
            post_batch_token: if holds { None } else { parsed.post_batch_token },
            operation_time: if holds { None } else { parsed.operation_time },
            ..ParsedBatch::default()
        };
        if let Some(at) = units.last_at {
            let last = doc_at(&units.bytes[at..], 0)?;
            out.last_event_id = Some(id_of(last)?.to_raw_document_buf());
            out.last_cluster_time = last.get_timestamp("clusterTime").ok();
            out.invalidated = last.get_str("operationType").ok() == Some("invalidate");
        }
        out.events = units.bytes;
        Ok(out)
    }

    /// One event of a stream with the split stage: `None` while a split event's fragments
    /// are incomplete, else the whole event (joined, or a skip notice), without `splitEvent`.
    fn fragment<'a>(
        &mut self,
        event: &'a RawDocument,
    ) -> Result<Option<Cow<'a, RawDocument>>, EngineError> {
        let split = match event.get(SPLIT_EVENT) {
            Ok(Some(RawBsonRef::Document(split))) => split,
            _ => {
                if self.fragments.is_some() {
                    return Err(out_of_order(
                        "an event came between the fragments of a split event",
                    ));
                }
                return Ok(Some(Cow::Borrowed(event)));
            }
        };
        let (fragment, of) = (whole_number(split, "fragment")?, whole_number(split, "of")?);
        if of == 1 && fragment == 1 {
            return Ok(Some(Cow::Owned(without_field(event, SPLIT_EVENT)?)));
        }
        match &mut self.fragments {
            None if fragment == 1 => {
                self.fragments = Some(Fragments {
                    parts: vec![event.to_raw_document_buf()],
                    of,
                });
                return Ok(None);
            }
            Some(held) if held.of == of && held.parts.len() as i64 + 1 == fragment => {
                held.parts.push(event.to_raw_document_buf());
            }
            // Only a position inside a fragment group leads here, and none is ever handed out.
            _ => {
                return Err(out_of_order(&format!(
                    "fragment {fragment} of {of} of a split event came out of order"
                )))
            }
        }
        if fragment < of {
            return Ok(None);
        }
        let Some(held) = self.fragments.take() else {
            return Ok(None);
        };
        let joined = join(&held.parts)?;
        match self.policy {
            LargeEventPolicy::Split => Ok(Some(Cow::Owned(joined))),
            LargeEventPolicy::Skip => Ok(Some(Cow::Owned(skip_notice(&joined, of)?))),
            LargeEventPolicy::Error => Err(too_large(&joined)),
        }
    }

    /// One whole event of a stream that groups transactions.
    fn transaction(
        &mut self,
        event: Cow<'_, RawDocument>,
        units: &mut Units,
    ) -> Result<(), EngineError> {
        let key = transaction_key(&event);
        if let (Some(open), Some(key)) = (&mut self.transaction, &key) {
            if &open.key == key {
                open.events.push(event.into_owned());
                return Ok(());
            }
        }
        self.close_transaction(units)?;
        match key {
            Some(key) => {
                self.transaction = Some(OpenTransaction {
                    key,
                    events: vec![event.into_owned()],
                })
            }
            None => units.push(&event),
        }
        Ok(())
    }

    /// The held transaction ended: it becomes one unit.
    fn close_transaction(&mut self, units: &mut Units) -> Result<(), EngineError> {
        let Some(open) = self.transaction.take() else {
            return Ok(());
        };
        let Some(last) = open.events.last() else {
            return Ok(());
        };
        let first = &open.events[0];
        let mut unit = RawDocumentBuf::new();
        unit.append_ref("_id", RawBsonRef::Document(id_of(last)?));
        unit.append("operationType", TRANSACTION);
        for key in ["lsid", "txnNumber"] {
            if let Ok(Some(value)) = first.get(key) {
                unit.append_ref(key, value);
            }
        }
        if let Ok(Some(time)) = last.get("clusterTime") {
            unit.append_ref("clusterTime", time);
        }
        let mut events = RawArrayBuf::new();
        for event in open.events {
            events.push(event);
        }
        unit.append("events", events);
        units.push(&unit);
        Ok(())
    }
}

fn id_of(event: &RawDocument) -> Result<&RawDocument, EngineError> {
    event.get_document("_id").map_err(|_| {
        EngineError::new(
            ErrorCode::ChangeStreamFatal,
            "a change event has no _id resume token (did the pipeline remove it?)",
        )
    })
}

/// `lsid` and `txnNumber`: present (both) only on the events of a multi-document transaction.
fn transaction_key(event: &RawDocument) -> Option<(Vec<u8>, i64)> {
    let lsid = event.get_document("lsid").ok()?;
    let number = match event.get("txnNumber").ok()?? {
        RawBsonRef::Int64(n) => n,
        RawBsonRef::Int32(n) => i64::from(n),
        _ => return None,
    };
    Some((lsid.as_bytes().to_vec(), number))
}

fn whole_number(doc: &RawDocument, key: &str) -> Result<i64, EngineError> {
    match doc.get(key) {
        Ok(Some(RawBsonRef::Int32(n))) => Ok(i64::from(n)),
        Ok(Some(RawBsonRef::Int64(n))) => Ok(n),
        _ => Err(out_of_order(&format!(
            "a splitEvent without a whole \"{key}\""
        ))),
    }
}

fn out_of_order(what: &str) -> EngineError {
    EngineError::new(
        ErrorCode::ChangeStreamFatal,
        format!("{what}; the stream cannot join it into one event"),
    )
}

/// The event the fragments were split from: every top-level field once, in the order
/// first seen, `_id` the last fragment's (the token after the whole event), no `splitEvent`.
fn join(parts: &[RawDocumentBuf]) -> Result<RawDocumentBuf, EngineError> {
    let bad = || EngineError::new(ErrorCode::ClientError, "a fragment is not well-formed BSON");
    let last = parts.last().ok_or_else(bad)?;
    let mut joined = RawDocumentBuf::new();
    joined.append_ref("_id", RawBsonRef::Document(id_of(last)?));
    let mut seen: HashSet<&str> = HashSet::from(["_id", SPLIT_EVENT]);
    for part in parts {
        for field in part.iter() {
            let (key, value) = field.map_err(|_| bad())?;
            if seen.insert(key) {
                joined.append_ref(key, value);
            }
        }
    }
    Ok(joined)
}

/// `event` without its top-level `key`, by copying the bytes around it (no re-encoding:
/// this runs on every event of a stream with the split stage on servers that mark unsplit
/// events).
fn without_field(event: &RawDocument, key: &str) -> Result<RawDocumentBuf, EngineError> {
    let bad = || EngineError::new(ErrorCode::ClientError, "an event is not well-formed BSON");
    let bytes = event.as_bytes();
    let mut at = 4usize;
    for element in event.iter_elements() {
        let element = element.map_err(|_| bad())?;
        // type byte, key, NUL, value
        let size = 1 + element.key().len() + 1 + element.len();
        if element.key() == key {
            let mut out = Vec::with_capacity(bytes.len() - size);
            out.extend_from_slice(&bytes[..at]);
            out.extend_from_slice(bytes.get(at + size..).ok_or_else(bad)?);
            let length = (out.len() as i32).to_le_bytes();
            out[..4].copy_from_slice(&length);
            return RawDocumentBuf::from_bytes(out).map_err(|_| bad());
        }
        at += size;
    }
    Ok(event.to_raw_document_buf())
}

/// What `onLargeEvent: 'skip'` hands out instead of the event: enough to find it again
/// (token, namespace, documentKey), its size, and the position after it.
fn skip_notice(joined: &RawDocument, fragments: i64) -> Result<RawDocumentBuf, EngineError> {
    let mut notice = RawDocumentBuf::new();
    notice.append_ref("_id", RawBsonRef::Document(id_of(joined)?));
    notice.append("operationType", LARGE_EVENT_SKIPPED);
    for key in ["clusterTime", "ns", "documentKey", "lsid", "txnNumber"] {
        if let Ok(Some(value)) = joined.get(key) {
            notice.append_ref(key, value);
        }
    }
    if let Ok(op) = joined.get_str("operationType") {
        notice.append("skippedOperationType", op);
    }
    notice.append("size", joined.as_bytes().len() as i64);
    notice.append("fragments", fragments);
    Ok(notice)
}

/// `onLargeEvent: 'error'`: the stream fails, naming the event and the ways past it.
fn too_large(joined: &RawDocument) -> EngineError {
    let show = |key: &str| match joined.get(key) {
        Ok(Some(value)) => match value.to_raw_bson().try_into() {
            Ok(bson @ Bson::Document(_)) => bson.into_relaxed_extjson().to_string(),
            Ok(bson) => bson.to_string(),
            Err(_) => String::from("?"),
        },
        _ => String::from("(none)"),
    };
    let mut error = EngineError::new(
        ErrorCode::ChangeStreamFatal,
        format!(
            "a change event is larger than 16 MB ({} bytes: {} of documentKey {} in {}; resume \
             token {}) and onLargeEvent is 'error'. To go on: onLargeEvent 'split' (the event \
             whole) or 'skip' (a largeEventSkipped notice), or start after that token; to \
             avoid such events, request fewer images (fullDocument / fullDocumentBeforeChange) \
             or $project fewer fields",
            joined.as_bytes().len(),
            joined.get_str("operationType").unwrap_or("?"),
            show("documentKey"),
            show("ns"),
            show("_id"),
        ),
    );
    error.server_code = Some(EVENT_TOO_LARGE);
    error.code_name = Some(String::from("BSONObjectTooLarge"));
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, Document, Timestamp};

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    fn reply(events: &[Document], pbrt: Option<&str>) -> ParsedBatch {
        let mut bytes = Vec::new();
        for e in events {
            bytes.extend(raw(e.clone()).into_bytes());
        }
        ParsedBatch {
            events: bytes,
            count: events.len(),
            post_batch_token: pbrt.map(|t| raw(doc! {"_data": t})),
            operation_time: Some(Timestamp {
                time: 99,
                increment: 0,
            }),
            ..ParsedBatch::default()
        }
    }

    fn docs(b: &ParsedBatch) -> Vec<Document> {
        (0..b.count)
            .map(|i| Document::try_from(doc_at(&b.events, i).unwrap()).unwrap())
            .collect()
    }

    fn event(id: &str, extra: Document) -> Document {
        let mut d = doc! {"_id": {"_data": id}, "operationType": "insert",
        "clusterTime": Timestamp { time: 1, increment: 1 }};
        d.extend(extra);
        d
    }

    fn tx(id: &str, n: i64) -> Document {
        event(id, doc! {"lsid": {"id": "s1"}, "txnNumber": n})
    }

    #[test]
    fn unsplit_events_lose_their_one_of_one_mark() {
        let mut a = Assembler::new(LargeEventPolicy::Split, false);
        let e = event(
            "a",
            doc! {"documentKey": {"_id": 1}, "splitEvent": {"fragment": 1, "of": 1}, "z": 1},
        );
        let out = a.feed(reply(&[e], Some("p")), true).unwrap();
        assert_eq!(
            docs(&out),
            vec![event("a", doc! {"documentKey": {"_id": 1}, "z": 1})]
        );
        assert_eq!(out.post_batch_token, Some(raw(doc! {"_data": "p"})));
    }

    #[test]
    fn fragments_across_replies_join_and_hold_the_position_back() {
        let mut a = Assembler::new(LargeEventPolicy::Split, false);
        let f1 = event(
            "f1",
            doc! {"documentKey": {"_id": 7}, "fullDocument": {"a": "x"}, "splitEvent": {"fragment": 1, "of": 2}},
        );
        let f2 = doc! {"_id": {"_data": "f2"}, "updateDescription": {"u": 1}, "splitEvent": {"fragment": 2, "of": 2}};
        let first = a
            .feed(reply(&[event("e0", doc! {}), f1], Some("f1")), true)
            .unwrap();
        assert_eq!(first.count, 1);
        assert_eq!(first.last_event_id, Some(raw(doc! {"_data": "e0"})));
        assert_eq!(
            first.post_batch_token, None,
            "the reply's position is inside the group"
        );
        assert_eq!(first.operation_time, None);
        assert!(a.holds());
        let second = a.feed(reply(&[f2], Some("f2")), true).unwrap();
        let mut expected = event(
            "f2",
            doc! {"documentKey": {"_id": 7}, "fullDocument": {"a": "x"}},
        );
        expected.insert("updateDescription", doc! {"u": 1});
        assert_eq!(docs(&second), vec![expected]);
        assert_eq!(second.last_event_id, Some(raw(doc! {"_data": "f2"})));
        assert!(!a.holds());
    }

    #[test]
    fn skip_and_error_policies_name_the_event() {
        let f1 = event(
            "f1",
            doc! {"ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": 7}, "splitEvent": {"fragment": 1, "of": 2}},
        );
        let f2 = doc! {"_id": {"_data": "f2"}, "fullDocument": {"a": "x"}, "splitEvent": {"fragment": 2, "of": 2}};
        let mut skip = Assembler::new(LargeEventPolicy::Skip, false);
        let out = skip
            .feed(reply(&[f1.clone(), f2.clone()], Some("f2")), true)
            .unwrap();
        let notice = &docs(&out)[0];
        assert_eq!(
            notice.get_str("operationType").unwrap(),
            LARGE_EVENT_SKIPPED
        );
        assert_eq!(notice.get_document("_id").unwrap(), &doc! {"_data": "f2"});
        assert_eq!(
            notice.get_document("documentKey").unwrap(),
            &doc! {"_id": 7}
        );
        assert_eq!(notice.get_str("skippedOperationType").unwrap(), "insert");
        assert!(notice.get_i64("size").unwrap() > 0);
        assert!(notice.get("fullDocument").is_none());

        let mut fail = Assembler::new(LargeEventPolicy::Error, false);
        let err = fail.feed(reply(&[f1, f2], None), true).unwrap_err();
        assert_eq!(err.server_code, Some(10334));
        assert!(err.message.contains(r#"{"_data":"f2"}"#), "{}", err.message);
        assert!(err.message.contains(r#"{"_id":7}"#), "{}", err.message);
    }

    #[test]
    fn a_fragment_out_of_order_is_fatal() {
        let mut a = Assembler::new(LargeEventPolicy::Split, false);
        let f2 = event("f2", doc! {"splitEvent": {"fragment": 2, "of": 2}});
        assert_eq!(
            a.feed(reply(&[f2], None), true).unwrap_err().code,
            ErrorCode::ChangeStreamFatal
        );
    }

    #[test]
    fn transactions_are_held_until_an_event_or_the_server_position_passes_them() {
        let mut a = Assembler::new(LargeEventPolicy::Split, true);
        // A reply cut inside transaction 1: its position is its last event's token.
        let out = a
            .feed(
                reply(
                    &[event("p0", doc! {}), tx("t1a", 1), tx("t1b", 1)],
                    Some("t1b"),
                ),
                false,
            )
            .unwrap();
        assert_eq!(docs(&out), vec![event("p0", doc! {})]);
        assert_eq!(out.post_batch_token, None);
        assert_eq!(out.last_event_id, Some(raw(doc! {"_data": "p0"})));
        // More of it, then transaction 2 (same session, next number), then a plain event.
        let out = a
            .feed(
                reply(
                    &[tx("t1c", 1), tx("t2a", 2), event("p1", doc! {})],
                    Some("p1"),
                ),
                false,
            )
            .unwrap();
        let units = docs(&out);
        assert_eq!(units.len(), 3);
        assert_eq!(units[0].get_str("operationType").unwrap(), TRANSACTION);
        assert_eq!(
            units[0].get_document("_id").unwrap(),
            &doc! {"_data": "t1c"}
        );
        assert_eq!(units[0].get_i64("txnNumber").unwrap(), 1);
        let events = units[0].get_array("events").unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(units[1].get_array("events").unwrap().len(), 1);
        assert_eq!(units[2], event("p1", doc! {}));
        assert_eq!(out.post_batch_token, Some(raw(doc! {"_data": "p1"})));
        // A transaction at the end of the oplog waits for the server's position to move.
        let out = a.feed(reply(&[tx("t3a", 3)], Some("t3a")), false).unwrap();
        assert_eq!(out.count, 0);
        assert!(a.holds());
        let out = a.feed(reply(&[], Some("t3a")), false).unwrap();
        assert_eq!(out.count, 0);
        let out = a.feed(reply(&[], Some("later")), false).unwrap();
        assert_eq!(out.count, 1);
        assert_eq!(out.post_batch_token, Some(raw(doc! {"_data": "later"})));
        // A re-open reads what was held again.
        a.feed(reply(&[tx("t4a", 4)], Some("t4a")), false).unwrap();
        a.reset();
        assert!(!a.holds());
    }
}
