//! Held deliveries: due, claimed under a lease, released by their attempt,
//! given up when their schedule ran out.

use chrono::{DateTime, Duration, Utc};
use courier_model::{DeliveryId, DeliveryStatus, Event, EventId, EventType, SubscriptionId};
use courier_store::{AttemptWrite, DeadReason, HeldDue, Store, WriteOp, WriteResult};

use crate::common::{
    TestDb, apply_one, event, failed_attempt, fan_out, hold, now, status_of, stored_subscription,
    succeeded_attempt, workspace,
};
use crate::on_both_backends;

on_both_backends!(
    held_deliveries_are_claimed_then_released_by_their_attempt,
    concurrent_claims_take_different_deliveries,
    expired_held_deliveries_are_claimed_then_given_up,
);

/// Due held deliveries by subscription (of webhooks not in the ledger).
async fn due(store: &Store, at: DateTime<Utc>) -> Vec<(SubscriptionId, u64)> {
    let due = store.held_due(at).await.unwrap();
    assert!(due.iter().all(|d| d.url.is_none()));
    due.iter().map(|d| (d.subscription_id, d.due)).collect()
}

async fn held_until(store: &Store, id: DeliveryId) -> Option<DateTime<Utc>> {
    store.get_delivery(id).await.unwrap().unwrap().held_until
}

async fn held_deliveries_are_claimed_then_released_by_their_attempt(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let event = event(&ws);
    let subs: Vec<_> = (0..3).map(|_| SubscriptionId::generate()).collect();
    let (op, deliveries) = fan_out(&event, &subs);
    let [a, b, c] = [0, 1, 2].map(|i| deliveries[i].0);
    let t = now();

    // Held as they are created (one due now, one in an hour): every
    // delivery of a new event is still reported as needing its first
    // message, the caller decides which get one.
    let results = store
        .apply(&[op, hold(a, 1, t), hold(b, 1, t + Duration::hours(1))])
        .await
        .unwrap();
    assert_eq!(
        results,
        [
            WriteResult::FanOut {
                to_publish: deliveries.clone()
            },
            WriteResult::Held { held: true },
            WriteResult::Held { held: true },
        ]
    );
    let record = store.get_delivery(a).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.held_until, record.next_attempt_at),
        (DeliveryStatus::Pending, Some(t), Some(t))
    );
    assert_eq!(due(store, t).await, [(subs[0], 1)]);

    // A hold of an attempt the delivery does not owe holds nothing, nor
    // does one of a delivery the ledger does not have.
    assert_eq!(
        apply_one(store, hold(c, 2, t)).await,
        WriteResult::Held { held: false }
    );
    let unknown = DeliveryId::derive(&event.id, SubscriptionId::generate());
    assert_eq!(
        apply_one(store, hold(unknown, 1, t)).await,
        WriteResult::Held { held: false }
    );
    assert_eq!(held_until(store, c).await, None);

    // A claim takes the due delivery for the length of its lease.
    let lease = t + Duration::minutes(1);
    let claimed = store.claim_held(subs[0], 10, t, lease).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (
            claimed[0].id,
            &claimed[0].event_id,
            claimed[0].subscription_id
        ),
        (a, &event.id, subs[0])
    );
    assert_eq!(claimed[0].attempts, 0, "it owes attempt 1");
    assert!(
        store
            .claim_held(subs[0], 10, t, lease)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(due(store, t).await.is_empty());
    assert_eq!(
        due(store, lease).await,
        [(subs[0], 1)],
        "due again once the lease runs out"
    );

    // Its attempt ends the hold; a later hold owes the next attempt.
    apply_one(store, WriteOp::Attempt(failed_attempt(a, 1))).await;
    assert_eq!(held_until(store, a).await, None);
    assert_eq!(
        apply_one(store, hold(a, 1, t)).await,
        WriteResult::Held { held: false },
        "attempt 1 is made"
    );
    assert_eq!(
        apply_one(store, hold(a, 2, t)).await,
        WriteResult::Held { held: true }
    );
    let claimed = store.claim_held(subs[0], 10, t, lease).await.unwrap();
    assert_eq!(claimed[0].attempts, 1);

    // An attempt that no message carries leaves the ledger owing the next
    // one: it stays held, due when the retry is.
    let retry_at = t + Duration::minutes(5);
    let rehold = |d, n| AttemptWrite {
        next_attempt_at: Some(retry_at),
        held_until: Some(retry_at),
        ..failed_attempt(d, n)
    };
    apply_one(store, WriteOp::Attempt(rehold(a, 2))).await;
    let record = store.get_delivery(a).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.attempts, record.held_until),
        (DeliveryStatus::Retrying, 2, Some(retry_at))
    );
    assert!(due(store, lease).await.is_empty(), "not before its retry");
    let claimed = store
        .claim_held(subs[0], 10, retry_at, lease)
        .await
        .unwrap();
    assert_eq!(claimed[0].attempts, 2, "it owes attempt 3");
    apply_one(store, WriteOp::Attempt(succeeded_attempt(a, 3))).await;
    assert_eq!(held_until(store, a).await, None);

    // The same for a first attempt committed with its delivery.
    let other = Event {
        id: EventId::generate(),
        ..event.clone()
    };
    let (op, born) = fan_out(&other, &subs[..1]);
    store
        .apply(&[op, WriteOp::Attempt(rehold(born[0].0, 1))])
        .await
        .unwrap();
    assert_eq!(held_until(store, born[0].0).await, Some(retry_at));
    apply_one(store, WriteOp::Attempt(succeeded_attempt(born[0].0, 2))).await;
    assert_eq!(held_until(store, born[0].0).await, None);

    // A cancel ends a hold too; nothing is due any more, ever.
    apply_one(store, WriteOp::Cancel { delivery_id: b }).await;
    assert_eq!(held_until(store, b).await, None);
    let later = t + Duration::days(1);
    assert!(due(store, later).await.is_empty());
    for sub in &subs {
        assert!(
            store
                .claim_held(*sub, 10, later, later)
                .await
                .unwrap()
                .is_empty()
        );
    }

    // An operator's redelivery takes a held delivery out of the ledger's
    // hands (its message is published); undoing it holds it again.
    apply_one(store, hold(c, 1, t)).await;
    let before = store.reopen_delivery(&ws, c).await.unwrap().unwrap();
    assert_eq!(before.held_until, Some(t));
    assert_eq!(held_until(store, c).await, None);
    assert!(store.restore_delivery(&before).await.unwrap());
    assert_eq!(held_until(store, c).await, Some(t));
}

async fn concurrent_claims_take_different_deliveries(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let webhook = stored_subscription(store, &ws).await;
    let sub = webhook.id;
    let t = now();
    let mut held = Vec::new();
    for _ in 0..8 {
        let event = event(&ws);
        let (op, deliveries) = fan_out(&event, &[sub]);
        store
            .apply(&[op, hold(deliveries[0].0, 1, t)])
            .await
            .unwrap();
        held.push(deliveries[0].0);
    }
    assert_eq!(
        store.held_due(t).await.unwrap(),
        [HeldDue {
            subscription_id: sub,
            url: Some(webhook.url.to_string()),
            due: 8
        }],
        "with the webhook's URL"
    );

    let lease = t + Duration::minutes(1);
    let (one, two) = tokio::join!(
        store.claim_held(sub, 5, t, lease),
        store.claim_held(sub, 5, t, lease)
    );
    let (one, two) = (one.unwrap(), two.unwrap());
    assert_eq!(one.len() + two.len(), 8, "{} and {}", one.len(), two.len());
    let mut all: Vec<DeliveryId> = one.iter().chain(&two).map(|h| h.id).collect();
    all.sort();
    all.dedup();
    held.sort();
    assert_eq!(all, held, "each claimed exactly once");
}

async fn expired_held_deliveries_are_claimed_then_given_up(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let event = event(&ws);
    let subs: Vec<_> = (0..3).map(|_| SubscriptionId::generate()).collect();
    let (op, deliveries) = fan_out(&event, &subs);
    let [old, claimed, pending] = [0, 1, 2].map(|i| deliveries[i].0);
    let t = now();
    store
        .apply(&[op, hold(old, 1, t), hold(claimed, 1, t)])
        .await
        .unwrap();
    let lease = t + Duration::minutes(1);
    assert_eq!(
        store.claim_held(subs[1], 1, t, lease).await.unwrap().len(),
        1
    );

    // Of one subscription, created before the cut-off: only what is held
    // and not claimed.
    let before = t + Duration::seconds(1);
    assert!(
        store
            .claim_expired(subs[0], t - Duration::hours(1), 10, t, lease)
            .await
            .unwrap()
            .is_empty(),
        "nothing that old"
    );
    let expired = store
        .claim_expired(subs[0], before, 10, t, lease)
        .await
        .unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].id, expired[0].event_type, expired[0].attempts),
        (old, EventType::OrderCreated, 0)
    );
    assert!(
        store
            .claim_expired(subs[0], before, 10, t, lease)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .claim_expired(subs[1], before, 10, t, lease)
            .await
            .unwrap()
            .is_empty(),
        "the other is claimed"
    );

    // Given up: dead, no longer held. Only held deliveries are.
    let dead = store
        .give_up_held(&[old, pending], DeadReason::CircuitOpen)
        .await
        .unwrap();
    assert_eq!(dead, [old]);
    let record = store.get_delivery(old).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.held_until, record.next_attempt_at),
        (DeliveryStatus::Dead, None, None)
    );
    assert_eq!(status_of(store, pending).await, DeliveryStatus::Pending);
    assert_eq!(
        store
            .give_up_held(&[old], DeadReason::CircuitOpen)
            .await
            .unwrap(),
        [],
        "given up once"
    );
}
