//! First attempts, made by the fan-out stage itself: right away for
//! endpoints that answer quickly and have a slot, otherwise left to the
//! deliveries queue or held in the ledger. An attempt that outlives its
//! event's ack is recorded here when it ends.

use std::sync::Arc;

use chrono::Utc;
use courier_model::{DeliveryMessage, DeliveryTarget, Event};
use courier_store::WriteOp;
use tracing::Instrument;

use super::attempt::{Attempted, delivery_span};
use super::owed::Owed;
use super::{Pipeline, StepError};
use crate::limits::NoSlot;
use crate::log::About;

impl Pipeline {
    /// The first attempt of a delivery, made right away if its endpoint has
    /// been answering quickly and a slot frees within the quick time
    /// (`delivery.quick_ms`). Otherwise the delivery is left to the
    /// deliveries queue, or, when its endpoint is slow and saturated or its
    /// webhook's circuit open, held in the ledger.
    pub(super) async fn first_attempt(
        &self,
        event: &Event,
        subscription: &dyn DeliveryTarget,
        msg: DeliveryMessage,
    ) -> First {
        let span = delivery_span(&msg);
        async {
            let worker_slot = Arc::clone(&self.http_slots).acquire_owned();
            let Ok(Ok(worker_slot)) = tokio::time::timeout(self.config.quick, worker_slot).await
            else {
                return First::Queue(msg);
            };
            // Over its rate limit: held, and released at the rate.
            if self
                .rates
                .take(subscription.id(), subscription.settings().rate_limit)
                .is_err()
            {
                return First::Hold(msg);
            }
            let slot = match self
                .endpoints
                .acquire_quick(subscription.url().as_str(), subscription.id())
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

    /// Records the first attempts that outlived their event's ack. Their
    /// deliveries are claimed in the ledger and no message carries them, so
    /// the ledger owes what follows: a retry stays held until it is due,
    /// and a delivery that found no slot after all is held for the release
    /// loop. Only a dead letter is published.
    pub(super) async fn record_claimed(
        &self,
        event: &Event,
        late: Vec<First>,
    ) -> Result<(), StepError> {
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
        self.send_follow_ups(event, &attempted, results.into_iter(), Owed::default())
            .await?;
        Ok(())
    }
}

/// How a delivery's first attempt went in the fan-out stage.
#[expect(
    clippy::large_enum_variant,
    reason = "one per delivery of an event, moved a couple of times: cheaper than a box"
)]
pub(super) enum First {
    /// Made here; the span is the delivery's.
    Attempted(DeliveryMessage, Attempted, tracing::Span),
    /// Left to the deliveries queue.
    Queue(DeliveryMessage),
    /// Held in the ledger: the endpoint is slow and saturated, or its
    /// circuit is open.
    Hold(DeliveryMessage),
}

pub(super) type AttemptedHere = (DeliveryMessage, Attempted, tracing::Span);

impl First {
    pub(super) fn msg(&self) -> &DeliveryMessage {
        match self {
            First::Attempted(msg, ..) | First::Queue(msg) | First::Hold(msg) => msg,
        }
    }

    pub(super) fn split(
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
    pub(super) fn ops<'a>(
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
