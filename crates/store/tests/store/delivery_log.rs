//! API keys and the delivery log: lookups by hash, pages and filters,
//! reopening and restoring deliveries.

use chrono::Duration;
use courier_model::{DeliveryStatus, EventType, WorkspaceId};
use courier_store::{ApiKeyRecord, AttemptWrite, DeliveryFilter, StoreError, WriteOp};

use crate::common::{
    TestDb, apply_one, event, failed_attempt, fan_out, now, status_of, stored_subscription,
    succeeded_attempt, workspace,
};
use crate::on_both_backends;

on_both_backends!(
    api_keys_are_found_by_hash,
    delivery_log_pages_newest_first_and_filters,
    reopen_and_restore_deliveries,
);

async fn api_keys_are_found_by_hash(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let key = ApiKeyRecord {
        id: "key_1".into(),
        workspace_id: ws.clone(),
        name: "ci".into(),
        key_prefix: "ck_abcdef".into(),
        created_at: now(),
    };
    store.insert_api_key(&key, "hash-1").await.unwrap();
    assert_eq!(
        store.find_api_key("hash-1").await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(store.find_api_key("hash-2").await.unwrap(), None);
    let dup = ApiKeyRecord {
        id: "key_2".into(),
        ..key.clone()
    };
    assert!(matches!(
        store.insert_api_key(&dup, "hash-1").await,
        Err(StoreError::Conflict { .. })
    ));
    let orphan = ApiKeyRecord {
        id: "key_3".into(),
        workspace_id: WorkspaceId::parse("nobody").unwrap(),
        ..key
    };
    assert!(matches!(
        store.insert_api_key(&orphan, "hash-3").await,
        Err(StoreError::NotFound { what: "workspace" })
    ));
}

async fn delivery_log_pages_newest_first_and_filters(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let other = workspace(store).await;
    let a = stored_subscription(store, &ws).await;
    let b = stored_subscription(store, &ws).await;
    let mut ids = Vec::new();
    for sub in [a.id, b.id, a.id, a.id] {
        let (op, deliveries) = fan_out(&event(&ws), &[sub]);
        apply_one(store, op).await;
        ids.push(deliveries[0].0);
    }
    let (op, _) = fan_out(&event(&other), &[a.id]);
    apply_one(store, op).await;
    apply_one(store, WriteOp::Attempt(failed_attempt(ids[0], 1))).await;

    let all = DeliveryFilter::default();
    let first = store.list_deliveries(&ws, &all, 3, None).await.unwrap();
    let rest = store
        .list_deliveries(&ws, &all, 3, Some(first[2].cursor()))
        .await
        .unwrap();
    let listed: Vec<_> = first.iter().chain(&rest).map(|e| e.delivery.id).collect();
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(listed, expected);
    // URL: the latest attempt's, else the subscription's.
    let oldest = rest.last().unwrap();
    assert_eq!(
        oldest.url.as_deref(),
        Some("https://erp.example.com/hooks/courier")
    );
    assert_eq!(oldest.delivery.last_response_status, Some(503));

    let only_b = DeliveryFilter {
        subscription: Some(b.id),
        ..DeliveryFilter::default()
    };
    let got = store.list_deliveries(&ws, &only_b, 10, None).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].delivery.id, ids[1]);
    let retrying = DeliveryFilter {
        status: Some(DeliveryStatus::Retrying),
        event_type: Some(EventType::OrderCreated),
        ..DeliveryFilter::default()
    };
    let got = store
        .list_deliveries(&ws, &retrying, 10, None)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].delivery.id, ids[0]);
    let shipments = DeliveryFilter {
        event_type: Some(EventType::ShipmentCreated),
        ..DeliveryFilter::default()
    };
    assert!(
        store
            .list_deliveries(&ws, &shipments, 10, None)
            .await
            .unwrap()
            .is_empty()
    );

    assert!(
        store
            .get_delivery_entry(&ws, ids[2])
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .get_delivery_entry(&other, ids[2])
            .await
            .unwrap()
            .is_none()
    );
}

async fn reopen_and_restore_deliveries(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let other = workspace(store).await;
    let sub = stored_subscription(store, &ws).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (op, deliveries) = fan_out(&event(&ws), &[sub.id]);
        apply_one(store, op).await;
        ids.push(deliveries[0].0);
    }
    let dead = |d, n| AttemptWrite {
        new_status: DeliveryStatus::Dead,
        next_attempt_at: None,
        ..failed_attempt(d, n)
    };
    apply_one(store, WriteOp::Attempt(dead(ids[0], 1))).await;
    apply_one(store, WriteOp::Attempt(dead(ids[1], 1))).await;
    apply_one(store, WriteOp::Attempt(succeeded_attempt(ids[2], 1))).await;

    assert!(
        store
            .reopen_delivery(&other, ids[2])
            .await
            .unwrap()
            .is_none()
    );
    let before = store.reopen_delivery(&ws, ids[2]).await.unwrap().unwrap();
    assert_eq!(before.status, DeliveryStatus::Succeeded);
    let now_row = store.get_delivery(ids[2]).await.unwrap().unwrap();
    assert_eq!(now_row.status, DeliveryStatus::Retrying);
    assert_eq!(now_row.attempts, 1);
    assert!(store.restore_delivery(&before).await.unwrap());
    assert_eq!(status_of(store, ids[2]).await, DeliveryStatus::Succeeded);

    let since = now() - Duration::hours(1);
    let reopened = store
        .reopen_failed_deliveries(&ws, sub.id, since, 10)
        .await
        .unwrap();
    assert_eq!(
        reopened.iter().map(|d| d.id).collect::<Vec<_>>(),
        [ids[0], ids[1]]
    );
    assert!(reopened.iter().all(|d| d.status == DeliveryStatus::Dead));
    assert_eq!(status_of(store, ids[0]).await, DeliveryStatus::Retrying);
    // Nothing left to recover; a later `since` finds nothing either.
    assert!(
        store
            .reopen_failed_deliveries(&ws, sub.id, since, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Once an attempt is recorded after the reopen, restore leaves it alone.
    apply_one(store, WriteOp::Attempt(succeeded_attempt(ids[0], 2))).await;
    assert!(!store.restore_delivery(&reopened[0]).await.unwrap());
    assert_eq!(status_of(store, ids[0]).await, DeliveryStatus::Succeeded);
}
