//! Counting an outage: consecutive failures since the last real progress, and the
//! decision after each one — wait out a backoff, or give up.

use std::time::{Duration, Instant};

use crate::engine::backoff::BackoffPolicy;
use crate::engine::errors::{EngineError, ErrorCode};

/// What to do after a failure.
#[derive(Debug)]
pub enum Retry {
    /// Fatal, or the user's retries ran out: fail with this error.
    GiveUp(EngineError),
    /// Announce attempt `attempt`, wait `delay`, re-open.
    After {
        attempt: u32,
        delay: Duration,
        error: EngineError,
    },
}

/// An outage that ended: how many attempts it took and how long it lasted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recovery {
    pub attempts: u32,
    pub downtime: Duration,
}

#[derive(Debug, Default)]
pub struct OutageTracker {
    current: Option<(Instant, u32)>,
}

impl OutageTracker {
    /// Counts a failure. `what` names what is being re-opened, for the give-up message.
    pub fn failure(&mut self, error: EngineError, policy: &BackoffPolicy, what: &str) -> Retry {
        if !error.resumable {
            return Retry::GiveUp(error);
        }
        let (_, failures) = self.current.get_or_insert_with(|| (Instant::now(), 0));
        *failures += 1;
        let attempt = *failures;
        if !policy.allows(attempt) {
            return Retry::GiveUp(EngineError {
                code: ErrorCode::RetriesExhausted,
                message: format!(
                    "gave up after {attempt} failed attempts to re-open the {what}; last error: {}",
                    error.message
                ),
                resumable: false,
                ..error
            });
        }
        Retry::After {
            attempt,
            delay: policy.delay(attempt),
            error,
        }
    }

    /// Real progress was delivered: ends the outage, if one was in progress.
    pub fn progress(&mut self) -> Option<Recovery> {
        self.current.take().map(|(since, attempts)| Recovery {
            attempts,
            downtime: since.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resumable() -> EngineError {
        EngineError::resumable(ErrorCode::Network, "down")
    }

    #[test]
    fn counts_one_outage_until_progress() {
        let policy = BackoffPolicy::default();
        let mut t = OutageTracker::default();
        for expected in 1..=3 {
            match t.failure(resumable(), &policy, "stream") {
                Retry::After { attempt, delay, .. } => {
                    assert_eq!(attempt, expected);
                    assert!(delay <= policy.ceiling(attempt));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(t.progress().map(|r| r.attempts), Some(3));
        assert_eq!(t.progress(), None);
        assert!(matches!(
            t.failure(resumable(), &policy, "stream"),
            Retry::After { attempt: 1, .. }
        ));
    }

    #[test]
    fn gives_up_on_fatal_errors_and_exhausted_retries() {
        let policy = BackoffPolicy {
            max_retries: Some(1),
            ..BackoffPolicy::default()
        };
        let mut t = OutageTracker::default();
        let fatal = EngineError::new(ErrorCode::ChangeStreamFatal, "x");
        assert!(
            matches!(t.failure(fatal, &policy, "stream"), Retry::GiveUp(e) if e.code == ErrorCode::ChangeStreamFatal)
        );
        assert!(matches!(
            t.failure(resumable(), &policy, "stream"),
            Retry::After { attempt: 1, .. }
        ));
        match t.failure(resumable(), &policy, "cursor") {
            Retry::GiveUp(e) => {
                assert_eq!(e.code, ErrorCode::RetriesExhausted);
                assert!(
                    e.message
                        .contains("2 failed attempts to re-open the cursor"),
                    "{}",
                    e.message
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
