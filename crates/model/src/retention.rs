//! How long the ledger keeps what it recorded: finished deliveries (with
//! their event and attempts) for a number of days that depends on how
//! they finished, set for the deployment and overridden per workspace.
//!
//! Only the arithmetic lives here: which days apply to a workspace, and
//! the instants before which a finished delivery has outlived them. The
//! store finds and removes the rows; the worker runs it on a schedule.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The longest retention anything may set: ten years.
pub const MAX_RETENTION_DAYS: u32 = 3650;

/// Days a finished delivery is kept after it finished (its last change).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionDays {
    /// `succeeded` deliveries, and events that matched no webhook.
    pub succeeded: u32,
    /// `dead` and `canceled` deliveries: kept longer by default, someone
    /// may still want to look at them or replay them.
    pub failed: u32,
}

impl Default for RetentionDays {
    fn default() -> Self {
        Self {
            succeeded: 30,
            failed: 90,
        }
    }
}

/// A workspace's own retention; `None` takes the deployment's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionOverride {
    pub succeeded: Option<u32>,
    pub failed: Option<u32>,
}

impl RetentionOverride {
    pub fn is_empty(&self) -> bool {
        self.succeeded.is_none() && self.failed.is_none()
    }
}

/// A retention value out of range, naming which one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be between 1 and {max} days, not {value}")]
pub struct RetentionError {
    /// `succeeded` or `failed`.
    pub field: &'static str,
    pub value: u32,
    pub max: u32,
}

/// Checks one value against `1..=max`.
pub fn check_days(field: &'static str, value: u32, max: u32) -> Result<u32, RetentionError> {
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(RetentionError { field, value, max })
    }
}

/// The deployment's retention: its defaults and the most a workspace
/// override may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub defaults: RetentionDays,
    /// Overrides above this count as this (an operator who lowers it
    /// lowers every override with it).
    pub max_days: u32,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            defaults: RetentionDays::default(),
            max_days: 365,
        }
    }
}

impl RetentionPolicy {
    /// The days that apply to a workspace with `own` as its override.
    pub fn effective(&self, own: Option<&RetentionOverride>) -> RetentionDays {
        let pick = |own: Option<u32>, default: u32| match own {
            Some(days) => days.clamp(1, self.max_days.max(1)),
            None => default,
        };
        RetentionDays {
            succeeded: pick(own.and_then(|o| o.succeeded), self.defaults.succeeded),
            failed: pick(own.and_then(|o| o.failed), self.defaults.failed),
        }
    }

    /// Checks an override a caller asks for: each value set must be
    /// 1..=`max_days`.
    pub fn check(&self, own: &RetentionOverride) -> Result<(), RetentionError> {
        if let Some(days) = own.succeeded {
            check_days("succeeded", days, self.max_days)?;
        }
        if let Some(days) = own.failed {
            check_days("failed", days, self.max_days)?;
        }
        Ok(())
    }
}

/// The instants before which finished deliveries have outlived their
/// retention, for one workspace at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionCutoffs {
    /// A `succeeded` delivery last changed before this may go (and an
    /// event that matched nothing, received before this).
    pub succeeded_before: DateTime<Utc>,
    /// A `dead` or `canceled` delivery last changed before this may go.
    pub failed_before: DateTime<Utc>,
}

impl RetentionCutoffs {
    pub fn at(now: DateTime<Utc>, days: RetentionDays) -> Self {
        Self {
            succeeded_before: now - Duration::days(i64::from(days.succeeded)),
            failed_before: now - Duration::days(i64::from(days.failed)),
        }
    }

    /// The later of the two: nothing received after it can go.
    pub fn latest(&self) -> DateTime<Utc> {
        self.succeeded_before.max(self.failed_before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_defaults_one_by_one_within_the_maximum() {
        let policy = RetentionPolicy {
            defaults: RetentionDays {
                succeeded: 30,
                failed: 90,
            },
            max_days: 100,
        };
        assert_eq!(policy.effective(None), policy.defaults);
        let own = RetentionOverride {
            succeeded: Some(7),
            failed: None,
        };
        assert_eq!(
            policy.effective(Some(&own)),
            RetentionDays {
                succeeded: 7,
                failed: 90
            }
        );
        // Stored before the maximum was lowered: it counts as the maximum.
        let long = RetentionOverride {
            succeeded: None,
            failed: Some(400),
        };
        assert_eq!(policy.effective(Some(&long)).failed, 100);
        assert!(policy.check(&own).is_ok());
        let err = policy.check(&long).unwrap_err();
        assert_eq!(err.field, "failed");
        assert!(err.to_string().contains("between 1 and 100"), "{err}");
        assert!(
            policy
                .check(&RetentionOverride {
                    succeeded: Some(0),
                    failed: None
                })
                .is_err()
        );
    }

    #[test]
    fn cutoffs_count_days_back_from_now() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let cut = RetentionCutoffs::at(
            now,
            RetentionDays {
                succeeded: 1,
                failed: 10,
            },
        );
        assert_eq!(
            cut.succeeded_before.to_rfc3339(),
            "2026-11-30T12:00:00+00:00"
        );
        assert_eq!(cut.failed_before.to_rfc3339(), "2026-11-21T12:00:00+00:00");
        assert_eq!(cut.latest(), cut.succeeded_before);
    }
}
