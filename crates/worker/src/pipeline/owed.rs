//! What the ledger says is still owed, decided without I/O: for a delivery
//! message, whether its attempt is still to be made; for a redelivered
//! event, which of its deliveries still need a message. The stages read
//! the ledger, ask here, and act on the answer.

use courier_model::{DeliveryMessage, DeliveryStatus, EventId};
use courier_store::DeliveryRecord;

/// What to do with a message asking for attempt `msg.attempt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NextStep {
    /// Make the attempt.
    Attempt,
    /// The attempt was made already. `resend_follow_up` when the broker
    /// redelivered the very message whose attempt is the latest on record:
    /// the worker that made it may have died before publishing what
    /// follows, so that is published again (a duplicate is fenced by its
    /// attempt number like any other).
    AlreadyMade { resend_follow_up: bool },
    /// The delivery succeeded, died or was canceled: nothing more to do.
    Finished,
    /// Its webhook is disabled: the delivery is paused, kept for when it is
    /// enabled again.
    Pause,
    /// The ledger holds the delivery and makes its attempts: this message
    /// is a stale one (say, a retry that was under way when the webhook
    /// was disabled, arriving after its paused deliveries were replayed).
    /// Attempting it too would send the receiver the attempt twice.
    HeldInLedger,
    /// Its webhook was deleted: the delivery is canceled.
    Cancel,
}

/// What the ledger says of a delivery's webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WebhookState {
    Enabled,
    Disabled,
    Deleted,
}

/// The step for attempt `attempt` of `delivery`, whose webhook is in
/// `webhook` state; `redelivered` when the broker handed the message out
/// before; `claimed` when the ask comes not from a message but from the
/// ledger's own claim of the held delivery.
pub(super) fn next_step(
    delivery: &DeliveryRecord,
    webhook: WebhookState,
    attempt: u32,
    redelivered: bool,
    claimed: bool,
) -> NextStep {
    if delivery.attempts >= attempt {
        return NextStep::AlreadyMade {
            resend_follow_up: redelivered && delivery.attempts == attempt,
        };
    }
    if delivery.status.is_final() {
        return NextStep::Finished;
    }
    match webhook {
        WebhookState::Enabled if delivery.held_until.is_some() && !claimed => {
            NextStep::HeldInLedger
        }
        WebhookState::Enabled => NextStep::Attempt,
        WebhookState::Disabled => NextStep::Pause,
        WebhookState::Deleted => NextStep::Cancel,
    }
}

/// What a redelivered event still needs, from what the ledger holds of its
/// deliveries: the worker that had it may have died after committing and
/// before publishing.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Owed {
    /// Deliveries never attempted: they get their first message.
    pub first: Vec<DeliveryMessage>,
    /// Deliveries whose first attempt was made and whose follow-up may be
    /// missing: it is sent again (fenced by its attempt number).
    pub resend: Vec<(DeliveryMessage, DeliveryStatus)>,
}

/// [`Owed`] for `event` given its deliveries' records. A held delivery is
/// owed nothing: the ledger releases it. Deliveries past their first
/// attempt were carried on by messages of their own, not by the event.
pub(super) fn after_redelivery(event: &EventId, records: Vec<DeliveryRecord>) -> Owed {
    let mut owed = Owed::default();
    for record in records.into_iter().filter(|r| r.held_until.is_none()) {
        let msg = DeliveryMessage::new(record.id, event.clone(), record.subscription_id, 1);
        match (record.status, record.attempts) {
            (DeliveryStatus::Pending, 0) => owed.first.push(msg),
            (status, 1) => owed.resend.push((msg, status)),
            _ => {}
        }
    }
    owed
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use courier_model::{DeliveryId, EventType, SubscriptionId, WorkspaceId};

    use super::WebhookState::{Deleted, Disabled, Enabled};
    use super::*;

    fn record(status: DeliveryStatus, attempts: u32) -> DeliveryRecord {
        let event = EventId::parse("evt_1").unwrap();
        let subscription = SubscriptionId::generate();
        let now = Utc::now();
        DeliveryRecord {
            id: DeliveryId::derive(&event, subscription),
            event_id: event,
            subscription_id: subscription,
            workspace_id: WorkspaceId::parse("acme").unwrap(),
            event_type: EventType::OrderCreated,
            status,
            attempts,
            last_response_status: None,
            last_attempt_at: None,
            next_attempt_at: None,
            held_until: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn an_attempt_not_yet_made_is_owed_while_the_webhook_is_enabled() {
        let retrying = record(DeliveryStatus::Retrying, 2);
        assert_eq!(
            next_step(&retrying, Enabled, 3, false, false),
            NextStep::Attempt
        );
        assert_eq!(
            next_step(&retrying, Enabled, 3, true, false),
            NextStep::Attempt
        );
        assert_eq!(
            next_step(&retrying, Disabled, 3, false, false),
            NextStep::Pause
        );
        assert_eq!(
            next_step(&retrying, Deleted, 3, false, false),
            NextStep::Cancel
        );
        let pending = record(DeliveryStatus::Pending, 0);
        assert_eq!(
            next_step(&pending, Enabled, 1, false, false),
            NextStep::Attempt
        );
        assert_eq!(
            next_step(&pending, Disabled, 1, false, false),
            NextStep::Pause
        );
        // Replayed after its webhook was enabled again: owed its attempt.
        let paused = record(DeliveryStatus::Paused, 2);
        assert_eq!(
            next_step(&paused, Enabled, 3, false, false),
            NextStep::Attempt
        );
        assert_eq!(
            next_step(&paused, Disabled, 3, false, false),
            NextStep::Pause
        );
        // Replayed paused deliveries are held: the ledger makes their
        // attempts, and a stale message for one makes none.
        let replayed = DeliveryRecord {
            held_until: Some(Utc::now()),
            ..record(DeliveryStatus::Retrying, 2)
        };
        assert_eq!(
            next_step(&replayed, Enabled, 3, true, false),
            NextStep::HeldInLedger
        );
        assert_eq!(
            next_step(&replayed, Disabled, 3, false, false),
            NextStep::Pause
        );
        // The ledger's own claim of it makes the attempt.
        assert_eq!(
            next_step(&replayed, Enabled, 3, false, true),
            NextStep::Attempt
        );
    }

    #[test]
    fn a_made_attempt_resends_its_follow_up_only_for_its_own_redelivered_message() {
        let retrying = record(DeliveryStatus::Retrying, 2);
        let made = |resend_follow_up| NextStep::AlreadyMade { resend_follow_up };
        assert_eq!(next_step(&retrying, Enabled, 2, true, false), made(true));
        assert_eq!(next_step(&retrying, Enabled, 2, false, false), made(false));
        // An older message: a later attempt's record speaks for it.
        assert_eq!(next_step(&retrying, Enabled, 1, true, false), made(false));
        // Made is made, whatever became of the webhook since.
        assert_eq!(next_step(&retrying, Disabled, 2, true, false), made(true));
    }

    #[test]
    fn finished_deliveries_owe_nothing() {
        for status in [
            DeliveryStatus::Succeeded,
            DeliveryStatus::Dead,
            DeliveryStatus::Canceled,
        ] {
            // A manual redelivery's message asks for an attempt beyond the
            // count, but the reopen it follows makes the delivery retrying;
            // one that still finds it final was overtaken.
            let done = record(status, 3);
            assert_eq!(
                next_step(&done, Enabled, 4, false, false),
                NextStep::Finished
            );
            assert_eq!(
                next_step(&done, Deleted, 4, true, false),
                NextStep::Finished
            );
        }
    }

    #[test]
    fn a_redelivered_event_owes_first_messages_and_first_follow_ups() {
        let event = EventId::parse("evt_1").unwrap();
        let never = record(DeliveryStatus::Pending, 0);
        let failed_once = record(DeliveryStatus::Retrying, 1);
        let dead_at_first = record(DeliveryStatus::Dead, 1);
        let succeeded_at_first = record(DeliveryStatus::Succeeded, 1);
        let further = record(DeliveryStatus::Retrying, 2);
        let held = DeliveryRecord {
            held_until: Some(Utc::now()),
            ..record(DeliveryStatus::Pending, 0)
        };
        let owed = after_redelivery(
            &event,
            vec![
                never.clone(),
                failed_once.clone(),
                dead_at_first.clone(),
                succeeded_at_first.clone(),
                further,
                held,
            ],
        );
        let msg =
            |r: &DeliveryRecord| DeliveryMessage::new(r.id, event.clone(), r.subscription_id, 1);
        assert_eq!(owed.first, vec![msg(&never)]);
        assert_eq!(
            owed.resend,
            vec![
                (msg(&failed_once), DeliveryStatus::Retrying),
                (msg(&dead_at_first), DeliveryStatus::Dead),
                (msg(&succeeded_at_first), DeliveryStatus::Succeeded),
            ]
        );
    }
}
