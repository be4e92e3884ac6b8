//! One member of a consumer group: standby until it takes the lease, then holder until it
//! loses or releases it. The holder renews in the background; it counts itself the holder
//! only until `renewal start + lease − margin`, which ends before any standby can judge the
//! lease lapsed (`renewal start + lease` at the earliest). While the application does not
//! show it is alive (`heartbeat()`, from the facade's timer), renewals stop: a process whose
//! event loop is blocked past the lease is replaced like a dead one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::lease::{LeaseState, LeaseStore};
use super::GroupSpec;
use crate::engine::errors::EngineError;

/// This member's part in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Waits for the lease; reads nothing.
    Standby,
    /// Holds the lease: reads and hands out.
    Holder,
    /// Closed: left the group.
    Stopped,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Holder => "holder",
            Role::Stopped => "stopped",
        }
    }
}

/// Why a holder stopped holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// A renewal found another member's lease (it was taken after this one lapsed).
    TakenOver,
    /// The token store refused a position write: a later holder fenced it.
    Fenced,
    /// Renewals failed (the lease collection unreachable) until the lease ran out.
    RenewFailed,
    /// The application stopped showing it is alive (event loop blocked) past the lease.
    Unresponsive,
    /// A partitioned group rebalanced: this member handed the partition over (after its
    /// position was stored) to the member it is assigned to now.
    Rebalanced,
}

impl LossReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LossReason::TakenOver => "takenOver",
            LossReason::Fenced => "fenced",
            LossReason::RenewFailed => "renewFailed",
            LossReason::Unresponsive => "unresponsive",
            LossReason::Rebalanced => "rebalanced",
        }
    }
}

/// A point-in-time view of the member, for `health()`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupHealth {
    pub member: String,
    pub role: Role,
    /// Who holds the lease, as last seen (this member when it is the holder).
    pub holder: Option<String>,
    /// The holder's epoch, as last seen.
    pub epoch: Option<u64>,
    /// Since when the holder holds it.
    pub since: Option<SystemTime>,
    pub lease: Duration,
    /// Leases this member acquired.
    pub takeovers: u64,
    /// A partitioned group: the partitions this member holds now (ascending).
    pub partitions: Option<Vec<u32>>,
    /// A partitioned group: how many partitions, and how many members it counts alive.
    pub partition_count: Option<u32>,
    pub members_alive: Option<u32>,
    /// A partitioned group: where this member's events are split ("server" or "client";
    /// `None` until its stream first opened).
    pub split: Option<&'static str>,
}

struct Tenure {
    epoch: u64,
    since: SystemTime,
    /// Holder until then, unless renewed.
    valid_until: Instant,
    /// Cancelled when the tenure ends.
    ended: CancellationToken,
    reason: Option<LossReason>,
}

enum RoleState {
    Standby,
    Holder(Tenure),
    Stopped,
}

struct State {
    role: RoleState,
    /// The lease as last read (standby) — who holds it.
    seen: Option<LeaseState>,
    /// The reason of the tenure that ended last.
    last_loss: Option<(u64, LossReason)>,
}

pub struct Membership {
    /// The group: the reader's name.
    name: String,
    spec: GroupSpec,
    leases: LeaseStore,
    state: Mutex<State>,
    /// When the application last showed it is alive; `None` until it first does (then
    /// renewals depend on it).
    heartbeat: Mutex<Option<Instant>>,
    takeovers: AtomicU64,
}

impl Membership {
    /// `uri`: the coordination deployment unless `group.uri` says otherwise.
    pub fn new(name: &str, spec: GroupSpec, uri: &str) -> Self {
        let leases = LeaseStore::new(
            spec.uri.clone().unwrap_or_else(|| uri.to_string()),
            spec.db.clone(),
            spec.collection.clone(),
        );
        Membership {
            name: name.to_string(),
            spec,
            leases,
            state: Mutex::new(State {
                role: RoleState::Standby,
                seen: None,
                last_loss: None,
            }),
            heartbeat: Mutex::new(None),
            takeovers: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn member(&self) -> &str {
        &self.spec.member
    }

    /// How often a standby looks at the lease (and so how soon it sees a release).
    pub fn poll_interval(&self) -> Duration {
        (self.spec.lease / 5).clamp(Duration::from_millis(25), Duration::from_secs(1))
    }

    /// How long a renewal keeps this member the holder: less than the lease, so it stops
    /// before any standby may start.
    fn validity(&self) -> Duration {
        self.spec.lease - self.spec.lease / 5
    }

    /// The application is alive (its event loop runs).
    pub fn heartbeat(&self) {
        *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn unresponsive(&self) -> bool {
        let beat = *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner());
        beat.is_some_and(|at| at.elapsed() > self.spec.lease / 2)
    }

    /// Waits as a standby until this member takes the lease; returns its epoch. Failures
    /// to reach the lease collection are logged and retried at the poll interval.
    pub async fn acquire(&self) -> u64 {
        let mut watched: Option<(LeaseState, Instant)> = None;
        let mut failures = 0u32;
        loop {
            match self.try_acquire(&mut watched).await {
                Ok(Some(epoch)) => return epoch,
                Ok(None) => failures = 0,
                Err(e) => {
                    failures += 1;
                    // Once, then every ~10th: a standby may wait out a long outage.
                    if failures % 10 == 1 {
                        tracing::warn!(error = %e, "cannot read the group's lease");
                    }
                }
            }
            tokio::time::sleep(self.poll_interval()).await;
        }
    }

    /// One look at the lease: takes it when the state watched in `watched` stayed
    /// unchanged for a lease (or was released). `Some(epoch)`: taken.
    pub(crate) async fn try_acquire(
        &self,
        watched: &mut Option<(LeaseState, Instant)>,
    ) -> Result<Option<u64>, EngineError> {
        let lease_ms = self.spec.lease.as_millis() as u64;
        let seen = self.leases.read(&self.name).await?;
        // The lease counts from when the write that takes it is sent: no standby can see
        // that state (and start timing it) earlier.
        let started = Instant::now();
        self.lock().seen = seen.clone();
        let taken = match seen {
            None => {
                self.leases
                    .create(&self.name, self.member(), lease_ms)
                    .await?
            }
            Some(seen) => {
                // The holder's lease, if it set a longer one than ours.
                let lapse = Duration::from_millis(seen.lease_ms).max(self.spec.lease);
                let lapsed = match watched {
                    Some((w, at)) if *w == seen => at.elapsed() >= lapse,
                    _ => {
                        *watched = Some((seen.clone(), Instant::now()));
                        false
                    }
                };
                if !(seen.released || lapsed) {
                    return Ok(None);
                }
                self.leases
                    .take(&self.name, self.member(), &seen, lease_ms)
                    .await?
            }
        };
        let Some(epoch) = taken else {
            return Ok(None);
        };
        let since = SystemTime::now();
        let mut state = self.lock();
        if matches!(state.role, RoleState::Stopped) {
            return Ok(None);
        }
        state.role = RoleState::Holder(Tenure {
            epoch,
            since,
            valid_until: started + self.validity(),
            ended: CancellationToken::new(),
            reason: None,
        });
        state.seen = Some(LeaseState {
            holder: Some(self.member().to_string()),
            epoch,
            renewals: 0,
            released: false,
            lease_ms,
            acquired_at: Some(since.into()),
        });
        self.takeovers.fetch_add(1, Ordering::Relaxed);
        tracing::info!(epoch, member = self.member(), "took the group's lease");
        Ok(Some(epoch))
    }

    /// When this member took the lease it holds at `epoch`.
    pub fn since(&self, epoch: u64) -> Option<SystemTime> {
        match &self.lock().role {
            RoleState::Holder(t) if t.epoch == epoch => Some(t.since),
            _ => None,
        }
    }

    /// Resolves when the tenure at `epoch` ends, with why (at once if it already did).
    pub async fn ended(&self, epoch: u64) -> LossReason {
        let token = match &self.lock().role {
            RoleState::Holder(t) if t.epoch == epoch => t.ended.clone(),
            _ => return self.loss_reason(epoch),
        };
        token.cancelled().await;
        self.loss_reason(epoch)
    }

    fn loss_reason(&self, epoch: u64) -> LossReason {
        match self.lock().last_loss {
            Some((e, reason)) if e == epoch => reason,
            _ => LossReason::TakenOver,
        }
    }

    /// Ends the tenure at `epoch` (if it is the current one). Returns whether it did.
    pub fn lose(&self, epoch: u64, reason: LossReason) -> bool {
        let mut state = self.lock();
        let RoleState::Holder(tenure) = &mut state.role else {
            return false;
        };
        if tenure.epoch != epoch {
            return false;
        }
        tenure.reason = Some(reason);
        tenure.ended.cancel();
        state.role = RoleState::Standby;
        state.last_loss = Some((epoch, reason));
        tracing::warn!(epoch, reason = reason.as_str(), "lost the group's lease");
        true
    }

    /// How much longer this member holds the lease (zero: it does not). A lease that ran
    /// out ends here, at once, whatever the renewal task is doing.
    pub fn valid_for(&self) -> Duration {
        let (epoch, left) = match &self.lock().role {
            RoleState::Holder(t) => (
                t.epoch,
                t.valid_until.saturating_duration_since(Instant::now()),
            ),
            _ => return Duration::ZERO,
        };
        if left.is_zero() {
            self.lose(epoch, self.lapse_reason());
        }
        left
    }

    fn lapse_reason(&self) -> LossReason {
        if self.unresponsive() {
            LossReason::Unresponsive
        } else {
            LossReason::RenewFailed
        }
    }

    /// The epoch this member holds, if it holds the lease now.
    pub fn holding(&self) -> Option<u64> {
        if self.valid_for().is_zero() {
            return None;
        }
        match &self.lock().role {
            RoleState::Holder(t) => Some(t.epoch),
            _ => None,
        }
    }

    /// Lifts the lease held at `epoch` to `to` (above an epoch the token store already
    /// holds). False: the lease is no longer this member's (the tenure ended).
    pub async fn raise(&self, epoch: u64, to: u64) -> Result<bool, EngineError> {
        let started = Instant::now();
        if !self
            .leases
            .raise(&self.name, self.member(), epoch, to)
            .await?
        {
            self.lose(epoch, LossReason::TakenOver);
            return Ok(false);
        }
        let mut state = self.lock();
        match &mut state.role {
            // A new state of the lease: standbys time it from now, like a renewal.
            RoleState::Holder(t) if t.epoch == epoch => {
                t.epoch = to;
                t.valid_until = started + self.validity();
            }
            _ => return Ok(false),
        }
        if let Some(seen) = &mut state.seen {
            seen.epoch = to;
        }
        if let Some((e, _)) = &mut state.last_loss {
            if *e == epoch {
                *e = to;
            }
        }
        Ok(true)
    }

    /// Renews the lease held at `epoch` until the tenure ends or `cancel` fires.
    pub async fn keep(&self, epoch: u64, cancel: CancellationToken) {
        let every = self.spec.lease / 4;
        let mut pause = every;
        loop {
            let valid_until = match &self.lock().role {
                RoleState::Holder(t) if t.epoch == epoch => t.valid_until,
                _ => return,
            };
            let wake = (Instant::now() + pause).min(valid_until);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            if Instant::now() >= valid_until {
                self.lose(epoch, self.lapse_reason());
                return;
            }
            if self.unresponsive() {
                // Let it lapse: a member whose application is stuck must be replaced.
                pause = every;
                continue;
            }
            let attempt = Instant::now();
            let renewed = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(valid_until.into()) => {
                    self.lose(epoch, LossReason::RenewFailed);
                    return;
                }
                renewed = self.leases.renew(&self.name, self.member(), epoch) => renewed,
            };
            match renewed {
                Ok(true) => {
                    pause = every;
                    if let RoleState::Holder(t) = &mut self.lock().role {
                        if t.epoch == epoch {
                            t.valid_until = attempt + self.validity();
                        }
                    }
                }
                Ok(false) => {
                    self.lose(epoch, LossReason::TakenOver);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, epoch, "cannot renew the group's lease");
                    // Try again soon: the lease is running out.
                    pause = every / 4;
                }
            }
        }
    }

    /// Leaves the group: releases the lease if held, so a standby takes over at once.
    pub async fn release(&self) {
        let held = {
            let mut state = self.lock();
            let held = match &state.role {
                RoleState::Holder(t) => {
                    t.ended.cancel();
                    Some(t.epoch)
                }
                _ => None,
            };
            state.role = RoleState::Stopped;
            held
        };
        let Some(epoch) = held else {
            return;
        };
        let release = self.leases.release(&self.name, self.member(), epoch);
        match tokio::time::timeout(Duration::from_secs(2), release).await {
            Ok(Ok(_)) => tracing::info!(epoch, "released the group's lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the group's lease; it lapses"),
            Err(_) => tracing::warn!("releasing the group's lease timed out; it lapses"),
        }
    }

    /// Hands the lease held at `epoch` back (a partitioned group's rebalance: its position
    /// is stored) and stays in the group as a standby. False: it was not held at `epoch`.
    pub async fn hand_back(&self, epoch: u64) -> bool {
        {
            let mut state = self.lock();
            match &state.role {
                RoleState::Holder(t) if t.epoch == epoch => t.ended.cancel(),
                _ => return false,
            }
            state.role = RoleState::Standby;
            state.last_loss = Some((epoch, LossReason::Rebalanced));
        }
        let release = self.leases.release(&self.name, self.member(), epoch);
        match tokio::time::timeout(Duration::from_secs(2), release).await {
            Ok(Ok(_)) => tracing::info!(epoch, lease = %self.name, "handed the lease over"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the lease; it lapses"),
            Err(_) => tracing::warn!("releasing the lease timed out; it lapses"),
        }
        true
    }

    /// How many leases this member acquired.
    pub fn takeovers(&self) -> u64 {
        self.takeovers.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> GroupHealth {
        let state = self.lock();
        let role = match &state.role {
            RoleState::Standby => Role::Standby,
            RoleState::Holder(_) => Role::Holder,
            RoleState::Stopped => Role::Stopped,
        };
        let seen = state.seen.as_ref().filter(|s| !s.released);
        let (holder, epoch, since) = match &state.role {
            RoleState::Holder(t) => (
                Some(self.member().to_string()),
                Some(t.epoch),
                Some(t.since),
            ),
            _ => (
                seen.and_then(|s| s.holder.clone()),
                seen.map(|s| s.epoch),
                seen.and_then(|s| s.acquired_at).map(SystemTime::from),
            ),
        };
        GroupHealth {
            member: self.member().to_string(),
            role,
            holder,
            epoch,
            since,
            lease: self.spec.lease,
            takeovers: self.takeovers.load(Ordering::Relaxed),
            partitions: None,
            partition_count: None,
            members_alive: None,
            split: None,
        }
    }
}
