//! Events and migrations: migrating twice, events keyed by workspace, events
//! that matched nothing, and a ledger migrated from before that change.

use courier_model::{
    DeliveryId, DeliveryStatus, Event, EventData, EventId, EventType, SubscriptionId, WorkspaceId,
};
use courier_store::{Backend, Store, StoreError, WriteOp, WriteResult};
use sqlx::{Connection, Executor, SqliteConnection};

use crate::common::{
    TestDb, apply_one, event, failed_attempt, fan_out, now, stored_subscription, subscription,
    workspace,
};
use crate::on_both_backends;

on_both_backends!(
    migrating_twice_is_harmless,
    one_event_id_in_two_workspaces_is_two_events,
    unmatched_events_are_recorded,
    migration_keys_recorded_events_by_workspace,
);

async fn migrating_twice_is_harmless(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    // Data written before the second run is untouched.
    assert_eq!(store.get_workspace(&ws).await.unwrap().unwrap().id, ws);
}

/// Two workspaces publish the same event id with different data, in separate
/// batches and in one: each gets an event of its own, and every read of a
/// delivery finds its own workspace's data.
async fn one_event_id_in_two_workspaces_is_two_events(db: TestDb) {
    let store = &db.store;
    let (a, b) = (workspace(store).await, workspace(store).await);
    let (sub_a, sub_b) = (
        stored_subscription(store, &a).await,
        stored_subscription(store, &b).await,
    );
    let shared = |ws: &WorkspaceId, data: &str| Event {
        id: EventId::parse("order-1001-created").unwrap(),
        data: EventData::from_text(data.to_owned()).unwrap(),
        ..event(ws)
    };
    let event_a = shared(&a, r#"{"from": "a"}"#);
    let event_b = shared(&b, r#"{"from": "b"}"#);
    let (op_a, deliveries_a) = fan_out(&event_a, &[sub_a.id]);
    let (op_b, deliveries_b) = fan_out(&event_b, &[sub_b.id]);

    // Each is new to the ledger, so each delivery is published.
    assert_eq!(
        apply_one(store, op_a.clone()).await,
        WriteResult::FanOut {
            to_publish: deliveries_a.clone()
        }
    );
    assert_eq!(
        apply_one(store, op_b.clone()).await,
        WriteResult::FanOut {
            to_publish: deliveries_b.clone()
        }
    );
    // In one batch (both redelivered): each still sees only its own rows.
    let results = store.apply(&[op_a, op_b]).await.unwrap();
    assert_eq!(
        results,
        [
            WriteResult::FanOut {
                to_publish: deliveries_a.clone()
            },
            WriteResult::FanOut {
                to_publish: deliveries_b.clone()
            }
        ]
    );

    for (ws, sub, deliveries, data) in [
        (&a, &sub_a, &deliveries_a, r#"{"from": "a"}"#),
        (&b, &sub_b, &deliveries_b, r#"{"from": "b"}"#),
    ] {
        let context = store
            .delivery_context(deliveries[0].0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&context.event.workspace_id, ws);
        assert_eq!(context.event.data.as_str(), data);
        assert_eq!(context.subscription.unwrap().id, sub.id);

        let recorded = store
            .get_event(ws, &event_a.id)
            .await
            .unwrap()
            .expect("each workspace has its event");
        assert_eq!(recorded.event.data.as_str(), data);
        let of_event = store.deliveries_of_event(ws, &event_a.id).await.unwrap();
        assert_eq!(of_event.len(), 1);
        assert_eq!(of_event[0].id, deliveries[0].0);
        let entries = store.event_deliveries(ws, &event_a.id).await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].delivery.subscription_id, sub.id);
    }
    let stranger = workspace(store).await;
    assert!(
        store
            .get_event(&stranger, &event_a.id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .event_deliveries(&stranger, &event_a.id)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A fan-out that matched nothing still records its event.
async fn unmatched_events_are_recorded(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let unmatched = event(&ws);
    let before = now();
    let (op, _) = fan_out(&unmatched, &[]);
    assert_eq!(
        apply_one(store, op.clone()).await,
        WriteResult::FanOut { to_publish: vec![] }
    );
    // Redelivered: nothing changes.
    assert_eq!(
        apply_one(store, op).await,
        WriteResult::FanOut { to_publish: vec![] }
    );
    let recorded = store.get_event(&ws, &unmatched.id).await.unwrap().unwrap();
    assert_eq!(recorded.event, unmatched);
    assert!(recorded.received_at >= before);
    assert!(
        store
            .event_deliveries(&ws, &unmatched.id)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A ledger written before events were keyed by workspace keeps every row
/// through the migration, and reads back as before.
async fn migration_keys_recorded_events_by_workspace(db: TestDb) {
    // A fresh database of the same backend, migrated only as far as the
    // last migration before the change.
    let fresh = match db.store.backend() {
        Backend::Sqlite => TestDb::sqlite_unmigrated().await,
        Backend::Postgres => TestDb::postgres_unmigrated().await,
    };
    let (folder, before_change) = match fresh.store.backend() {
        Backend::Sqlite => ("sqlite", 3),
        Backend::Postgres => ("postgres", 5),
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../migrations")
        .join(folder);
    let mut old = sqlx::migrate::Migrator::new(path).await.unwrap();
    old.migrations = old
        .migrations
        .iter()
        .filter(|m| m.version < before_change)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let ws = WorkspaceId::parse("acme").unwrap();
    let sub = subscription(&ws, &[EventType::OrderCreated], &[]);
    let event = event(&ws);
    let delivery = DeliveryId::derive(&event.id, sub.id);
    let data = r#"{"order_id": "o-1",  "total": 12.50000000000000000001}"#;
    let (at, sub_id, delivery_id) = match fresh.store.backend() {
        Backend::Sqlite => (
            "'2026-11-30T10:00:00.000000Z'".to_owned(),
            format!("'{}'", sub.id),
            format!("'{delivery}'"),
        ),
        Backend::Postgres => (
            "'2026-11-30T10:00:00Z'::timestamptz".to_owned(),
            format!("'{}'::uuid", sub.id),
            format!("'{delivery}'::uuid"),
        ),
    };
    let (types, secret) = match fresh.store.backend() {
        Backend::Sqlite => (r#"'["order.created"]'"#, "'whsec_c2VjcmV0c2VjcmV0c2VjcmV0'"),
        Backend::Postgres => ("ARRAY['order.created']", "'whsec_c2VjcmV0c2VjcmV0c2VjcmV0'"),
    };
    let empty = match fresh.store.backend() {
        Backend::Sqlite => "'[]'",
        Backend::Postgres => "ARRAY[]::text[]",
    };
    let rows = [
        format!("INSERT INTO workspaces (id, name, created_at) VALUES ('acme', 'Acme', {at})"),
        format!(
            "INSERT INTO subscriptions (id, workspace_id, name, url, event_types, channels, \
             secret, status, created_at, updated_at) VALUES ({sub_id}, 'acme', 'erp', \
             'https://erp.example.com/hooks', {types}, {empty}, {secret}, 'enabled', {at}, {at})"
        ),
        format!(
            "INSERT INTO events (id, workspace_id, type, channel, occurred_at, data, \
             received_at) VALUES ('{}', 'acme', 'order.created', NULL, {at}, '{data}', {at})",
            event.id
        ),
        format!(
            "INSERT INTO deliveries (id, event_id, subscription_id, workspace_id, event_type, \
             status, attempts, last_response_status, last_attempt_at, next_attempt_at, \
             created_at, updated_at) VALUES ({delivery_id}, '{}', {sub_id}, 'acme', \
             'order.created', 'retrying', 1, 503, {at}, {at}, {at}, {at})",
            event.id
        ),
        format!(
            "INSERT INTO attempts (delivery_id, attempt, url, started_at, duration_ms, \
             response_status) VALUES ({delivery_id}, 1, 'https://erp.example.com/hooks', \
             {at}, 12, 503)"
        ),
    ];
    match fresh.store.backend() {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&fresh.url).await.unwrap();
            old.run(&pool).await.unwrap();
            for row in &rows {
                pool.execute(sqlx::AssertSqlSafe(row.as_str()))
                    .await
                    .unwrap();
            }
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&fresh.url).await.unwrap();
            old.run(&pool).await.unwrap();
            for row in &rows {
                pool.execute(sqlx::AssertSqlSafe(row.as_str()))
                    .await
                    .unwrap();
            }
            pool.close().await;
        }
    }

    let store = &fresh.store;
    store.migrate().await.unwrap();
    let context = store.delivery_context(delivery).await.unwrap().unwrap();
    assert_eq!(context.event.data.as_str(), data);
    assert_eq!(context.delivery.status, DeliveryStatus::Retrying);
    assert_eq!(context.subscription.unwrap().id, sub.id);
    assert_eq!(store.list_attempts(delivery).await.unwrap().len(), 1);
    assert!(store.get_event(&ws, &event.id).await.unwrap().is_some());
    // The same id in another workspace is a new event now.
    let other = workspace(store).await;
    let (op, _) = fan_out(
        &Event {
            workspace_id: other.clone(),
            ..event.clone()
        },
        &[],
    );
    apply_one(store, op).await;
    assert!(store.get_event(&other, &event.id).await.unwrap().is_some());
    assert_eq!(
        store
            .get_event(&ws, &event.id)
            .await
            .unwrap()
            .unwrap()
            .event
            .data
            .as_str(),
        data
    );
    if fresh.store.backend() == Backend::Sqlite {
        // Foreign keys still hold, and are still enforced.
        let mut conn = SqliteConnection::connect(&fresh.url).await.unwrap();
        let broken: Vec<(String,)> =
            sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert!(broken.is_empty(), "{broken:?}");
        conn.close().await.unwrap();
        let orphan = apply_one_err(
            store,
            WriteOp::Attempt(failed_attempt(
                DeliveryId::derive(&event.id, SubscriptionId::generate()),
                1,
            )),
        )
        .await;
        assert!(orphan.is_some());
    }
    fresh.remove().await;
}

async fn apply_one_err(store: &Store, op: WriteOp) -> Option<StoreError> {
    store.apply(&[op]).await.err()
}
