//! The two stages' handlers. Each takes one broker message and returns what
//! to tell the broker; every branch that acks says why that is safe.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use courier_model::{
    AttemptResult, Decision, DeliveryId, DeliveryMessage, DeliveryStatus, Event, Subscription,
    SubscriptionId, SubscriptionStatus, classify, sign_headers,
};
use courier_producer::topology::DELIVERY_ROUTING_KEY;
use courier_producer::{ConfirmedChannel, PublishError, Topology};
use courier_store::{
    AttemptWrite, DeliveryContext, Ledger, Store, StoreError, WriteOp, WriteResult,
};
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, try_join_all};
use futures_util::stream::FuturesUnordered;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, LongString};
use rand::RngExt;
use reqwest::header::{HeaderMap, HeaderValue};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::consumer::{Finish, Handled};
use crate::limits::{EndpointLimits, NoSlot, QUICK, Slot};
use crate::log::{About, about};
use crate::metrics::Metrics;
use crate::subscriptions::SubscriptionCache;
use crate::{WebhookClient, WorkerConfig, error_chain};

/// Why a handler could not finish; the message goes back to the broker.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
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
    /// Bounds the attempts in flight across both stages.
    pub(crate) http_slots: Arc<Semaphore>,
    /// Bounds the first attempts fan-outs make at once, one permit per
    /// attempt, to as many as `http_slots` holds: a fan-out starts its
    /// attempts when there is room for them, rather than queueing them for
    /// slots until they give up (see [`Pipeline::first_attempt`]). The
    /// prefetch, larger, bounds the events held unacked meanwhile, most of
    /// them waiting for their commit.
    pub(crate) first_attempt_room: Arc<Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
    /// Cancelled on shutdown: ends the waits for a database to come back.
    pub(crate) stopping: CancellationToken,
}

impl Pipeline {
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Reloads the matching index; returns the enabled subscriptions seen.
    /// `trigger` (start, notice, periodic; catch_up for a fan-out's own
    /// check) labels the reload metric.
    pub async fn reload_subscriptions(&self, trigger: &str) -> Result<usize, StoreError> {
        let n = self.subscriptions.reload(&self.store).await?;
        self.count_reload(trigger, n);
        Ok(n)
    }

    fn count_reload(&self, trigger: &str, subscriptions: usize) {
        self.metrics.subscriptions_cached.set(subscriptions as i64);
        self.metrics
            .subscription_reloads
            .with_label_values(&[trigger])
            .inc();
    }

    /// The periodic refresh: reloads the matching index if the ledger's
    /// subscriptions changed since the last load, or if `full`.
    pub async fn refresh_subscriptions(&self, full: bool) -> Result<(), StoreError> {
        if full || self.subscriptions.is_stale(&self.store).await? {
            self.reload_subscriptions("periodic").await?;
        }
        Ok(())
    }

    /// Runs a ledger operation until it succeeds, waiting out transient
    /// database failures (a restart, a failover) with backoff instead of
    /// handing the message back: requeueing would burn through the queue's
    /// delivery limit and poison good messages. Gives up on shutdown, and at
    /// once on errors that retrying cannot fix.
    async fn durably<T, F, Fut>(
        &self,
        what: &str,
        about: About<'_>,
        mut operation: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut wait = Duration::from_millis(100);
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(error) if is_transient(&error) && !self.stopping.is_cancelled() => {
                    about!(warn, about, error = %error_chain(&error), retry_in_ms = wait.as_millis() as u64, "{what} failed; retrying");
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

    /// Fans one event out and settles its message through `finish`, as
    /// soon as everything the event caused is durable (see
    /// [`Pipeline::try_fan_out`]).
    pub async fn fan_out(&self, message: &Delivery, finish: Finish) {
        let mut finish = Some(finish);
        let handled = self.fan_out_settling(message, &mut finish).await;
        if let Some(finish) = finish {
            finish.done(handled);
        }
    }

    async fn fan_out_settling(&self, message: &Delivery, finish: &mut Option<Finish>) -> Handled {
        // No earlier than the broker handed the message over, so no earlier
        // than it was published.
        let arrived = std::time::Instant::now();
        let event = match Event::from_slice(&message.data) {
            Ok(event) => Arc::new(event),
            Err(error) => {
                return self
                    .poison(
                        message,
                        About::Message,
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
            tracing::debug_span!("fan_out", event_id = %event.id, event_type = %event.event_type);
        async {
            match self
                .try_fan_out(&event, arrived, message.redelivered, finish)
                .await
            {
                Ok(deliveries) => {
                    tracing::debug!(deliveries, "event fanned out");
                    Handled::Ack
                }
                Err(error) if finish.is_none() => {
                    about!(
                        warn,
                        About::Event(&event),
                        error = %error_chain(&error),
                        "recording first attempts that outlived their event's ack failed; \
                         their deliveries are attempted again when their claims run out"
                    );
                    Handled::Ack
                }
                // Storing it again would fail again: set it aside now with
                // the database's reason, rather than after every redelivery.
                Err(StepError::Store(error)) if ledger_refused_value(&error) => {
                    let reason = format!("the ledger refused the event: {}", error_chain(&error));
                    self.poison(
                        message,
                        About::Event(&event),
                        "fanout",
                        &self.topology.fanout_queue(),
                        reason,
                    )
                    .await
                }
                Err(error) => self.requeue_after(About::Event(&event), &error).await,
            }
        }
        .instrument(span)
        .await
    }

    /// Records the event and its deliveries, makes the first attempts that
    /// can be made at once right here, and hands the rest to the deliveries
    /// queue. Everything the event caused (deliveries, attempts, their
    /// follow-up messages) is durable before the event is acked through
    /// `finish`.
    ///
    /// A first attempt still running after [`QUICK`] (its endpoint turned
    /// slow) does not keep the event unacked: its delivery is committed
    /// with the others, claimed in the ledger for as long as the attempt
    /// may take, and the event is acked. The attempt is recorded when it
    /// ends, and the ledger owes whatever follows it; should this worker
    /// die first, the claim runs out and another worker makes the attempt.
    /// An unacked event would hold up the acks of every event behind it.
    async fn try_fan_out(
        &self,
        event: &Arc<Event>,
        arrived: std::time::Instant,
        redelivered: bool,
        finish: &mut Option<Finish>,
    ) -> Result<usize, StepError> {
        // Webhook changes that returned before this event was published
        // apply to it: see `SubscriptionCache::catch_up`.
        let reloaded = self
            .durably("checking for webhook changes", About::Event(event), || {
                self.subscriptions.catch_up(&self.store, arrived)
            })
            .await?;
        if let Some(n) = reloaded {
            self.count_reload("catch_up", n);
        }
        let matches = self.subscriptions.matching(event);
        if matches.is_empty() {
            // Nothing to deliver. The event is recorded all the same, so
            // that "why did my webhook not fire?" has an answer.
            self.record_fan_out(event, Vec::new(), Vec::new(), &[], redelivered)
                .await?;
            self.metrics
                .events_unmatched
                .with_label_values(&[event.event_type.as_str()])
                .inc();
            return Ok(0);
        }
        let deliveries: Vec<(DeliveryId, SubscriptionId)> = matches
            .iter()
            .map(|s| (DeliveryId::derive(&event.id, s.id), s.id))
            .collect();

        // First attempts go out now to endpoints that answer quickly and
        // have a slot. A redelivered event may have been half done by a
        // worker that died: it takes the queue, and `recover`.
        let inline = self.config.inline_first_attempt && !redelivered;
        let room = if inline {
            let wanted = matches.len().min(self.config.max_in_flight.max(1));
            Some(
                self.first_attempt_room
                    .acquire_many(u32::try_from(wanted).unwrap_or(u32::MAX))
                    .await
                    .expect("the first-attempt semaphore is never closed"),
            )
        } else {
            None
        };
        let mut settled = Vec::with_capacity(matches.len());
        let mut running = FuturesUnordered::new();
        let mut attempting = Vec::new();
        for (subscription, &(delivery_id, _)) in matches.iter().zip(&deliveries) {
            let msg = DeliveryMessage::new(delivery_id, event.id.clone(), subscription.id, 1);
            if inline {
                attempting.push(msg.clone());
                running.push(self.first_attempt(event, subscription, msg));
            } else {
                settled.push(First::Queue(msg));
            }
        }
        // An endpoint that turns out slow must not keep the others' attempts
        // out of the ledger: what is done within QUICK is recorded now, the
        // rest is claimed and recorded as it finishes.
        if !running.is_empty() {
            let patience = tokio::time::sleep(QUICK);
            tokio::pin!(patience);
            loop {
                tokio::select! {
                    next = running.next() => match next {
                        Some(first) => settled.push(first),
                        None => break,
                    },
                    () = &mut patience => break,
                }
            }
        }
        let claimed: Vec<DeliveryMessage> = if running.is_empty() {
            Vec::new()
        } else {
            let settled: HashSet<DeliveryId> =
                settled.iter().map(|f| f.msg().delivery_id).collect();
            attempting
                .into_iter()
                .filter(|m| !settled.contains(&m.delivery_id))
                .collect()
        };
        // Attempts still running hold HTTP slots of their own; the commit
        // needs no room, so the next events' attempts start while it waits.
        drop(room);
        // The attempts under way keep going while the fan-out commits.
        let mut late = Vec::new();
        let record = self.record_fan_out(event, deliveries, settled, &claimed, redelivered);
        tokio::pin!(record);
        loop {
            tokio::select! {
                recorded = &mut record => {
                    recorded?;
                    break;
                }
                Some(first) = running.next() => late.push(first),
            }
        }
        if let Some(finish) = finish.take() {
            finish.done(Handled::Ack);
        }
        late.extend(running.collect::<Vec<_>>().await);
        if !late.is_empty() {
            self.record_claimed(event, late).await?;
        }
        Ok(matches.len())
    }

    /// The first attempt of a delivery, made right away if its endpoint has
    /// been answering quickly and a slot frees within [`QUICK`]. Otherwise
    /// the delivery is left to the deliveries queue, or, when its endpoint
    /// is slow and saturated or its circuit open, held in the ledger.
    async fn first_attempt(
        &self,
        event: &Event,
        subscription: &Subscription,
        msg: DeliveryMessage,
    ) -> First {
        let span = delivery_span(&msg);
        async {
            let worker_slot = Arc::clone(&self.http_slots).acquire_owned();
            let Ok(Ok(worker_slot)) = tokio::time::timeout(QUICK, worker_slot).await else {
                return First::Queue(msg);
            };
            let slot = match self
                .endpoints
                .acquire_quick(subscription.url.as_str())
                .await
            {
                Ok(slot) => slot,
                Err(NoSlot::Slow { full: true, .. } | NoSlot::Open { .. }) => {
                    return First::Hold(msg);
                }
                Err(_) => return First::Queue(msg),
            };
            let attempted = self.attempt(event, subscription, &msg, slot).await;
            drop(worker_slot);
            First::Attempted(msg, attempted, tracing::Span::current())
        }
        .instrument(span)
        .await
    }

    /// Commits the event, its deliveries and the first attempts settled so
    /// far in one transaction, then publishes what must follow. Returns the
    /// deliveries the ledger had no attempt of before (all of them for a
    /// new event).
    async fn record_fan_out(
        &self,
        event: &Arc<Event>,
        deliveries: Vec<(DeliveryId, SubscriptionId)>,
        settled: Vec<First>,
        claimed: &[DeliveryMessage],
        redelivered: bool,
    ) -> Result<Vec<(DeliveryId, SubscriptionId)>, StepError> {
        let (attempted, queue, held) = First::split(settled);
        let mut ops = Vec::with_capacity(1 + attempted.len() + held.len() + claimed.len());
        ops.push(WriteOp::FanOut {
            event: Arc::clone(event),
            deliveries,
        });
        ops.extend(First::ops(&attempted, &held));
        let lease_until = Utc::now() + self.claim_lease();
        ops.extend(claimed.iter().map(|msg| WriteOp::Hold {
            delivery_id: msg.delivery_id,
            attempt: msg.attempt,
            until: lease_until,
        }));
        let results = self
            .durably("recording the fan-out", About::Event(event), || {
                self.ledger.write_many(ops.clone())
            })
            .await?;
        let mut results = results.into_iter();
        let Some(WriteResult::FanOut { to_publish }) = results.next() else {
            unreachable!("a fan-out write yields a fan-out result first")
        };
        self.metrics
            .deliveries_created
            .with_label_values(&[event.event_type.as_str()])
            .inc_by(to_publish.len() as u64);

        // Committed. Now every message that must follow is confirmed before
        // the event is acked. After a crash in between, the event comes back
        // redelivered and `recover` finds what is missing.
        self.count_holds(results.as_slice()[attempted.len()..][..held.len()].iter());
        let (first, resend) = if redelivered {
            self.recover(event).await?
        } else {
            (still_waiting(queue, &to_publish), Vec::new())
        };
        self.send_follow_ups(event, &attempted, results, resend, first)
            .await?;
        Ok(to_publish)
    }

    /// Records the first attempts that outlived their event's ack. Their
    /// deliveries are claimed in the ledger and no message carries them, so
    /// the ledger owes what follows: a retry stays held until it is due,
    /// and a delivery that found no slot after all is held for the release
    /// loop. Only a dead letter is published.
    async fn record_claimed(&self, event: &Event, late: Vec<First>) -> Result<(), StepError> {
        let (mut attempted, queue, mut held) = First::split(late);
        for (_, attempted, _) in &mut attempted {
            attempted.carried_by_ledger();
        }
        held.extend(queue);
        let ops: Vec<WriteOp> = First::ops(&attempted, &held).collect();
        let results = self
            .durably("recording attempts", About::Event(event), || {
                self.ledger.write_many(ops.clone())
            })
            .await?;
        self.count_holds(results[attempted.len()..].iter());
        self.send_follow_ups(
            event,
            &attempted,
            results.into_iter(),
            Vec::new(),
            Vec::new(),
        )
        .await?;
        Ok(())
    }

    /// Publishes, all at once, the follow-ups of the attempts the ledger
    /// took (`results` answers `attempted` in order), follow-ups to send
    /// again, and first messages for deliveries not attempted here.
    async fn send_follow_ups(
        &self,
        event: &Event,
        attempted: &[AttemptedHere],
        results: impl Iterator<Item = WriteResult>,
        resend: Vec<(DeliveryMessage, DeliveryStatus)>,
        first: Vec<DeliveryMessage>,
    ) -> Result<(), PublishError> {
        let bodies: Vec<Vec<u8>> = first.iter().map(DeliveryMessage::to_vec).collect();
        let exchange = self.topology.deliveries_exchange();
        let mut sends: Vec<BoxFuture<'_, Result<(), PublishError>>> = Vec::new();
        for ((msg, attempted, span), result) in attempted.iter().zip(results) {
            if result == (WriteResult::Attempt { recorded: true }) {
                sends.push(Box::pin(
                    self.follow_up(msg, attempted, event)
                        .instrument(span.clone()),
                ));
            } else {
                about!(
                    info,
                    About::Delivery(msg),
                    "duplicate attempt; the other worker's record stands"
                );
            }
        }
        for (msg, status) in resend {
            sends.push(Box::pin(self.resend_follow_up(msg, status)));
        }
        for body in &bodies {
            sends.push(Box::pin(self.publish(
                &exchange,
                DELIVERY_ROUTING_KEY,
                body,
                json_properties(),
            )));
        }
        try_join_all(sends).await?;
        Ok(())
    }

    /// For a redelivered event: the worker that had it may have died after
    /// committing and before publishing. Finds what of the event is still
    /// owed a message: deliveries never attempted (they get their first
    /// message) and first attempts whose follow-up may be missing (it is
    /// sent again; a follow-up sent twice is fenced by its attempt number).
    /// A held delivery is owed nothing: the ledger releases it.
    async fn recover(
        &self,
        event: &Event,
    ) -> Result<(Vec<DeliveryMessage>, Vec<(DeliveryMessage, DeliveryStatus)>), StoreError> {
        let records = self
            .durably(
                "reading the event's deliveries",
                About::Event(event),
                || {
                    self.store
                        .deliveries_of_event(&event.workspace_id, &event.id)
                },
            )
            .await?;
        let (mut first, mut resend) = (Vec::new(), Vec::new());
        for record in records.into_iter().filter(|r| r.held_until.is_none()) {
            let msg = DeliveryMessage::new(record.id, event.id.clone(), record.subscription_id, 1);
            match (record.status, record.attempts) {
                (DeliveryStatus::Pending, 0) => first.push(msg),
                (status, 1) => resend.push((msg, status)),
                _ => {}
            }
        }
        Ok((first, resend))
    }

    // --- stage 2: delivery ------------------------------------------------------

    pub async fn deliver(&self, message: &Delivery) -> Handled {
        let msg = match DeliveryMessage::from_slice(&message.data) {
            Ok(msg) => msg,
            Err(error) => {
                return self
                    .poison(
                        message,
                        About::Message,
                        "delivery",
                        &self.topology.deliveries_queue(),
                        error_chain(&error),
                    )
                    .await;
            }
        };
        async {
            match self.try_deliver(&msg, message.redelivered).await {
                Ok(()) => Handled::Ack,
                Err(error) => self.requeue_after(About::Delivery(&msg), &error).await,
            }
        }
        .instrument(delivery_span(&msg))
        .await
    }

    async fn try_deliver(&self, msg: &DeliveryMessage, redelivered: bool) -> Result<(), StepError> {
        let Some((event, subscription)) = self.owed(msg, redelivered).await? else {
            return Ok(());
        };
        // A busy endpoint's deliveries wait in the ledger, not in this
        // worker's slots, where they would starve every other endpoint.
        match self.endpoints.acquire(subscription.url.as_str()).await {
            Ok(slot) => {
                self.attempt_and_record(msg, &event, &subscription, slot, Carrier::Message)
                    .await
            }
            Err(_) => Ok(self.hold(msg).await?),
        }
    }

    /// Makes attempt `msg.attempt` of a held delivery with a slot of its
    /// endpoint, unless the ledger says it is not owed any more.
    pub(crate) async fn deliver_with(
        &self,
        msg: &DeliveryMessage,
        slot: Slot,
    ) -> Result<(), StepError> {
        match self.owed(msg, false).await? {
            Some((event, subscription)) => {
                self.attempt_and_record(msg, &event, &subscription, slot, Carrier::Ledger)
                    .await
            }
            None => Ok(()),
        }
    }

    /// The event and webhook of attempt `msg.attempt` if the ledger still
    /// owes it. Settles here what else the ledger says: the attempt was
    /// made (its follow-up is sent again if this is a redelivery of its
    /// very message), the delivery is finished, or its webhook is gone or
    /// disabled (the delivery is canceled).
    async fn owed(
        &self,
        msg: &DeliveryMessage,
        redelivered: bool,
    ) -> Result<Option<(Event, Subscription)>, StepError> {
        let Some(DeliveryContext {
            delivery,
            event,
            subscription,
        }) = self
            .durably("reading the delivery", About::Delivery(msg), || {
                self.store.delivery_context(msg.delivery_id)
            })
            .await?
        else {
            // The ledger has no such delivery (its event was purged): there is
            // nothing left to deliver.
            about!(
                warn,
                About::Delivery(msg),
                "delivery not in the ledger; dropping its message"
            );
            return Ok(None);
        };

        if delivery.attempts >= msg.attempt {
            // This attempt was made already. If the broker redelivers the very
            // message whose attempt is the latest on record, the worker that
            // made it may have died before publishing the follow-up: publish
            // it again (a duplicate follow-up is fenced the same way).
            if redelivered && delivery.attempts == msg.attempt {
                self.resend_follow_up(msg.clone(), delivery.status).await?;
            }
            tracing::debug!(
                status = delivery.status.as_str(),
                "attempt already on record"
            );
            return Ok(None);
        }
        if delivery.status.is_final() {
            tracing::debug!(
                status = delivery.status.as_str(),
                "delivery already finished"
            );
            return Ok(None);
        }

        let Some(subscription) = subscription.filter(|s| s.status == SubscriptionStatus::Enabled)
        else {
            let op = WriteOp::Cancel {
                delivery_id: msg.delivery_id,
            };
            self.durably("canceling the delivery", About::Delivery(msg), || {
                self.ledger.write(op.clone())
            })
            .await?;
            about!(
                info,
                About::Delivery(msg),
                "webhook deleted or disabled; delivery canceled"
            );
            return Ok(None);
        };
        Ok(Some((event, subscription)))
    }

    /// Makes the attempt, records it and sends what follows it.
    async fn attempt_and_record(
        &self,
        msg: &DeliveryMessage,
        event: &Event,
        subscription: &Subscription,
        slot: Slot,
        carrier: Carrier,
    ) -> Result<(), StepError> {
        let mut attempted = self.attempt(event, subscription, msg, slot).await;
        if carrier == Carrier::Ledger {
            attempted.carried_by_ledger();
        }
        let op = WriteOp::Attempt(attempted.write.clone());
        let recorded = self
            .durably("recording the attempt", About::Delivery(msg), || {
                self.ledger.write(op.clone())
            })
            .await?;
        if recorded != (WriteResult::Attempt { recorded: true }) {
            // Another worker recorded this attempt number first; it owns the
            // follow-up.
            about!(
                info,
                About::Delivery(msg),
                "duplicate attempt; the other worker's record stands"
            );
            return Ok(());
        }
        // The attempt is committed; the follow-up must be confirmed before
        // the ack, or a crash here would strand the delivery as "retrying".
        // (Without a message to ack, a retry is held in the ledger, in the
        // attempt's own transaction.)
        self.follow_up(msg, &attempted, event).await?;
        Ok(())
    }

    // --- attempts and what follows them ---------------------------------------

    /// Signs and POSTs one attempt, holding the endpoint's slot only for the
    /// request, and decides what comes next. Records nothing.
    async fn attempt(
        &self,
        event: &Event,
        subscription: &Subscription,
        msg: &DeliveryMessage,
        mut slot: Slot,
    ) -> Attempted {
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
        self.metrics.in_flight.inc();
        let outcome = self.client.post(&subscription.url, headers, body).await;
        self.metrics.in_flight.dec();
        slot.observe(outcome.duration);
        if slot.outcome(endpoint_healthy(outcome.result)) {
            self.metrics.circuit_opened.inc();
            about!(
                warn,
                About::Delivery(msg),
                url = %subscription.url,
                "endpoint failed {} attempts in a row; circuit open, its deliveries are held",
                crate::limits::FAILURES_TO_OPEN
            );
        }
        drop(slot);

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
        Attempted {
            write: AttemptWrite {
                delivery_id: msg.delivery_id,
                attempt: msg.attempt,
                url: subscription.url.to_string(),
                started_at,
                duration_ms: outcome.duration.as_millis().min(u32::MAX as u128) as u32,
                response_status,
                error_kind,
                error: outcome.error,
                response_excerpt: outcome.excerpt,
                new_status,
                next_attempt_at: next_delay
                    .and_then(|d| chrono::Duration::from_std(d).ok())
                    .map(|d| started_at + d),
                held_until: None,
            },
            class: outcome.result.class(),
            duration: outcome.duration,
            decision,
            next_delay,
        }
    }

    /// Once the ledger holds an attempt: counts it, logs it and publishes
    /// what follows it (the next attempt or the dead letter).
    async fn follow_up(
        &self,
        msg: &DeliveryMessage,
        attempted: &Attempted,
        event: &Event,
    ) -> Result<(), PublishError> {
        let label = match attempted.decision {
            Decision::Succeeded => "success",
            Decision::Retry { .. } => "retry",
            Decision::Dead => "dead",
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
            Decision::Retry { .. } => {}
        }
        // Every attempt is in the ledger and in the metrics. A log line per
        // success would be most of the log at any real rate, and cost:
        // courier-bench throughput-1 at info wrote 41 MB of it for 60,000
        // deliveries and courier spent a quarter more CPU per delivery. So
        // successes log at debug; failures, which operators read logs for,
        // at info.
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
        match (attempted.decision, attempted.next_delay) {
            // Held: the ledger makes the next attempt when it is due.
            (Decision::Retry { .. }, _) if attempted.write.held_until.is_some() => Ok(()),
            (Decision::Retry { .. }, Some(delay)) => self.schedule_retry(msg, delay).await,
            (Decision::Dead, _) => self.dead_letter(msg).await,
            _ => Ok(()),
        }
    }

    /// Publishes again the follow-up of attempt `msg.attempt`, which the
    /// ledger shows as made, for when the worker that made it may have died
    /// before publishing it.
    async fn resend_follow_up(
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
    async fn hold(&self, msg: &DeliveryMessage) -> Result<(), StoreError> {
        let op = WriteOp::Hold {
            delivery_id: msg.delivery_id,
            attempt: msg.attempt,
            until: Utc::now(),
        };
        let result = self
            .durably("holding the delivery", About::Delivery(msg), || {
                self.ledger.write(op.clone())
            })
            .await?;
        self.count_holds(std::iter::once(&result));
        if result == (WriteResult::Held { held: true }) {
            tracing::debug!("endpoint busy or failing; delivery held");
        } else {
            tracing::debug!("attempt made or not owed any more; nothing to hold");
        }
        Ok(())
    }

    fn count_holds<'r>(&self, results: impl Iterator<Item = &'r WriteResult>) {
        let held = results
            .filter(|r| **r == (WriteResult::Held { held: true }))
            .count();
        self.metrics.deferred.inc_by(held as u64);
    }

    /// Parks the next attempt in the retry tier for `delay`; the tier's
    /// queue dead-letters it back to the deliveries queue when it expires.
    async fn schedule_retry(
        &self,
        msg: &DeliveryMessage,
        delay: Duration,
    ) -> Result<(), PublishError> {
        match self.topology.tier_for(delay) {
            Some(tier) => self.to_retry_tier(&msg.next_attempt(), delay, tier).await,
            None => self.dead_letter(msg).await,
        }
    }

    /// Publishes `msg` to the retry tier `tier`, to come back to the
    /// deliveries queue after `delay` (at most the tier's length).
    async fn to_retry_tier(
        &self,
        msg: &DeliveryMessage,
        delay: Duration,
        tier: Duration,
    ) -> Result<(), PublishError> {
        let expiration = delay.min(tier).as_millis().to_string();
        let properties = json_properties().with_expiration(expiration.as_str().into());
        self.publish(
            "",
            &self.topology.retry_queue(tier),
            &msg.to_vec(),
            properties,
        )
        .await
    }

    pub(crate) async fn dead_letter(&self, msg: &DeliveryMessage) -> Result<(), PublishError> {
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
        about: About<'_>,
        stage: &str,
        source: &str,
        reason: String,
    ) -> Handled {
        about!(warn, about, queue = source, reason = %reason, bytes = message.data.len(), "poison message");
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
            Err(publish_error) => {
                self.requeue_after(about, &StepError::Publish(publish_error))
                    .await
            }
        }
    }

    /// Logs why a message goes back, and pauses briefly so a failing
    /// database or broker is not hammered by instant redeliveries.
    async fn requeue_after(&self, about: About<'_>, error: &StepError) -> Handled {
        about!(warn, about, error = %error_chain(error), "handing message back for redelivery");
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

/// Whether the database refused a value it was given (PostgreSQL's "data
/// exception" class), which no retry can change. The ledger's columns take
/// any event the model accepts (its data is `json`, which holds what
/// `jsonb` could not); this is for a database that refuses more, such as
/// one with a trigger an operator added. In a fan-out's write the only
/// values from outside are the event's, and response excerpts, which are
/// cleaned.
fn ledger_refused_value(error: &StoreError) -> bool {
    match error {
        StoreError::Database(e) => e
            .as_database_error()
            .filter(|d| {
                d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some()
            })
            .and_then(|d| d.code())
            .is_some_and(|code| code.starts_with("22")),
        _ => false,
    }
}

/// How a delivery's first attempt went in the fan-out stage.
#[expect(
    clippy::large_enum_variant,
    reason = "one per delivery of an event, moved a couple of times: cheaper than a box"
)]
enum First {
    /// Made here; the span is the delivery's.
    Attempted(DeliveryMessage, Attempted, tracing::Span),
    /// Left to the deliveries queue.
    Queue(DeliveryMessage),
    /// Held in the ledger: the endpoint is slow and saturated, or its
    /// circuit is open.
    Hold(DeliveryMessage),
}

type AttemptedHere = (DeliveryMessage, Attempted, tracing::Span);

/// What brings a delivery to its next attempt after this one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Carrier {
    /// The message the attempt came in, acked only once what follows the
    /// attempt is durable.
    Message,
    /// Nothing but the ledger: the delivery was held and claimed.
    Ledger,
}

impl First {
    fn msg(&self) -> &DeliveryMessage {
        match self {
            First::Attempted(msg, ..) | First::Queue(msg) | First::Hold(msg) => msg,
        }
    }

    fn split(
        firsts: Vec<First>,
    ) -> (
        Vec<AttemptedHere>,
        Vec<DeliveryMessage>,
        Vec<DeliveryMessage>,
    ) {
        let (mut attempted, mut queue, mut held) = (Vec::new(), Vec::new(), Vec::new());
        for first in firsts {
            match first {
                First::Attempted(msg, a, span) => attempted.push((msg, a, span)),
                First::Queue(msg) => queue.push(msg),
                First::Hold(msg) => held.push(msg),
            }
        }
        (attempted, queue, held)
    }

    /// The ledger ops of attempts made and holds, in that order.
    fn ops<'a>(
        attempted: &'a [AttemptedHere],
        held: &'a [DeliveryMessage],
    ) -> impl Iterator<Item = WriteOp> + 'a {
        let attempts = attempted
            .iter()
            .map(|(_, a, _)| WriteOp::Attempt(a.write.clone()));
        let now = Utc::now();
        let holds = held.iter().map(move |msg| WriteOp::Hold {
            delivery_id: msg.delivery_id,
            attempt: msg.attempt,
            until: now,
        });
        attempts.chain(holds)
    }
}

/// The queued first messages whose deliveries the ledger still holds as never
/// attempted (a duplicate of an event already fanned out owes nothing more).
fn still_waiting(
    queue: Vec<DeliveryMessage>,
    to_publish: &[(DeliveryId, SubscriptionId)],
) -> Vec<DeliveryMessage> {
    let waiting: HashSet<DeliveryId> = to_publish.iter().map(|&(d, _)| d).collect();
    queue
        .into_iter()
        .filter(|m| waiting.contains(&m.delivery_id))
        .collect()
}

/// Whether an attempt's outcome says the endpoint is up: it answered, with
/// anything but a server error or "try later". Counts for its circuit.
fn endpoint_healthy(result: AttemptResult) -> bool {
    match result {
        AttemptResult::Response { status } => !(status >= 500 || status == 408 || status == 429),
        AttemptResult::Failed { kind } => kind == courier_model::ErrorKind::Blocked,
    }
}

/// An attempt made and classified, not yet recorded.
struct Attempted {
    write: AttemptWrite,
    decision: Decision,
    next_delay: Option<Duration>,
    /// Response class, for metrics.
    class: &'static str,
    duration: Duration,
}

impl Attempted {
    /// For an attempt no message carries: a retry stays held in the
    /// ledger until it is due, committed with the attempt, instead of
    /// travelling a retry queue that only a message's ack would make safe.
    fn carried_by_ledger(&mut self) {
        if matches!(self.decision, Decision::Retry { .. }) {
            self.write.held_until = self.write.next_attempt_at;
        }
    }
}

/// The span of one delivery attempt, at debug level: every line logged in
/// it names the event, the delivery (the `webhook-id` the receiver sees),
/// the webhook and the attempt. At info a span per delivery cost courier
/// about a tenth of its CPU (formatting its fields for every delivery,
/// whether anything was logged or not), so lines at info and above name
/// what they are about themselves (see `crate::log`).
pub(crate) fn delivery_span(msg: &DeliveryMessage) -> tracing::Span {
    tracing::debug_span!(
        "deliver",
        event_id = %msg.event_id,
        delivery_id = %msg.delivery_id,
        webhook_id = %msg.subscription_id,
        attempt = msg.attempt,
    )
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
