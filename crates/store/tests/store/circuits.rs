//! Webhook circuits shared by every replica: opened once, one probe lease
//! at a time, moved on by a failed probe, gone when closed; and the reason
//! a held delivery given up behind one is dead.

use std::time::Duration as StdDuration;

use chrono::Duration;
use courier_model::{DeliveryStatus, SubscriptionStatus};
use courier_store::{CircuitRow, DeadReason, DeliveryFilter, OpenCircuitHeld, Store};

use crate::common::{TestDb, event, fan_out, hold, now, stored_subscription, workspace};
use crate::on_both_backends;

on_both_backends!(
    a_circuit_opens_once_and_one_claim_at_a_time_takes_its_probe,
    circuits_of_disabled_or_deleted_webhooks_are_not_listed,
    a_delivery_given_up_behind_an_open_circuit_says_why,
    held_deliveries_past_their_schedule_are_found_for_open_circuits_only,
);

const SECOND: StdDuration = StdDuration::from_secs(1);

async fn only_circuit(store: &Store) -> CircuitRow {
    let mut open = store.open_circuits().await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    open.pop().unwrap()
}

async fn a_circuit_opens_once_and_one_claim_at_a_time_takes_its_probe(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let sub = stored_subscription(store, &ws).await.id;
    let t = now();
    assert!(store.open_circuits().await.unwrap().is_empty());

    // Opened by one replica; another's later opening leaves it as it is.
    assert!(store.open_circuit(sub, 5, t, SECOND).await.unwrap());
    assert!(
        !store
            .open_circuit(sub, 7, t + Duration::seconds(3), 4 * SECOND)
            .await
            .unwrap()
    );
    assert_eq!(
        only_circuit(store).await,
        CircuitRow {
            subscription_id: sub,
            failures: 5,
            opened_at: t,
            open_until: t + Duration::seconds(1),
            cooldown: SECOND,
            probe_until: None,
        }
    );

    // No probe while it cools down.
    let lease = t + Duration::seconds(30);
    assert_eq!(
        store
            .claim_circuit_probe(sub, t + Duration::milliseconds(999), lease)
            .await
            .unwrap(),
        None
    );
    // Cooled down: of several replicas claiming at once, one gets it.
    let at = t + Duration::seconds(1);
    let claims = futures_util::future::join_all(
        (0..4).map(|i| store.claim_circuit_probe(sub, at, lease + Duration::seconds(i))),
    )
    .await;
    let won: Vec<CircuitRow> = claims.into_iter().filter_map(|c| c.unwrap()).collect();
    assert_eq!(won.len(), 1, "{won:?}");
    let lease = won[0].probe_until.expect("the lease");
    assert_eq!(only_circuit(store).await.probe_until, Some(lease));
    assert_eq!(
        store.claim_circuit_probe(sub, at, lease).await.unwrap(),
        None,
        "held"
    );

    // Only the holder's lease gives it back; then it can be claimed again.
    store
        .release_circuit_probe(sub, lease + Duration::seconds(100), at)
        .await
        .unwrap();
    assert_eq!(only_circuit(store).await.probe_until, Some(lease));
    store.release_circuit_probe(sub, lease, at).await.unwrap();
    assert_eq!(only_circuit(store).await.probe_until, None);
    // A lease that ran out is free too (its replica died).
    assert!(
        store
            .claim_circuit_probe(sub, at, at + Duration::seconds(10))
            .await
            .unwrap()
            .is_some()
    );
    let later = at + Duration::seconds(11);
    let probe = store
        .claim_circuit_probe(sub, later, later + Duration::seconds(10))
        .await
        .unwrap()
        .expect("the lapsed lease is taken over");

    // A failed probe: open for the doubled cool-down, probe free again then.
    store
        .circuit_probe_failed(sub, later, 2 * SECOND)
        .await
        .unwrap();
    assert_eq!(
        only_circuit(store).await,
        CircuitRow {
            failures: 6,
            open_until: later + Duration::seconds(2),
            cooldown: 2 * SECOND,
            probe_until: None,
            ..probe
        }
    );
    assert_eq!(
        store
            .claim_circuit_probe(sub, later + Duration::seconds(1), lease)
            .await
            .unwrap(),
        None
    );

    // Closed: gone, and a new failure opens it afresh.
    assert!(store.close_circuit(sub).await.unwrap());
    assert!(!store.close_circuit(sub).await.unwrap());
    assert!(store.open_circuits().await.unwrap().is_empty());
    assert!(store.open_circuit(sub, 5, later, SECOND).await.unwrap());
    assert_eq!(only_circuit(store).await.opened_at, later);
}

async fn circuits_of_disabled_or_deleted_webhooks_are_not_listed(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let mut disabled = stored_subscription(store, &ws).await;
    let deleted = stored_subscription(store, &ws).await;
    let t = now();
    for sub in [&disabled, &deleted] {
        assert!(store.open_circuit(sub.id, 5, t, SECOND).await.unwrap());
    }
    assert_eq!(store.open_circuits().await.unwrap().len(), 2);

    disabled.status = SubscriptionStatus::Disabled;
    assert!(store.update_subscription(&disabled).await.unwrap());
    assert!(store.delete_subscription(&ws, deleted.id).await.unwrap());
    assert!(store.open_circuits().await.unwrap().is_empty());
    // The deleted one's row went with it; no circuit opens for it again.
    assert!(!store.open_circuit(deleted.id, 5, t, SECOND).await.unwrap());
    // The disabled one's waits for it to be enabled again.
    disabled.status = SubscriptionStatus::Enabled;
    assert!(store.update_subscription(&disabled).await.unwrap());
    assert_eq!(only_circuit(store).await.subscription_id, disabled.id);
}

async fn a_delivery_given_up_behind_an_open_circuit_says_why(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let sub = stored_subscription(store, &ws).await.id;
    let (op, deliveries) = fan_out(&event(&ws), &[sub]);
    let t = now();
    let held = deliveries[0].0;
    store.apply(&[op, hold(held, 1, t)]).await.unwrap();
    let reason = async |id| {
        store
            .get_delivery_entry(&ws, id)
            .await
            .unwrap()
            .unwrap()
            .dead_reason
    };
    assert_eq!(reason(held).await, None);

    let dead = store
        .give_up_held(&[held], DeadReason::CircuitOpen)
        .await
        .unwrap();
    assert_eq!(dead, [held]);
    assert_eq!(reason(held).await, Some(DeadReason::CircuitOpen));
    let log = store
        .list_deliveries(&ws, &DeliveryFilter::default(), 10, None)
        .await
        .unwrap();
    let entry = log.iter().find(|e| e.delivery.id == held).unwrap();
    assert_eq!(
        (entry.delivery.status, entry.dead_reason),
        (DeliveryStatus::Dead, Some(DeadReason::CircuitOpen))
    );

    // Redelivered by hand: no longer dead, so no reason.
    store.reopen_delivery(&ws, held).await.unwrap().unwrap();
    assert_eq!(reason(held).await, None);
}

async fn held_deliveries_past_their_schedule_are_found_for_open_circuits_only(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let open = stored_subscription(store, &ws).await;
    let closed = stored_subscription(store, &ws).await;
    let mut disabled = stored_subscription(store, &ws).await;
    let mut own_schedule = stored_subscription(store, &ws).await;
    own_schedule.settings.max_attempts = Some(7);
    assert!(store.update_subscription(&own_schedule).await.unwrap());
    let subs = [open.id, closed.id, disabled.id, own_schedule.id];
    let (first, deliveries) = fan_out(&event(&ws), &subs);
    let (second, later_ones) = fan_out(&event(&ws), &[open.id]);
    let t = now();
    let ops: Vec<_> = std::iter::once(first)
        .chain(deliveries.iter().map(|&(d, _)| hold(d, 1, t)))
        .collect();
    store.apply(&ops).await.unwrap();
    // The open webhook's second delivery comes in a later commit.
    store
        .apply(&[second, hold(later_ones[0].0, 1, t)])
        .await
        .unwrap();
    for sub in [&open, &disabled, &own_schedule] {
        assert!(store.open_circuit(sub.id, 5, t, SECOND).await.unwrap());
    }
    disabled.status = SubscriptionStatus::Disabled;
    assert!(store.update_subscription(&disabled).await.unwrap());
    let created = |id| async move { store.get_delivery(id).await.unwrap().unwrap().created_at };
    let oldest = created(deliveries[0].0).await;
    assert!(created(later_ones[0].0).await > oldest);

    // Due and held behind an open circuit: the oldest one's creation, and
    // the webhook's own max attempts. A closed circuit's are attempted, a
    // disabled webhook's are not given up as dead.
    let mut found = store.held_of_open_circuits(t).await.unwrap();
    found.sort_by_key(|h| h.subscription_id != open.id);
    assert_eq!(
        found,
        [
            OpenCircuitHeld {
                subscription_id: open.id,
                max_attempts: None,
                oldest,
            },
            OpenCircuitHeld {
                subscription_id: own_schedule.id,
                max_attempts: Some(7),
                oldest,
            },
        ]
    );
    assert!(
        store
            .held_of_open_circuits(t - Duration::seconds(1))
            .await
            .unwrap()
            .is_empty(),
        "none due yet"
    );

    // Held until later (a receiver's Retry-After, or a claim): not counted
    // before then, however old.
    let later = t + Duration::hours(1);
    store
        .apply(&[hold(deliveries[0].0, 1, later)])
        .await
        .unwrap();
    let found = store.held_of_open_circuits(t).await.unwrap();
    let of_open = found.iter().find(|h| h.subscription_id == open.id).unwrap();
    assert_eq!(of_open.oldest, created(later_ones[0].0).await);
    let found = store.held_of_open_circuits(later).await.unwrap();
    let of_open = found.iter().find(|h| h.subscription_id == open.id).unwrap();
    assert_eq!(of_open.oldest, oldest);
}
