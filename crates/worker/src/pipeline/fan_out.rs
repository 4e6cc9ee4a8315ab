//! Stage 1, fan-out: an event comes in, is matched against the webhooks,
//! and its first attempts are made right here where an endpoint can take
//! them; the event, its deliveries and those attempts are committed in one
//! transaction, what must follow is published, and only then is the event
//! acked. A redelivered event is checked against what the ledger already
//! holds of it (see [`super::owed::after_redelivery`]).

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use courier_model::{
    DeliveryId, DeliveryMessage, EVENT_GROUP_HEADER, Event, EventGroup, SubscriptionId,
};
use courier_producer::PublishError;
use courier_store::{StoreError, WriteOp, WriteResult};
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, join_all, try_join_all};
use futures_util::stream::FuturesUnordered;
use lapin::message::Delivery;
use tracing::Instrument;

use super::first_attempt::{AttemptedHere, First};
use super::owed::{self, Owed};
use super::{Pipeline, StepError};
use crate::consumer::{Finish, Handled};
use crate::error_chain;
use crate::log::{About, about};

impl Pipeline {
    /// Fans the event of one message out (or each event of a group, see
    /// [`EventGroup`]) and settles the message through `finish`, as soon as
    /// everything its events caused is durable (see
    /// [`Pipeline::try_fan_out`]).
    pub async fn fan_out(&self, message: &Delivery, finish: Finish) {
        // No earlier than the broker handed the message over, so no earlier
        // than it was published.
        let arrived = std::time::Instant::now();
        let grouped = message
            .properties
            .headers()
            .as_ref()
            .is_some_and(|headers| headers.contains_key(EVENT_GROUP_HEADER));
        if !grouped {
            self.fan_out_one(&message.data, arrived, message.redelivered, finish)
                .await;
            return;
        }
        let events = match EventGroup::decode(&message.data) {
            Ok(events) if !events.is_empty() => events,
            Ok(_) => return finish.done(Handled::Ack),
            Err(error) => {
                let handled = self
                    .poison(
                        &message.data,
                        About::Message,
                        "fanout",
                        &self.topology.fanout_queue(),
                        error_chain(&error),
                    )
                    .await;
                return finish.done(handled);
            }
        };
        // Side by side, as the events of separate messages would be; the
        // message is acked once every event's part is.
        let parts = finish.split(events.len());
        join_all(
            events
                .into_iter()
                .zip(parts)
                .map(|(event, part)| self.fan_out_one(event, arrived, message.redelivered, part)),
        )
        .await;
    }

    async fn fan_out_one(
        &self,
        data: &[u8],
        arrived: std::time::Instant,
        redelivered: bool,
        finish: Finish,
    ) {
        let mut finish = Some(finish);
        let handled = self
            .fan_out_settling(data, arrived, redelivered, &mut finish)
            .await;
        if let Some(finish) = finish {
            finish.done(handled);
        }
    }

    async fn fan_out_settling(
        &self,
        data: &[u8],
        arrived: std::time::Instant,
        redelivered: bool,
        finish: &mut Option<Finish>,
    ) -> Handled {
        let event = match Event::from_slice(data) {
            Ok(event) => Arc::new(event),
            Err(error) => {
                return self
                    .poison(
                        data,
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
            match self.try_fan_out(&event, arrived, redelivered, finish).await {
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
                Err(StepError::Store(error)) if error.is_refused_value() => {
                    let reason = format!("the ledger refused the event: {}", error_chain(&error));
                    self.poison(
                        data,
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
    /// A first attempt still running after the quick time (its endpoint
    /// turned slow) does not keep the event unacked: its delivery is
    /// committed with the others, claimed in the ledger for as long as the
    /// attempt may take, and the event is acked. The attempt is recorded
    /// when it ends, and the ledger owes whatever follows it; should this
    /// worker die first, the claim runs out and another worker makes the
    /// attempt. An unacked event would hold up the acks of every event
    /// behind it.
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
        let index = self.subscriptions.snapshot();
        let (matches, disabled): (Vec<_>, Vec<_>) = index
            .matching(event)
            .into_iter()
            .partition(|s| s.is_enabled());
        // A disabled webhook's deliveries are recorded paused: nothing is
        // sent until it is enabled again, and nothing is lost meanwhile.
        let paused: Vec<(DeliveryId, SubscriptionId)> = disabled
            .iter()
            .map(|s| (DeliveryId::derive(&event.id, s.id()), s.id()))
            .collect();
        if matches.is_empty() {
            // Nothing to deliver. The event is recorded all the same, so
            // that "why did my webhook not fire?" has an answer.
            let paused_count = paused.len();
            self.record_fan_out(event, Vec::new(), paused, Vec::new(), &[], redelivered)
                .await?;
            if paused_count > 0 {
                return Ok(paused_count);
            }
            self.metrics
                .events_unmatched
                .with_label_values(&[event.event_type.as_str()])
                .inc();
            return Ok(0);
        }
        let deliveries: Vec<(DeliveryId, SubscriptionId)> = matches
            .iter()
            .map(|s| (DeliveryId::derive(&event.id, s.id()), s.id()))
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
            let msg = DeliveryMessage::new(delivery_id, event.id.clone(), subscription.id(), 1);
            if inline {
                attempting.push(msg.clone());
                running.push(self.first_attempt(event, subscription, msg));
            } else {
                settled.push(First::Queue(msg));
            }
        }
        // An endpoint that turns out slow must not keep the others' attempts
        // out of the ledger: what is done within the quick time is recorded
        // now, the rest is claimed and recorded as it finishes.
        if !running.is_empty() {
            let patience = tokio::time::sleep(self.config.quick);
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
        let record = self.record_fan_out(event, deliveries, paused, settled, &claimed, redelivered);
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

    /// Commits the event, its deliveries and the first attempts settled so
    /// far in one transaction, then publishes what must follow. Returns the
    /// deliveries the ledger had no attempt of before (all of them for a
    /// new event).
    async fn record_fan_out(
        &self,
        event: &Arc<Event>,
        deliveries: Vec<(DeliveryId, SubscriptionId)>,
        paused: Vec<(DeliveryId, SubscriptionId)>,
        settled: Vec<First>,
        claimed: &[DeliveryMessage],
        redelivered: bool,
    ) -> Result<Vec<(DeliveryId, SubscriptionId)>, StepError> {
        let (attempted, queue, held) = First::split(settled);
        let mut ops = Vec::with_capacity(1 + attempted.len() + held.len() + claimed.len());
        ops.push(WriteOp::FanOut {
            event: Arc::clone(event),
            deliveries,
            paused,
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
        let owed = if redelivered {
            self.recover(event).await?
        } else {
            Owed {
                first: still_waiting(queue, &to_publish),
                resend: Vec::new(),
            }
        };
        self.send_follow_ups(event, &attempted, results, owed)
            .await?;
        Ok(to_publish)
    }

    /// Publishes, all at once, the follow-ups of the attempts the ledger
    /// took (`results` answers `attempted` in order) and what else is
    /// `owed`: follow-ups to send again, and first messages for deliveries
    /// not attempted here.
    pub(super) async fn send_follow_ups(
        &self,
        event: &Event,
        attempted: &[AttemptedHere],
        results: impl Iterator<Item = WriteResult>,
        owed: Owed,
    ) -> Result<(), PublishError> {
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
        for (msg, status) in owed.resend {
            sends.push(Box::pin(self.resend_follow_up(msg, status)));
        }
        for msg in &owed.first {
            sends.push(Box::pin(self.send(self.topology.delivery(msg))));
        }
        try_join_all(sends).await?;
        Ok(())
    }

    /// For a redelivered event: reads what the ledger holds of its
    /// deliveries and returns what is still owed a message (see
    /// [`owed::after_redelivery`]).
    async fn recover(&self, event: &Event) -> Result<Owed, StoreError> {
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
        Ok(owed::after_redelivery(&event.id, records))
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
