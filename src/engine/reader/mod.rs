//! The reader runtime: ONE generic reader under the change stream and the cursor. A
//! `Reader<S>` starts its run loop (`run.rs`) on first use and hands out its items through
//! a one-slot channel (so at most one batch is read ahead), keeps the consumer's commits
//! (`commits.rs`) and the checkpoint task, and closes in order: run loop gone, then the
//! last position stored. What differs between readers is the `Source` (`source.rs`).

mod commits;
mod item;
pub mod options;
mod outage;
mod partitioned;
mod recovery;
pub mod reply;
mod run;
pub mod source;
mod status;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::engine::client_pool;
use crate::engine::durable::checkpoint::{CheckpointEnd, Checkpointer};
use crate::engine::durable::position::ReaderKind;
use crate::engine::durable::store::{StoreConfig, TokenStore};
use crate::engine::errors::{EngineError, ErrorCode};
use crate::engine::group::partitions::{partition_name, Partitions};
use crate::engine::group::{LossReason, Membership};
use commits::Commits;
pub use commits::Marks;
pub use item::{Batch, EndReason, ReaderItem};
use partitioned::PartitionSet;
use run::{Grouping, Run};
use source::{ReaderSpec, Source};
use status::ReaderStatus;
pub use status::{Health, ReaderState};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A partitioned member's facade asks again this often whether what it holds is still its
/// own (a handed-over partition stops being handed out within about this long).
const PARTITION_RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// One reader. `next()`, `stop()` and `close()` may be called from any task.
pub struct Reader<S: Source> {
    /// Process-unique; names the reader in logs (the `stream` field of its span).
    id: u64,
    spec: Arc<S::Spec>,
    status: Arc<ReaderStatus>,
    rx: tokio::sync::Mutex<mpsc::Receiver<ReaderItem>>,
    /// The sender, until the run loop is started with it.
    unstarted: Mutex<Option<mpsc::Sender<ReaderItem>>>,
    run_task: Mutex<Option<JoinHandle<()>>>,
    /// Cancelled by `stop()` (and by `close()`, its parent): the run requests nothing more.
    stop: CancellationToken,
    /// Present for a named reader (a token store).
    checkpointer: Option<Arc<Checkpointer>>,
    checkpoint_task: Mutex<Option<JoinHandle<()>>>,
    commits: Arc<Commits<S>>,
    /// Present for a consumer group's member.
    membership: Option<Arc<Membership>>,
    /// Present for a partitioned group's member (`group.partitions`; then neither
    /// `checkpointer` nor `membership` is: each partition has its own).
    parts: Option<Arc<PartitionSet>>,
    partition_tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: Source> Reader<S> {
    /// `custom_store`: the application's own store, for `tokenStore: { type: 'custom' }`.
    pub fn new(
        spec: S::Spec,
        custom_store: Option<Arc<dyn TokenStore>>,
    ) -> Result<Self, EngineError> {
        let common = spec.common();
        let partitioned = common.group.as_ref().and_then(|g| g.partitions);
        let checkpointer = match &common.durability {
            None => None,
            Some(_) if partitioned.is_some() => None,
            Some(d) => {
                let ck = d.checkpointer(spec.owner(&d.name), &common.uri, custom_store.clone())?;
                Some(Arc::new(match common.group {
                    None => ck,
                    Some(_) => ck.grouped()?,
                }))
            }
        };
        let mut parts = None;
        let membership = match (&common.group, &common.durability) {
            (Some(group), Some(d)) => {
                if S::Spec::KIND != ReaderKind::ChangeStream {
                    return Err(EngineError::new(
                        ErrorCode::InvalidOption,
                        "option \"group\" is for change streams; a cursor cannot join a group",
                    ));
                }
                // The leases live with the positions unless the group says otherwise.
                let uri = match &d.store {
                    StoreConfig::MongoDb { uri: Some(uri), .. } => uri,
                    _ => &common.uri,
                };
                match group.partitions {
                    Some(count) => {
                        let mut checkpointers = Vec::with_capacity(count as usize);
                        for p in 0..count {
                            let owner = spec.owner(&partition_name(&d.name, p));
                            let ck = d.checkpointer(owner, &common.uri, custom_store.clone())?;
                            checkpointers.push(Arc::new(ck.grouped()?));
                        }
                        let coord = Partitions::new(&d.name, group.clone(), count, uri);
                        parts = Some(Arc::new(PartitionSet::new(Arc::new(coord), checkpointers)));
                        None
                    }
                    None => Some(Arc::new(Membership::new(&d.name, group.clone(), uri))),
                }
            }
            _ => None,
        };
        let spec = Arc::new(spec);
        let (tx, rx) = mpsc::channel(1);
        let status = Arc::new(ReaderStatus::new());
        Ok(Reader {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            stop: status.cancel.child_token(),
            commits: Arc::new(Commits::new(
                spec.clone(),
                checkpointer.clone(),
                parts.clone(),
            )),
            spec,
            status,
            rx: tokio::sync::Mutex::new(rx),
            unstarted: Mutex::new(Some(tx)),
            run_task: Mutex::new(None),
            checkpointer,
            checkpoint_task: Mutex::new(None),
            membership,
            parts,
            partition_tasks: Mutex::new(Vec::new()),
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn spec(&self) -> &S::Spec {
        &self.spec
    }

    /// What the reader is doing now; while saves of its position fail, their error.
    pub fn health(&self) -> Health {
        let mut health = self.status.snapshot();
        health.batches_read = self.commits.batches_numbered();
        if let Some(ck) = &self.checkpointer {
            let saves = ck.save_stats();
            health.checkpoints_saved = saves.saved;
            health.checkpoint_failures = saves.failed;
            health.last_checkpoint_at = saves.last_saved_at;
        }
        if let Some(failure) = self.checkpointer.as_ref().and_then(|c| c.save_failure()) {
            health.last_error = Some(failure);
        }
        if let Some(parts) = &self.parts {
            for ck in &parts.checkpointers {
                let saves = ck.save_stats();
                health.checkpoints_saved += saves.saved;
                health.checkpoint_failures += saves.failed;
                health.last_checkpoint_at = health.last_checkpoint_at.max(saves.last_saved_at);
                if let Some(failure) = ck.save_failure() {
                    health.last_error = Some(failure);
                }
            }
            health.group = Some(parts.coord.health());
        } else {
            health.group = self.membership.as_ref().map(|m| m.health());
        }
        health
    }

    /// A group member: how much longer it may hand out what it read (zero: it does not
    /// hold the lease). `None`: not in a group. `seq`: the batch being handed out; a
    /// partitioned member answers zero for one it dropped (a partition was handed over or
    /// lost), and at most `PARTITION_RECHECK`, so the facade asks again that soon.
    pub fn lease_valid_for(&self, seq: Option<u64>) -> Option<std::time::Duration> {
        if let Some(parts) = &self.parts {
            if seq.is_some_and(|s| self.commits.is_stale(s)) {
                return Some(std::time::Duration::ZERO);
            }
            return Some(parts.coord.valid_for().min(PARTITION_RECHECK));
        }
        self.membership.as_ref().map(|m| m.valid_for())
    }

    /// The application is alive: a group member renews its lease only while it hears this.
    pub fn heartbeat(&self) {
        if let Some(m) = &self.membership {
            m.heartbeat();
        }
        if let Some(parts) = &self.parts {
            parts.coord.heartbeat();
        }
    }

    /// The next item. Must run inside a Tokio runtime (the run loop is spawned on it).
    pub async fn next(&self) -> ReaderItem {
        if !self.stop.is_cancelled() {
            self.start();
        }
        // With a token store, wait first while too much processed progress is unsaved. (If
        // saving failed for good, the failure is what comes next.)
        let _ = self.wait_for_room().await;
        let received = {
            let mut rx = self.rx.lock().await;
            loop {
                // Closed while waiting, or before: what is queued no longer matters. (A
                // reader that ended by itself, or was stopped, still hands out what it
                // received.)
                if self.status.cancel.is_cancelled() {
                    return ReaderItem::Ended(EndReason::Closed);
                }
                let item = rx.recv().await;
                // A group member hands out nothing read under a lease it no longer holds.
                if let (Some(ReaderItem::Batch(batch)), Some(_)) = (&item, &self.parts) {
                    if self.commits.is_stale(batch.seq) {
                        continue;
                    }
                } else if let Some(ReaderItem::Batch(batch)) = &item {
                    let holding = self.membership.as_ref().map(|m| m.holding().is_some());
                    if holding == Some(false) || self.commits.is_stale(batch.seq) {
                        continue;
                    }
                }
                break item;
            }
        };
        match received {
            Some(item) => item,
            None if self.stop.is_cancelled() && !self.status.state().is_terminal() => {
                self.status.end();
                ReaderItem::Ended(EndReason::Stopped)
            }
            None if self.status.state().is_terminal() => ReaderItem::Ended(EndReason::Closed),
            // The run loop vanished without saying why: only a panic does that. Never let
            // that look like a clean end.
            None => {
                let error = EngineError::new(
                    ErrorCode::ClientError,
                    format!("internal error: the {} stopped unexpectedly", S::WHAT),
                );
                self.status.fail(&error);
                ReaderItem::Failed(error)
            }
        }
    }

    /// Starts the run loop (and the checkpoint task) once; later calls do nothing.
    fn start(&self) {
        let Some(tx) = lock(&self.unstarted).take() else {
            return;
        };
        if !self.status.transition(ReaderState::Opening) {
            return;
        }
        let span = tracing::info_span!("reader", stream = self.id, ns = %self.spec.namespace());
        if let Some(ck) = &self.checkpointer {
            let task = checkpoint_task(
                ck.clone(),
                self.membership.clone(),
                self.status.clone(),
                tx.clone(),
            );
            *lock(&self.checkpoint_task) = Some(tokio::spawn(task.instrument(span.clone())));
        }
        if let Some(parts) = &self.parts {
            let mut tasks = lock(&self.partition_tasks);
            for (p, ck) in parts.checkpointers.iter().enumerate() {
                let task = checkpoint_task(
                    ck.clone(),
                    Some(parts.coord.lease(p as u32).clone()),
                    self.status.clone(),
                    tx.clone(),
                );
                tasks.push(tokio::spawn(task.instrument(span.clone())));
            }
        }
        let run = Run::<S>::new(
            self.spec.clone(),
            self.status.clone(),
            self.stop.clone(),
            tx,
            self.checkpointer.clone(),
            self.commits.clone(),
            match (&self.membership, &self.parts) {
                (Some(m), _) => Some(Grouping::Lease(m.clone())),
                (None, Some(p)) => Some(Grouping::Partitions(p.clone())),
                (None, None) => None,
            },
        );
        *lock(&self.run_task) = Some(tokio::spawn(run.run().instrument(span)));
    }

    /// The consumer processed every document handed out before batch `seq` and the first
    /// `n` of it. Returns the new marks. No-op without a token store.
    pub fn commit(&self, seq: u64, n: usize) -> Result<Marks, EngineError> {
        self.commits.commit(seq, n)
    }

    /// Where the consumer stands against the checkpoint policy now.
    pub fn marks(&self) -> Marks {
        self.commits.marks()
    }

    /// The checkpoint policy's `everyEvents`, for a named reader.
    pub fn checkpoint_every(&self) -> Option<u64> {
        if let Some(parts) = &self.parts {
            return Some(parts.every_events());
        }
        self.checkpointer.as_ref().map(|c| c.policy().every_events)
    }

    /// Waits until more documents may be handed out (`marks().limit` moved past what was
    /// committed), or the reader is closed. Fails with the store's error once saving failed
    /// for good (no room will come).
    pub async fn wait_for_room(&self) -> Result<(), EngineError> {
        if let Some(parts) = &self.parts {
            let held: Vec<u32> = parts.held().into_iter().map(|(p, _)| p).collect();
            for p in held {
                let ck = parts.checkpointer(p).clone();
                tokio::select! {
                    waited = ck.wait_for_room() => waited?,
                    _ = self.status.cancel.cancelled() => return Ok(()),
                }
            }
            return Ok(());
        }
        let Some(ck) = &self.checkpointer else {
            return Ok(());
        };
        tokio::select! {
            waited = ck.wait_for_room() => waited,
            _ = self.status.cancel.cancelled() => Ok(()),
        }
    }

    /// Processed documents not yet stored (0 without a token store).
    pub fn pending_checkpoint(&self) -> u64 {
        if let Some(parts) = &self.parts {
            return parts.checkpointers.iter().map(|c| c.unsaved_events()).sum();
        }
        self.checkpointer.as_ref().map_or(0, |c| c.unsaved_events())
    }

    /// Requests no further batches: cancels a pending backoff or in-flight command (the
    /// server cursor is killed). Items already received are still returned by `next()`,
    /// then `Ended(Stopped)`. Idempotent.
    pub fn stop(&self) {
        self.stop.cancel();
        // Never started: nothing was received.
        drop(lock(&self.unstarted).take());
    }

    /// Forbids re-opens, cancels a pending backoff or in-flight command (the server cursor
    /// is killed), waits for the tasks, then stores the last processed position.
    /// Idempotent. Fails only if that last position could not be stored.
    pub async fn close(&self) -> Result<(), EngineError> {
        self.status.begin_close();
        self.status.cancel.cancel();
        drop(lock(&self.unstarted).take());
        let mut tasks: Vec<JoinHandle<()>> = [&self.run_task, &self.checkpoint_task]
            .into_iter()
            .filter_map(|t| lock(t).take())
            .collect();
        tasks.extend(lock(&self.partition_tasks).drain(..));
        for handle in tasks {
            // Tasks only end by themselves; a panic inside the run loop is already
            // reported by `next()`, so a JoinError carries nothing more to say here.
            let _ = handle.await;
        }
        self.status.finish_close();
        let mut flushed = match &self.checkpointer {
            Some(ck) => ck.flush().await,
            None => Ok(()),
        };
        if let Some(parts) = &self.parts {
            for (p, _) in parts.held() {
                let saved = parts.checkpointer(p).flush().await;
                if flushed.is_ok() {
                    flushed = saved;
                }
            }
            parts.coord.leave().await;
        }
        // After the last save under it: a standby takes over from that position at once.
        if let Some(m) = &self.membership {
            m.release().await;
        }
        client_pool::settle().await;
        flushed
    }
}

impl<S: Source> Drop for Reader<S> {
    /// A reader dropped without `close()` (e.g. garbage-collected in JS) must not leave a
    /// run loop re-opening forever.
    fn drop(&mut self) {
        self.status.cancel.cancel();
    }
}

/// Writes positions on the policy until the reader closes; a store that stays down fails
/// the reader with that error. A fenced save ends the group member's tenure.
async fn checkpoint_task(
    ck: Arc<Checkpointer>,
    membership: Option<Arc<Membership>>,
    status: Arc<ReaderStatus>,
    tx: mpsc::Sender<ReaderItem>,
) {
    loop {
        match ck.run(&status.cancel).await {
            Ok(CheckpointEnd::Cancelled) => return,
            Ok(CheckpointEnd::Fenced { epoch }) => {
                if let Some(m) = &membership {
                    m.lose(epoch, LossReason::Fenced);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the token store stayed down");
                if status.fail(&e) {
                    let _ = tx.send(ReaderItem::Failed(e)).await;
                }
                return;
            }
        }
    }
}
