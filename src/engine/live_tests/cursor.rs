//! The cursor engine against a live server: a named read resumes from its token store, and a
//! capped collection overwritten between two reads is reported before anything is read.

use std::time::Duration;

use super::support::*;
use crate::engine::cursor::{CursorEngine, CursorSpec};
use crate::engine::reader::{EndReason, ReaderItem};
use mongodb::bson::{doc, Document, RawDocument};

const WAIT: Duration = Duration::from_secs(30);

fn cursor(fx: &Fixture, coll: &str, extra: Document) -> CursorEngine {
    let mut spec = doc! {
        "uri": &fx.server.uri, "db": &fx.db, "collection": coll, "key": "seq",
        "backoff": {"initialDelayMS": 5, "maxDelayMS": 100},
    };
    spec.extend(extra);
    CursorEngine::new(CursorSpec::from_document(&spec).expect("spec"), None).expect("engine")
}

/// The documents of the next `Batch` and its number (or the item that came instead).
async fn next_docs(engine: &CursorEngine) -> Result<(u64, Vec<Vec<u8>>), ReaderItem> {
    loop {
        let item = tokio::time::timeout(WAIT, engine.next())
            .await
            .expect("an item in time");
        match item {
            ReaderItem::Batch(batch) => {
                let docs = batch.docs;
                let mut out = Vec::new();
                let mut rest = docs.as_slice();
                while rest.len() >= 4 {
                    let len = i32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    out.push(rest[..len].to_vec());
                    rest = &rest[len..];
                }
                return Ok((batch.seq, out));
            }
            ReaderItem::Reconnecting { .. } | ReaderItem::Resumed { .. } => continue,
            other => return Err(other),
        }
    }
}

fn seq(doc: &[u8]) -> i32 {
    RawDocument::from_bytes(doc)
        .expect("a document")
        .get_i32("seq")
        .expect("a seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_read_continues_after_its_last_committed_document() {
    let fx = Fixture::start().await;
    fx.insert(1..60).await; // seq 0..59 with the fixture's first document
    let named = doc! {"name": unique_name("cursor"), "batchSize": 10};
    let first = cursor(&fx, fx.coll, named.clone());
    let mut processed = Vec::new();
    while processed.len() < 25 {
        let (batch, docs) = next_docs(&first).await.expect("a batch");
        for (i, doc) in docs.iter().take(25 - processed.len()).enumerate() {
            first.commit(batch, i + 1).expect("commit");
            processed.push(seq(doc));
        }
    }
    first.close().await.expect("close stores the last position");
    assert_eq!(processed, (0..25).collect::<Vec<_>>());

    let second = cursor(&fx, fx.coll, named);
    let mut rest = Vec::new();
    loop {
        match next_docs(&second).await {
            Ok((_, docs)) => rest.extend(docs.iter().map(|d| seq(d))),
            Err(ReaderItem::Ended(EndReason::Exhausted)) => break,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(rest, (25..60).collect::<Vec<_>>(), "after the stored key");
    second.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwritten_capped_position_is_reported_before_reading() {
    let fx = Fixture::start().await;
    let db = fx.client.database(&fx.db);
    db.run_command(doc! {"create": "tiny", "capped": true, "size": 4096, "max": 5})
        .await
        .expect("capped collection");
    // One insert per document: the test server trims a capped collection per insert command.
    let tiny = db.collection::<Document>("tiny");
    for seq in 0..30 {
        tiny.insert_one(doc! {"seq": seq}).await.expect("insert");
    }
    // The read was at seq 2, long overwritten.
    let engine = cursor(
        &fx,
        "tiny",
        doc! {"tailable": true, "lastKey": 2, "tailRetryMS": 20},
    );
    match next_docs(&engine).await {
        Err(ReaderItem::PositionLost { error }) => {
            assert_eq!(error.server_code, Some(136));
        }
        other => panic!("expected PositionLost first, got {other:?}"),
    }
    assert!(matches!(
        next_docs(&engine).await,
        Err(ReaderItem::Failed(e)) if e.server_code == Some(136)
    ));
    engine.close().await.expect("close");
}
