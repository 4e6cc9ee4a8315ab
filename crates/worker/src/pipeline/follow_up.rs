//! What follows an attempt once the ledger holds it: the next attempt
//! parked in a retry tier, or the dead letter; and the other ways a
//! delivery leaves the stages: held in the ledger for its endpoint, or a
//! message that can never be processed set aside in the poison queue.

use std::time::Duration;

use chrono::Utc;
use courier_model::{Decision, DeliveryMessage, DeliveryStatus, Event};
use courier_producer::PublishError;
use courier_store::{StoreError, WriteOp, WriteResult};

use super::attempt::Attempted;
use super::{Pipeline, StepError};
use crate::consumer::Handled;
use crate::log::{About, about};

impl Pipeline {
    /// Once the ledger holds an attempt: counts it, logs it and publishes
    /// what follows it (the next attempt or the dead letter).
    pub(super) async fn follow_up(
        &self,
        msg: &DeliveryMessage,
        attempted: &Attempted,
        event: &Event,
    ) -> Result<(), PublishError> {
        let label = match attempted.decision {
            Decision::Succeeded => "success",
            Decision::Retry { .. } => "retry",
            Decision::Dead => "dead",
            Decision::Gone => "gone",
        };
        let event_type = event.event_type.as_str();
        self.metrics
            .attempts
            .with_label_values(&[label, attempted.class, event_type])
            .inc();
        self.metrics
            .attempt_duration
            .with_label_values(&[attempted.class])
            .observe(attempted.duration.as_secs_f64());
        match attempted.decision {
            Decision::Succeeded => {
                let latency = (Utc::now() - event.occurred_at)
                    .to_std()
                    .unwrap_or_default();
                self.metrics.delivery_latency.observe(latency.as_secs_f64());
            }
            Decision::Dead => self
                .metrics
                .dead_lettered
                .with_label_values(&[event_type])
                .inc(),
            Decision::Retry { .. } | Decision::Gone => {}
        }
        // Every attempt is in the ledger and in the metrics. A log line per
        // success would be most of the log at any real rate and cost CPU on
        // every delivery. So successes log at debug; failures, which
        // operators read logs for, at info.
        if matches!(attempted.decision, Decision::Succeeded) {
            tracing::debug!(
                status = attempted.write.new_status.as_str(),
                response = attempted.class,
                duration_ms = attempted.duration.as_millis() as u64,
                "attempt recorded",
            );
        } else {
            about!(
                info,
                About::Delivery(msg),
                status = attempted.write.new_status.as_str(),
                response = attempted.class,
                duration_ms = attempted.duration.as_millis() as u64,
                error = attempted.write.error.as_deref().unwrap_or(""),
                "attempt recorded",
            );
        }
        let sent = match (attempted.decision, attempted.next_delay) {
            // Held: the ledger makes the next attempt when it is due.
            (Decision::Retry { .. }, _) if attempted.write.held_until.is_some() => Ok(()),
            (Decision::Retry { .. }, Some(delay)) => self.schedule_retry(msg, delay).await,
            (Decision::Dead, _) => self.dead_letter(msg).await,
            _ => Ok(()),
        };
        // What follows is durable (or will be sent again): now what the
        // attempt means for the webhook.
        if sent.is_ok() {
            self.after_attempt(msg, event, attempted).await;
        }
        sent
    }

    /// Publishes again the follow-up of attempt `msg.attempt`, which the
    /// ledger shows as made, for when the worker that made it may have died
    /// before publishing it.
    pub(super) async fn resend_follow_up(
        &self,
        msg: DeliveryMessage,
        status: DeliveryStatus,
    ) -> Result<(), PublishError> {
        match status {
            DeliveryStatus::Retrying => {
                let delay = self
                    .config
                    .retry
                    .delay_after(msg.attempt)
                    .or_else(|| self.topology.retry_tiers().last().copied());
                match delay {
                    Some(delay) => self.schedule_retry(&msg, delay).await,
                    None => Ok(()),
                }
            }
            DeliveryStatus::Dead => self.dead_letter(&msg).await,
            _ => Ok(()),
        }
    }

    /// Puts an attempt off because its endpoint is busy or failing: the
    /// ledger holds the delivery, and a worker with room for the endpoint
    /// claims it as soon as it has (see [`Pipeline::release_held`]). No
    /// message carries it meanwhile, so a backlog waiting for one endpoint
    /// costs the broker nothing.
    pub(super) async fn hold(&self, msg: &DeliveryMessage) -> Result<(), StoreError> {
        self.hold_for(msg, Duration::ZERO).await
    }

    /// Holds the delivery as [`Pipeline::hold`] does, due only after
    /// `wait` (its webhook's rate limit has no token before then).
    pub(super) async fn hold_for(
        &self,
        msg: &DeliveryMessage,
        wait: Duration,
    ) -> Result<(), StoreError> {
        let until = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
        let op = WriteOp::Hold {
            delivery_id: msg.delivery_id,
            attempt: msg.attempt,
            until,
        };
        let result = self
            .durably("holding the delivery", About::Delivery(msg), || {
                self.ledger.write(op.clone())
            })
            .await?;
        self.count_holds(std::iter::once(&result));
        if result == (WriteResult::Held { held: true }) {
            tracing::debug!("endpoint busy, failing or at its rate limit; delivery held");
        } else {
            tracing::debug!("attempt made or not owed any more; nothing to hold");
        }
        Ok(())
    }

    pub(super) fn count_holds<'r>(&self, results: impl Iterator<Item = &'r WriteResult>) {
        let held = results
            .filter(|r| **r == (WriteResult::Held { held: true }))
            .count();
        self.metrics.deferred.inc_by(held as u64);
    }

    /// Parks the next attempt in the retry tier for `delay` (see
    /// [`courier_producer::Topology::retry`]); the tier's queue
    /// dead-letters it back to the deliveries queue when it expires.
    async fn schedule_retry(
        &self,
        msg: &DeliveryMessage,
        delay: Duration,
    ) -> Result<(), PublishError> {
        self.send(self.topology.retry(msg, delay)).await
    }

    pub(crate) async fn dead_letter(&self, msg: &DeliveryMessage) -> Result<(), PublishError> {
        self.send(self.topology.dead_letter(msg)).await
    }

    /// Moves a message that can never be processed (or one event of a
    /// group) to the poison queue, with the reason in a header, then acks
    /// it: retrying would loop.
    pub(super) async fn poison(
        &self,
        data: &[u8],
        about: About<'_>,
        stage: &str,
        source: &str,
        reason: String,
    ) -> Handled {
        about!(warn, about, queue = source, reason = %reason, bytes = data.len(), "poison message");
        let outgoing = self.topology.poison(data, source, &reason);
        match self.send(outgoing).await {
            Ok(()) => {
                self.metrics.poison.with_label_values(&[stage]).inc();
                Handled::Ack
            }
            Err(publish_error) => {
                self.requeue_after(about, &StepError::Publish(publish_error))
                    .await
            }
        }
    }
}
