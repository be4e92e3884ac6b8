//! The one run loop under every reader: opens the server cursor, reads it, hands batches to
//! the consumer through a one-slot channel, and re-opens after failures, stalls and losses —
//! the same for a change stream and a cursor; what differs is the `Source`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mongodb::raw_batch_cursor::RawBatchCursor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::commits::Commits;
use super::item::ReaderItem;
use super::partitioned::PartitionSet;
use super::recovery::Recoverer;
use super::source::{Adapted, AfterLoss, Exhausted, ReaderSpec, Reply, Source};
use super::status::{ReaderState, ReaderStatus};
use crate::engine::client_pool::ClientLease;
use crate::engine::durable::checkpoint::Checkpointer;
use crate::engine::errors::EngineError;
use crate::engine::group::{LossReason, Membership};

/// What the loop does next.
enum Flow {
    Reopen,
    Stop,
}

/// How a group member's run loop coordinates with its group.
pub(crate) enum Grouping {
    /// One lease for the whole stream.
    Lease(Arc<Membership>),
    /// A lease and a position per partition (`group.partitions`).
    Partitions(Arc<PartitionSet>),
}

pub(crate) struct Run<S: Source> {
    spec: Arc<S::Spec>,
    source: S,
    status: Arc<ReaderStatus>,
    tx: mpsc::Sender<ReaderItem>,
    recovery: Recoverer,
    checkpointer: Option<Arc<Checkpointer>>,
    /// Numbers the batches sent, and keeps what a commit needs (a named reader).
    commits: Arc<Commits<S>>,
    /// A consumer group's member reads only while it holds the lease.
    membership: Option<Arc<Membership>>,
    /// A partitioned group's member reads the partitions it holds (`partitioned.rs`).
    parts: Option<Arc<PartitionSet>>,
}

impl<S: Source> Run<S> {
    pub(crate) fn new(
        spec: Arc<S::Spec>,
        status: Arc<ReaderStatus>,
        stop: CancellationToken,
        tx: mpsc::Sender<ReaderItem>,
        checkpointer: Option<Arc<Checkpointer>>,
        commits: Arc<Commits<S>>,
        group: Option<Grouping>,
    ) -> Self {
        let (membership, parts) = match group {
            None => (None, None),
            Some(Grouping::Lease(m)) => (Some(m), None),
            Some(Grouping::Partitions(p)) => (None, Some(p)),
        };
        let backoff = spec.common().backoff.clone();
        let recovery = Recoverer::new(S::WHAT, status.clone(), tx.clone(), stop, backoff);
        Run {
            source: S::new(spec.clone()),
            spec,
            status,
            tx,
            recovery,
            checkpointer,
            commits,
            membership,
            parts,
        }
    }

    /// Continues from the token store's record, unless the user gave a start position
    /// (that wins, except in a group: every member has the same options, and a takeover
    /// continues where the last holder stopped). Returns false when the reader must stop.
    async fn restore_position(&mut self) -> bool {
        let Some(ck) = self.checkpointer.clone() else {
            return true;
        };
        if self.source.has_start() && self.membership.is_none() {
            return true;
        }
        match self.recovery.restore(&ck).await {
            None => false,
            Some(None) => true,
            Some(Some(position)) => {
                let time = self.source.restore(position);
                self.status.record_progress(0, time);
                ck.note_restored(time);
                true
            }
        }
    }

    pub(crate) async fn run(mut self) {
        if let Some(parts) = self.parts.clone() {
            return self.run_partitioned(parts).await;
        }
        let Some(membership) = self.membership.clone() else {
            return self.serve().await;
        };
        loop {
            let Some(epoch) = self.take_lease(&membership).await else {
                return;
            };
            let reason = tokio::select! {
                () = self.serve() => return,
                reason = membership.ended(epoch) => reason,
            };
            // Whatever was read under the lost lease is dropped, with the cursor; the next
            // tenure (of whichever member) starts from the stored position.
            self.commits.end_tenure();
            self.source = S::new(self.spec.clone());
            if !self
                .recovery
                .send(ReaderItem::LeaseLost {
                    epoch,
                    reason,
                    partition: None,
                })
                .await
            {
                return;
            }
        }
    }

    /// Waits as a standby until this member holds the lease and has fenced the token
    /// store by its epoch, then starts renewing. `None`: the reader stops.
    async fn take_lease(&mut self, membership: &Arc<Membership>) -> Option<u64> {
        let ck = self.checkpointer.clone()?;
        loop {
            if !self.status.transition(ReaderState::Standby) {
                return None;
            }
            let epoch = self.or_cancel(membership.acquire()).await?;
            let (epoch, fenced) = self.fence_tenure(&ck, membership, epoch).await?;
            if !fenced {
                membership.lose(epoch, LossReason::RenewFailed);
                self.or_cancel(tokio::time::sleep(membership.poll_interval()))
                    .await?;
                continue;
            }
            let keep = {
                let (membership, cancel) = (membership.clone(), self.status.cancel.clone());
                async move { membership.keep(epoch, cancel).await }
            };
            tokio::spawn(keep.in_current_span());
            let since = membership
                .since(epoch)
                .unwrap_or_else(std::time::SystemTime::now);
            let acquired = ReaderItem::LeaseAcquired {
                epoch,
                member: membership.member().to_string(),
                since,
                partition: None,
            };
            if !self.recovery.send(acquired).await {
                return None;
            }
            return Some(epoch);
        }
    }

    /// Fences the token store's record by the lease's `epoch`; a store holding a higher
    /// epoch (the lease collection was reset) lifts the lease above it, a few rounds at
    /// most. Returns the epoch held and whether the record is fenced by it; `None`: the
    /// reader stops.
    pub(super) async fn fence_tenure(
        &self,
        ck: &Checkpointer,
        lease: &Membership,
        mut epoch: u64,
    ) -> Option<(u64, bool)> {
        for _ in 0..3 {
            match self.or_cancel(ck.begin_tenure(epoch)).await? {
                Ok(None) => return Some((epoch, true)),
                Ok(Some(stored)) => match lease.raise(epoch, stored + 1).await {
                    Ok(true) => epoch = stored + 1,
                    _ => break,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot fence the token store; giving the lease up");
                    break;
                }
            }
        }
        Some((epoch, false))
    }

    /// Restores the position, then opens and reads until the reader stops.
    async fn serve(&mut self) {
        if !self.restore_position().await {
            return;
        }
        let uri = self.spec.common().uri.clone();
        let Some(client) = self.recovery.client(&uri).await else {
            return;
        };
        loop {
            if self.status.state().is_terminal() {
                return;
            }
            let opened = self.watched(|run| run.source.open(&client)).await;
            let flow = match opened {
                None => Flow::Stop,
                Some(Err(silent)) => self.stalled(silent).await,
                Some(Ok(Err(e))) => {
                    let error = classify::<S>(&e, &client);
                    self.after_error(error, &client).await
                }
                Some(Ok(Ok(cursor))) => match self.check_open(&client).await {
                    None => self.pump(cursor, &client).await,
                    Some(flow) => flow,
                },
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    /// After an open, a source may find its position lost (`None`: go on reading).
    async fn check_open(&mut self, client: &ClientLease) -> Option<Flow> {
        match self.watched(|run| run.source.check_open(client)).await {
            None => Some(Flow::Stop),
            Some(Ok(Ok(None))) => None,
            Some(Ok(Ok(Some(lost)))) => Some(self.lost(lost, client).await),
            Some(Ok(Err(e))) => Some(self.after_error(classify::<S>(&e, client), client).await),
            Some(Err(silent)) => Some(self.stalled(silent).await),
        }
    }

    /// Reads batches from one cursor until it fails, ends, stalls, or the reader stops.
    /// The cursor is dropped on return, which kills it on the server.
    async fn pump(&mut self, mut cursor: RawBatchCursor, client: &ClientLease) -> Flow {
        let mut opening = true;
        loop {
            // Reserve the slot BEFORE reading: at most one batch waits for the consumer.
            let Some(Ok(permit)) = self.or_cancel(self.tx.clone().reserve_owned()).await else {
                return Flow::Stop;
            };
            let next = match self.watched(|_| cursor.next()).await {
                None => return Flow::Stop,
                Some(Err(silent)) => {
                    drop(permit);
                    drop(cursor);
                    return self.stalled(silent).await;
                }
                Some(Ok(next)) => next,
            };
            let reply = match next {
                Some(Ok(reply)) => reply,
                Some(Err(e)) => {
                    drop(permit);
                    drop(cursor);
                    return self.after_error(classify::<S>(&e, client), client).await;
                }
                None => {
                    return match self.source.on_exhausted() {
                        Exhausted::End(reason) => {
                            self.status.end();
                            permit.send(ReaderItem::Ended(reason));
                            Flow::Stop
                        }
                        Exhausted::Reopen(pause) => {
                            drop(permit);
                            match self.or_cancel(tokio::time::sleep(pause)).await {
                                None => Flow::Stop,
                                Some(()) => Flow::Reopen,
                            }
                        }
                        Exhausted::Fail(error) => {
                            drop(permit);
                            self.recovery.fail(error).await;
                            Flow::Stop
                        }
                    };
                }
            };
            self.status.record_reply();
            let was_opening = std::mem::take(&mut opening);
            let read = self.source.on_reply(reply.as_raw_document(), was_opening);
            let (batch, progress) = match read {
                Err(e) => {
                    drop(permit);
                    self.recovery.fail(e).await;
                    return Flow::Stop;
                }
                Ok(Reply::Stalled(silent)) => {
                    drop(permit);
                    return self.stalled(silent).await;
                }
                Ok(Reply::Nothing { progress }) => (None, progress),
                Ok(Reply::Batch { batch, progress }) => (Some(batch), progress),
            };
            if !self.status.transition(ReaderState::Streaming) {
                return Flow::Stop;
            }
            let mut permit = permit;
            // The outage ends on real progress. A successful open alone proves little (the
            // next getMore may fail again), so its reply does not reset the backoff.
            if let Some(recovery) = progress.then(|| self.recovery.progress()).flatten() {
                tracing::info!(
                    attempts = recovery.attempts,
                    downtime_ms = recovery.downtime.as_millis() as u64,
                    "{} resumed",
                    S::WHAT
                );
                let tx = permit.send(ReaderItem::Resumed {
                    attempts: recovery.attempts,
                    downtime: recovery.downtime,
                });
                permit = match self.or_cancel(tx.reserve_owned()).await {
                    Some(Ok(p)) => p,
                    _ => return Flow::Stop,
                };
            }
            let Some(batch) = batch else {
                continue;
            };
            let (batch, meta) = match &self.parts {
                None => (batch, None),
                Some(parts) => match parts.filter(batch) {
                    Ok((batch, meta)) => (batch, Some(meta)),
                    Err(e) => {
                        drop(permit);
                        self.recovery.fail(e).await;
                        return Flow::Stop;
                    }
                },
            };
            self.status
                .record_progress(batch.count, batch.position_time);
            permit.send(ReaderItem::Batch(self.commits.number(batch, meta)));
            if self.source.position_check_due() {
                if let Some(flow) = self.check_open(client).await {
                    return flow;
                }
            }
        }
    }

    async fn after_error(&mut self, error: EngineError, client: &ClientLease) -> Flow {
        let error = match self.source.adapt(error) {
            Adapted::Reopen => return Flow::Reopen,
            Adapted::Handle(error) => error,
        };
        if self.source.is_loss(&error) {
            return self.lost(error, client).await;
        }
        if self.recovery.recover(error).await {
            Flow::Reopen
        } else {
            Flow::Stop
        }
    }

    /// The position is gone: report it (never silently), then follow the user's policy.
    async fn lost(&mut self, error: EngineError, client: &ClientLease) -> Flow {
        tracing::error!(error = %error, "{} position lost", S::WHAT);
        let from = self.status.snapshot().position_time;
        let cancel = self.recovery.cancel_token();
        let item = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            item = self.source.loss_item(&error, client, from) => Some(item),
        };
        let Some(item) = item else {
            return Flow::Stop;
        };
        if !self.recovery.send(item).await {
            return Flow::Stop;
        }
        match self.source.after_loss() {
            AfterLoss::Fail => {
                self.recovery.fail(error).await;
                Flow::Stop
            }
            AfterLoss::Continue => Flow::Reopen,
        }
    }

    /// Announces a stall, then re-opens like after any resumable failure.
    async fn stalled(&mut self, silent: Duration) -> Flow {
        if self.recovery.stalled(silent).await {
            Flow::Reopen
        } else {
            Flow::Stop
        }
    }

    /// Runs one server round trip under the stall watchdog, unless the reader stops first.
    /// `None`: stop; `Some(Err(waited))`: no reply within the await time plus
    /// `stallTimeoutMS`.
    async fn watched<'a, F, Fut>(
        &'a mut self,
        round_trip: F,
    ) -> Option<Result<Fut::Output, Duration>>
    where
        F: FnOnce(&'a mut Self) -> Fut,
        Fut: Future + 'a,
    {
        let stall = self.spec.common().stall_timeout;
        let limit = stall.map(|s| s + self.source.await_time());
        let cancel = self.recovery.cancel_token();
        let trip = round_trip(self);
        let timed = async move {
            match limit {
                None => Ok(trip.await),
                Some(limit) => tokio::time::timeout(limit, trip).await.map_err(|_| limit),
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            out = timed => Some(out),
        }
    }

    /// Runs `f` unless the reader stops first; `None` means "stop".
    async fn or_cancel<F: Future>(&self, f: F) -> Option<F::Output> {
        self.recovery.or_cancel(f).await
    }
}

#[path = "partitioned_run.rs"]
mod partitioned_run;

/// A read's driver error, classified by the source's rule for the server's wire version.
fn classify<S: Source>(error: &mongodb::error::Error, client: &ClientLease) -> EngineError {
    EngineError::classify(error, S::rules(client.max_wire_version()))
}
