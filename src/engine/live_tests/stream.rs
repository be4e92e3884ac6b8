//! The engine against a live server: exact events, resumes, fatal errors, close.

use std::time::Duration;

use super::support::*;
use crate::engine::reader::{EndReason, ReaderItem};
use crate::engine::ErrorCode;
use mongodb::bson::{doc, Bson};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_event_in_order() {
    let fx = Fixture::start().await;
    let engine = fx.open_engine(doc! {"batchSize": 7}).await;
    fx.insert(1..101).await;
    let (_, seqs) = collect_events(&engine, 100, WAIT).await;
    assert_eq!(seqs, (1..101).collect::<Vec<_>>());
    engine.close().await.expect("close");
    assert!(matches!(
        engine.next().await,
        ReaderItem::Ended(EndReason::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_repeated_getmore_failures_with_growing_attempts() {
    let fx = Fixture::start().await;
    let engine = fx
        .open_engine(doc! {"backoff": {"initialDelayMS": 1, "maxDelayMS": 20}})
        .await;
    fx.insert(1..11).await;
    let (_, first) = collect_events(&engine, 10, WAIT).await;
    assert_eq!(first, (1..11).collect::<Vec<_>>());

    fx.server
        .fail_command(
            doc! {"failCommands": ["getMore"], "errorCode": 6, "errorLabels": ["ResumableChangeStreamError"]},
            Bson::Document(doc! {"times": 3}),
        )
        .await;
    // The in-flight getMore is not failed; the next three are. Only write once all three
    // failures happened, so the events must come through the re-opened cursor.
    let mut items = items_until(&engine, WAIT, |i| {
        matches!(i, ReaderItem::Reconnecting { attempt: 3, .. })
    })
    .await;
    fx.insert(11..21).await;
    let (after, rest) = collect_events(&engine, 10, WAIT).await;
    items.extend(after);
    assert_eq!(
        rest,
        (11..21).collect::<Vec<_>>(),
        "nothing lost, nothing repeated"
    );
    let attempts: Vec<u32> = items
        .iter()
        .filter_map(|i| match i {
            ReaderItem::Reconnecting { attempt, error, .. } => {
                assert_eq!(error.server_code, Some(6));
                assert!(error.resumable);
                Some(*attempt)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        attempts,
        vec![1, 2, 3],
        "one outage, three attempts: {items:?}"
    );
    let resumed: Vec<u32> = items
        .iter()
        .filter_map(|i| match i {
            ReaderItem::Resumed { attempts, .. } => Some(*attempts),
            _ => None,
        })
        .collect();
    assert_eq!(resumed, vec![3]);
    engine.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_server_error_fails_once() {
    let fx = Fixture::start().await;
    let engine = fx.open_engine(doc! {}).await;
    fx.server
        .fail_command(
            doc! {"failCommands": ["getMore"], "errorCode": 280, "errorLabels": []},
            Bson::Document(doc! {"times": 1}),
        )
        .await;
    let items = items_until(&engine, WAIT, |i| {
        matches!(i, ReaderItem::Failed(_) | ReaderItem::Ended(_))
    })
    .await;
    fx.server.fail_point_off().await;
    assert!(
        !items
            .iter()
            .any(|i| matches!(i, ReaderItem::Reconnecting { .. })),
        "280 is not resumable: {items:?}"
    );
    match items.last() {
        Some(ReaderItem::Failed(e)) => {
            assert_eq!(e.code, ErrorCode::ChangeStreamFatal);
            assert_eq!(e.server_code, Some(280));
        }
        other => panic!("expected a fatal error, got {other:?}"),
    }
    assert!(matches!(engine.next().await, ReaderItem::Ended(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_out_when_the_user_limits_them() {
    let fx = Fixture::start().await;
    let engine = fx
        .open_engine(doc! {"backoff": {"initialDelayMS": 1, "maxRetries": 2}})
        .await;
    fx.server
        .fail_command(
            doc! {"failCommands": ["getMore", "aggregate"], "errorCode": 91, "errorLabels": ["ResumableChangeStreamError"]},
            Bson::String("alwaysOn".into()),
        )
        .await;
    let items = items_until(&engine, WAIT, |i| {
        matches!(i, ReaderItem::Failed(_) | ReaderItem::Ended(_))
    })
    .await;
    fx.server.fail_point_off().await;
    let reconnects = items
        .iter()
        .filter(|i| matches!(i, ReaderItem::Reconnecting { .. }))
        .count();
    assert_eq!(reconnects, 2, "{items:?}");
    match items.last() {
        Some(ReaderItem::Failed(e)) => {
            assert_eq!(e.code, ErrorCode::RetriesExhausted);
            assert_eq!(e.server_code, Some(91));
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_during_backoff_returns_promptly_and_never_reopens() {
    let fx = Fixture::start().await;
    // A 60 s backoff: only cancellation can end it in time.
    let engine = fx
        .open_engine(
            doc! {"backoff": {"initialDelayMS": 60000, "multiplier": 1, "maxDelayMS": 60000}},
        )
        .await;
    fx.server
        .fail_command(
            doc! {"failCommands": ["getMore"], "errorCode": 6, "errorLabels": ["ResumableChangeStreamError"]},
            Bson::Document(doc! {"times": 1}),
        )
        .await;
    fx.insert(1..2).await;
    loop {
        let item = tokio::time::timeout(WAIT, engine.next())
            .await
            .expect("reconnecting in time");
        if matches!(item, ReaderItem::Reconnecting { .. }) {
            break;
        }
    }
    tokio::time::timeout(Duration::from_secs(5), engine.close())
        .await
        .expect("close cancels the backoff")
        .expect("nothing to flush");
    assert!(matches!(
        engine.next().await,
        ReaderItem::Ended(EndReason::Closed)
    ));
    assert_eq!(engine.health().state.as_str(), "closed");
}
