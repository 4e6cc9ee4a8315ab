//! The delivery retry schedule, as pure data: the worker persists the attempt
//! number in the queue message and the ledger, and asks this policy how long
//! to wait. Nothing here keeps time or state, so a schedule survives restarts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RetryPolicyError {
    #[error("retry.initial_delay_ms must be at least 1 (got {0})")]
    InitialDelay(u64),
    #[error("retry.multiplier must be a finite number of at least 1.0 (got {0})")]
    Multiplier(f64),
    #[error("retry.max_delay_ms ({max}) must be at least retry.initial_delay_ms ({initial})")]
    MaxDelay { max: u64, initial: u64 },
    #[error("retry.max_attempts must be between 1 and 100 (got {0})")]
    MaxAttempts(u32),
    #[error("retry.jitter must be between 0.0 and 1.0 (got {0})")]
    Jitter(f64),
    #[error(
        "retry.retry_after_max_ms ({max}) must be at least retry.retry_after_min_ms ({min}) \
         and at most 86400000 (a day)"
    )]
    RetryAfter { min: u64, max: u64 },
}

/// Exponential backoff: the wait after failed attempt `n` is
/// `min(initial_delay * multiplier^(n-1), max_delay)`, shortened by up to
/// `jitter` (a fraction) so that endpoints that failed together do not get
/// retried together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub initial_delay_ms: u64,
    pub multiplier: f64,
    pub max_delay_ms: u64,
    /// Total attempts, the first one included.
    pub max_attempts: u32,
    pub jitter: f64,
    /// A receiver's `Retry-After` (on 429 and 503) is honoured, but never
    /// shorter than this...
    #[serde(default = "default_retry_after_min_ms")]
    pub retry_after_min_ms: u64,
    /// ...nor longer than this.
    #[serde(default = "default_retry_after_max_ms")]
    pub retry_after_max_ms: u64,
}

fn default_retry_after_min_ms() -> u64 {
    1_000
}

fn default_retry_after_max_ms() -> u64 {
    60 * 60 * 1000
}

impl Default for RetryPolicy {
    /// 10 attempts over about 23 hours: 5 s, 25 s, ~2 min, ~10 min, ~52 min,
    /// ~4.3 h, then 6 h three times.
    fn default() -> Self {
        Self {
            initial_delay_ms: 5_000,
            multiplier: 5.0,
            max_delay_ms: 6 * 60 * 60 * 1000,
            max_attempts: 10,
            jitter: 0.2,
            retry_after_min_ms: default_retry_after_min_ms(),
            retry_after_max_ms: default_retry_after_max_ms(),
        }
    }
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), RetryPolicyError> {
        if self.initial_delay_ms == 0 {
            return Err(RetryPolicyError::InitialDelay(self.initial_delay_ms));
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(RetryPolicyError::Multiplier(self.multiplier));
        }
        if self.max_delay_ms < self.initial_delay_ms {
            return Err(RetryPolicyError::MaxDelay {
                max: self.max_delay_ms,
                initial: self.initial_delay_ms,
            });
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(RetryPolicyError::MaxAttempts(self.max_attempts));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(RetryPolicyError::Jitter(self.jitter));
        }
        if self.retry_after_max_ms < self.retry_after_min_ms
            || self.retry_after_max_ms > 24 * 60 * 60 * 1000
        {
            return Err(RetryPolicyError::RetryAfter {
                min: self.retry_after_min_ms,
                max: self.retry_after_max_ms,
            });
        }
        Ok(())
    }

    /// This schedule with a webhook's own attempt count
    /// (`WebhookSettings::max_attempts`, kept within 1-100), or itself when
    /// the webhook sets none. Its delays are this schedule's: attempts past
    /// this policy's own last one wait `max_delay_ms` (the longest retry
    /// tier), so no retry queue is needed that the topology lacks.
    pub fn with_max_attempts(&self, max_attempts: Option<u32>) -> std::borrow::Cow<'_, Self> {
        match max_attempts {
            Some(n) if n != self.max_attempts => std::borrow::Cow::Owned(Self {
                max_attempts: n.clamp(1, 100),
                ..self.clone()
            }),
            _ => std::borrow::Cow::Borrowed(self),
        }
    }

    /// The wait a receiver asked for, within `retry.retry_after_min_ms` and
    /// `retry.retry_after_max_ms`.
    pub fn receiver_wait(&self, asked: Duration) -> Duration {
        asked.clamp(
            Duration::from_millis(self.retry_after_min_ms),
            Duration::from_millis(self.retry_after_max_ms),
        )
    }

    /// The wait before the attempt after failed attempt `attempt` (1-based),
    /// before jitter; `None` once the attempts are exhausted.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if attempt == 0 || attempt >= self.max_attempts {
            return None;
        }
        let factor = self.multiplier.powi(attempt as i32 - 1);
        let ms = (self.initial_delay_ms as f64 * factor).min(self.max_delay_ms as f64);
        Some(Duration::from_millis(ms.round() as u64))
    }

    /// How long the whole schedule takes, from the first attempt to the last
    /// (un-jittered): how long a delivery may try before it is given up.
    pub fn span(&self) -> Duration {
        (1..self.max_attempts)
            .filter_map(|a| self.delay_after(a))
            .sum()
    }

    /// The distinct delays the schedule uses, shortest first: one retry queue
    /// per tier, so that messages in one queue share one TTL.
    pub fn tiers(&self) -> Vec<Duration> {
        let mut tiers: Vec<Duration> = (1..self.max_attempts)
            .filter_map(|a| self.delay_after(a))
            .collect();
        tiers.dedup();
        tiers
    }

    /// `delay` shortened by `jitter * unit`, where `unit` is uniform in
    /// [0, 1): the caller supplies the randomness so this stays pure.
    pub fn jittered(&self, delay: Duration, unit: f64) -> Duration {
        let unit = unit.clamp(0.0, 1.0);
        delay.mul_f64(1.0 - self.jitter * unit)
    }
}

/// How long a `Retry-After` header value asks to wait from `now`: a number
/// of seconds, or an HTTP date (a date in the past asks for no wait).
/// `None` for anything else: the header is then ignored.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly many seconds are still "a long time"; the bounds apply.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is RFC 2822's form;
    // the obsolete RFC 850 and asctime forms are not sent by anything alive.
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial: u64, multiplier: f64, max: u64, attempts: u32) -> RetryPolicy {
        RetryPolicy {
            initial_delay_ms: initial,
            multiplier,
            max_delay_ms: max,
            max_attempts: attempts,
            jitter: 0.0,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn a_webhook_sets_its_own_attempt_count() {
        let global = policy(1000, 2.0, 4000, 4);
        assert_eq!(global.with_max_attempts(None).max_attempts, 4);
        assert!(matches!(
            global.with_max_attempts(Some(4)),
            std::borrow::Cow::Borrowed(_)
        ));
        let fewer = global.with_max_attempts(Some(2));
        assert_eq!(fewer.delay_after(1), Some(Duration::from_secs(1)));
        assert_eq!(fewer.delay_after(2), None);
        let more = global.with_max_attempts(Some(6));
        // Past the global schedule's end: its longest delay, a known tier.
        assert_eq!(more.delay_after(5), Some(Duration::from_secs(4)));
        assert_eq!(more.delay_after(6), None);
        assert!(more.tiers().iter().all(|t| global.tiers().contains(t)));
        assert_eq!(global.with_max_attempts(Some(0)).max_attempts, 1);
        assert_eq!(global.with_max_attempts(Some(500)).max_attempts, 100);
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = DateTime::parse_from_rfc3339("2026-12-02T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 08:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // In the past: no wait (the lower bound applies).
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for junk in ["", "-5", "1.5", "soon", "2026-12-02T08:00:30Z"] {
            assert_eq!(parse_retry_after(junk, now), None, "{junk}");
        }
    }

    #[test]
    fn a_receivers_wait_is_bounded() {
        let p = RetryPolicy {
            retry_after_min_ms: 1_000,
            retry_after_max_ms: 10_000,
            ..RetryPolicy::default()
        };
        assert_eq!(p.receiver_wait(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            p.receiver_wait(Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(
            p.receiver_wait(Duration::from_secs(u64::MAX)),
            Duration::from_secs(10)
        );
        let err = RetryPolicy {
            retry_after_min_ms: 5,
            retry_after_max_ms: 4,
            ..RetryPolicy::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("retry.retry_after_max_ms"));
    }

    #[test]
    fn exponential_and_capped() {
        let p = policy(100, 2.0, 500, 6);
        let delays: Vec<_> = (1..6)
            .map(|a| p.delay_after(a).unwrap().as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        assert_eq!(p.delay_after(6), None);
        assert_eq!(p.delay_after(0), None);
        assert_eq!(p.span(), Duration::from_millis(1700));
        assert_eq!(
            p.tiers(),
            [100, 200, 400, 500].map(Duration::from_millis).to_vec()
        );
    }

    #[test]
    fn single_attempt_has_no_tiers() {
        let p = policy(100, 2.0, 500, 1);
        assert_eq!(p.delay_after(1), None);
        assert!(p.tiers().is_empty());
        assert_eq!(p.span(), Duration::ZERO);
    }

    #[test]
    fn default_spans_about_a_day() {
        let p = RetryPolicy::default();
        p.validate().unwrap();
        let hours = p.span().as_secs_f64() / 3600.0;
        assert!((20.0..30.0).contains(&hours), "{hours} h");
        assert_eq!(p.tiers().len(), 7);
    }

    #[test]
    fn jitter_only_shortens() {
        let p = RetryPolicy {
            jitter: 0.5,
            ..policy(1000, 2.0, 8000, 5)
        };
        let d = Duration::from_secs(10);
        assert_eq!(p.jittered(d, 0.0), d);
        assert_eq!(p.jittered(d, 1.0), Duration::from_secs(5));
        assert_eq!(p.jittered(d, 0.5), Duration::from_millis(7500));
    }

    #[test]
    fn validation_names_the_key() {
        let err = policy(0, 2.0, 10, 3).validate().unwrap_err();
        assert!(err.to_string().contains("retry.initial_delay_ms"));
        let err = policy(10, 0.5, 10, 3).validate().unwrap_err();
        assert!(err.to_string().contains("retry.multiplier"));
        let err = policy(10, 2.0, 5, 3).validate().unwrap_err();
        assert!(err.to_string().contains("retry.max_delay_ms"));
        let err = policy(10, 2.0, 10, 0).validate().unwrap_err();
        assert!(err.to_string().contains("retry.max_attempts"));
        let err = RetryPolicy {
            jitter: 1.5,
            ..policy(10, 2.0, 10, 3)
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("retry.jitter"));
    }
}
