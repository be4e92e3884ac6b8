//! A partitioned group (`group: { partitions: P }`): the stream's events are split by a
//! stable hash of `documentKey` into P partitions, each with its own lease (`<name>#p<i>`,
//! one `Membership` per partition: the same fenced leases as an unpartitioned group) and
//! its own stored position (the reader's business). Members show they are alive with a
//! document of their own in the lease collection (`<name>#member#<member>`, its `beats`
//! counting up); every member judges who is alive on its own monotonic clock (a member
//! whose beats did not change for a lease is gone), ranks the live members by name, and
//! claims the partitions `i` with `i % members == rank`: a fair share that every member
//! computes alike once their views agree. A partition assigned elsewhere is handed over
//! (the reader stores its position first); one assigned here is taken once its holder
//! released it or its lease lapsed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::hashed_key::hash_document;
use super::lease::{LeaseState, LeaseStore};
use super::member::Membership;
use super::server_split::{PartitionFilter, SplitState};
use super::{GroupHealth, GroupSpec};
use crate::engine::errors::EngineError;

/// What the reader should do after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// This member took partition `partition`'s lease at `epoch`: fence its position, load
    /// it, and read the partition's events.
    Take { partition: u32, epoch: u64 },
    /// Partition `partition` (held at `epoch`) is assigned to another member now: stop
    /// handing its events out, store its position, then hand the lease back.
    Release { partition: u32, epoch: u64 },
}

/// The partition of a change event whose `documentKey` is `key` (its BSON bytes; `None`:
/// an event without one, e.g. a `drop`, goes to partition 0): MongoDB's hashed-index hash of
/// the key (`hashed_key.rs`, what `$toHashedIndexKey: "$documentKey"` computes) modulo
/// `count`, never negative. Stable across processes, machines and versions, and the same as
/// a server that splits for the member (`server_split.rs`).
pub fn partition_of(key: Option<&[u8]>, count: u32) -> u32 {
    match key.map(hash_document) {
        Some(Ok(hash)) => partition_of_hash(hash, count),
        _ => 0,
    }
}

/// The partition of a key whose hash is `hash`.
pub fn partition_of_hash(hash: i64, count: u32) -> u32 {
    hash.rem_euclid(i64::from(count.max(1))) as u32
}

/// The lease (and stored position) name of partition `partition` of group `name`.
pub fn partition_name(name: &str, partition: u32) -> String {
    format!("{name}#p{partition}")
}

/// A member's document in the lease collection.
fn member_id(name: &str, member: &str) -> String {
    format!("{name}#member#{member}")
}

/// A member document unchanged for this many leases is removed (its member is long gone).
const FORGET_AFTER_LEASES: u32 = 10;

/// The partitions member number `rank` of `members` claims.
pub fn fair_share(count: u32, members: usize, rank: usize) -> Vec<u32> {
    let members = members.max(1) as u32;
    (0..count).filter(|p| p % members == rank as u32).collect()
}

struct Views {
    /// One per partition: the lease state watched, and since when (a standby's timing).
    watched: Vec<Option<(LeaseState, Instant)>>,
    /// Each member's beats as last seen, and when they last changed (this clock).
    beats: HashMap<String, (u64, Instant)>,
    /// The live members, by name (this one included).
    alive: Vec<String>,
}

pub struct Partitions {
    name: String,
    spec: GroupSpec,
    count: u32,
    /// The lease collection, for the member documents.
    leases: LeaseStore,
    /// One membership per partition.
    members: Vec<Arc<Membership>>,
    views: Mutex<Views>,
    heartbeat: Mutex<Option<Instant>>,
    /// Where this member's events are split (known after its stream first opened).
    split: Arc<SplitState>,
}

impl Partitions {
    /// `uri`: the coordination deployment unless `group.uri` says otherwise.
    pub fn new(name: &str, spec: GroupSpec, count: u32, uri: &str) -> Self {
        let leases = LeaseStore::new(
            spec.uri.clone().unwrap_or_else(|| uri.to_string()),
            spec.db.clone(),
            spec.collection.clone(),
        );
        let members = (0..count)
            .map(|p| Arc::new(Membership::new(&partition_name(name, p), spec.clone(), uri)))
            .collect();
        Partitions {
            name: name.to_string(),
            count,
            leases,
            members,
            views: Mutex::new(Views {
                watched: vec![None; count as usize],
                beats: HashMap::new(),
                alive: vec![spec.member.clone()],
            }),
            spec,
            heartbeat: Mutex::new(None),
            split: Arc::default(),
        }
    }

    fn views(&self) -> std::sync::MutexGuard<'_, Views> {
        self.views.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn member(&self) -> &str {
        &self.spec.member
    }

    fn member_id(&self) -> String {
        member_id(&self.name, &self.spec.member)
    }

    /// What the stream filters on at its next open: the partitions in `held`.
    pub fn filter(&self, held: Vec<u32>) -> PartitionFilter {
        PartitionFilter {
            count: self.count,
            held,
            choice: self.spec.split,
            state: self.split.clone(),
        }
    }

    /// Partition `partition`'s lease.
    pub fn lease(&self, partition: u32) -> &Arc<Membership> {
        &self.members[partition as usize]
    }

    /// How often the member looks at its group.
    pub fn poll_interval(&self) -> Duration {
        (self.spec.lease / 5).clamp(Duration::from_millis(25), Duration::from_secs(1))
    }

    /// The application is alive (its event loop runs): renewals and beats go on.
    pub fn heartbeat(&self) {
        *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        for m in &self.members {
            m.heartbeat();
        }
    }

    fn unresponsive(&self) -> bool {
        let beat = *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner());
        beat.is_some_and(|at| at.elapsed() > self.spec.lease / 2)
    }

    /// The partitions this member holds now, with their epochs.
    pub fn held(&self) -> Vec<(u32, u64)> {
        (0..self.count)
            .filter_map(|p| self.lease(p).holding().map(|e| (p, e)))
            .collect()
    }

    /// One round: shows this member is alive, counts the live members, and takes the
    /// free partitions of its fair share; returns what changed (taken, and held partitions
    /// that are assigned elsewhere now).
    pub async fn round(&self) -> Result<Vec<Change>, EngineError> {
        if !self.unresponsive() {
            self.leases
                .beat(&self.member_id(), &self.name, self.member())
                .await?;
        }
        let seen = self.leases.members(&self.name).await?;
        let (target, gone) = {
            let mut views = self.views();
            let now = Instant::now();
            for (member, beats) in &seen {
                match views.beats.get_mut(member) {
                    Some(last) if last.0 == *beats => {}
                    Some(last) => *last = (*beats, now),
                    None => {
                        views.beats.insert(member.clone(), (*beats, now));
                    }
                }
            }
            let lease = self.spec.lease;
            let present: Vec<&String> = seen.iter().map(|(m, _)| m).collect();
            views.beats.retain(|m, _| present.contains(&m));
            let mut alive: Vec<String> = views
                .beats
                .iter()
                .filter(|(_, (_, changed))| changed.elapsed() < lease)
                .map(|(m, _)| m.clone())
                .collect();
            if !alive.iter().any(|m| m == self.member()) {
                alive.push(self.member().to_string());
            }
            alive.sort();
            let rank = alive.iter().position(|m| m == self.member()).unwrap_or(0);
            let target = fair_share(self.count, alive.len(), rank);
            views.alive = alive;
            let gone: Vec<(String, u64)> = views
                .beats
                .iter()
                .filter(|(_, (_, changed))| changed.elapsed() > lease * FORGET_AFTER_LEASES)
                .map(|(m, (beats, _))| (m.clone(), *beats))
                .collect();
            (target, gone)
        };
        for (member, beats) in gone {
            // Only while it stays unchanged: a member that came back keeps its document.
            self.leases
                .forget(&member_id(&self.name, &member), beats)
                .await?;
        }
        let mut changes = Vec::new();
        for p in 0..self.count {
            let held = self.lease(p).holding();
            let wanted = target.contains(&p);
            match (wanted, held) {
                (true, None) => {
                    let mut watched = self.views().watched[p as usize].take();
                    let taken = self.lease(p).try_acquire(&mut watched).await;
                    self.views().watched[p as usize] = watched;
                    if let Some(epoch) = taken? {
                        changes.push(Change::Take {
                            partition: p,
                            epoch,
                        });
                    }
                }
                (false, Some(epoch)) => changes.push(Change::Release {
                    partition: p,
                    epoch,
                }),
                _ => {}
            }
        }
        Ok(changes)
    }

    /// Leaves the group (a graceful close, after the positions were stored): releases every
    /// lease held and removes the member document, so the others rebalance at once.
    pub async fn leave(&self) {
        for m in &self.members {
            m.release().await;
        }
        let member_id = self.member_id();
        let leave = self.leases.leave(&member_id);
        match tokio::time::timeout(Duration::from_secs(2), leave).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot leave the group; it notices later"),
            Err(_) => tracing::warn!("leaving the group timed out; it notices later"),
        }
    }

    /// How much longer this member may hand out what it read of every partition it holds
    /// (zero: it holds none).
    pub fn valid_for(&self) -> Duration {
        (0..self.count)
            .filter(|p| self.lease(*p).holding().is_some())
            .map(|p| self.lease(p).valid_for())
            .min()
            .unwrap_or(Duration::ZERO)
    }

    pub fn health(&self) -> GroupHealth {
        let held: Vec<u32> = self.held().into_iter().map(|(p, _)| p).collect();
        let alive = self.views().alive.len() as u32;
        GroupHealth {
            member: self.member().to_string(),
            role: if held.is_empty() {
                super::member::Role::Standby
            } else {
                super::member::Role::Holder
            },
            holder: None,
            epoch: None,
            since: None,
            lease: self.spec.lease,
            takeovers: self.members.iter().map(|m| m.takeovers()).sum(),
            partitions: Some(held),
            partition_count: Some(self.count),
            members_alive: Some(alive),
            split: self.split.get().map(|m| m.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_stable_and_the_shares_cover_every_partition_once() {
        let key = mongodb::bson::to_vec(&mongodb::bson::doc! {"_id": 7}).unwrap();
        let p = partition_of(Some(&key), 6);
        assert_eq!(p, partition_of(Some(&key), 6));
        assert!(p < 6);
        assert_eq!(partition_of(None, 6), 0);
        // Keys that differ in one byte (ObjectIds of one insertMany) spread over every
        // partition, about evenly.
        let mut counts = [0u32; 6];
        for n in 0..600u32 {
            let mut oid = [0x6bu8, 0x0f, 0xc4, 0, 0x0d, 0x75, 0x77, 0x30, 0x50, 0, 0, 0];
            oid[9..12].copy_from_slice(&n.to_be_bytes()[1..]);
            let id = mongodb::bson::oid::ObjectId::from_bytes(oid);
            let key = mongodb::bson::to_vec(&mongodb::bson::doc! {"_id": id}).unwrap();
            counts[partition_of(Some(&key), 6) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (60..=140).contains(c)), "{counts:?}");
        for members in 1..=7 {
            let mut all: Vec<u32> = (0..members)
                .flat_map(|rank| fair_share(6, members, rank))
                .collect();
            all.sort();
            assert_eq!(all, (0..6).collect::<Vec<_>>(), "{members} members");
        }
        assert_eq!(fair_share(6, 3, 1), vec![1, 4]);
    }
}
