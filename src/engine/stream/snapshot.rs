//! The initial snapshot (issue #15): a named collection stream first delivers every document
//! that exists, then every change from the moment the copy began, with no gap at the seam.
//!
//! The seam: the start time is read from the server (a majority read's `operationTime`)
//! BEFORE the copy's first `find`; the copy then reads in `_id` order with the cursor
//! source (`engine::cursor`, the one find-after-the-last-key logic), and the stream opens
//! with `startAtOperationTime` = that time. Every write after the start time is in the
//! stream; every write before it is visible to the copy (which reads later). A document
//! changed while the copy ran may arrive twice (its copied state, then its changes), never
//! zero times.
//!
//! This module owns the phase (`Phase`: Starting → Copying → Streaming) and the wrapping of
//! copied documents as synthetic `snapshot` events; `StreamSource` drives it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, RawDocument, RawDocumentBuf, Timestamp};
use mongodb::Client;

use super::oplog::{read_window, OplogWindow};
pub use super::snapshot_options::SnapshotLostPolicy;
use super::spec::WatchSpec;
use crate::engine::cursor::{key_of, CursorSource, CursorSpec, PositionLostPolicy};
use crate::engine::durable::position::Position;
use crate::engine::errors::{EngineError, ErrorCode};
use crate::engine::reader::reply::doc_at;
use crate::engine::reader::source::{ReadBatch, Source};

/// The `operationType` of a copied document's event.
pub const SNAPSHOT_OPERATION: &str = "snapshot";

/// How often, at most, a running copy compares its start time with the oldest oplog entry
/// (besides every open and the seam).
pub const COPY_WINDOW_CHECK: Duration = Duration::from_secs(5);

/// A check costs the server a read of both ends of the oplog: cheap on mongod, a scan of the
/// whole oplog on some test servers (seconds with 50k entries). The next check waits at least
/// this many times as long as the last one took, so checking never takes more than a small
/// share of the server's time from the copy it watches.
pub const COPY_WINDOW_CHECK_COST_FACTOR: u32 = 20;

/// When the next in-copy check is due, after one that took `cost`.
pub fn next_window_check(cost: Duration) -> Duration {
    COPY_WINDOW_CHECK.max(cost.saturating_mul(COPY_WINDOW_CHECK_COST_FACTOR))
}

/// Where a stream with a copy stands. ONE owner: `StreamSource`.
pub enum Phase {
    /// A copy is due; its start time is read at the next open.
    Starting,
    /// Copying in `_id` order; then streaming from `start_time`.
    Copying {
        start_time: Timestamp,
        copy: Box<CursorSource>,
        /// When the start time was last compared with the oldest oplog entry.
        window_checked: Instant,
        /// How long after that the next comparison is due (`next_window_check`).
        window_check_every: Duration,
    },
    /// Streaming. `seam`: the copy's start time, while the stream has not moved past it (a
    /// loss there is the copy's, under `initialSnapshot.onHistoryLost`).
    Streaming { seam: Option<Timestamp> },
}

impl Phase {
    /// The phase a new source starts in (a stored position may replace it).
    pub fn initial(spec: &WatchSpec) -> Self {
        match spec.snapshot {
            Some(_) => Phase::Starting,
            None => Phase::Streaming { seam: None },
        }
    }

    /// Copying from `start_time`, after `last_key` when given.
    pub fn copying(spec: &Arc<CursorSpec>, start_time: Timestamp, last_key: Option<Bson>) -> Self {
        let mut copy = CursorSource::new(spec.clone());
        if let Some(last_key) = last_key {
            copy.restore(Position::Cursor { last_key });
        }
        Phase::Copying {
            start_time,
            copy: Box::new(copy),
            window_checked: Instant::now(),
            window_check_every: COPY_WINDOW_CHECK,
        }
    }

    /// The copy's start time while it matters for a loss (copying, or at the seam).
    pub fn copy_start(&self) -> Option<Timestamp> {
        match self {
            Phase::Starting => None,
            Phase::Copying { start_time, .. } => Some(*start_time),
            Phase::Streaming { seam } => *seam,
        }
    }
}

/// The copy's find, built from the watch: `_id` order, the snapshot's filter and batch size.
/// The same `CursorSpec` (and so the same `find_command`) as a `ResilientCursor`'s.
pub fn copy_spec(spec: &WatchSpec, db: &str, coll: &str) -> CursorSpec {
    let options = spec.snapshot.clone().unwrap_or_default();
    CursorSpec {
        common: spec.common.clone(),
        db: db.to_string(),
        collection: coll.to_string(),
        filter: options.filter,
        projection: None,
        key: "_id".to_string(),
        batch_size: options.batch_size,
        tailable: false,
        await_data: false,
        max_await_time: None,
        on_position_lost: PositionLostPolicy::Error,
        tail_retry: Duration::ZERO,
        last_key: None,
    }
}

/// The start time: the `operationTime` of a majority read on the collection's database,
/// taken BEFORE the copy's first find. Every write after it is in the stream from it.
pub async fn read_start_time(
    client: &Client,
    db: &str,
    coll: &str,
) -> Result<Timestamp, mongodb::error::Error> {
    let reply = client
        .database(db)
        .run_command(doc! {
            "find": coll,
            "filter": {},
            "limit": 1,
            "projection": {"_id": 1},
            "readConcern": {"level": "majority"},
        })
        .await?;
    match reply.get_timestamp("operationTime") {
        Ok(time) => Ok(time),
        Err(_) => Err(mongodb::error::Error::custom(
            "the server's reply has no operationTime: an initial snapshot needs a replica set \
             (or a sharded cluster)",
        )),
    }
}

/// The error that reports a copy's start time gone from the oplog, when it is.
pub async fn check_start_time(
    client: &Client,
    start_time: Timestamp,
) -> Result<Option<EngineError>, mongodb::error::Error> {
    let window = match read_window(client, Some(start_time)).await {
        Ok(window) => window,
        // A resumable failure reading the window: the next open checks again.
        Err(_) => return Ok(None),
    };
    if window.lost() != Some(true) {
        return Ok(None);
    }
    let oldest = match &window {
        OplogWindow::Known { oldest, .. } => format!("{}.{}", oldest.time, oldest.increment),
        OplogWindow::Unknown { .. } => String::from("unknown"),
    };
    let mut error = EngineError::new(
        ErrorCode::ChangeStreamHistoryLost,
        format!(
            "the initial snapshot's start time {}.{} fell off the oplog (oldest entry {oldest}): \
             changes made while the copy ran are gone",
            start_time.time, start_time.increment
        ),
    );
    error.server_code = Some(286);
    error.code_name = Some("ChangeStreamHistoryLost".to_string());
    Ok(Some(error))
}

/// Wraps a find batch's documents as `snapshot` events, one per document:
/// `{ operationType: 'snapshot', ns: { db, coll }, documentKey: { _id }, fullDocument }`.
/// No `_id` (resume token): a copied document is no position in the change stream.
pub fn wrap_as_events(
    batch: ReadBatch,
    db: &str,
    coll: &str,
    start_time: Timestamp,
) -> Result<ReadBatch, EngineError> {
    let ns = RawDocumentBuf::from_document(&doc! {"db": db, "coll": coll})
        .map_err(|e| EngineError::new(ErrorCode::ClientError, e.to_string()))?;
    let mut out = Vec::with_capacity(batch.docs.len() + batch.count * 96);
    for i in 0..batch.count {
        let document = doc_at(&batch.docs, i)?;
        out.extend_from_slice(event_of(document, &ns)?.as_bytes());
    }
    Ok(ReadBatch {
        docs: out,
        count: batch.count,
        end_token: None,
        position_time: Some(start_time),
    })
}

fn event_of(document: &RawDocument, ns: &RawDocumentBuf) -> Result<RawDocumentBuf, EngineError> {
    let bad = |what: &str| EngineError::new(ErrorCode::ClientError, format!("snapshot: {what}"));
    let id = key_of(document, "_id").ok_or_else(|| bad("a document without _id"))?;
    let key = RawDocumentBuf::from_document(&doc! {"_id": id}).map_err(|e| bad(&e.to_string()))?;
    let mut event = RawDocumentBuf::new();
    event.append("operationType", SNAPSHOT_OPERATION);
    event.append("ns", ns.clone());
    event.append("documentKey", key);
    event.append("fullDocument", document.to_raw_document_buf());
    Ok(event)
}

/// The position after the `n`-th copied document of a snapshot batch (`None`: the batch is
/// not a copy's).
pub fn position_after(batch: &ReadBatch, n: usize) -> Result<Option<Position>, EngineError> {
    if n == 0 || batch.end_token.is_some() {
        return Ok(None);
    }
    let event = doc_at(&batch.docs, n - 1)?;
    if event.get_str("operationType").ok() != Some(SNAPSHOT_OPERATION) {
        return Ok(None);
    }
    let bad = |what: &str| EngineError::new(ErrorCode::ClientError, format!("commit: {what}"));
    let start_time = batch
        .position_time
        .ok_or_else(|| bad("a snapshot batch without its start time"))?;
    let key = event
        .get_document("documentKey")
        .map_err(|_| bad("a snapshot event without documentKey"))?;
    let last_key = key_of(key, "_id").ok_or_else(|| bad("a snapshot event without a key"))?;
    Ok(Some(Position::Snapshot {
        start_time,
        last_key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::stream::spec::test_spec;
    use mongodb::bson::Document;

    fn docs(values: &[Document]) -> ReadBatch {
        let mut bytes = Vec::new();
        for d in values {
            bytes.extend_from_slice(RawDocumentBuf::from_document(d).unwrap().as_bytes());
        }
        ReadBatch {
            docs: bytes,
            count: values.len(),
            end_token: None,
            position_time: None,
        }
    }

    #[test]
    fn copied_documents_become_snapshot_events_whose_commit_is_the_key() {
        let t = Timestamp {
            time: 7,
            increment: 2,
        };
        let batch = docs(&[doc! {"_id": 1i64, "a": "x"}, doc! {"_id": 2i64, "a": "y"}]);
        let wrapped = wrap_as_events(batch, "d", "c", t).unwrap();
        assert_eq!(wrapped.count, 2);
        let second = doc_at(&wrapped.docs, 1)
            .unwrap()
            .to_raw_document_buf()
            .to_document()
            .unwrap();
        assert_eq!(
            second,
            doc! {"operationType": "snapshot", "ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": 2i64}, "fullDocument": {"_id": 2i64, "a": "y"}}
        );
        assert_eq!(
            position_after(&wrapped, 1).unwrap(),
            Some(Position::Snapshot {
                start_time: t,
                last_key: Bson::Int64(1)
            })
        );
        assert_eq!(position_after(&wrapped, 0).unwrap(), None);
    }

    #[test]
    fn in_copy_window_checks_wait_in_proportion_to_their_cost() {
        assert_eq!(
            next_window_check(Duration::from_millis(3)),
            COPY_WINDOW_CHECK
        );
        assert_eq!(
            next_window_check(Duration::from_secs(4)),
            Duration::from_secs(80)
        );
    }

    #[test]
    fn the_copy_reads_in_id_order_after_the_last_key() {
        let spec = test_spec(doc! {"initialSnapshot": {"filter": {"a": 1}, "batchSize": 10}});
        let copy = copy_spec(&spec, "d", "c");
        assert_eq!(
            copy.find_command(Some(&Bson::Int32(5))),
            doc! {"find": "c", "filter": {"$and": [{"a": 1}, {"_id": {"$gt": 5}}]}, "sort": {"_id": 1}, "batchSize": 10i64}
        );
    }
}
