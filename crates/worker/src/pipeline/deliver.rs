//! Stage 2, delivery: a delivery message asks for attempt n of a delivery.
//! The ledger says whether that attempt is still owed (see
//! [`super::owed::next_step`]); if so, and the endpoint has a slot, the
//! attempt is made and recorded, and what follows it is published before
//! the message is acked. An endpoint without a slot gets the delivery
//! held in the ledger instead. Held deliveries released by the ledger come
//! through here too ([`Pipeline::deliver_with`]), with no message to ack.

use courier_model::{DeliveryMessage, Event, Subscription, SubscriptionStatus};
use courier_store::{DeliveryContext, WriteOp, WriteResult};
use lapin::message::Delivery;
use tracing::Instrument;

use super::attempt::delivery_span;
use super::owed::{NextStep, WebhookState, next_step};
use super::{Pipeline, StepError};
use crate::consumer::Handled;
use crate::error_chain;
use crate::limits::Slot;
use crate::log::{About, about};

impl Pipeline {
    pub async fn deliver(&self, message: &Delivery) -> Handled {
        let msg = match DeliveryMessage::from_slice(&message.data) {
            Ok(msg) => msg,
            Err(error) => {
                return self
                    .poison(
                        &message.data,
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
        let Some((event, subscription)) = self.owed(msg, redelivered, false).await? else {
            return Ok(());
        };
        // Over its rate limit, or a busy endpoint: the delivery waits in
        // the ledger, not in this worker's slots, where it would starve
        // every other endpoint.
        if let Err(wait) = self
            .rates
            .take(subscription.id, subscription.settings.rate_limit)
        {
            return Ok(self.hold_for(msg, wait).await?);
        }
        match self
            .endpoints
            .acquire(subscription.url.as_str(), subscription.id)
            .await
        {
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
        match self.owed(msg, false, true).await? {
            Some((_, subscription))
                if let Err(wait) = self
                    .rates
                    .admit_claimed(subscription.id, subscription.settings.rate_limit) =>
            {
                // Claimed beyond the webhook's rate: back to the ledger,
                // due when its next token is.
                drop(slot);
                Ok(self.hold_for(msg, wait).await?)
            }
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
        claimed: bool,
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

        let webhook = match &subscription {
            None => WebhookState::Deleted,
            Some(s) if s.status == SubscriptionStatus::Enabled => WebhookState::Enabled,
            Some(_) => WebhookState::Disabled,
        };
        match next_step(&delivery, webhook, msg.attempt, redelivered, claimed) {
            NextStep::Attempt => {}
            NextStep::AlreadyMade { resend_follow_up } => {
                if resend_follow_up {
                    self.resend_follow_up(msg.clone(), delivery.status).await?;
                }
                tracing::debug!(
                    status = delivery.status.as_str(),
                    "attempt already on record"
                );
                return Ok(None);
            }
            NextStep::Finished => {
                tracing::debug!(
                    status = delivery.status.as_str(),
                    "delivery already finished"
                );
                return Ok(None);
            }
            NextStep::Cancel => {
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
                    "webhook deleted; delivery canceled"
                );
                return Ok(None);
            }
            NextStep::HeldInLedger => {
                tracing::debug!("the ledger holds the delivery; a stale message makes no attempt");
                return Ok(None);
            }
            NextStep::Pause => {
                let op = WriteOp::Pause {
                    delivery_id: msg.delivery_id,
                };
                self.durably("pausing the delivery", About::Delivery(msg), || {
                    self.ledger.write(op.clone())
                })
                .await?;
                about!(
                    info,
                    About::Delivery(msg),
                    "webhook disabled; delivery paused until it is enabled again"
                );
                return Ok(None);
            }
        }
        let subscription = subscription.expect("an enabled webhook is there");
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
}

/// What brings a delivery to its next attempt after this one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Carrier {
    /// The message the attempt came in, acked only once what follows the
    /// attempt is durable.
    Message,
    /// Nothing but the ledger: the delivery was held and claimed.
    Ledger,
}
