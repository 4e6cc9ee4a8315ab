//! One attempt: sign the webhook, POST it with the endpoint's slot, and
//! decide what comes next (success, a retry after some delay, or dead).
//! Nothing here records or publishes; the stages do.

use std::time::Duration;

use chrono::Utc;
use courier_model::{
    AttemptResult, Decision, DeliveryMessage, DeliveryStatus, DeliveryTarget, Event, classify,
    parse_retry_after,
};
use courier_store::AttemptWrite;
use courier_webhook::SignedWebhook;
use rand::RngExt;

use super::Pipeline;
use crate::limits::Slot;
use crate::log::{About, about};

impl Pipeline {
    /// Signs and POSTs one attempt, holding the endpoint's slot only for the
    /// request, and decides what comes next. Records nothing.
    pub(super) async fn attempt(
        &self,
        event: &Event,
        subscription: &dyn DeliveryTarget,
        msg: &DeliveryMessage,
        mut slot: Slot,
    ) -> Attempted {
        let started_at = Utc::now();
        // The delivery id is the webhook-id: the same on every attempt, so
        // receivers deduplicate on it.
        let webhook = SignedWebhook::new(
            subscription,
            &msg.delivery_id.to_string(),
            started_at,
            event.webhook_body(),
        );
        self.metrics.in_flight.inc();
        // With the webhook's own headers and timeout, if it sets them.
        let outcome = self.client.send_for(subscription, webhook).await;
        self.metrics.in_flight.dec();
        slot.observe(outcome.duration);
        if slot.outcome(outcome.result.endpoint_healthy()) {
            self.metrics.circuit_opened.inc();
            about!(
                warn,
                About::Delivery(msg),
                url = %subscription.url(),
                "endpoint failed {} attempts in a row; circuit open, its deliveries are held",
                crate::limits::FAILURES_TO_OPEN
            );
        }
        drop(slot);

        let asked_wait = outcome
            .retry_after
            .as_deref()
            .and_then(|v| parse_retry_after(v, Utc::now()));
        // The deployment's schedule, with the webhook's own attempt count.
        let retry = self
            .config
            .retry
            .with_max_attempts(subscription.settings().max_attempts);
        let decision = classify(
            outcome.result,
            msg.attempt,
            &retry,
            self.config.retry_client_errors,
            asked_wait,
        );
        let (new_status, next_delay) = match decision {
            Decision::Succeeded => (DeliveryStatus::Succeeded, None),
            // The receiver said when: exactly then, never earlier.
            Decision::Retry { delay, asked: true } => (DeliveryStatus::Retrying, Some(delay)),
            Decision::Retry {
                delay,
                asked: false,
            } => {
                let jittered = self
                    .config
                    .retry
                    .jittered(delay, rand::rng().random_range(0.0..1.0));
                (DeliveryStatus::Retrying, Some(jittered))
            }
            Decision::Dead => (DeliveryStatus::Dead, None),
            // Paused with the webhook's other deliveries.
            Decision::Gone => (DeliveryStatus::Paused, None),
        };
        if decision == Decision::Gone {
            // Boxed: a rare branch with a large future, which awaited
            // inline would make every attempt's future as large (see
            // future_sizes.rs).
            Box::pin(self.webhook_gone(subscription, msg)).await;
        }
        let (response_status, error_kind) = match outcome.result {
            AttemptResult::Response { status } => (Some(status), None),
            AttemptResult::Failed { kind } => (None, Some(kind)),
        };
        let next_attempt_at = next_delay
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| started_at + d);
        Attempted {
            write: AttemptWrite {
                delivery_id: msg.delivery_id,
                attempt: msg.attempt,
                url: subscription.url().to_string(),
                started_at,
                duration_ms: outcome.duration.as_millis().min(u32::MAX as u128) as u32,
                response_status,
                error_kind,
                error: outcome.error,
                response_excerpt: outcome.excerpt,
                retry_after: outcome.retry_after,
                new_status,
                next_attempt_at,
                // A wait the receiver chose may fit no retry tier: the
                // ledger holds the delivery until then and owes the attempt,
                // as for any held delivery (committed before the message
                // that carried this attempt is acked).
                held_until: match decision {
                    Decision::Retry { asked: true, .. } => next_attempt_at,
                    _ => None,
                },
            },
            class: outcome.result.class(),
            duration: outcome.duration,
            decision,
            next_delay,
        }
    }
}

/// An attempt made and classified, not yet recorded.
pub(super) struct Attempted {
    pub(super) write: AttemptWrite,
    pub(super) decision: Decision,
    pub(super) next_delay: Option<Duration>,
    /// Response class, for metrics.
    pub(super) class: &'static str,
    pub(super) duration: Duration,
}

impl Attempted {
    /// For an attempt no message carries: a retry stays held in the
    /// ledger until it is due, committed with the attempt, instead of
    /// travelling a retry queue that only a message's ack would make safe.
    pub(super) fn carried_by_ledger(&mut self) {
        if matches!(self.decision, Decision::Retry { .. }) {
            self.write.held_until = self.write.next_attempt_at;
        }
    }
}

/// The span of one delivery attempt, at debug level: every line logged in
/// it names the event, the delivery (the `webhook-id` the receiver sees),
/// the webhook and the attempt. Debug-level: a span per delivery costs CPU
/// whether anything is logged or not, so lines at info and above name what
/// they are about themselves (see `crate::log`).
pub(crate) fn delivery_span(msg: &DeliveryMessage) -> tracing::Span {
    tracing::debug_span!(
        "deliver",
        event_id = %msg.event_id,
        delivery_id = %msg.delivery_id,
        webhook_id = %msg.subscription_id,
        attempt = msg.attempt,
    )
}
