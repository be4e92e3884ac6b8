//! Consumer groups against a live server: one member reads, a release hands over at once,
//! a fenced holder cannot write and steps down.

use std::sync::Arc;
use std::time::Duration;

use super::support::*;
use crate::engine::group::LossReason;
use crate::engine::reader::{ReaderItem, ReaderState};
use crate::engine::stream::ChangeStreamEngine;
use mongodb::bson::{doc, Document};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);

fn member(fx: &Fixture, name: &str, member: &str) -> ChangeStreamEngine {
    member_saving(fx, name, member, doc! {"everyEvents": 1, "everyMs": 50})
}

/// A member with its own `checkpoint` policy.
fn member_saving(
    fx: &Fixture,
    name: &str,
    member: &str,
    checkpoint: Document,
) -> ChangeStreamEngine {
    engine(
        &fx.server.uri,
        &fx.db,
        fx.coll,
        doc! {
            "name": name,
            "tokenStore": {"type": "mongodb", "db": fx.db.as_str(), "collection": "positions"},
            "checkpoint": checkpoint,
            "group": {"member": member, "leaseMs": 1000, "db": fx.db.as_str()},
        },
    )
}

/// Pumps a member's items into a channel, so a test can look at them while it waits.
fn pump(engine: Arc<ChangeStreamEngine>) -> mpsc::UnboundedReceiver<ReaderItem> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let item = engine.next().await;
            let end = matches!(item, ReaderItem::Failed(_) | ReaderItem::Ended(_));
            if tx.send(item).is_err() || end {
                return;
            }
        }
    });
    rx
}

/// Items until `want` events arrived (committing each batch), or an item matches `stop`.
async fn take_events(
    engine: &ChangeStreamEngine,
    rx: &mut mpsc::UnboundedReceiver<ReaderItem>,
    want: usize,
) -> (Vec<i32>, Vec<ReaderItem>) {
    let mut seqs = Vec::new();
    let mut others = Vec::new();
    while seqs.len() < want {
        let item = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out with {seqs:?}; {others:?}"))
            .expect("pump ended");
        match item {
            ReaderItem::Batch(b) => {
                seqs.extend(event_seqs(&b.docs));
                engine.commit(b.seq, b.count).expect("commit");
            }
            other => others.push(other),
        }
    }
    (seqs, others)
}

async fn until_item(
    rx: &mut mpsc::UnboundedReceiver<ReaderItem>,
    stop: impl Fn(&ReaderItem) -> bool,
) -> Vec<ReaderItem> {
    let mut items = Vec::new();
    loop {
        let item = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; got {items:?}"))
            .expect("pump ended");
        let done = stop(&item);
        items.push(item);
        if done {
            return items;
        }
    }
}

/// Waits (polling, up to WAIT) until `holds` says yes.
async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut holds: impl FnMut() -> F,
) {
    let deadline = std::time::Instant::now() + WAIT;
    while !holds().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the holder's change stream answered its open: later writes are seen.
async fn streaming(engine: &ChangeStreamEngine) {
    wait_until("the holder opened", || async {
        engine.health().state == ReaderState::Streaming
    })
    .await;
}

async fn stored(fx: &Fixture, name: &str) -> Document {
    fx.client
        .database(&fx.db)
        .collection::<Document>("positions")
        .find_one(doc! {"_id": name})
        .await
        .expect("read")
        .expect("a record")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_reads_and_a_release_hands_over_at_once() {
    let fx = Fixture::start().await;
    let name = unique_name("group");
    let a = Arc::new(member(&fx, &name, "a"));
    let mut a_items = pump(a.clone());
    let acquired = until_item(&mut a_items, |i| {
        matches!(i, ReaderItem::LeaseAcquired { .. })
    })
    .await;
    assert!(matches!(
        acquired.last(),
        Some(ReaderItem::LeaseAcquired { epoch: 1, member, .. }) if member == "a"
    ));
    let b = Arc::new(member(&fx, &name, "b"));
    let mut b_items = pump(b.clone());
    streaming(&a).await;
    fx.insert(1..11).await;
    let (seqs, _) = take_events(&a, &mut a_items, 10).await;
    assert_eq!(seqs, (1..11).collect::<Vec<_>>());
    let health = b.health();
    let group = health.group.expect("a member");
    assert_eq!(group.holder.as_deref(), Some("a"), "b sees who holds it");
    assert!(b_items.try_recv().is_err(), "the standby hands out nothing");

    let released = std::time::Instant::now();
    a.close().await.expect("close");
    let acquired = until_item(&mut b_items, |i| {
        matches!(i, ReaderItem::LeaseAcquired { .. })
    })
    .await;
    assert!(
        released.elapsed() < Duration::from_millis(900),
        "a released lease is taken before it would lapse: {:?}",
        released.elapsed()
    );
    assert!(matches!(
        acquired.last(),
        Some(ReaderItem::LeaseAcquired { epoch: 2, .. })
    ));
    fx.insert(11..21).await;
    let (seqs, _) = take_events(&b, &mut b_items, 10).await;
    assert_eq!(
        seqs,
        (11..21).collect::<Vec<_>>(),
        "b continues after what a stored on close: nothing lost, nothing repeated"
    );
    b.close().await.expect("close");
    assert_eq!(stored(&fx, &name).await.get_i64("epoch"), Ok(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_holder_cannot_write_and_takes_a_higher_epoch_later() {
    let fx = Fixture::start().await;
    let name = unique_name("group");
    let a = Arc::new(member(&fx, &name, "a"));
    let mut items = pump(a.clone());
    until_item(&mut items, |i| {
        matches!(i, ReaderItem::LeaseAcquired { .. })
    })
    .await;
    streaming(&a).await;
    fx.insert(1..4).await;
    take_events(&a, &mut items, 3).await;
    let positions = fx
        .client
        .database(&fx.db)
        .collection::<Document>("positions");
    // Every commit saved: the record holds the third event's position.
    wait_until("the position is saved under epoch 1", || async {
        a.pending_checkpoint() == 0 && stored(&fx, &name).await.get_i64("epoch") == Ok(1)
    })
    .await;
    let before = stored(&fx, &name).await;

    // Another holder fenced the record (as a takeover does).
    positions
        .update_one(doc! {"_id": &name}, doc! {"$set": {"epoch": 5i64}})
        .await
        .expect("fence");
    fx.insert(4..6).await;
    let (_, others) = take_events(&a, &mut items, 2).await;
    let lost = until_item(&mut items, |i| matches!(i, ReaderItem::LeaseLost { .. })).await;
    let all: Vec<_> = others.iter().chain(lost.iter()).collect();
    assert!(
        all.iter().any(|i| matches!(
            i,
            ReaderItem::LeaseLost {
                epoch: 1,
                reason: LossReason::Fenced,
                ..
            }
        )),
        "the refused save ends the tenure: {all:?}"
    );
    let after = stored(&fx, &name).await;
    assert_eq!(
        after.get_document("token"),
        before.get_document("token"),
        "the zombie's write was refused"
    );

    // Its own lapsed lease is taken again, lifted above the store's epoch.
    let acquired = until_item(&mut items, |i| {
        matches!(i, ReaderItem::LeaseAcquired { .. })
    })
    .await;
    assert!(
        matches!(
            acquired.last(),
            Some(ReaderItem::LeaseAcquired { epoch: 6, .. })
        ),
        "{acquired:?}"
    );
    let (seqs, _) = take_events(&a, &mut items, 2).await;
    assert_eq!(
        seqs,
        vec![4, 5],
        "the new tenure reads again from the stored position"
    );
    a.close().await.expect("close");
    assert_eq!(stored(&fx, &name).await.get_i64("epoch"), Ok(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stores_its_first_position_at_once_when_none_was_stored() {
    let fx = Fixture::start().await;
    let name = unique_name("first");
    // The policy alone would not save within the test.
    let hourly = doc! {"everyEvents": 1_000_000, "everyMs": 3_600_000};
    let a = Arc::new(member_saving(&fx, &name, "a", hourly));
    let mut a_items = pump(a.clone());
    until_item(&mut a_items, |i| {
        matches!(i, ReaderItem::LeaseAcquired { .. })
    })
    .await;
    // The opening reply (no events) is processed as it comes, as the facade does.
    let positions = fx
        .client
        .database(&fx.db)
        .collection::<Document>("positions");
    let first = doc! {"_id": &name, "token._data": {"$type": "string"}};
    let deadline = std::time::Instant::now() + WAIT;
    while positions
        .find_one(first.clone())
        .await
        .expect("read")
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: a stored position, not only the fence"
        );
        if let Ok(Some(ReaderItem::Batch(b))) =
            tokio::time::timeout(Duration::from_millis(10), a_items.recv()).await
        {
            a.commit(b.seq, b.count).expect("commit");
        }
    }
    fx.insert(1..6).await;
    let (seqs, _) = take_events(&a, &mut a_items, 5).await;
    assert_eq!(seqs, (1..6).collect::<Vec<_>>());
    assert_eq!(
        a.pending_checkpoint(),
        5,
        "later positions wait for the policy"
    );
    a.close().await.expect("close");
    // (A successor reading from that first position after a kill -9: groups.test.js and
    // partitions.test.js, with real processes.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_write_of_a_tenure_never_replaces_a_newer_one() {
    use crate::engine::durable::store::{MongoStore, TokenStore, WRITE_SEQ_FIELD};
    let fx = Fixture::start().await;
    let name = unique_name("late");
    let store = MongoStore::new(fx.server.uri.clone(), fx.db.clone(), "positions".into());
    assert_eq!(store.fence(&name, 3).await.unwrap(), None, "fenced at 3");
    let record =
        |seq: i64, at: &str| doc! {"version": 1, "token": {"_data": at}, WRITE_SEQ_FIELD: seq};
    assert!(store
        .save_fenced(&name, record(2, "newer"), 3)
        .await
        .unwrap());
    assert!(
        !store
            .save_fenced(&name, record(1, "older"), 3)
            .await
            .unwrap(),
        "a lower write number of the same epoch is refused"
    );
    assert!(
        !store
            .save_fenced(&name, record(9, "zombie"), 2)
            .await
            .unwrap(),
        "an earlier epoch is refused"
    );
    assert_eq!(
        stored(&fx, &name).await.get_document("token").unwrap(),
        &doc! {"_data": "newer"}
    );
    assert_eq!(
        store.fence(&name, 3).await.unwrap(),
        Some(3),
        "a fence never repeats an epoch"
    );
    assert_eq!(store.fence(&name, 4).await.unwrap(), None);
    assert!(
        store
            .save_fenced(&name, record(1, "next tenure"), 4)
            .await
            .unwrap(),
        "a new tenure numbers its writes afresh"
    );
}

fn partitioned(fx: &Fixture, name: &str, member: &str, split: &str) -> ChangeStreamEngine {
    engine(
        &fx.server.uri,
        &fx.db,
        fx.coll,
        doc! {
            "name": name,
            "tokenStore": {"type": "mongodb", "db": fx.db.as_str(), "collection": "positions"},
            "checkpoint": {"everyEvents": 1, "everyMs": 50},
            "group": {
                "member": member, "leaseMs": 1000, "db": fx.db.as_str(), "partitions": 4,
                "split": split,
            },
        },
    )
}

/// The partitions named by the first `n` items matching `kind`.
async fn partitions_of(
    rx: &mut mpsc::UnboundedReceiver<ReaderItem>,
    n: usize,
    acquired: bool,
) -> Vec<u32> {
    let mut found = Vec::new();
    while found.len() < n {
        let items = until_item(rx, |i| match i {
            ReaderItem::LeaseAcquired { .. } => acquired,
            ReaderItem::LeaseLost { reason, .. } => !acquired && *reason == LossReason::Rebalanced,
            _ => false,
        })
        .await;
        match items.last() {
            Some(ReaderItem::LeaseAcquired {
                partition: Some(p), ..
            })
            | Some(ReaderItem::LeaseLost {
                partition: Some(p), ..
            }) => found.push(*p),
            other => panic!("not a partition's lease: {other:?}"),
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_shared_fairly_and_handed_over_after_their_positions_are_stored() {
    let fx = Fixture::start().await;
    let name = unique_name("parts");
    let a = Arc::new(partitioned(&fx, &name, "a", "auto"));
    let mut ra = pump(a.clone());
    assert_eq!(partitions_of(&mut ra, 4, true).await, vec![0, 1, 2, 3]);
    streaming(&a).await;
    fx.insert(0..40).await;
    let (mut first, _) = take_events(&a, &mut ra, 40).await;
    first.sort();
    assert_eq!(
        first,
        (0..40).collect::<Vec<_>>(),
        "alone, a reads every partition"
    );
    assert_eq!(
        a.health().group.and_then(|g| g.partitions),
        Some(vec![0, 1, 2, 3])
    );
    let expected = if server_hashes(&fx).await {
        "server"
    } else {
        "client"
    };
    assert_eq!(
        a.health().group.and_then(|g| g.split),
        Some(expected),
        "'auto' splits on the server exactly when it hashes keys"
    );

    // b joins: a hands two partitions over (positions stored first), b takes them.
    // b splits here whatever the server can: the hashes agree, so the members may differ.
    let b = Arc::new(partitioned(&fx, &name, "b", "client"));
    let mut rb = pump(b.clone());
    let handed = partitions_of(&mut ra, 2, false).await;
    let taken = partitions_of(&mut rb, 2, true).await;
    assert_eq!(handed, taken, "b takes what a handed over");
    for p in &taken {
        let record = stored(&fx, &format!("{name}#p{p}")).await;
        assert!(
            record.get_i64("epoch").is_ok_and(|e| e >= 2),
            "b fenced partition {p}'s position: {record:?}"
        );
    }
    streaming(&b).await;
    fx.insert(40..100).await;
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    let deadline = std::time::Instant::now() + WAIT;
    while seen_a.len() + seen_b.len() < 60 {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: a {seen_a:?}, b {seen_b:?}"
        );
        tokio::select! {
            Some(item) = ra.recv() => if let ReaderItem::Batch(batch) = item {
                seen_a.extend(event_seqs(&batch.docs));
                a.commit(batch.seq, batch.count).expect("commit");
            },
            Some(item) = rb.recv() => if let ReaderItem::Batch(batch) = item {
                seen_b.extend(event_seqs(&batch.docs));
                b.commit(batch.seq, batch.count).expect("commit");
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert!(
        !seen_a.is_empty() && !seen_b.is_empty(),
        "both read: a {seen_a:?}, b {seen_b:?}"
    );
    let mut all: Vec<i32> = seen_a.iter().chain(&seen_b).copied().collect();
    all.sort();
    assert_eq!(
        all,
        (40..100).collect::<Vec<_>>(),
        "each event once, by the member holding its partition"
    );
    assert_eq!(b.health().group.and_then(|g| g.split), Some("client"));
    a.close().await.expect("close a");
    b.close().await.expect("close b");
}

/// Whether the server computes `$toHashedIndexKey` (MongoDB 7.0+; our test server does not).
async fn server_hashes(fx: &Fixture) -> bool {
    let pipeline = vec![
        doc! {"$documents": [{"k": 1}]},
        doc! {"$project": {"h": {"$toHashedIndexKey": "$k"}}},
    ];
    fx.client.database(&fx.db).aggregate(pipeline).await.is_ok()
}

/// The probe: a server that hashes keys agrees with ours on every sample key (else the split
/// would stay here, and this fails); one that cannot is answered with a split here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_goes_to_the_server_only_when_its_hash_agrees_with_ours() {
    use crate::engine::group::server_split::{probe, SplitMode};
    let fx = Fixture::start().await;
    let mode = probe(&fx.client, &fx.db).await.expect("probe");
    let expected = if server_hashes(&fx).await {
        SplitMode::Server
    } else {
        SplitMode::Client
    };
    assert_eq!(mode, expected);
}
