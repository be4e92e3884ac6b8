//! Exponential backoff with full jitter.

use std::time::Duration;

use mongodb::bson::Bson;
use rand::Rng;

use super::errors::EngineError;
use super::options::{as_f64, describe, optional_whole, prefix, reject_unknown, type_name};

/// How long to wait between re-open attempts during an outage.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub multiplier: f64,
    pub max: Duration,
    /// `None`: keep trying forever.
    pub max_retries: Option<u32>,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(30),
            max_retries: None,
        }
    }
}

impl BackoffPolicy {
    /// The `backoff` option: absent means the default.
    pub fn parse(value: Option<&Bson>) -> Result<Self, EngineError> {
        let b = match value {
            None | Some(Bson::Null) => return Ok(BackoffPolicy::default()),
            Some(Bson::Document(b)) => b,
            Some(other) => {
                return Err(EngineError::invalid_option(
                    "backoff",
                    "an object",
                    type_name(other),
                ))
            }
        };
        const FIELDS: &[&str] = &["initialDelayMS", "multiplier", "maxDelayMS", "maxRetries"];
        reject_unknown(b, &[FIELDS], "backoff.")?;
        let whole = |n: &str| -> Result<Option<u64>, EngineError> {
            optional_whole(b, n, u32::MAX as u64).map_err(|e| prefix(e, "backoff."))
        };
        let mut policy = BackoffPolicy::default();
        if let Some(ms) = whole("initialDelayMS")? {
            policy.initial = Duration::from_millis(ms);
        }
        if let Some(ms) = whole("maxDelayMS")? {
            policy.max = Duration::from_millis(ms);
        }
        if let Some(v) = b.get("multiplier").filter(|v| !matches!(v, Bson::Null)) {
            match as_f64(v) {
                Some(m) if m >= 1.0 && m.is_finite() => policy.multiplier = m,
                _ => {
                    return Err(EngineError::invalid_option(
                        "backoff.multiplier",
                        "a number ≥ 1",
                        &describe(v),
                    ))
                }
            }
        }
        policy.max_retries = whole("maxRetries")?.map(|n| n as u32);
        Ok(policy)
    }

    /// The ceiling for attempt `attempt` (1-based): initial × multiplier^(attempt-1), capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(1024) as i32;
        let millis = self.initial.as_millis() as f64 * self.multiplier.powi(exp);
        let capped = millis.min(self.max.as_millis() as f64);
        Duration::from_millis(capped.max(0.0) as u64)
    }

    /// Full jitter: a uniform delay in [0, ceiling]. Spreads many clients' reconnects
    /// after a shared outage instead of synchronising them.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        if ceiling == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(rand::rng().random_range(0..=ceiling))
    }

    /// Whether another attempt is allowed after `attempt` failures.
    pub fn allows(&self, attempt: u32) -> bool {
        self.max_retries.is_none_or(|max| attempt <= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_and_caps() {
        let p = BackoffPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(5), Duration::from_millis(1600));
        assert_eq!(p.ceiling(20), Duration::from_secs(30));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn delay_stays_within_ceiling() {
        let p = BackoffPolicy::default();
        for attempt in 1..12 {
            for _ in 0..50 {
                assert!(p.delay(attempt) <= p.ceiling(attempt));
            }
        }
    }

    #[test]
    fn retries_limit() {
        let p = BackoffPolicy {
            max_retries: Some(2),
            ..BackoffPolicy::default()
        };
        assert!(p.allows(1));
        assert!(p.allows(2));
        assert!(!p.allows(3));
        assert!(BackoffPolicy::default().allows(u32::MAX));
    }
}
