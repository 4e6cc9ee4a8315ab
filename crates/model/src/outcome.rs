//! The one place that decides what an attempt's result means: delivered,
//! retry later, or give up.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::RetryPolicy;

/// Where a delivery stands in the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Created by fan-out, no attempt made yet.
    Pending,
    /// At least one attempt failed; the next one is scheduled.
    Retrying,
    Succeeded,
    /// Attempts exhausted (or the failure is final); the message sits in the
    /// dead queue for inspection and replay.
    Dead,
    /// The subscription was deleted before the delivery finished (or was
    /// re-enabled without replaying what it missed).
    Canceled,
    /// Its webhook is disabled: no attempt is made, nothing is lost;
    /// re-enabling the webhook replays it.
    Paused,
}

impl DeliveryStatus {
    pub const ALL: &'static [DeliveryStatus] = &[
        Self::Pending,
        Self::Retrying,
        Self::Succeeded,
        Self::Dead,
        Self::Canceled,
        Self::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
            Self::Canceled => "canceled",
            Self::Paused => "paused",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.as_str() == value)
    }

    /// No further attempt will be made.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Dead | Self::Canceled)
    }
}

/// Why an attempt produced no usable HTTP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No complete response within `delivery.timeout_ms`.
    Timeout,
    /// DNS, TCP or TLS failure before a request was sent.
    Connect,
    /// The endpoint resolves to an address courier may not call (private
    /// networks while `delivery.allow_private_networks=false`).
    Blocked,
    /// Anything else: a broken response, an I/O error mid-body.
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Blocked => "blocked",
            Self::Other => "other",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::Timeout, Self::Connect, Self::Blocked, Self::Other]
            .into_iter()
            .find(|k| k.as_str() == value)
    }
}

/// What one HTTP attempt produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    Response { status: u16 },
    Failed { kind: ErrorKind },
}

impl AttemptResult {
    /// A bounded label for metrics: `2xx` ... `5xx`, or the error kind.
    pub fn class(self) -> &'static str {
        match self {
            Self::Response { status } => match status {
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                500..=599 => "5xx",
                _ => "other",
            },
            Self::Failed { kind } => kind.as_str(),
        }
    }

    /// Whether the endpoint is up, as far as this result tells: it
    /// answered, with anything but a server error or "try later" (408,
    /// 429). An address courier may not call says nothing about the
    /// endpoint, so it counts as up. What an endpoint's circuit counts.
    pub fn endpoint_healthy(self) -> bool {
        match self {
            Self::Response { status } => !(status >= 500 || status == 408 || status == 429),
            Self::Failed { kind } => kind == ErrorKind::Blocked,
        }
    }
}

/// What happens next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Succeeded,
    /// Try again after `delay`: the schedule's (un-jittered), or, when
    /// `asked`, the wait the receiver asked for with `Retry-After` (within
    /// the policy's bounds; not to be jittered shorter).
    Retry {
        delay: Duration,
        asked: bool,
    },
    /// Give up: attempts exhausted, or a failure that retrying cannot fix.
    Dead,
    /// The endpoint answered `410 Gone`: it wants nothing more. The webhook
    /// is disabled (reason `gone`) and this delivery paused with the rest.
    Gone,
}

/// Decides the fate of attempt number `attempt` (1-based).
///
/// 2xx succeeds. Timeouts, connection errors, 5xx, 408 and 429 are retried;
/// other 3xx/4xx are retried too unless `retry_client_errors` is off, because
/// receivers misconfigure often and fix it within the retry window. An
/// endpoint at a forbidden address is never retried. A 429 or 503 that
/// says how long to wait (`retry_after`, parsed from its `Retry-After`)
/// gets that wait, within the policy's bounds, instead of the schedule's;
/// the attempt still counts. `410 Gone` is [`Decision::Gone`], whatever the
/// attempt number.
pub fn classify(
    result: AttemptResult,
    attempt: u32,
    policy: &RetryPolicy,
    retry_client_errors: bool,
    retry_after: Option<Duration>,
) -> Decision {
    let retryable = match result {
        AttemptResult::Response { status } if (200..300).contains(&status) => {
            return Decision::Succeeded;
        }
        AttemptResult::Response { status: 410 } => return Decision::Gone,
        AttemptResult::Response { status: 408 | 429 } => true,
        AttemptResult::Response { status } if status >= 500 => true,
        AttemptResult::Response { .. } => retry_client_errors,
        AttemptResult::Failed {
            kind: ErrorKind::Blocked,
        } => false,
        AttemptResult::Failed { .. } => true,
    };
    let asked = match (result, retry_after) {
        (AttemptResult::Response { status: 429 | 503 }, Some(wait)) => {
            Some(policy.receiver_wait(wait))
        }
        _ => None,
    };
    match (policy.delay_after(attempt), asked) {
        (Some(_), Some(delay)) if retryable => Decision::Retry { delay, asked: true },
        (Some(delay), None) if retryable => Decision::Retry {
            delay,
            asked: false,
        },
        _ => Decision::Dead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_is_gone_at_any_attempt() {
        let policy = RetryPolicy::default();
        for attempt in [1, 5, policy.max_attempts] {
            for retry_client_errors in [true, false] {
                assert_eq!(
                    classify(
                        AttemptResult::Response { status: 410 },
                        attempt,
                        &policy,
                        retry_client_errors,
                        Some(Duration::from_secs(5)),
                    ),
                    Decision::Gone
                );
            }
        }
    }

    #[test]
    fn which_results_say_the_endpoint_is_up() {
        for status in [200, 204, 301, 400, 404, 410, 499] {
            assert!(
                AttemptResult::Response { status }.endpoint_healthy(),
                "{status}"
            );
        }
        for status in [408, 429, 500, 502, 503] {
            assert!(
                !AttemptResult::Response { status }.endpoint_healthy(),
                "{status}"
            );
        }
        for kind in [ErrorKind::Timeout, ErrorKind::Connect, ErrorKind::Other] {
            assert!(
                !AttemptResult::Failed { kind }.endpoint_healthy(),
                "{kind:?}"
            );
        }
        assert!(
            AttemptResult::Failed {
                kind: ErrorKind::Blocked
            }
            .endpoint_healthy()
        );
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial_delay_ms: 100,
            multiplier: 2.0,
            max_delay_ms: 1000,
            max_attempts: 3,
            jitter: 0.0,
            ..RetryPolicy::default()
        }
    }

    fn status(status: u16) -> AttemptResult {
        AttemptResult::Response { status }
    }

    #[test]
    fn success_is_any_2xx() {
        for s in [200, 201, 204, 299] {
            assert_eq!(
                classify(status(s), 1, &policy(), true, None),
                Decision::Succeeded
            );
        }
        // Even on the last attempt.
        assert_eq!(
            classify(status(200), 3, &policy(), true, None),
            Decision::Succeeded
        );
    }

    #[test]
    fn transient_failures_retry_on_schedule() {
        let p = policy();
        for r in [
            status(500),
            status(503),
            status(429),
            status(408),
            AttemptResult::Failed {
                kind: ErrorKind::Timeout,
            },
            AttemptResult::Failed {
                kind: ErrorKind::Connect,
            },
        ] {
            assert_eq!(
                classify(r, 1, &p, false, None),
                Decision::Retry {
                    delay: Duration::from_millis(100),
                    asked: false
                }
            );
            assert_eq!(
                classify(r, 2, &p, false, None),
                Decision::Retry {
                    delay: Duration::from_millis(200),
                    asked: false
                }
            );
            assert_eq!(classify(r, 3, &p, false, None), Decision::Dead);
        }
    }

    #[test]
    fn client_errors_follow_configuration() {
        let p = policy();
        assert!(matches!(
            classify(status(404), 1, &p, true, None),
            Decision::Retry { .. }
        ));
        assert_eq!(classify(status(404), 1, &p, false, None), Decision::Dead);
        assert_eq!(classify(status(301), 1, &p, false, None), Decision::Dead);
        let blocked = AttemptResult::Failed {
            kind: ErrorKind::Blocked,
        };
        assert_eq!(classify(blocked, 1, &p, true, None), Decision::Dead);
    }

    #[test]
    fn retry_after_sets_the_wait_of_429_and_503_only() {
        let p = RetryPolicy {
            retry_after_min_ms: 1_000,
            retry_after_max_ms: 60_000,
            ..policy()
        };
        let asked = |secs| Some(Duration::from_secs(secs));
        for s in [429, 503] {
            assert_eq!(
                classify(status(s), 1, &p, true, asked(30)),
                Decision::Retry {
                    delay: Duration::from_secs(30),
                    asked: true
                }
            );
            // Clamped both ways.
            assert_eq!(
                classify(status(s), 1, &p, true, asked(0)),
                Decision::Retry {
                    delay: Duration::from_secs(1),
                    asked: true
                }
            );
            assert_eq!(
                classify(status(s), 2, &p, true, asked(3600)),
                Decision::Retry {
                    delay: Duration::from_secs(60),
                    asked: true
                }
            );
            // The attempt counts: the last one is the last.
            assert_eq!(classify(status(s), 3, &p, true, asked(30)), Decision::Dead);
        }
        // Other statuses keep the schedule whatever they say.
        for s in [500, 502, 408, 404] {
            assert_eq!(
                classify(status(s), 1, &p, true, asked(30)),
                Decision::Retry {
                    delay: Duration::from_millis(100),
                    asked: false
                }
            );
        }
    }

    #[test]
    fn classes_are_bounded_labels() {
        assert_eq!(status(204).class(), "2xx");
        assert_eq!(status(302).class(), "3xx");
        assert_eq!(status(404).class(), "4xx");
        assert_eq!(status(502).class(), "5xx");
        assert_eq!(status(99).class(), "other");
        assert_eq!(
            AttemptResult::Failed {
                kind: ErrorKind::Timeout
            }
            .class(),
            "timeout"
        );
    }

    #[test]
    fn statuses_round_trip() {
        for &s in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
        }
        assert!(DeliveryStatus::Dead.is_final());
        assert!(!DeliveryStatus::Retrying.is_final());
    }
}
