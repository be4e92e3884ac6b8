//! A reader's state machine and health counters, shared by its handle and its run loop
//! behind one mutex.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mongodb::bson::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::engine::errors::EngineError;
use crate::engine::group::GroupHealth;

/// The stream's lifecycle. Only `close()` moves it to `Closing`/`Closed`, and nothing
/// moves it out of a terminal state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReaderState {
    /// Created; the run loop starts on the first `next()`.
    #[default]
    Idle,
    /// A consumer group's standby: waits for the lease, reads nothing.
    Standby,
    Opening,
    Streaming,
    Reconnecting {
        attempt: u32,
    },
    Closing,
    Closed,
    Failed,
}

impl ReaderState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ReaderState::Closing | ReaderState::Closed | ReaderState::Failed
        )
    }

    /// The public names of `health().state`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReaderState::Idle | ReaderState::Opening => "starting",
            ReaderState::Standby => "standby",
            ReaderState::Streaming => "streaming",
            ReaderState::Reconnecting { .. } => "reconnecting",
            ReaderState::Closing | ReaderState::Closed => "closed",
            ReaderState::Failed => "failed",
        }
    }
}

/// A point-in-time view of the stream, for `health()`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub state: ReaderState,
    /// When the position last advanced (events or postBatchResumeToken).
    pub last_token_at: Option<SystemTime>,
    /// Cluster time of the position, when known.
    pub position_time: Option<Timestamp>,
    /// When the server last answered a getMore/aggregate.
    pub last_reply_at: Option<SystemTime>,
    /// Resumable failures since the stream started.
    pub reconnects: u64,
    /// What is left of the delay being waited out now; `None` when not waiting (an attempt
    /// is under way, or all is well).
    pub current_backoff: Option<Duration>,
    pub last_error: Option<EngineError>,
    /// Events read from the server (handed to the consumer or waiting in the one-batch
    /// prefetch slot).
    pub events_read: u64,
    /// A consumer group member's role and lease.
    pub group: Option<GroupHealth>,
    /// Batches handed to the consumer (`Reader::health` fills it in: the commits number them).
    pub batches_read: u64,
    /// Outages begun (a first failed attempt after progress), and how long the reader was
    /// down in all of them, the one under way included.
    pub outages: u64,
    pub downtime: Duration,
    /// How long the outage under way has lasted (`None` when not reconnecting).
    pub current_outage: Option<Duration>,
    /// Times the stall watchdog fired.
    pub stalls: u64,
    /// Positions written to the token store, failed writes (every failed try counts), and
    /// when one was last written (`Reader::health` fills them in: the checkpointer counts).
    pub checkpoints_saved: u64,
    pub checkpoint_failures: u64,
    pub last_checkpoint_at: Option<SystemTime>,
}

impl Health {
    /// Wall clock minus the cluster time of the position (0 when the clocks disagree).
    pub fn lag(&self, now: SystemTime) -> Option<Duration> {
        let ts = self.position_time?;
        let position = UNIX_EPOCH + Duration::from_secs(ts.time as u64);
        Some(now.duration_since(position).unwrap_or(Duration::ZERO))
    }
}

pub(crate) struct ReaderStatus {
    health: Mutex<Health>,
    /// When the backoff being waited out ends (`current_backoff` is derived from it).
    retry_at: Mutex<Option<Instant>>,
    /// When the outage under way began (`downtime` adds it while it lasts).
    down_since: Mutex<Option<Instant>>,
    pub(crate) cancel: CancellationToken,
}

impl ReaderStatus {
    pub(crate) fn new() -> Self {
        ReaderStatus {
            health: Mutex::new(Health::default()),
            retry_at: Mutex::new(None),
            down_since: Mutex::new(None),
            cancel: CancellationToken::new(),
        }
    }

    /// A poisoned lock only means a thread panicked mid-update of plain counters; they
    /// are still usable, and a panic is reported elsewhere.
    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn state(&self) -> ReaderState {
        self.lock().state
    }

    pub(crate) fn snapshot(&self) -> Health {
        let mut health = self.lock().clone();
        let retry_at = *self.retry_at.lock().unwrap_or_else(|p| p.into_inner());
        health.current_backoff = retry_at
            .and_then(|at| at.checked_duration_since(Instant::now()))
            .filter(|left| !left.is_zero());
        let down_since = *self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(since), ReaderState::Reconnecting { .. }) = (down_since, health.state) {
            health.current_outage = Some(since.elapsed());
            health.downtime += since.elapsed();
        }
        health
    }

    fn set_retry_at(&self, at: Option<Instant>) {
        *self.retry_at.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// Moves to `to` unless the stream already reached a terminal state.
    pub(crate) fn transition(&self, to: ReaderState) -> bool {
        let mut health = self.lock();
        if health.state.is_terminal() {
            return false;
        }
        health.state = to;
        if !matches!(to, ReaderState::Reconnecting { .. }) {
            self.set_retry_at(None);
        }
        true
    }

    /// `close()`: forbids every later transition but the final `Closed`.
    pub(crate) fn begin_close(&self) {
        let mut health = self.lock();
        if !matches!(health.state, ReaderState::Closed | ReaderState::Failed) {
            health.state = ReaderState::Closing;
        }
        self.set_retry_at(None);
    }

    pub(crate) fn finish_close(&self) {
        let mut health = self.lock();
        if health.state != ReaderState::Failed {
            health.state = ReaderState::Closed;
        }
    }

    pub(crate) fn fail(&self, error: &EngineError) -> bool {
        let mut health = self.lock();
        if health.state.is_terminal() {
            return false;
        }
        health.state = ReaderState::Failed;
        health.last_error = Some(error.clone());
        true
    }

    pub(crate) fn end(&self) {
        let mut health = self.lock();
        if !health.state.is_terminal() {
            health.state = ReaderState::Closed;
        }
    }

    pub(crate) fn record_failure(
        &self,
        error: &EngineError,
        attempt: u32,
        delay: Duration,
    ) -> bool {
        let mut health = self.lock();
        if health.state.is_terminal() {
            return false;
        }
        health.state = ReaderState::Reconnecting { attempt };
        health.reconnects += 1;
        if attempt == 1 {
            health.outages += 1;
            *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        self.set_retry_at(Some(Instant::now() + delay));
        health.last_error = Some(error.clone());
        true
    }

    /// An outage ended after `downtime` (the first real progress after it).
    pub(crate) fn record_recovery(&self, downtime: Duration) {
        let mut health = self.lock();
        *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
        health.downtime += downtime;
    }

    /// The stall watchdog fired.
    pub(crate) fn record_stall(&self) {
        self.lock().stalls += 1;
    }

    pub(crate) fn record_reply(&self) {
        self.lock().last_reply_at = Some(SystemTime::now());
    }

    /// The position moved; `time` is its cluster time when known.
    pub(crate) fn record_progress(&self, events: usize, time: Option<Timestamp>) {
        let mut health = self.lock();
        health.last_token_at = Some(SystemTime::now());
        health.events_read += events as u64;
        if time.is_some() {
            health.position_time = time;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn lag_is_wall_clock_minus_position_time() {
        let health = Health {
            position_time: Some(Timestamp {
                time: 1000,
                increment: 1,
            }),
            ..Health::default()
        };
        let now = UNIX_EPOCH + Duration::from_secs(1060);
        assert_eq!(health.lag(now), Some(Duration::from_secs(60)));
        assert_eq!(
            health.lag(UNIX_EPOCH + Duration::from_secs(10)),
            Some(Duration::ZERO)
        );
        assert_eq!(Health::default().lag(now), None);
    }

    #[test]
    fn the_backoff_says_what_is_left_of_it_and_nothing_once_it_passed() {
        let status = ReaderStatus::new();
        let error = EngineError::new(crate::engine::ErrorCode::Network, "x");
        assert!(status.record_failure(&error, 1, Duration::from_secs(60)));
        let left = status.snapshot().current_backoff.expect("waiting");
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(59));
        assert!(status.record_failure(&error, 2, Duration::ZERO));
        assert_eq!(
            status.snapshot().current_backoff,
            None,
            "attempting, not waiting"
        );
        assert_eq!(
            status.snapshot().state,
            ReaderState::Reconnecting { attempt: 2 }
        );
    }

    #[test]
    fn outages_count_from_their_first_attempt_and_add_up_their_downtime() {
        let status = ReaderStatus::new();
        let error = EngineError::new(crate::engine::ErrorCode::Network, "x");
        assert!(status.record_failure(&error, 1, Duration::ZERO));
        assert!(status.record_failure(&error, 2, Duration::ZERO));
        let during = status.snapshot();
        assert_eq!((during.outages, during.reconnects), (1, 2));
        status.record_recovery(Duration::from_millis(250));
        assert!(status.transition(ReaderState::Streaming));
        assert_eq!(status.snapshot().downtime, Duration::from_millis(250));
        assert!(status.record_failure(&error, 1, Duration::ZERO));
        let second = status.snapshot();
        assert_eq!(second.outages, 2);
        assert!(second.downtime >= Duration::from_millis(250));
        status.record_stall();
        assert_eq!(status.snapshot().stalls, 1);
    }

    #[test]
    fn terminal_states_stick() {
        let shared = ReaderStatus::new();
        assert!(shared.transition(ReaderState::Streaming));
        shared.begin_close();
        assert!(!shared.transition(ReaderState::Streaming));
        assert!(!shared.record_failure(
            &EngineError::new(crate::engine::ErrorCode::Network, "x"),
            1,
            Duration::ZERO
        ));
        shared.finish_close();
        assert_eq!(shared.state(), ReaderState::Closed);
    }
}
