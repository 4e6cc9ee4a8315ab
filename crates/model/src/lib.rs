//! courier's domain, with no I/O: what an event is, which event types exist,
//! what a subscription is and when it matches, how long to wait before the
//! next attempt, what a response means, how a payload is signed, and the JSON
//! contracts of the queues.
//!
//! Everything here is pure and unit-tested; the store, producer and worker
//! crates build on these types and must not redefine them.

pub mod event;
pub mod event_type;
pub mod ids;
pub mod index;
pub mod message;
pub mod notice;
pub mod outcome;
pub mod retention;
pub mod retry;
pub mod signing;
pub mod subscription;
pub mod url;

pub use event::{Event, EventData, EventError, MAX_DATA_DEPTH, MAX_EVENT_BYTES};
pub use event_type::{EventType, UnknownEventType};
pub use ids::{DeliveryId, EventId, IdError, SubscriptionId, WorkspaceId};
pub use index::{Indexed, SubscriptionIndex, SubscriptionIndexBuilder};
pub use message::{
    DeliveryMessage, EVENT_GROUP_HEADER, EventGroup, MessageError, WebhooksChanged,
    WebhooksChangedKind,
};
pub use outcome::{AttemptResult, Decision, DeliveryStatus, ErrorKind, classify};
pub use retention::{
    MAX_RETENTION_DAYS, RetentionCutoffs, RetentionDays, RetentionError, RetentionOverride,
    RetentionPolicy,
};
pub use retry::{RetryPolicy, RetryPolicyError, parse_retry_after};
pub use signing::{SecretError, WebhookSecret, sign_headers};
pub use subscription::{
    Channel, DeliveryTarget, Disabled, DisabledReason, RateLimit, Subscription, SubscriptionStatus,
    ValidationError, WebhookSettings, validate_name,
};
pub use url::{UrlError, WebhookUrl};

/// Renders an error with its causes on one line (`outer: cause: root`), for
/// logs and error messages: the useful part ("connection refused") is
/// often a cause. A cause whose text the line already holds (many errors
/// print their source themselves) is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    fn layer(text: &'static str, source: Option<Layer>) -> Layer {
        Layer {
            text,
            source: source.map(Box::new),
        }
    }

    #[test]
    fn error_chains_name_every_cause_once() {
        let root = layer("connection refused", None);
        let middle = layer("could not connect: connection refused", Some(root));
        let top = layer("ledger unavailable", Some(middle));
        assert_eq!(
            super::error_chain(&top),
            "ledger unavailable: could not connect: connection refused"
        );
    }
}
