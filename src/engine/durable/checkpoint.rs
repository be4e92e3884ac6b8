//! Checkpointing: the consumer reports what it has processed; positions are written to the
//! token store by a policy (every N events or T ms, and on close), off the event path.
//! Unsaved progress is bounded: the stream stops handing out events while too much of it
//! waits for a store that is down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mongodb::bson::{DateTime, Timestamp};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::position::{Owner, Position, PositionRecord};
use super::store::{load_record, within, TokenStore, STORE_CALL_DEADLINE, WRITE_SEQ_FIELD};
use crate::engine::backoff::BackoffPolicy;
use crate::engine::errors::{EngineError, ErrorCode};

/// When to write positions.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointPolicy {
    /// Write after this many processed events…
    pub every_events: u64,
    /// …or this long after the last write, whichever comes first (also for positions
    /// that advance without events on quiet streams).
    pub every: Duration,
    /// Stop handing out events while this many processed events are unsaved.
    pub max_unsaved_events: u64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        // ~1000 events or 1 s of repeats after a crash, whichever is less; a write per 100
        // events cost a file store ~10% of catch-up throughput (fsyncs), per 1000 ~1%.
        CheckpointPolicy {
            every_events: 1000,
            every: Duration::from_secs(1),
            max_unsaved_events: 10_000,
        }
    }
}

/// How long a save already sent may still finish when the reader closes.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(1);

/// The least time a save gets when `save_until`'s limit is (nearly) reached.
const LAST_CALL_AT_LEAST: Duration = Duration::from_secs(1);

/// How long a store may keep failing before the stream gives up with an error.
pub const STORE_GIVE_UP_AFTER: Duration = Duration::from_secs(30);

fn store_backoff() -> BackoffPolicy {
    BackoffPolicy {
        initial: Duration::from_millis(100),
        multiplier: 2.0,
        max: Duration::from_secs(5),
        max_retries: None,
    }
}

#[derive(Default)]
struct Pending {
    processed: Option<Position>,
    /// Bumped by every commit; a save covers the generation it snapshotted.
    generation: u64,
    saved_generation: u64,
    unsaved_events: u64,
    /// The latest known cluster time (kept when a token-only advance has none).
    cluster_time: Option<Timestamp>,
    /// The last save failed with this (cleared by the next save that works).
    save_failure: Option<EngineError>,
    /// Saving failed for good: the reader fails with this.
    failed: Option<EngineError>,
    /// A group member's epoch while it holds the lease: every save is fenced by it.
    epoch: Option<u64>,
    /// A group's store held no position when this member loaded it: the first one it
    /// processes is saved at once, not at the policy's pace, so a successor never starts
    /// later than where this member started reading.
    first_save_due: bool,
    stats: SaveStats,
}

/// What the checkpointer wrote: positions saved, failed tries, when it last saved.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SaveStats {
    pub saved: u64,
    pub failed: u64,
    pub last_saved_at: Option<SystemTime>,
}

/// Why the checkpoint task stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointEnd {
    /// The reader closed.
    Cancelled,
    /// The store refused a save of the tenure at this epoch: a later holder fenced it.
    /// What was unsaved is dropped (the next holder reads it again).
    Fenced { epoch: u64 },
}

/// How one save went.
enum Saved {
    /// Stored, or nothing to store.
    Done,
    Fenced {
        epoch: u64,
    },
}

pub struct Checkpointer {
    owner: Owner,
    /// Accept a stored record of another namespace or shape (`allowPositionMismatch`).
    allow_mismatch: bool,
    store: Arc<dyn TokenStore>,
    policy: CheckpointPolicy,
    pending: Mutex<Pending>,
    changed: Notify,
    room: Notify,
    /// A consumer group's: saves are fenced, and dropped outside a tenure.
    grouped: bool,
    /// Numbers fenced writes (`WRITE_SEQ_FIELD`).
    write_seq: AtomicU64,
}

impl Checkpointer {
    pub fn new(
        owner: Owner,
        allow_mismatch: bool,
        store: Arc<dyn TokenStore>,
        policy: CheckpointPolicy,
    ) -> Self {
        Checkpointer {
            owner,
            allow_mismatch,
            store,
            policy,
            pending: Mutex::new(Pending::default()),
            changed: Notify::new(),
            room: Notify::new(),
            grouped: false,
            write_seq: AtomicU64::new(0),
        }
    }

    /// Fences every save by the holder's epoch (a consumer group). Refused when the store
    /// cannot.
    pub fn grouped(mut self) -> Result<Self, EngineError> {
        if !self.store.fencing() {
            return Err(EngineError::new(
                ErrorCode::InvalidOption,
                format!(
                    "option \"group\" needs a token store that every member shares and that \
                     fences writes: tokenStore {{ type: 'mongodb', … }}, or a custom store with \
                     fence(name, epoch); {} cannot",
                    self.store.describe()
                ),
            ));
        }
        self.grouped = true;
        Ok(self)
    }

    /// A group member took the lease at `epoch`: fences the stored record by it, so no
    /// earlier holder can write any more, and starts saving under it. `Some(stored)`: the
    /// record holds a higher epoch already (nothing changed).
    pub async fn begin_tenure(&self, epoch: u64) -> Result<Option<u64>, EngineError> {
        let fence = self.store.fence(self.name(), epoch);
        let refused = within(STORE_CALL_DEADLINE, self.store.as_ref(), "fence", fence).await?;
        if refused.is_none() {
            self.end_tenure();
            self.lock().epoch = Some(epoch);
        }
        Ok(refused)
    }

    /// The tenure ended: what was processed and not saved is dropped (the next holder
    /// reads it again from the stored position), and nothing is saved until the next one.
    pub fn end_tenure(&self) {
        {
            let mut pending = self.lock();
            pending.epoch = None;
            pending.processed = None;
            pending.saved_generation = pending.generation;
            pending.unsaved_events = 0;
            pending.save_failure = None;
            // The next tenure starts from the stored position, not where this one read to.
            pending.cluster_time = None;
        }
        self.room.notify_waiters();
    }

    fn name(&self) -> &str {
        &self.owner.name
    }

    pub fn policy(&self) -> &CheckpointPolicy {
        &self.policy
    }

    /// The stored position, checked against this consumer (a record of another kind is
    /// always refused; one of another namespace or shape unless `allow_mismatch`).
    pub async fn load_position(&self) -> Result<Option<Position>, EngineError> {
        let record = load_record(self.store.as_ref(), self.name()).await?;
        self.lock().first_save_due = self.grouped && record.is_none();
        let Some(record) = record else {
            return Ok(None);
        };
        let source = self.store.describe();
        record.check_matches(&self.owner, self.allow_mismatch, &source)?;
        tracing::info!(name = self.name(), store = %source, "continuing from the stored position");
        Ok(Some(record.position))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reader continues from a stored position of this cluster time: a position that
    /// advances without a time of its own (a quiet batch) is at least there.
    pub fn note_restored(&self, time: Option<Timestamp>) {
        if time.is_some() {
            self.lock().cluster_time = time;
        }
    }

    /// The consumer processed `events` more events (or documents), up to `position`.
    pub fn commit(&self, position: Position, events: u64) {
        {
            let mut pending = self.lock();
            if let Position::Stream {
                cluster_time: Some(time),
                ..
            } = &position
            {
                pending.cluster_time = Some(*time);
            }
            pending.processed = Some(position);
            pending.generation += 1;
            pending.unsaved_events += events;
        }
        self.changed.notify_one();
    }

    /// Processed events whose position is not stored yet.
    pub fn unsaved_events(&self) -> u64 {
        self.lock().unsaved_events
    }

    /// How many more processed events may be unsaved before `max_unsaved_events` is reached.
    /// It stays bounded when saving failed for good: nothing more is handed out then.
    pub fn room(&self) -> u64 {
        self.policy
            .max_unsaved_events
            .saturating_sub(self.lock().unsaved_events)
    }

    /// How many positions were saved and how many tries failed.
    pub fn save_stats(&self) -> SaveStats {
        self.lock().stats
    }

    /// Why the last save failed, while saves are failing.
    pub fn save_failure(&self) -> Option<EngineError> {
        self.lock().save_failure.clone()
    }

    /// Waits while too much processed progress is unsaved (a store that is down). Fails
    /// with the store's error once saving failed for good: no room will come.
    pub async fn wait_for_room(&self) -> Result<(), EngineError> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if let Some(failed) = &self.lock().failed {
                return Err(failed.clone());
            }
            if self.room() > 0 {
                return Ok(());
            }
            room.await;
        }
    }

    /// Writes on the policy until cancelled (or fenced). Returns the error of a store that
    /// stayed down.
    pub async fn run(&self, cancel: &CancellationToken) -> Result<CheckpointEnd, EngineError> {
        let mut last_save = Instant::now();
        loop {
            if cancel.is_cancelled() {
                return Ok(CheckpointEnd::Cancelled);
            }
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let pending = self.lock();
                let dirty = pending.generation != pending.saved_generation;
                if dirty
                    && ((pending.first_save_due && pending.epoch.is_some())
                        || pending.unsaved_events >= self.policy.every_events
                        || last_save.elapsed() >= self.policy.every)
                {
                    None
                } else if dirty {
                    Some(self.policy.every.saturating_sub(last_save.elapsed()))
                } else {
                    Some(Duration::from_secs(3600))
                }
            };
            if let Some(wait) = wait {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(CheckpointEnd::Cancelled),
                    _ = &mut changed => {},
                    _ = tokio::time::sleep(wait) => {},
                }
                continue;
            }
            match self.save_until(cancel, STORE_GIVE_UP_AFTER).await {
                Ok(Saved::Done) => {}
                Ok(Saved::Fenced { epoch }) => return Ok(CheckpointEnd::Fenced { epoch }),
                Err(e) => {
                    self.lock().failed = Some(e.clone());
                    self.room.notify_waiters();
                    return Err(e);
                }
            }
            last_save = Instant::now();
        }
    }

    /// Saves what is processed and unsaved, if anything (`close()`); a few tries. A fenced
    /// group member saves nothing: its successor reads those events again.
    pub async fn flush(&self) -> Result<(), EngineError> {
        let saved = self
            .save_until(&CancellationToken::new(), Duration::from_secs(5))
            .await?;
        if let Saved::Fenced { epoch } = saved {
            tracing::info!(
                epoch,
                "the last position was not saved: a later group member fenced it"
            );
        }
        Ok(())
    }

    /// Saves the newest processed position, retrying with backoff for up to `limit`.
    async fn save_until(
        &self,
        cancel: &CancellationToken,
        limit: Duration,
    ) -> Result<Saved, EngineError> {
        let started = Instant::now();
        let backoff = store_backoff();
        let mut attempt = 0;
        loop {
            let (generation, events, record, epoch) = {
                let pending = self.lock();
                let Some(position) = &pending.processed else {
                    return Ok(Saved::Done);
                };
                if pending.generation == pending.saved_generation {
                    return Ok(Saved::Done);
                }
                // A group member saves only while it holds the lease.
                if self.grouped && pending.epoch.is_none() {
                    return Ok(Saved::Done);
                }
                let mut position = position.clone();
                // A token-only advance has no time of its own: keep the latest known.
                if let Position::Stream { cluster_time, .. } = &mut position {
                    *cluster_time = cluster_time.or(pending.cluster_time);
                }
                let record = PositionRecord {
                    owner: self.owner.clone(),
                    position,
                    written_at: DateTime::now(),
                };
                (
                    pending.generation,
                    pending.unsaved_events,
                    record,
                    pending.epoch,
                )
            };
            // One call may take the store's deadline at most, and not much past `limit` (the
            // last try still gets a moment, so a store that fails says how); a close abandons
            // it (its own flush saves what is processed).
            let left = limit.saturating_sub(started.elapsed());
            let deadline = STORE_CALL_DEADLINE.min(left.max(LAST_CALL_AT_LEAST));
            let save = async {
                match epoch {
                    None => self
                        .store
                        .save(self.name(), record.to_document())
                        .await
                        .map(|()| true),
                    Some(epoch) => {
                        // Within a tenure, each write is numbered: one that lands late
                        // (abandoned, retried) never replaces a newer one.
                        let mut document = record.to_document();
                        let seq = self.write_seq.fetch_add(1, Ordering::Relaxed) + 1;
                        document.insert(WRITE_SEQ_FIELD, seq.min(i64::MAX as u64) as i64);
                        self.store.save_fenced(self.name(), document, epoch).await
                    }
                }
            };
            let call = within(deadline, self.store.as_ref(), "save", save);
            tokio::pin!(call);
            let saved = tokio::select! {
                saved = &mut call => saved,
                // A close. A save already sent may still land; dropped now it could land
                // after the close's own (newer) save and move the position back. It gets a
                // moment to finish first.
                _ = cancel.cancelled() => match tokio::time::timeout(IN_FLIGHT_GRACE, &mut call).await {
                    Ok(saved) => saved,
                    Err(_) => return Ok(Saved::Done),
                },
            };
            match saved {
                Ok(false) => {
                    let epoch = epoch.unwrap_or(0);
                    tracing::warn!(
                        epoch,
                        "the token store refused a position: a later group member fenced this one"
                    );
                    self.end_tenure();
                    return Ok(Saved::Fenced { epoch });
                }
                Ok(true) => {
                    let mut pending = self.lock();
                    pending.saved_generation = generation;
                    pending.first_save_due = false;
                    pending.unsaved_events = pending.unsaved_events.saturating_sub(events);
                    pending.save_failure = None;
                    pending.stats.saved += 1;
                    pending.stats.last_saved_at = Some(SystemTime::now());
                    drop(pending);
                    self.room.notify_waiters();
                    return Ok(Saved::Done);
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(attempt, error = %e, "saving the position failed");
                    {
                        let mut pending = self.lock();
                        pending.save_failure = Some(e.clone());
                        pending.stats.failed += 1;
                    }
                    if started.elapsed() >= limit {
                        return Err(EngineError {
                            message: format!(
                                "could not save the position for {} s: {}",
                                limit.as_secs(),
                                e.message
                            ),
                            resumable: false,
                            ..e
                        });
                    }
                    let pause = backoff
                        .delay(attempt)
                        .min(limit.saturating_sub(started.elapsed()));
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(Saved::Done),
                        _ = tokio::time::sleep(pause) => {},
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::durable::position::ReaderKind;
    use crate::engine::durable::store::MemoryStore;
    use crate::engine::errors::ErrorCode;
    use futures_util::future::BoxFuture;
    use mongodb::bson::RawDocumentBuf;
    use mongodb::bson::{doc, Document};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn event(id: &str, op: &str) -> Vec<u8> {
        RawDocumentBuf::from_document(&doc! {"_id": {"_data": id}, "operationType": op, "clusterTime": Timestamp{time: 9, increment: 1}})
            .unwrap()
            .into_bytes()
    }

    fn owner(name: &str) -> Owner {
        Owner {
            kind: ReaderKind::ChangeStream,
            name: name.into(),
            namespace: "d.c".into(),
            fingerprint: "f".into(),
        }
    }

    fn checkpointer(store: Arc<dyn TokenStore>, every_events: u64) -> Arc<Checkpointer> {
        Arc::new(Checkpointer::new(
            owner("n"),
            false,
            store,
            CheckpointPolicy {
                every_events,
                every: Duration::from_secs(3600),
                max_unsaved_events: 3,
            },
        ))
    }

    #[tokio::test]
    async fn writes_every_n_events_and_flushes_the_rest() {
        let name = format!("ck-{}", std::process::id());
        let ck = Arc::new(Checkpointer::new(
            owner(&name),
            false,
            Arc::new(MemoryStore),
            CheckpointPolicy {
                every_events: 2,
                every: Duration::from_secs(3600),
                max_unsaved_events: 100,
            },
        ));
        let cancel = CancellationToken::new();
        let runner = {
            let (ck, cancel) = (ck.clone(), cancel.clone());
            tokio::spawn(async move { ck.run(&cancel).await })
        };
        ck.commit(
            Position::after_event(&event("01", "insert"), None).unwrap(),
            1,
        );
        ck.commit(
            Position::after_event(&event("02", "insert"), None).unwrap(),
            1,
        );
        for _ in 0..100 {
            if ck.unsaved_events() == 0 {
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            ck.unsaved_events(),
            0,
            "two events reach the every-2 policy"
        );
        let stored = MemoryStore.load(&name).await.unwrap().unwrap();
        assert_eq!(stored.get_document("token").unwrap(), &doc! {"_data": "02"});
        ck.commit(
            Position::after_event(&event("03", "insert"), None).unwrap(),
            1,
        );
        cancel.cancel();
        assert_eq!(runner.await.unwrap().unwrap(), CheckpointEnd::Cancelled);
        ck.flush().await.unwrap();
        let stored = MemoryStore.load(&name).await.unwrap().unwrap();
        assert_eq!(stored.get_document("token").unwrap(), &doc! {"_data": "03"});
    }

    struct FailingStore(AtomicU32);
    impl TokenStore for FailingStore {
        fn load<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Document>, EngineError>> {
            Box::pin(async { Ok(None) })
        }
        fn save<'a>(&'a self, _: &'a str, _: Document) -> BoxFuture<'a, Result<(), EngineError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err(EngineError::new(ErrorCode::TokenStore, "down")) })
        }
        fn describe(&self) -> String {
            "failing".into()
        }
    }

    #[tokio::test]
    async fn unsaved_window_is_bounded_while_the_store_is_down() {
        let store = Arc::new(FailingStore(AtomicU32::new(0)));
        let ck = checkpointer(store.clone(), 1);
        let cancel = CancellationToken::new();
        let runner = {
            let (ck, cancel) = (ck.clone(), cancel.clone());
            tokio::spawn(async move { ck.run(&cancel).await })
        };
        assert_eq!(ck.room(), 3, "maxUnsavedEvents 3, nothing unsaved");
        for i in 0..3 {
            ck.commit(
                Position::token_only(
                    RawDocumentBuf::from_document(&doc! {"_data": i})
                        .unwrap()
                        .as_bytes(),
                    None,
                )
                .unwrap(),
                1,
            );
        }
        assert_eq!(ck.room(), 0);
        let blocked = tokio::time::timeout(Duration::from_millis(300), ck.wait_for_room()).await;
        assert!(blocked.is_err(), "no room while 3 events are unsaved");
        assert!(store.0.load(Ordering::SeqCst) >= 1, "the store was retried");
        cancel.cancel();
        assert_eq!(runner.await.unwrap().unwrap(), CheckpointEnd::Cancelled);
    }
}
