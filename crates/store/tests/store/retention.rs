//! Retention: a populated ledger is pruned of exactly what has outlived
//! its workspace's retention, in batches; a dry run counts the same and
//! removes nothing; overrides stay in their workspace; one process holds
//! the pruning lock at a time; SQLite gives freed pages back; and a
//! ledger of the schema before retention migrates with its rows.

use std::collections::HashMap;
use std::ops::ControlFlow;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use courier_model::{
    DeliveryId, DeliveryStatus, Event, EventData, EventId, EventType, RetentionDays,
    RetentionOverride, RetentionPolicy, SubscriptionId, WorkspaceId,
};
use courier_store::{
    AttemptWrite, Backend, PruneOptions, PruneReport, PrunedRows, RetentionPlan, Store, WriteOp,
};
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection, SqliteConnection};

use crate::common::{
    TestDb, apply_one, event, failed_attempt, fan_out, hold, now, stored_subscription,
    subscription, succeeded_attempt, workspace,
};
use crate::on_both_backends;

on_both_backends!(
    pruning_removes_exactly_what_outlived_its_retention,
    an_override_changes_its_own_workspace_only,
    overrides_round_trip_and_need_a_workspace,
    one_process_holds_the_pruning_lock,
    migration_keeps_a_populated_ledger,
);

mod sqlite_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_file_gives_pruned_pages_back() {
        crate::common::run(TestDb::sqlite().await, gives_pages_back).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_old_file_is_switched_to_incremental_vacuum_by_vacuum() {
        old_file_vacuum().await;
    }
}

const POLICY: RetentionPolicy = RetentionPolicy {
    defaults: RetentionDays {
        succeeded: 30,
        failed: 90,
    },
    max_days: 365,
};

fn plan(overrides: HashMap<WorkspaceId, RetentionOverride>) -> RetentionPlan {
    RetentionPlan {
        policy: POLICY,
        overrides,
        now: now(),
    }
}

/// Moves an event and its deliveries `days` into the past: received,
/// created and last changed then.
async fn age(db: &TestDb, ws: &WorkspaceId, event: &EventId, days: i64) {
    let at = now() - Duration::days(days);
    match db.store.backend() {
        Backend::Sqlite => {
            let at = at.to_rfc3339_opts(SecondsFormat::Micros, true);
            let mut conn = SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query("UPDATE events SET received_at = ?1 WHERE workspace_id = ?2 AND id = ?3")
                .bind(&at)
                .bind(ws.as_str())
                .bind(event.as_str())
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query(
                "UPDATE deliveries SET created_at = ?1, updated_at = ?1 \
                 WHERE workspace_id = ?2 AND event_id = ?3",
            )
            .bind(&at)
            .bind(ws.as_str())
            .bind(event.as_str())
            .execute(&mut conn)
            .await
            .unwrap();
            conn.close().await.unwrap();
        }
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&db.url).await.unwrap();
            sqlx::query("UPDATE events SET received_at = $1 WHERE workspace_id = $2 AND id = $3")
                .bind(at)
                .bind(ws.as_str())
                .bind(event.as_str())
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query(
                "UPDATE deliveries SET created_at = $1, updated_at = $1 \
                 WHERE workspace_id = $2 AND event_id = $3",
            )
            .bind(at)
            .bind(ws.as_str())
            .bind(event.as_str())
            .execute(&mut conn)
            .await
            .unwrap();
            conn.close().await.unwrap();
        }
    }
}

/// How a test delivery ends up.
#[derive(Clone, Copy, Debug)]
enum End {
    Pending,
    Retrying,
    Succeeded,
    Dead,
    Canceled,
    Paused,
    Held,
}

fn dead_attempt(delivery: DeliveryId, attempt: u32) -> AttemptWrite {
    AttemptWrite {
        new_status: DeliveryStatus::Dead,
        next_attempt_at: None,
        ..failed_attempt(delivery, attempt)
    }
}

/// Records an event of `ws` (with `id` if given) whose deliveries, one
/// per subscription, end as `ends` say, then ages it `days`. Returns the
/// event and its deliveries.
async fn recorded(
    db: &TestDb,
    ws: &WorkspaceId,
    id: Option<&str>,
    subs: &[SubscriptionId],
    ends: &[End],
    days: i64,
) -> (Event, Vec<DeliveryId>) {
    let store = &db.store;
    let mut e = event(ws);
    if let Some(id) = id {
        e.id = EventId::parse(id).unwrap();
    }
    let (op, deliveries) = fan_out(&e, &subs[..ends.len()]);
    apply_one(store, op).await;
    let ids: Vec<DeliveryId> = deliveries.iter().map(|(d, _)| *d).collect();
    for (&d, end) in ids.iter().zip(ends) {
        let op = match end {
            End::Pending => continue,
            End::Retrying => WriteOp::Attempt(failed_attempt(d, 1)),
            End::Succeeded => WriteOp::Attempt(succeeded_attempt(d, 1)),
            End::Dead => WriteOp::Attempt(dead_attempt(d, 1)),
            End::Canceled => WriteOp::Cancel { delivery_id: d },
            End::Paused => WriteOp::Pause { delivery_id: d },
            End::Held => hold(d, 1, now()),
        };
        apply_one(store, op).await;
    }
    age(db, ws, &e.id, days).await;
    (e, ids)
}

async fn exists(store: &Store, ws: &WorkspaceId, e: &Event) -> bool {
    store.get_event(ws, &e.id).await.unwrap().is_some()
}

async fn prune(store: &Store, plan: &RetentionPlan, dry_run: bool, batch_rows: u32) -> PruneReport {
    let mut batches = 0;
    let report = store
        .prune(
            plan,
            PruneOptions {
                dry_run,
                batch_rows,
            },
            &mut |_, _, _| {
                batches += 1;
                Box::pin(std::future::ready(ControlFlow::Continue(())))
            },
        )
        .await
        .unwrap();
    assert_eq!(report.batches, batches);
    report
}

fn rows(events: u64, deliveries: u64, attempts: u64) -> PrunedRows {
    PrunedRows {
        events,
        deliveries,
        attempts,
    }
}

async fn pruning_removes_exactly_what_outlived_its_retention(db: TestDb) {
    use End::*;
    let store = &db.store;
    let a = workspace(store).await;
    let b = workspace(store).await;
    let a1 = stored_subscription(store, &a).await.id;
    let a2 = stored_subscription(store, &a).await.id;
    let b1 = stored_subscription(store, &b).await.id;
    let subs_a = [a1, a2];
    // A keeps successes 5 days and failures 10; B the defaults (30, 90).
    store
        .set_retention_override(
            &a,
            &RetentionOverride {
                succeeded: Some(5),
                failed: Some(10),
            },
            now(),
        )
        .await
        .unwrap();

    // Workspace A: what goes...
    let (a_ok_old, a_ok_old_d) = recorded(&db, &a, None, &subs_a, &[Succeeded, Succeeded], 8).await;
    let (a_dead_old, a_dead_old_d) = recorded(&db, &a, None, &subs_a, &[Dead, Canceled], 12).await;
    let (a_unmatched_old, _) = recorded(&db, &a, None, &[], &[], 8).await;
    let (a_shared, _) = recorded(&db, &a, Some("order-1001"), &subs_a, &[Succeeded], 8).await;
    // ... and what stays: too new, not finished, or with a delivery that
    // is not finished.
    let (a_ok_new, _) = recorded(&db, &a, None, &subs_a, &[Succeeded], 2).await;
    let (a_dead_mid, _) = recorded(&db, &a, None, &subs_a, &[Dead], 8).await;
    let (a_mixed, a_mixed_d) = recorded(&db, &a, None, &subs_a, &[Succeeded, Pending], 50).await;
    let (a_retrying, _) = recorded(&db, &a, None, &subs_a, &[Retrying], 50).await;
    let (a_paused, _) = recorded(&db, &a, None, &subs_a, &[Paused, Succeeded], 50).await;
    let (a_held, _) = recorded(&db, &a, None, &subs_a, &[Held], 50).await;
    let (a_unmatched_new, _) = recorded(&db, &a, None, &[], &[], 2).await;

    // Workspace B, on the defaults: A's override is not B's.
    let (b_ok_8, _) = recorded(&db, &b, None, &[b1], &[Succeeded], 8).await;
    let (b_ok_40, _) = recorded(&db, &b, None, &[b1], &[Succeeded], 40).await;
    let (b_dead_40, _) = recorded(&db, &b, None, &[b1], &[Dead], 40).await;
    let (b_dead_100, _) = recorded(&db, &b, None, &[b1], &[Dead], 100).await;
    // The same event id as A's, recorded lately in B: B's stays.
    let (b_shared, _) = recorded(&db, &b, Some("order-1001"), &[b1], &[Succeeded], 1).await;
    // A workspace upstreams publish to that courier has no row for: the
    // defaults apply.
    let ghost = WorkspaceId::parse("ghost").unwrap();
    let (ghost_old, _) = recorded(&db, &ghost, None, &[], &[], 31).await;
    let (ghost_new, _) = recorded(&db, &ghost, None, &[], &[], 29).await;

    let counts_before = store.delivery_counts().await.unwrap();
    let overrides = store.retention_overrides().await.unwrap();
    assert_eq!(overrides.len(), 1);
    let plan = plan(overrides);

    // Events: A 4, B 2, ghost 1. Deliveries: A 2 + 2 + 1, B 1 + 1.
    // Attempts: one per attempted delivery (canceled ones have none).
    let expected_a = rows(4, 5, 4);
    let expected_b = rows(2, 2, 2);
    let expected_ghost = rows(1, 0, 0);
    let dry = prune(store, &plan, true, 3).await;
    assert!(dry.dry_run);
    assert!(!dry.stopped);
    let by_ws = |report: &PruneReport| -> HashMap<String, PrunedRows> {
        report
            .workspaces
            .iter()
            .map(|w| (w.workspace.to_string(), w.rows))
            .collect()
    };
    let dry_ws = by_ws(&dry);
    assert_eq!(dry_ws[a.as_str()], expected_a, "{dry:?}");
    assert_eq!(dry_ws[b.as_str()], expected_b, "{dry:?}");
    assert_eq!(dry_ws["ghost"], expected_ghost, "{dry:?}");
    assert_eq!(dry.total, rows(7, 7, 6));
    let a_report = dry.workspaces.iter().find(|w| w.workspace == a).unwrap();
    assert_eq!((a_report.succeeded_days, a_report.failed_days), (5, 10));
    // Batches of at most three deliveries: more than one per workspace.
    assert!(dry.batches >= 4, "{dry:?}");
    // Nothing went.
    assert_eq!(store.delivery_counts().await.unwrap(), counts_before);
    assert!(exists(store, &a, &a_ok_old).await);
    assert!(exists(store, &ghost, &ghost_old).await);

    let done = prune(store, &plan, false, 3).await;
    assert!(!done.dry_run);
    assert_eq!(by_ws(&done), dry_ws);
    assert_eq!(done.total, dry.total);
    assert_eq!(done.batches, dry.batches);

    for (ws, e) in [
        (&a, &a_ok_old),
        (&a, &a_dead_old),
        (&a, &a_unmatched_old),
        (&a, &a_shared),
        (&b, &b_ok_40),
        (&b, &b_dead_100),
        (&ghost, &ghost_old),
    ] {
        assert!(!exists(store, ws, e).await, "{} should be gone", e.id);
        assert!(
            store
                .deliveries_of_event(ws, &e.id)
                .await
                .unwrap()
                .is_empty()
        );
    }
    for d in a_ok_old_d.iter().chain(&a_dead_old_d) {
        assert!(store.get_delivery(*d).await.unwrap().is_none());
        assert!(store.list_attempts(*d).await.unwrap().is_empty());
    }
    for (ws, e, deliveries) in [
        (&a, &a_ok_new, 1),
        (&a, &a_dead_mid, 1),
        (&a, &a_mixed, 2),
        (&a, &a_retrying, 1),
        (&a, &a_paused, 2),
        (&a, &a_held, 1),
        (&a, &a_unmatched_new, 0),
        (&b, &b_ok_8, 1),
        (&b, &b_dead_40, 1),
        (&b, &b_shared, 1),
        (&ghost, &ghost_new, 0),
    ] {
        assert!(exists(store, ws, e).await, "{} should stay", e.id);
        assert_eq!(
            store.deliveries_of_event(ws, &e.id).await.unwrap().len(),
            deliveries,
            "{} keeps all its deliveries",
            e.id
        );
    }
    // The finished half of a mixed event keeps its attempt.
    assert_eq!(store.list_attempts(a_mixed_d[0]).await.unwrap().len(), 1);

    // Nothing left to do: a second run removes nothing.
    let again = prune(store, &plan, false, 3).await;
    assert_eq!(again.total, PrunedRows::default());
    assert!(again.workspaces.is_empty());
}

async fn an_override_changes_its_own_workspace_only(db: TestDb) {
    use End::*;
    let store = &db.store;
    let a = workspace(store).await;
    let b = workspace(store).await;
    let sa = stored_subscription(store, &a).await.id;
    let sb = stored_subscription(store, &b).await.id;
    let (ea, _) = recorded(&db, &a, None, &[sa], &[Succeeded], 10).await;
    let (eb, _) = recorded(&db, &b, None, &[sb], &[Succeeded], 10).await;
    // B asks for longer than the defaults, A for shorter.
    for (ws, days) in [(&a, 3), (&b, 200)] {
        store
            .set_retention_override(
                ws,
                &RetentionOverride {
                    succeeded: Some(days),
                    failed: None,
                },
                now(),
            )
            .await
            .unwrap();
    }
    let plan = plan(store.retention_overrides().await.unwrap());
    let report = prune(store, &plan, false, 1000).await;
    assert_eq!(report.workspaces.len(), 1, "{report:?}");
    assert_eq!(report.workspaces[0].workspace, a);
    assert!(!exists(store, &a, &ea).await);
    assert!(exists(store, &b, &eb).await);
    // Stopped after its first batch when told to.
    let (e1, _) = recorded(&db, &b, None, &[sb], &[Succeeded], 300).await;
    let (e2, _) = recorded(&db, &b, None, &[sb], &[Succeeded], 300).await;
    let report = store
        .prune(
            &plan,
            PruneOptions {
                dry_run: false,
                batch_rows: 1,
            },
            &mut |_, _, _| Box::pin(std::future::ready(ControlFlow::Break(()))),
        )
        .await
        .unwrap();
    assert!(report.stopped);
    assert_eq!(report.total, rows(1, 1, 1));
    assert!(!exists(store, &b, &e1).await);
    assert!(exists(store, &b, &e2).await);
}

async fn overrides_round_trip_and_need_a_workspace(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    assert_eq!(store.retention_override(&ws).await.unwrap(), None);
    let own = RetentionOverride {
        succeeded: None,
        failed: Some(14),
    };
    store
        .set_retention_override(&ws, &own, now())
        .await
        .unwrap();
    assert_eq!(store.retention_override(&ws).await.unwrap(), Some(own));
    let own = RetentionOverride {
        succeeded: Some(2),
        failed: None,
    };
    store
        .set_retention_override(&ws, &own, now())
        .await
        .unwrap();
    assert_eq!(store.retention_override(&ws).await.unwrap(), Some(own));
    // Empty: back to the defaults, no row.
    store
        .set_retention_override(&ws, &RetentionOverride::default(), now())
        .await
        .unwrap();
    assert_eq!(store.retention_override(&ws).await.unwrap(), None);
    assert!(store.retention_overrides().await.unwrap().is_empty());
    let missing = WorkspaceId::parse("nobody").unwrap();
    let err = store
        .set_retention_override(&missing, &own, now())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            courier_store::StoreError::NotFound { what: "workspace" }
        ),
        "{err:?}"
    );
}

async fn one_process_holds_the_pruning_lock(db: TestDb) {
    let lease = std::time::Duration::from_secs(60);
    let first = db
        .store
        .try_lock_pruning("test one", lease)
        .await
        .unwrap()
        .expect("free");
    // Another process on the same ledger.
    let other = courier_store::Store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    assert!(
        other
            .try_lock_pruning("test two", lease)
            .await
            .unwrap()
            .is_none()
    );
    first.release().await;
    let second = other
        .try_lock_pruning("test two", lease)
        .await
        .unwrap()
        .expect("released");
    if db.store.backend() == Backend::Postgres {
        // Dropped without a release: the session holding it is closed,
        // which releases it, soon.
        drop(second);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let free = loop {
            if let Some(lock) = db.store.try_lock_pruning("test one", lease).await.unwrap() {
                break lock;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the lock was not released"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        free.release().await;
    } else {
        second.release().await;
        // A lease that ran out (its holder died) is taken over.
        let expired = other
            .try_lock_pruning("test two", std::time::Duration::ZERO)
            .await
            .unwrap();
        assert!(expired.is_some());
        let taken = db.store.try_lock_pruning("test one", lease).await.unwrap();
        assert!(taken.is_some(), "an expired lease is taken over");
        taken.unwrap().release().await;
    }
    other.close().await;
}

/// The file of a new SQLite ledger uses incremental auto-vacuum, and
/// pruning's freed pages go back to the file system.
async fn gives_pages_back(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let sub = stored_subscription(store, &ws).await.id;
    let big = "x".repeat(8 * 1024);
    for _ in 0..200 {
        let mut e = event(&ws);
        e.data = EventData::from_value(&json!({"order_id": "o-1", "notes": big}));
        let (op, deliveries) = fan_out(&e, &[sub]);
        apply_one(store, op).await;
        apply_one(
            store,
            WriteOp::Attempt(succeeded_attempt(deliveries[0].0, 1)),
        )
        .await;
        age(&db, &ws, &e.id, 60).await;
    }
    let report = prune(store, &plan(HashMap::new()), false, 50).await;
    assert_eq!(report.total.events, 200);
    let reclaimed = store.reclaim_space().await.unwrap().expect("SQLite");
    assert!(reclaimed.incremental);
    assert!(reclaimed.pages >= 200, "{reclaimed:?}");
    assert_eq!(
        reclaimed.bytes,
        reclaimed.pages * 4096,
        "4 KiB pages: {reclaimed:?}"
    );
    let again = store.reclaim_space().await.unwrap().unwrap();
    assert_eq!(again.pages, 0);
}

/// A file created before courier asked for incremental auto-vacuum keeps
/// NONE (pages are reused, the file never shrinks) until `vacuum`.
async fn old_file_vacuum() {
    let path = std::env::temp_dir().join(format!(
        "courier-store-oldvacuum-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let url = format!("sqlite://{}", path.display());
    {
        let mut conn = SqliteConnection::connect(&format!("{url}?mode=rwc"))
            .await
            .unwrap();
        conn.execute("PRAGMA journal_mode = WAL; CREATE TABLE before_courier (x INTEGER)")
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let store = Store::connect(&url, &Default::default()).await.unwrap();
    store.migrate().await.unwrap();
    let reclaimed = store.reclaim_space().await.unwrap().unwrap();
    assert!(!reclaimed.incremental);
    assert_eq!(reclaimed.pages, 0);
    let vacuumed = store.vacuum().await.unwrap().unwrap();
    assert!(vacuumed.incremental, "{vacuumed:?}");
    assert!(store.reclaim_space().await.unwrap().unwrap().incremental);
    store.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// A ledger at the last migration before retention, with rows, migrates
/// with every row kept, and is pruned as any other.
async fn migration_keeps_a_populated_ledger(db: TestDb) {
    let fresh = match db.store.backend() {
        Backend::Sqlite => TestDb::sqlite_unmigrated().await,
        Backend::Postgres => TestDb::postgres_unmigrated().await,
    };
    let (folder, first_retention) = match fresh.store.backend() {
        Backend::Sqlite => ("sqlite", 9),
        Backend::Postgres => ("postgres", 11),
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../migrations")
        .join(folder);
    let mut old = sqlx::migrate::Migrator::new(path).await.unwrap();
    old.migrations = old
        .migrations
        .iter()
        .filter(|m| m.version < first_retention)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let ws = WorkspaceId::parse("acme").unwrap();
    let sub = subscription(&ws, &[EventType::OrderCreated], &[]);
    let (old_event, new_event) = ("evt-old", "evt-new");
    let delivery = |e: &str| DeliveryId::derive(&EventId::parse(e).unwrap(), sub.id);
    let long_ago = now() - Duration::days(45);
    let lately = now() - Duration::days(1);
    let pg = fresh.store.backend() == Backend::Postgres;
    let ts = |at: DateTime<Utc>| {
        if pg {
            format!("'{}'::timestamptz", at.to_rfc3339())
        } else {
            format!("'{}'", at.to_rfc3339_opts(SecondsFormat::Micros, true))
        }
    };
    let uuid = |id: String| {
        if pg {
            format!("'{id}'::uuid")
        } else {
            format!("'{id}'")
        }
    };
    let (types, empty) = if pg {
        ("ARRAY['order.created']", "ARRAY[]::text[]")
    } else {
        (r#"'["order.created"]'"#, "'[]'")
    };
    let sub_id = uuid(sub.id.to_string());
    let mut rows = vec![
        format!(
            "INSERT INTO workspaces (id, name, created_at) VALUES ('acme', 'Acme', {})",
            ts(long_ago)
        ),
        format!(
            "INSERT INTO subscriptions (id, workspace_id, name, url, event_types, channels, \
             secret, status, created_at, updated_at) VALUES ({sub_id}, 'acme', 'erp', \
             'https://erp.example.com/hooks', {types}, {empty}, \
             'whsec_c2VjcmV0c2VjcmV0c2VjcmV0', 'enabled', {at}, {at})",
            at = ts(long_ago)
        ),
    ];
    for (e, at) in [(old_event, long_ago), (new_event, lately)] {
        let d = uuid(delivery(e).to_string());
        let at = ts(at);
        rows.push(format!(
            "INSERT INTO events (id, workspace_id, type, channel, occurred_at, data, \
             received_at) VALUES ('{e}', 'acme', 'order.created', NULL, {at}, \
             '{{\"order_id\": \"o-1\"}}', {at})"
        ));
        rows.push(format!(
            "INSERT INTO deliveries (id, event_id, subscription_id, workspace_id, event_type, \
             status, attempts, last_response_status, last_attempt_at, created_at, updated_at) \
             VALUES ({d}, '{e}', {sub_id}, 'acme', 'order.created', 'succeeded', 1, 200, \
             {at}, {at}, {at})"
        ));
        rows.push(format!(
            "INSERT INTO attempts (delivery_id, attempt, url, started_at, duration_ms, \
             response_status) VALUES ({d}, 1, 'https://erp.example.com/hooks', {at}, 12, 200)"
        ));
    }
    if pg {
        let pool = sqlx::PgPool::connect(&fresh.url).await.unwrap();
        old.run(&pool).await.unwrap();
        for row in &rows {
            pool.execute(sqlx::AssertSqlSafe(row.as_str()))
                .await
                .unwrap();
        }
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(&fresh.url).await.unwrap();
        old.run(&pool).await.unwrap();
        for row in &rows {
            pool.execute(sqlx::AssertSqlSafe(row.as_str()))
                .await
                .unwrap();
        }
        pool.close().await;
    }

    let store = &fresh.store;
    store.migrate().await.unwrap();
    for e in [old_event, new_event] {
        let id = EventId::parse(e).unwrap();
        assert!(store.get_event(&ws, &id).await.unwrap().is_some(), "{e}");
        let d = store.get_delivery(delivery(e)).await.unwrap().unwrap();
        assert_eq!(d.status, DeliveryStatus::Succeeded);
        assert_eq!(store.list_attempts(delivery(e)).await.unwrap().len(), 1);
    }
    assert!(store.get_subscription(&ws, sub.id).await.unwrap().is_some());
    assert_eq!(store.retention_override(&ws).await.unwrap(), None);

    let report = prune(store, &plan(HashMap::new()), false, 1000).await;
    assert_eq!(report.total, rows_of(1, 1, 1));
    assert!(
        store
            .get_event(&ws, &EventId::parse(old_event).unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get_event(&ws, &EventId::parse(new_event).unwrap())
            .await
            .unwrap()
            .is_some()
    );
    fresh.remove().await;
}

fn rows_of(events: u64, deliveries: u64, attempts: u64) -> PrunedRows {
    rows(events, deliveries, attempts)
}
