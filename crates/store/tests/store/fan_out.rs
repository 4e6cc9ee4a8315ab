//! The hot path's writes: fan-outs, attempts, cancels, mixed batches, and the
//! context the delivery stage reads.

use std::collections::HashMap;

use courier_model::{DeliveryId, DeliveryStatus, ErrorKind, EventData, EventType, SubscriptionId};
use courier_store::{AttemptWrite, WriteOp, WriteResult};

use crate::common::{
    TestDb, apply_one, counts, event, failed_attempt, fan_out, is_unknown_delivery, now, status_of,
    stored_subscription, succeeded_attempt, workspace,
};
use crate::on_both_backends;

on_both_backends!(
    fan_out_is_idempotent,
    a_redelivered_event_publishes_the_ids_the_ledger_holds,
    attempts_are_recorded_once,
    attempts_update_the_delivery,
    mixed_ops_apply_in_kind_order,
    fan_out_and_first_attempts_in_one_batch,
    cancel_leaves_final_deliveries_alone,
    delivery_context_with_and_without_subscription,
    a_large_batch_is_recorded_row_for_row,
);

async fn fan_out_is_idempotent(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let subs: Vec<SubscriptionId> = (0..3).map(|_| SubscriptionId::generate()).collect();
    let event = event(&ws);
    let (op, deliveries) = fan_out(&event, &subs);

    let before = now();
    assert_eq!(
        apply_one(store, op.clone()).await,
        WriteResult::FanOut {
            to_publish: deliveries.clone()
        }
    );
    let stored = store
        .deliveries_of_event(&event.workspace_id, &event.id)
        .await
        .unwrap();
    assert_eq!(stored.len(), 3);
    for record in &stored {
        assert!(deliveries.contains(&(record.id, record.subscription_id)));
        assert_eq!(record.event_id, event.id);
        assert_eq!(record.workspace_id, ws);
        assert_eq!(record.event_type, EventType::OrderCreated);
        assert_eq!(record.status, DeliveryStatus::Pending);
        assert_eq!(record.attempts, 0);
        assert_eq!(record.last_response_status, None);
        assert_eq!(record.last_attempt_at, None);
        assert_eq!(record.next_attempt_at, None);
        assert!(record.created_at >= before && record.updated_at == record.created_at);
    }

    // Redelivered before anything was sent: everything is still to publish.
    assert_eq!(
        apply_one(store, op.clone()).await,
        WriteResult::FanOut {
            to_publish: deliveries.clone()
        }
    );

    // Once an attempt is recorded, that delivery is no longer published again.
    let first = deliveries[0].0;
    let recorded = apply_one(store, WriteOp::Attempt(failed_attempt(first, 1))).await;
    assert_eq!(recorded, WriteResult::Attempt { recorded: true });
    assert_eq!(
        apply_one(store, op.clone()).await,
        WriteResult::FanOut {
            to_publish: deliveries[1..].to_vec()
        }
    );
    assert_eq!(
        store
            .deliveries_of_event(&event.workspace_id, &event.id)
            .await
            .unwrap()
            .len(),
        3
    );

    // A subscription created since the first fan-out gets its delivery.
    let late = SubscriptionId::generate();
    let mut with_late = subs.clone();
    with_late.insert(0, late);
    let (op, deliveries) = fan_out(&event, &with_late);
    let mut expected = vec![deliveries[0]];
    expected.extend_from_slice(&deliveries[2..]);
    assert_eq!(
        apply_one(store, op).await,
        WriteResult::FanOut {
            to_publish: expected
        }
    );
    assert_eq!(
        store
            .deliveries_of_event(&event.workspace_id, &event.id)
            .await
            .unwrap()
            .len(),
        4
    );

    // The same event twice in one batch: both see every pending delivery.
    let other = self::event(&ws);
    let (op, deliveries) = fan_out(&other, &subs);
    let results = store.apply(&[op.clone(), op]).await.unwrap();
    let expected = WriteResult::FanOut {
        to_publish: deliveries,
    };
    assert_eq!(results, vec![expected.clone(), expected]);

    // A batch that holds an event the ledger has and a new one: the first
    // gets what is still pending, the second everything, recorded once.
    let fresh = self::event(&ws);
    let (known_op, known) = fan_out(&other, &subs);
    let (fresh_op, fresh_deliveries) = fan_out(&fresh, &subs);
    let results = store.apply(&[known_op, fresh_op]).await.unwrap();
    assert_eq!(
        results,
        vec![
            WriteResult::FanOut { to_publish: known },
            WriteResult::FanOut {
                to_publish: fresh_deliveries
            }
        ]
    );
    assert_eq!(
        store
            .deliveries_of_event(&fresh.workspace_id, &fresh.id)
            .await
            .unwrap()
            .len(),
        3
    );

    // An event no subscription matches is still recorded, with nothing to publish.
    let lonely = self::event(&ws);
    let (op, _) = fan_out(&lonely, &[]);
    assert_eq!(
        apply_one(store, op).await,
        WriteResult::FanOut { to_publish: vec![] }
    );
    assert_eq!(
        counts(store.delivery_counts().await.unwrap()),
        HashMap::from([(DeliveryStatus::Pending, 9), (DeliveryStatus::Retrying, 1)])
    );
}

/// A worker from before delivery ids carried their event's time recorded
/// an event's deliveries under other ids; the event comes back to one that
/// derives the new ids. What it publishes are the ids the ledger holds, and
/// it records no second delivery for any webhook.
async fn a_redelivered_event_publishes_the_ids_the_ledger_holds(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let subs: Vec<SubscriptionId> = (0..3).map(|_| SubscriptionId::generate()).collect();
    let event = event(&ws);
    let earlier: Vec<(DeliveryId, SubscriptionId)> = subs
        .iter()
        .map(|&s| (DeliveryId(uuid::Uuid::new_v4()), s))
        .collect();
    let recorded_before = WriteOp::FanOut {
        event: std::sync::Arc::new(event.clone()),
        deliveries: earlier.clone(),
        paused: Vec::new(),
    };
    apply_one(store, recorded_before).await;
    let attempted = apply_one(store, WriteOp::Attempt(failed_attempt(earlier[0].0, 1))).await;
    assert_eq!(attempted, WriteResult::Attempt { recorded: true });

    let (op, derived) = fan_out(&event, &subs);
    assert!(derived.iter().all(|d| !earlier.contains(d)));
    assert_eq!(
        apply_one(store, op).await,
        WriteResult::FanOut {
            to_publish: earlier[1..].to_vec()
        }
    );
    let mut stored: Vec<_> = store
        .deliveries_of_event(&event.workspace_id, &event.id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.subscription_id))
        .collect();
    stored.sort();
    let mut expected = earlier.clone();
    expected.sort();
    assert_eq!(stored, expected);
}

async fn attempts_are_recorded_once(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let event = event(&ws);
    let (op, deliveries) = fan_out(&event, &[SubscriptionId::generate()]);
    apply_one(store, op).await;
    let id = deliveries[0].0;

    let first = failed_attempt(id, 1);
    assert_eq!(
        apply_one(store, WriteOp::Attempt(first.clone())).await,
        WriteResult::Attempt { recorded: true }
    );
    let after_first = store.get_delivery(id).await.unwrap().unwrap();

    // The same attempt number again (a duplicate message), even claiming
    // success, changes nothing.
    let duplicate = succeeded_attempt(id, 1);
    assert_eq!(
        apply_one(store, WriteOp::Attempt(duplicate)).await,
        WriteResult::Attempt { recorded: false }
    );
    assert_eq!(store.get_delivery(id).await.unwrap().unwrap(), after_first);

    let attempts = store.list_attempts(id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    let a = &attempts[0];
    assert_eq!(a.delivery_id, id);
    assert_eq!(a.attempt, 1);
    assert_eq!(a.url, first.url);
    assert_eq!(a.started_at, first.started_at);
    assert_eq!(a.duration_ms, 120);
    assert_eq!(a.response_status, Some(503));
    assert_eq!(a.error_kind, None);
    assert_eq!(a.error.as_deref(), Some("HTTP 503"));
    assert_eq!(a.response_excerpt.as_deref(), Some("upstream unavailable"));

    // Duplicates inside one batch: the first wins.
    let results = store
        .apply(&[
            WriteOp::Attempt(failed_attempt(id, 2)),
            WriteOp::Attempt(succeeded_attempt(id, 2)),
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            WriteResult::Attempt { recorded: true },
            WriteResult::Attempt { recorded: false }
        ]
    );
    assert_eq!(status_of(store, id).await, DeliveryStatus::Retrying);
    assert_eq!(store.list_attempts(id).await.unwrap().len(), 2);

    // A duplicate beside a new attempt of another delivery in one batch:
    // the new one is recorded and updates its delivery all the same.
    let (op, others) = fan_out(&event, &[SubscriptionId::generate()]);
    apply_one(store, op).await;
    let other = others[0].0;
    let results = store
        .apply(&[
            WriteOp::Attempt(succeeded_attempt(id, 1)),
            WriteOp::Attempt(succeeded_attempt(other, 1)),
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            WriteResult::Attempt { recorded: false },
            WriteResult::Attempt { recorded: true }
        ]
    );
    assert_eq!(status_of(store, other).await, DeliveryStatus::Succeeded);
    assert_eq!(store.list_attempts(other).await.unwrap().len(), 1);
    assert_eq!(store.list_attempts(id).await.unwrap().len(), 2);
}

async fn attempts_update_the_delivery(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let event = event(&ws);
    let (op, deliveries) = fan_out(&event, &[SubscriptionId::generate()]);
    apply_one(store, op).await;
    let id = deliveries[0].0;

    let first = failed_attempt(id, 1);
    let before = now();
    apply_one(store, WriteOp::Attempt(first.clone())).await;
    let record = store.get_delivery(id).await.unwrap().unwrap();
    assert_eq!(record.status, DeliveryStatus::Retrying);
    assert_eq!(record.attempts, 1);
    assert_eq!(record.last_response_status, Some(503));
    assert_eq!(record.last_attempt_at, Some(first.started_at));
    assert_eq!(record.next_attempt_at, first.next_attempt_at);
    assert!(record.updated_at >= before);

    // A timeout: no response status at all.
    let timeout = AttemptWrite {
        response_status: None,
        error_kind: Some(ErrorKind::Timeout),
        error: Some("no response within 10s".into()),
        response_excerpt: None,
        retry_after: None,
        ..failed_attempt(id, 2)
    };
    apply_one(store, WriteOp::Attempt(timeout.clone())).await;
    let record = store.get_delivery(id).await.unwrap().unwrap();
    assert_eq!(record.attempts, 2);
    assert_eq!(record.last_response_status, None);
    let stored = store.list_attempts(id).await.unwrap();
    assert_eq!(stored[1].error_kind, Some(ErrorKind::Timeout));
    assert_eq!(stored[1].response_status, None);
    assert_eq!(stored[1].response_excerpt, None);

    // Success ends the schedule.
    let last = succeeded_attempt(id, 4);
    apply_one(store, WriteOp::Attempt(last.clone())).await;
    let record = store.get_delivery(id).await.unwrap().unwrap();
    assert_eq!(record.status, DeliveryStatus::Succeeded);
    assert_eq!(record.attempts, 4);
    assert_eq!(record.last_response_status, Some(200));
    assert_eq!(record.next_attempt_at, None);

    // A late, lower attempt number never lowers the count.
    apply_one(store, WriteOp::Attempt(failed_attempt(id, 3))).await;
    assert_eq!(store.get_delivery(id).await.unwrap().unwrap().attempts, 4);
    assert_eq!(
        store
            .list_attempts(id)
            .await
            .unwrap()
            .iter()
            .map(|a| a.attempt)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
}

async fn mixed_ops_apply_in_kind_order(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let event = event(&ws);
    let (op, deliveries) = fan_out(
        &event,
        &[SubscriptionId::generate(), SubscriptionId::generate()],
    );
    let (a, b) = (deliveries[0].0, deliveries[1].0);

    // One transaction: create, attempt twice, cancel the other, fan out
    // again. A batch applies in kind order (its ops stand for concurrent
    // callers), so the repeated fan-out runs before the attempts and finds
    // both deliveries still pending; results come back in the given order.
    let results = store
        .apply(&[
            op.clone(),
            WriteOp::Attempt(failed_attempt(a, 1)),
            WriteOp::Attempt(failed_attempt(a, 2)),
            WriteOp::Cancel { delivery_id: b },
            op.clone(),
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            WriteResult::FanOut {
                to_publish: deliveries.clone()
            },
            WriteResult::Attempt { recorded: true },
            WriteResult::Attempt { recorded: true },
            WriteResult::Canceled,
            WriteResult::FanOut {
                to_publish: deliveries.clone()
            },
        ]
    );
    // Now nothing of the event is pending any more.
    assert_eq!(
        store.apply(&[op]).await.unwrap(),
        vec![WriteResult::FanOut { to_publish: vec![] }]
    );
    let record = store.get_delivery(a).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.attempts),
        (DeliveryStatus::Retrying, 2)
    );
    assert_eq!(status_of(store, b).await, DeliveryStatus::Canceled);

    // A failing op rolls back the whole slice.
    let other = self::event(&ws);
    let (op, _) = fan_out(&other, &[SubscriptionId::generate()]);
    let missing = DeliveryId::derive(&other.id, SubscriptionId::generate());
    let err = store
        .apply(&[op, WriteOp::Attempt(failed_attempt(missing, 1))])
        .await
        .unwrap_err();
    assert!(is_unknown_delivery(&err), "{err:?}");
    assert!(
        store
            .deliveries_of_event(&other.workspace_id, &other.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.apply(&[]).await.unwrap().is_empty());
}

/// The fan-out stage's write: an event, its deliveries and the first
/// attempts of some of them, together (both ledgers insert those
/// deliveries in their attempt's state directly, and must read the same
/// afterwards as if the attempt had updated them).
async fn fan_out_and_first_attempts_in_one_batch(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let event = event(&ws);
    let subs = [SubscriptionId::generate(), SubscriptionId::generate()];
    let (op, deliveries) = fan_out(&event, &subs);
    let (tried, queued) = (deliveries[0].0, deliveries[1].0);
    let attempt = failed_attempt(tried, 1);
    let results = store
        .apply(&[op.clone(), WriteOp::Attempt(attempt.clone())])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            WriteResult::FanOut {
                to_publish: deliveries.clone()
            },
            WriteResult::Attempt { recorded: true },
        ]
    );
    let record = store.get_delivery(tried).await.unwrap().unwrap();
    assert_eq!(
        (
            record.status,
            record.attempts,
            record.last_response_status,
            record.last_attempt_at,
            record.next_attempt_at
        ),
        (
            DeliveryStatus::Retrying,
            1,
            Some(503),
            Some(attempt.started_at),
            attempt.next_attempt_at
        )
    );
    assert_eq!(store.list_attempts(tried).await.unwrap().len(), 1);
    assert_eq!(status_of(store, queued).await, DeliveryStatus::Pending);

    // The same again (a duplicate event): nothing new, the attempt fenced.
    let again = store.apply(&[op, WriteOp::Attempt(attempt)]).await.unwrap();
    assert_eq!(
        again,
        vec![
            WriteResult::FanOut {
                to_publish: vec![deliveries[1]]
            },
            WriteResult::Attempt { recorded: false },
        ]
    );
    // The next attempt updates the delivery as usual.
    let second = store
        .apply(&[WriteOp::Attempt(succeeded_attempt(tried, 2))])
        .await
        .unwrap();
    assert_eq!(second, vec![WriteResult::Attempt { recorded: true }]);
    let record = store.get_delivery(tried).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.attempts),
        (DeliveryStatus::Succeeded, 2)
    );
}

async fn cancel_leaves_final_deliveries_alone(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let event = event(&ws);
    let subs: Vec<_> = (0..4).map(|_| SubscriptionId::generate()).collect();
    let (op, deliveries) = fan_out(&event, &subs);
    apply_one(store, op).await;
    let [succeeded, dead, retrying, pending] = [0, 1, 2, 3].map(|i| deliveries[i].0);

    apply_one(store, WriteOp::Attempt(succeeded_attempt(succeeded, 1))).await;
    let give_up = AttemptWrite {
        new_status: DeliveryStatus::Dead,
        next_attempt_at: None,
        ..failed_attempt(dead, 1)
    };
    apply_one(store, WriteOp::Attempt(give_up)).await;
    apply_one(store, WriteOp::Attempt(failed_attempt(retrying, 1))).await;
    let succeeded_before = store.get_delivery(succeeded).await.unwrap().unwrap();

    let cancels: Vec<_> = [succeeded, dead, retrying, pending]
        .map(|delivery_id| WriteOp::Cancel { delivery_id })
        .to_vec();
    let results = store.apply(&cancels).await.unwrap();
    assert_eq!(results, vec![WriteResult::Canceled; 4]);

    assert_eq!(
        store.get_delivery(succeeded).await.unwrap().unwrap(),
        succeeded_before
    );
    assert_eq!(status_of(store, dead).await, DeliveryStatus::Dead);
    for id in [retrying, pending] {
        let record = store.get_delivery(id).await.unwrap().unwrap();
        assert_eq!(record.status, DeliveryStatus::Canceled);
        assert_eq!(record.next_attempt_at, None);
    }
    assert_eq!(
        counts(store.delivery_counts().await.unwrap()),
        HashMap::from([
            (DeliveryStatus::Succeeded, 1),
            (DeliveryStatus::Dead, 1),
            (DeliveryStatus::Canceled, 2),
        ])
    );

    // Canceling an unknown delivery is not an error: there is nothing to stop.
    let unknown = DeliveryId::derive(&event.id, SubscriptionId::generate());
    assert_eq!(
        apply_one(
            store,
            WriteOp::Cancel {
                delivery_id: unknown
            }
        )
        .await,
        WriteResult::Canceled
    );
    assert_eq!(store.get_delivery(unknown).await.unwrap(), None);
}

async fn delivery_context_with_and_without_subscription(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let sub = stored_subscription(store, &ws).await;
    let mut event = event(&ws);
    // Read back byte for byte, whatever its spacing and key order, with
    // what PostgreSQL's jsonb could not hold (a number beyond `numeric`, an
    // escaped NUL) and a key given twice.
    let text = r#"{ "zeta":1, "order_id" :"o-9","nested":{"unicode":"Grüße ✓","n":null},
        "total": 1e200000, "note": "a\u0000b", "zeta": 2 }"#;
    event.data = EventData::from_text(text.to_owned()).unwrap();
    let (op, deliveries) = fan_out(&event, &[sub.id]);
    apply_one(store, op).await;
    let id = deliveries[0].0;
    apply_one(store, WriteOp::Attempt(failed_attempt(id, 1))).await;

    let context = store.delivery_context(id).await.unwrap().unwrap();
    assert_eq!(
        context.delivery,
        store.get_delivery(id).await.unwrap().unwrap()
    );
    assert_eq!(context.delivery.subscription_id, sub.id);
    assert_eq!(context.event.data.as_str(), text);
    assert_eq!(context.event, event);
    assert_eq!(context.subscription, Some(sub.clone()));

    // Deleting the subscription keeps the delivery, its event and attempts.
    assert!(store.delete_subscription(&ws, sub.id).await.unwrap());
    let context = store.delivery_context(id).await.unwrap().unwrap();
    assert_eq!(context.subscription, None);
    assert_eq!(context.event, event);
    assert_eq!(context.delivery.status, DeliveryStatus::Retrying);
    assert_eq!(
        store
            .deliveries_of_event(&event.workspace_id, &event.id)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.list_attempts(id).await.unwrap().len(), 1);

    let unknown = DeliveryId::derive(&event.id, SubscriptionId::generate());
    assert!(store.delivery_context(unknown).await.unwrap().is_none());

    // An event without a channel round-trips as such.
    let mut plain = self::event(&ws);
    plain.channel = None;
    let (op, deliveries) = fan_out(&plain, &[SubscriptionId::generate()]);
    apply_one(store, op).await;
    let context = store
        .delivery_context(deliveries[0].0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(context.event, plain);
}

/// A batch larger than any one insert statement (SQLite inserts its rows in
/// chunks of 256, 64, 16, 4 and 1): 347 events with one delivery each, half
/// of them attempted in the same batch, every row as written.
async fn a_large_batch_is_recorded_row_for_row(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let sub = SubscriptionId::generate();
    let events: Vec<_> = (0..347)
        .map(|i| {
            let mut e = event(&ws);
            e.channel = None;
            e.data = EventData::from_value(&serde_json::json!({"order_id": format!("o-{i}")}));
            e
        })
        .collect();
    let mut ops = Vec::new();
    let mut deliveries = Vec::new();
    for e in &events {
        let (op, d) = fan_out(e, &[sub]);
        ops.push(op);
        deliveries.push(d[0].0);
    }
    let attempts: Vec<AttemptWrite> = deliveries
        .iter()
        .step_by(2)
        .map(|&d| AttemptWrite {
            error_kind: Some(ErrorKind::Timeout),
            ..failed_attempt(d, 1)
        })
        .collect();
    ops.extend(attempts.iter().cloned().map(WriteOp::Attempt));
    let results = store.apply(&ops).await.unwrap();
    assert_eq!(results.len(), 347 + 174);
    assert!(
        results[347..]
            .iter()
            .all(|r| *r == WriteResult::Attempt { recorded: true })
    );
    assert_eq!(
        counts(store.delivery_counts().await.unwrap()),
        HashMap::from([
            (DeliveryStatus::Retrying, 174),
            (DeliveryStatus::Pending, 173)
        ])
    );
    for i in [0, 255, 256, 319, 320, 335, 336, 339, 340, 343, 344, 346] {
        let recorded = store.get_event(&ws, &events[i].id).await.unwrap().unwrap();
        assert_eq!(recorded.event, events[i]);
        let delivery = store.get_delivery(deliveries[i]).await.unwrap().unwrap();
        assert_eq!(delivery.event_id, events[i].id);
        assert_eq!(delivery.subscription_id, sub);
        let tried = store.list_attempts(deliveries[i]).await.unwrap();
        if i % 2 == 0 {
            let attempt = &attempts[i / 2];
            assert_eq!(delivery.attempts, 1);
            assert_eq!(delivery.last_response_status, Some(503));
            assert_eq!(delivery.next_attempt_at, attempt.next_attempt_at);
            assert_eq!(tried.len(), 1);
            assert_eq!(
                (
                    tried[0].started_at,
                    tried[0].error_kind,
                    tried[0].error.as_deref()
                ),
                (
                    attempt.started_at,
                    Some(ErrorKind::Timeout),
                    Some("HTTP 503")
                )
            );
        } else {
            assert_eq!(delivery.status, DeliveryStatus::Pending);
            assert!(tried.is_empty());
        }
    }
}
