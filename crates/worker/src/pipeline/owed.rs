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
    /// Its webhook was deleted or disabled: the delivery is canceled.
    Cancel,
}

/// The step for attempt `attempt` of `delivery`, whose webhook is
/// `webhook_enabled` (false when deleted or disabled); `redelivered` when
/// the broker handed the message out before.
pub(super) fn next_step(
    delivery: &DeliveryRecord,
    webhook_enabled: bool,
    attempt: u32,
    redelivered: bool,
) -> NextStep {
    if delivery.attempts >= attempt {
        return NextStep::AlreadyMade {
            resend_follow_up: redelivered && delivery.attempts == attempt,
        };
    }
    if delivery.status.is_final() {
        return NextStep::Finished;
    }
    if !webhook_enabled {
        return NextStep::Cancel;
    }
    NextStep::Attempt
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
        assert_eq!(next_step(&retrying, true, 3, false), NextStep::Attempt);
        assert_eq!(next_step(&retrying, true, 3, true), NextStep::Attempt);
        assert_eq!(next_step(&retrying, false, 3, false), NextStep::Cancel);
        let pending = record(DeliveryStatus::Pending, 0);
        assert_eq!(next_step(&pending, true, 1, false), NextStep::Attempt);
    }

    #[test]
    fn a_made_attempt_resends_its_follow_up_only_for_its_own_redelivered_message() {
        let retrying = record(DeliveryStatus::Retrying, 2);
        let made = |resend_follow_up| NextStep::AlreadyMade { resend_follow_up };
        assert_eq!(next_step(&retrying, true, 2, true), made(true));
        assert_eq!(next_step(&retrying, true, 2, false), made(false));
        // An older message: a later attempt's record speaks for it.
        assert_eq!(next_step(&retrying, true, 1, true), made(false));
        // Made is made, whatever became of the webhook since.
        assert_eq!(next_step(&retrying, false, 2, true), made(true));
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
            assert_eq!(next_step(&done, true, 4, false), NextStep::Finished);
            assert_eq!(next_step(&done, false, 4, true), NextStep::Finished);
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
