//! The two stages' handlers. Each takes one broker message and returns what
//! to tell the broker; every branch that acks says why that is safe.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use courier_model::{
    AttemptResult, Decision, DeliveryId, DeliveryMessage, DeliveryStatus, Event,
    SubscriptionStatus, classify, sign_headers,
};
use courier_producer::topology::DELIVERY_ROUTING_KEY;
use courier_producer::{ConfirmedChannel, PublishError, Topology};
use courier_store::{
    AttemptWrite, DeliveryContext, Ledger, Store, StoreError, WriteOp, WriteResult,
};
use futures_util::future::try_join_all;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, LongString};
use rand::RngExt;
use reqwest::header::{HeaderMap, HeaderValue};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::consumer::Handled;
use crate::limits::EndpointLimits;
use crate::metrics::Metrics;
use crate::subscriptions::SubscriptionCache;
use crate::{WebhookClient, WorkerConfig, error_chain};

/// Why a handler could not finish; the message goes back to the broker.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("ledger write failed")]
    Store(#[from] StoreError),
    #[error("publish failed")]
    Publish(#[from] PublishError),
}

/// Shared state of both stages.
pub struct Pipeline {
    pub(crate) config: WorkerConfig,
    pub(crate) topology: Topology,
    pub(crate) store: Store,
    pub(crate) ledger: Ledger,
    pub(crate) publisher: ConfirmedChannel,
    pub(crate) client: WebhookClient,
    pub(crate) subscriptions: SubscriptionCache,
    pub(crate) endpoints: EndpointLimits,
    pub(crate) metrics: Arc<Metrics>,
    /// Cancelled on shutdown: ends the waits for a database to come back.
    pub(crate) stopping: CancellationToken,
}

impl Pipeline {
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Reloads the matching index; returns the enabled subscriptions seen.
    /// `trigger` (start, notice, periodic) labels the reload metric.
    pub async fn reload_subscriptions(&self, trigger: &str) -> Result<usize, StoreError> {
        let n = self.subscriptions.reload(&self.store).await?;
        self.metrics.subscriptions_cached.set(n as i64);
        self.metrics
            .subscription_reloads
            .with_label_values(&[trigger])
            .inc();
        Ok(n)
    }

    /// Runs a ledger operation until it succeeds, waiting out transient
    /// database failures (a restart, a failover) with backoff instead of
    /// handing the message back: requeueing would burn through the queue's
    /// delivery limit and poison good messages. Gives up on shutdown, and at
    /// once on errors that retrying cannot fix.
    async fn durably<T, F, Fut>(&self, what: &str, mut operation: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut wait = Duration::from_millis(100);
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(error) if is_transient(&error) && !self.stopping.is_cancelled() => {
                    tracing::warn!(error = %error_chain(&error), retry_in_ms = wait.as_millis() as u64, "{what} failed; retrying");
                    tokio::select! {
                        _ = self.stopping.cancelled() => return Err(error),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Publishes with a confirm, counting the outcome and its latency.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let started = std::time::Instant::now();
        let result = self
            .publisher
            .publish(exchange, routing_key, body, properties)
            .await;
        let outcome = match &result {
            Ok(()) => "ack",
            Err(PublishError::Nacked { .. }) => "nack",
            Err(PublishError::Unroutable { .. }) => "unroutable",
            Err(_) => "error",
        };
        self.metrics
            .publish_confirms
            .with_label_values(&[outcome])
            .inc();
        self.metrics
            .publish_confirm_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    // --- stage 1: fan-out ----------------------------------------------------

    pub async fn fan_out(&self, message: &Delivery) -> Handled {
        let event = match Event::from_slice(&message.data) {
            Ok(event) => Arc::new(event),
            Err(error) => {
                return self
                    .poison(
                        message,
                        "fanout",
                        &self.topology.fanout_queue(),
                        error_chain(&error),
                    )
                    .await;
            }
        };
        self.metrics
            .events_consumed
            .with_label_values(&[event.event_type.as_str()])
            .inc();
        let span =
            tracing::info_span!("fan_out", event_id = %event.id, event_type = %event.event_type);
        async {
            match self.try_fan_out(&event).await {
                Ok(published) => {
                    tracing::debug!(deliveries = published, "event fanned out");
                    Handled::Ack
                }
                Err(error) => self.requeue_after(&error).await,
            }
        }
        .instrument(span)
        .await
    }

    async fn try_fan_out(&self, event: &Arc<Event>) -> Result<usize, StepError> {
        let matches = self.subscriptions.matching(event);
        if matches.is_empty() {
            // Nothing to deliver, nothing to record: acking loses nothing.
            return Ok(0);
        }
        let deliveries = matches
            .iter()
            .map(|s| (DeliveryId::derive(&event.id, s.id), s.id))
            .collect();
        let op = WriteOp::FanOut {
            event: Arc::clone(event),
            deliveries,
        };
        let written = self
            .durably("recording the fan-out", || self.ledger.write(op.clone()))
            .await?;
        let WriteResult::FanOut { to_publish } = written else {
            unreachable!("a fan-out write yields a fan-out result")
        };
        // The event and its deliveries are committed; now make sure a message
        // for each pending delivery is confirmed before the event is acked.
        // After a crash here the event comes back and the still-pending
        // deliveries are published again (receivers dedupe on webhook-id).
        let exchange = self.topology.deliveries_exchange();
        let bodies: Vec<Vec<u8>> = to_publish
            .iter()
            .map(|&(delivery_id, subscription_id)| {
                DeliveryMessage::new(delivery_id, event.id.clone(), subscription_id, 1).to_vec()
            })
            .collect();
        try_join_all(
            bodies
                .iter()
                .map(|body| self.publish(&exchange, DELIVERY_ROUTING_KEY, body, json_properties())),
        )
        .await?;
        self.metrics
            .deliveries_created
            .with_label_values(&[event.event_type.as_str()])
            .inc_by(bodies.len() as u64);
        Ok(bodies.len())
    }

    // --- stage 2: delivery ------------------------------------------------------

    pub async fn deliver(&self, message: &Delivery) -> Handled {
        let msg = match DeliveryMessage::from_slice(&message.data) {
            Ok(msg) => msg,
            Err(error) => {
                return self
                    .poison(
                        message,
                        "delivery",
                        &self.topology.deliveries_queue(),
                        error_chain(&error),
                    )
                    .await;
            }
        };
        let span = tracing::info_span!(
            "deliver",
            event_id = %msg.event_id,
            delivery_id = %msg.delivery_id,
            webhook_id = %msg.subscription_id,
            attempt = msg.attempt,
        );
        async {
            match self.try_deliver(&msg, message.redelivered).await {
                Ok(()) => Handled::Ack,
                Err(error) => self.requeue_after(&error).await,
            }
        }
        .instrument(span)
        .await
    }

    async fn try_deliver(&self, msg: &DeliveryMessage, redelivered: bool) -> Result<(), StepError> {
        let Some(DeliveryContext {
            delivery,
            event,
            subscription,
        }) = self
            .durably("reading the delivery", || {
                self.store.delivery_context(msg.delivery_id)
            })
            .await?
        else {
            // The ledger has no such delivery (its event was purged): there is
            // nothing left to deliver.
            tracing::warn!("delivery not in the ledger; dropping its message");
            return Ok(());
        };

        if delivery.attempts >= msg.attempt {
            // This attempt was made already. If the broker redelivers the very
            // message whose attempt is the latest on record, the worker that
            // made it may have died before publishing the follow-up: publish
            // it again (a duplicate follow-up is fenced the same way).
            if redelivered && delivery.attempts == msg.attempt {
                match delivery.status {
                    DeliveryStatus::Retrying => {
                        let delay = self
                            .config
                            .retry
                            .delay_after(msg.attempt)
                            .or_else(|| self.topology.retry_tiers().last().copied());
                        if let Some(delay) = delay {
                            self.schedule_retry(msg, delay).await?;
                        }
                    }
                    DeliveryStatus::Dead => self.dead_letter(msg).await?,
                    _ => {}
                }
            }
            tracing::debug!(
                status = delivery.status.as_str(),
                "attempt already on record"
            );
            return Ok(());
        }
        if delivery.status.is_final() {
            tracing::debug!(
                status = delivery.status.as_str(),
                "delivery already finished"
            );
            return Ok(());
        }

        let Some(subscription) = subscription.filter(|s| s.status == SubscriptionStatus::Enabled)
        else {
            let op = WriteOp::Cancel {
                delivery_id: msg.delivery_id,
            };
            self.durably("canceling the delivery", || self.ledger.write(op.clone()))
                .await?;
            tracing::info!("webhook deleted or disabled; delivery canceled");
            return Ok(());
        };

        // The attempt itself, bounded per endpoint.
        let body = event.webhook_body();
        let started_at = Utc::now();
        let timestamp = started_at.timestamp();
        let webhook_id = msg.delivery_id.to_string();
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", header_value(&webhook_id));
        headers.insert("webhook-timestamp", header_value(&timestamp.to_string()));
        headers.insert(
            "webhook-signature",
            header_value(&sign_headers(
                subscription.signing_secrets(started_at),
                &webhook_id,
                timestamp,
                &body,
            )),
        );
        let outcome = {
            let _slot = self.endpoints.acquire(subscription.id).await;
            self.metrics.in_flight.inc();
            let outcome = self.client.post(&subscription.url, headers, body).await;
            self.metrics.in_flight.dec();
            outcome
        };

        let decision = classify(
            outcome.result,
            msg.attempt,
            &self.config.retry,
            self.config.retry_client_errors,
        );
        let (new_status, next_delay) = match decision {
            Decision::Succeeded => (DeliveryStatus::Succeeded, None),
            Decision::Retry { delay } => {
                let jittered = self
                    .config
                    .retry
                    .jittered(delay, rand::rng().random_range(0.0..1.0));
                (DeliveryStatus::Retrying, Some(jittered))
            }
            Decision::Dead => (DeliveryStatus::Dead, None),
        };
        let (response_status, error_kind) = match outcome.result {
            AttemptResult::Response { status } => (Some(status), None),
            AttemptResult::Failed { kind } => (None, Some(kind)),
        };
        let op = WriteOp::Attempt(AttemptWrite {
            delivery_id: msg.delivery_id,
            attempt: msg.attempt,
            url: subscription.url.to_string(),
            started_at,
            duration_ms: outcome.duration.as_millis().min(u32::MAX as u128) as u32,
            response_status,
            error_kind,
            error: outcome.error.clone(),
            response_excerpt: outcome.excerpt,
            new_status,
            next_attempt_at: next_delay
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .map(|d| started_at + d),
        });
        let recorded = self
            .durably("recording the attempt", || self.ledger.write(op.clone()))
            .await?;
        if recorded != (WriteResult::Attempt { recorded: true }) {
            // Another worker recorded this attempt number first; it owns the
            // follow-up.
            tracing::info!("duplicate attempt; the other worker's record stands");
            return Ok(());
        }
        let class = outcome.result.class();
        let label = match decision {
            Decision::Succeeded => "success",
            Decision::Retry { .. } => "retry",
            Decision::Dead => "dead",
        };
        let event_type = event.event_type.as_str();
        self.metrics
            .attempts
            .with_label_values(&[label, class, event_type])
            .inc();
        self.metrics
            .attempt_duration
            .with_label_values(&[class])
            .observe(outcome.duration.as_secs_f64());
        match decision {
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
            Decision::Retry { .. } => {}
        }
        tracing::info!(
            status = new_status.as_str(),
            response = outcome.result.class(),
            duration_ms = outcome.duration.as_millis() as u64,
            error = outcome.error.as_deref().unwrap_or(""),
            "attempt recorded",
        );

        // The attempt is committed; the follow-up must be confirmed before
        // the ack, or a crash here would strand the delivery as "retrying".
        match (decision, next_delay) {
            (Decision::Retry { .. }, Some(delay)) => self.schedule_retry(msg, delay).await?,
            (Decision::Dead, _) => self.dead_letter(msg).await?,
            _ => {}
        }
        Ok(())
    }

    /// Parks the next attempt in the retry tier for `delay`; the tier's
    /// queue dead-letters it back to the deliveries queue when it expires.
    async fn schedule_retry(
        &self,
        msg: &DeliveryMessage,
        delay: Duration,
    ) -> Result<(), PublishError> {
        let Some(tier) = self.topology.tier_for(delay) else {
            return self.dead_letter(msg).await;
        };
        let expiration = delay.min(tier).as_millis().to_string();
        let properties = json_properties().with_expiration(expiration.as_str().into());
        self.publish(
            "",
            &self.topology.retry_queue(tier),
            &msg.next_attempt().to_vec(),
            properties,
        )
        .await
    }

    async fn dead_letter(&self, msg: &DeliveryMessage) -> Result<(), PublishError> {
        self.publish(
            &self.topology.dead_exchange(),
            "",
            &msg.to_vec(),
            json_properties(),
        )
        .await
    }

    /// Moves a message that can never be processed to the poison queue,
    /// with the reason in a header, then acks it: retrying would loop.
    async fn poison(
        &self,
        message: &Delivery,
        stage: &str,
        source: &str,
        reason: String,
    ) -> Handled {
        tracing::warn!(queue = source, reason = %reason, bytes = message.data.len(), "poison message");
        let mut headers = FieldTable::default();
        headers.insert(
            "x-courier-error".into(),
            AMQPValue::LongString(LongString::from(truncate(&reason, 1024))),
        );
        headers.insert(
            "x-courier-source-queue".into(),
            AMQPValue::LongString(LongString::from(source)),
        );
        let properties = BasicProperties::default().with_headers(headers);
        match self
            .publish("", &self.topology.poison_queue(), &message.data, properties)
            .await
        {
            Ok(()) => {
                self.metrics.poison.with_label_values(&[stage]).inc();
                Handled::Ack
            }
            Err(publish_error) => self.requeue_after(&StepError::Publish(publish_error)).await,
        }
    }

    /// Logs why a message goes back, and pauses briefly so a failing
    /// database or broker is not hammered by instant redeliveries.
    async fn requeue_after(&self, error: &StepError) -> Handled {
        tracing::warn!(error = %error_chain(error), "handing message back for redelivery");
        tokio::time::sleep(Duration::from_millis(500)).await;
        Handled::Requeue
    }
}

/// Whether waiting can fix a ledger error: lost connections, timeouts and
/// a busy database can; a constraint violation or corrupt row cannot.
fn is_transient(error: &StoreError) -> bool {
    match error {
        StoreError::Database(e) => {
            !matches!(
                e,
                sqlx::Error::Database(_)
                    | sqlx::Error::RowNotFound
                    | sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::ColumnNotFound(_)
                    | sqlx::Error::TypeNotFound { .. }
                    | sqlx::Error::Decode(_)
            ) || e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|code| {
                    // SQLite busy/locked; PostgreSQL connection and shutdown classes.
                    matches!(code.as_ref(), "5" | "6" | "517" | "261" | "262")
                        || code.starts_with("08")
                        || code.starts_with("57P")
                })
        }
        StoreError::Batch(inner) => is_transient(inner),
        StoreError::LedgerClosed => false,
        _ => false,
    }
}

fn json_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into())
}

fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("ids, timestamps and base64 are valid header values")
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
