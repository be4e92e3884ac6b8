//! The run loop of a partitioned group's member: a round of the group every poll interval
//! (beat, count the live members, take the free partitions of its share), ONE stream for
//! the partitions it holds (`serve`, its replies filtered by `PartitionSet`), and the
//! changes between them: a partition taken is fenced and its position loaded (the stream
//! re-opens earlier when that position is earlier); a partition lost or handed over drops
//! what was read and not committed (the facade drops it too), and a handed-over one is
//! stored before its lease is released. After every change the stream re-opens with the
//! partitions now held, which it pushes to the server when the server can split
//! (`group::server_split`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::select_all;

use super::Run;
use crate::engine::durable::position::Position;
use crate::engine::group::partitions::Change;
use crate::engine::group::LossReason;
use crate::engine::reader::item::ReaderItem;
use crate::engine::reader::partitioned::PartitionSet;
use crate::engine::reader::source::Source;
use crate::engine::reader::status::ReaderState;

/// How long a handed-over partition waits before its position is stored and its lease
/// released: twice the facade's re-check (`PARTITION_RECHECK`), so it hands out nothing
/// more of that partition by then.
const HANDOVER_GRACE: Duration = Duration::from_millis(100);

enum Event {
    Changes(Vec<Change>),
    Lost {
        partition: u32,
        epoch: u64,
        reason: LossReason,
    },
}

impl<S: Source> Run<S> {
    pub(super) async fn run_partitioned(mut self, parts: Arc<PartitionSet>) {
        let coord = parts.coord.clone();
        let cancel = self.recovery.cancel_token();
        let mut failures = 0u32;
        loop {
            let held = parts.held();
            if held.is_empty() && !self.status.transition(ReaderState::Standby) {
                return;
            }
            let rounds = {
                let coord = coord.clone();
                let poll = coord.poll_interval();
                let failures = &mut failures;
                async move {
                    loop {
                        match coord.round().await {
                            Ok(changes) if !changes.is_empty() => return changes,
                            Ok(_) => *failures = 0,
                            Err(e) => {
                                *failures += 1;
                                if *failures % 10 == 1 {
                                    tracing::warn!(error = %e, "cannot read the group's leases");
                                }
                            }
                        }
                        tokio::time::sleep(poll).await;
                    }
                }
            };
            let losses = {
                let coord = coord.clone();
                let held = held.clone();
                async move {
                    if held.is_empty() {
                        return std::future::pending().await;
                    }
                    let ends = held.iter().map(|(p, epoch)| {
                        let lease = coord.lease(*p).clone();
                        let (p, epoch) = (*p, *epoch);
                        Box::pin(async move { (p, epoch, lease.ended(epoch).await) })
                    });
                    select_all(ends).await.0
                }
            };
            let event = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                (partition, epoch, reason) = losses => Event::Lost { partition, epoch, reason },
                changes = rounds => Event::Changes(changes),
                () = self.serve(), if !held.is_empty() => return,
            };
            let reopen = match event {
                Event::Lost {
                    partition,
                    epoch,
                    reason,
                } if parts.holds(partition, epoch) => {
                    let reopen = self
                        .drop_partition(&parts, partition, epoch, reason, false)
                        .await;
                    let Some(reopen) = reopen else { return };
                    reopen
                }
                Event::Lost { .. } => None,
                Event::Changes(changes) => {
                    let mut reopen: Option<Option<Position>> = None;
                    for change in changes {
                        let again = match change {
                            Change::Take { partition, epoch } => {
                                match self.take_partition(&parts, partition, epoch).await {
                                    None => return,
                                    Some(again) => again,
                                }
                            }
                            Change::Release { partition, epoch } => {
                                if !parts.holds(partition, epoch) {
                                    continue;
                                }
                                let again = self
                                    .drop_partition(
                                        &parts,
                                        partition,
                                        epoch,
                                        LossReason::Rebalanced,
                                        true,
                                    )
                                    .await;
                                match again {
                                    None => return,
                                    Some(again) => again,
                                }
                            }
                        };
                        reopen = match (reopen, again) {
                            (None, x) | (x, None) => x,
                            (Some(a), Some(b)) => Some(PartitionSet::earlier(a, b)),
                        };
                    }
                    reopen
                }
            };
            let reopen = match reopen {
                Some(at) => {
                    parts.reopening_at(at.as_ref());
                    Some(at)
                }
                // Otherwise the stream goes on from the end of the last reply filtered (every
                // filter stays as it is): the source may have read one more reply (serving
                // stopped between reading and filtering), and a server that splits sends
                // only the partitions held at the open.
                None => parts.stream_position().map(Some),
            };
            match reopen {
                None => {}
                Some(None) => self.source = S::new(self.spec.clone()),
                Some(Some(position)) => {
                    let time = self.source.restore(position);
                    self.status.record_progress(0, time);
                }
            }
            let held = parts.held().into_iter().map(|(p, _)| p).collect();
            self.source.filter_partitions(coord.filter(held));
        }
    }

    /// Takes partition `partition` (its lease held at `epoch`): fences its stored position,
    /// loads it and starts serving it. `None`: the reader stops; `Some(reopen)`: where the
    /// stream must re-open, if earlier than where it stands.
    async fn take_partition(
        &mut self,
        parts: &Arc<PartitionSet>,
        partition: u32,
        epoch: u64,
    ) -> Option<Option<Option<Position>>> {
        let lease = parts.coord.lease(partition).clone();
        let ck = parts.checkpointer(partition).clone();
        let (epoch, fenced) = self.fence_tenure(&ck, &lease, epoch).await?;
        let position = if fenced {
            match self.or_cancel(ck.load_position()).await? {
                Ok(position) => Some(position),
                Err(e) => {
                    tracing::warn!(error = %e, partition, "cannot load the partition's position; giving it up");
                    None
                }
            }
        } else {
            None
        };
        let Some(position) = position else {
            ck.end_tenure();
            lease.lose(epoch, LossReason::RenewFailed);
            return Some(None);
        };
        let keep = {
            let (lease, cancel) = (lease.clone(), self.status.cancel.clone());
            async move { lease.keep(epoch, cancel).await }
        };
        tokio::spawn(tracing::Instrument::in_current_span(keep));
        if let Some(time) = position.as_ref().and_then(|p| match p {
            Position::Stream { cluster_time, .. } => *cluster_time,
            Position::StreamAt { cluster_time } => Some(*cluster_time),
            Position::Cursor { .. } | Position::Snapshot { .. } => None,
        }) {
            ck.note_restored(Some(time));
        }
        let reading = parts.stream_position().is_some();
        let reopen = parts.gain(partition, epoch, position, self.source.has_start());
        // Nothing read yet: the stream opens at the earliest position of what is held.
        let reopen = if reading { reopen } else { parts.rewind() };
        let acquired = ReaderItem::LeaseAcquired {
            epoch,
            member: parts.coord.member().to_string(),
            since: lease
                .since(epoch)
                .unwrap_or_else(std::time::SystemTime::now),
            partition: Some(partition),
        };
        if !self.recovery.send(acquired).await {
            return None;
        }
        Some(reopen)
    }

    /// Stops serving `partition`: what was read and not committed is dropped (of every
    /// partition: the batches mix them; the ones still held go back to their committed
    /// positions). A hand-over (`store`) stores the partition's position, then releases its
    /// lease. `None`: the reader stops; `Some(reopen)`: where the stream must re-open.
    async fn drop_partition(
        &mut self,
        parts: &Arc<PartitionSet>,
        partition: u32,
        epoch: u64,
        reason: LossReason,
        store: bool,
    ) -> Option<Option<Option<Position>>> {
        let ck = parts.checkpointer(partition).clone();
        let mut reopen = None;
        self.commits.drop_uncommitted(|| {
            parts.drop_partition(partition);
            reopen = parts.rewind();
        });
        let lost = ReaderItem::LeaseLost {
            epoch,
            reason,
            partition: Some(partition),
        };
        if !self.recovery.send(lost).await {
            return None;
        }
        if store {
            // The facade stops handing out what was dropped within its re-check.
            self.or_cancel(tokio::time::sleep(HANDOVER_GRACE)).await?;
            if let Err(e) = ck.flush().await {
                tracing::warn!(error = %e, partition, "cannot store the partition's position before the hand-over");
            }
            // Nothing more is saved under this tenure once the next holder may fence.
            ck.end_tenure();
            parts.coord.lease(partition).hand_back(epoch).await;
        }
        ck.end_tenure();
        if parts.stream_position().is_none() {
            return Some(None);
        }
        Some(reopen)
    }
}
