//! The ledger's behaviour, run unchanged against SQLite and PostgreSQL.
//!
//! Every test gets a database of its own (a temp file, or a fresh PostgreSQL
//! database dropped afterwards), so tests run in parallel. PostgreSQL is
//! reached at `COURIER_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, trust auth).
//!
//! Nothing here sleeps: where a test needs writes to be queued behind a busy
//! writer, it holds the database's write lock itself and enqueues each write
//! by polling its future once.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use chrono::{DateTime, Duration, SubsecRound, Utc};
use courier_model::{
    Channel, DeliveryId, DeliveryStatus, ErrorKind, Event, EventData, EventId, EventType,
    Subscription, SubscriptionId, SubscriptionStatus, WebhookSecret, WebhookUrl, WorkspaceId,
};
use courier_store::{
    ApiKeyRecord, AttemptWrite, Backend, DeliveryFilter, HeldDue, Ledger, LedgerOptions, Store,
    StoreError, StoreOptions, Workspace, WriteOp, WriteResult,
};
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection, SqliteConnection};

// --- harness ------------------------------------------------------------------

fn postgres_admin_url() -> String {
    std::env::var("COURIER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A migrated, empty ledger that belongs to one test.
#[derive(Clone)]
struct TestDb {
    store: Store,
    url: String,
    cleanup: Cleanup,
}

#[derive(Clone)]
enum Cleanup {
    File(PathBuf),
    Database(String),
}

impl TestDb {
    async fn sqlite() -> Self {
        Self::sqlite_unmigrated().await.migrated().await
    }

    async fn postgres() -> Self {
        Self::postgres_unmigrated().await.migrated().await
    }

    /// A ledger file with no tables yet.
    async fn sqlite_unmigrated() -> Self {
        let path = std::env::temp_dir().join(format!(
            "courier-store-test-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        let url = format!("sqlite://{}", path.display());
        Self::open(url, Cleanup::File(path)).await
    }

    /// A new, empty PostgreSQL database.
    async fn postgres_unmigrated() -> Self {
        let admin = postgres_admin_url();
        let name = format!("courier_store_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL reachable for tests");
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create test database");
        conn.close().await.ok();
        let (base, _) = admin.rsplit_once('/').expect("admin URL names a database");
        let url = format!("{base}/{name}");
        Self::open(url, Cleanup::Database(name)).await
    }

    async fn open(url: String, cleanup: Cleanup) -> Self {
        let options = StoreOptions {
            max_connections: 4,
            ..StoreOptions::default()
        };
        let store = Store::connect(&url, &options).await.expect("connect");
        Self {
            store,
            url,
            cleanup,
        }
    }

    async fn migrated(self) -> Self {
        self.store.migrate().await.expect("migrate");
        self
    }

    async fn remove(self) {
        self.store.close().await;
        match self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
            Cleanup::Database(name) => {
                let mut conn = PgConnection::connect(&postgres_admin_url())
                    .await
                    .expect("PostgreSQL reachable for cleanup");
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await
                .expect("drop test database");
            }
        }
    }

    /// Takes the write lock the ledger needs, from a connection of its own,
    /// so that ledger writes queue up until [`WriteLock::release`].
    async fn hold_write_lock(&self) -> WriteLock {
        match self.store.backend() {
            Backend::Sqlite => {
                let mut conn = SqliteConnection::connect(&self.url).await.unwrap();
                conn.execute("BEGIN IMMEDIATE").await.unwrap();
                WriteLock::Sqlite(conn)
            }
            Backend::Postgres => {
                let mut conn = PgConnection::connect(&self.url).await.unwrap();
                conn.execute("BEGIN").await.unwrap();
                // Blocks the inserts a fan-out starts with; reads still pass.
                conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
                    .await
                    .unwrap();
                WriteLock::Postgres(conn)
            }
        }
    }
}

enum WriteLock {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl WriteLock {
    async fn release(self) {
        match self {
            WriteLock::Sqlite(mut conn) => {
                conn.execute("COMMIT").await.unwrap();
                conn.close().await.unwrap();
            }
            WriteLock::Postgres(mut conn) => {
                conn.execute("COMMIT").await.unwrap();
                conn.close().await.unwrap();
            }
        }
    }
}

/// Runs `test` on its own task so that the database is removed even when the
/// test panics; the panic is then passed on.
async fn run<F, Fut>(db: TestDb, test: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(test(db.clone())).await;
    db.remove().await;
    if let Err(err) = outcome {
        std::panic::resume_unwind(err.into_panic());
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::run(super::TestDb::sqlite().await, super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::run(super::TestDb::postgres().await, super::$name).await;
                }
            )*
        }
    };
}

on_both_backends!(
    migrating_twice_is_harmless,
    workspaces_are_created_once,
    subscriptions_round_trip_and_page,
    subscription_fingerprint_tracks_every_change,
    subscriptions_are_scoped_to_their_workspace,
    subscription_needs_its_workspace,
    enabled_subscriptions_skip_disabled,
    fan_out_is_idempotent,
    attempts_are_recorded_once,
    attempts_update_the_delivery,
    mixed_ops_apply_in_kind_order,
    fan_out_and_first_attempts_in_one_batch,
    cancel_leaves_final_deliveries_alone,
    delivery_context_with_and_without_subscription,
    ledger_commits_concurrent_writes,
    ledger_fails_only_the_bad_request,
    ledger_shutdown_flushes_queued_writes,
    api_keys_are_found_by_hash,
    delivery_log_pages_newest_first_and_filters,
    reopen_and_restore_deliveries,
    held_deliveries_are_claimed_then_released_by_their_attempt,
    concurrent_claims_take_different_deliveries,
    expired_held_deliveries_are_claimed_then_given_up,
    one_event_id_in_two_workspaces_is_two_events,
    unmatched_events_are_recorded,
    migration_keys_recorded_events_by_workspace,
);

// --- builders -------------------------------------------------------------------

/// Both databases keep microseconds; values written at finer precision would
/// not compare equal after a round trip.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

async fn workspace(store: &Store) -> WorkspaceId {
    let id = WorkspaceId::generate();
    store
        .create_workspace(&Workspace {
            id: id.clone(),
            name: "Acme".into(),
            created_at: now(),
        })
        .await
        .unwrap();
    id
}

fn subscription(ws: &WorkspaceId, types: &[EventType], channels: &[&str]) -> Subscription {
    let at = now();
    Subscription {
        id: SubscriptionId::generate(),
        workspace_id: ws.clone(),
        name: "orders to ERP".into(),
        url: WebhookUrl::parse("https://erp.example.com/hooks/courier").unwrap(),
        event_types: types.to_vec(),
        channels: channels
            .iter()
            .map(|c| Channel::parse(c).unwrap())
            .collect(),
        secret: WebhookSecret::generate(),
        previous_secret: None,
        previous_secret_expires_at: None,
        status: SubscriptionStatus::Enabled,
        created_at: at,
        updated_at: at,
    }
}

async fn stored_subscription(store: &Store, ws: &WorkspaceId) -> Subscription {
    let sub = subscription(ws, &[EventType::OrderCreated], &[]);
    store.insert_subscription(&sub).await.unwrap();
    sub
}

fn event(ws: &WorkspaceId) -> Event {
    Event {
        id: EventId::generate(),
        workspace_id: ws.clone(),
        event_type: EventType::OrderCreated,
        channel: Some(Channel::parse("amazon-de").unwrap()),
        occurred_at: now() - Duration::seconds(3),
        data: EventData::from_value(
            &json!({"order_id": "o-1", "total": 12.5, "items": [{"sku": "A", "qty": 2}]}),
        ),
    }
}

fn fan_out(event: &Event, subs: &[SubscriptionId]) -> (WriteOp, Vec<(DeliveryId, SubscriptionId)>) {
    let deliveries: Vec<_> = subs
        .iter()
        .map(|&s| (DeliveryId::derive(&event.id, s), s))
        .collect();
    let op = WriteOp::FanOut {
        event: Arc::new(event.clone()),
        deliveries: deliveries.clone(),
    };
    (op, deliveries)
}

/// A failed attempt (HTTP 503) scheduling a retry in a minute.
fn failed_attempt(delivery: DeliveryId, attempt: u32) -> AttemptWrite {
    let started_at = now();
    AttemptWrite {
        delivery_id: delivery,
        attempt,
        url: "https://erp.example.com/hooks/courier".into(),
        started_at,
        duration_ms: 120,
        response_status: Some(503),
        error_kind: None,
        error: Some("HTTP 503".into()),
        response_excerpt: Some("upstream unavailable".into()),
        new_status: DeliveryStatus::Retrying,
        next_attempt_at: Some(started_at + Duration::minutes(1)),
        held_until: None,
    }
}

fn succeeded_attempt(delivery: DeliveryId, attempt: u32) -> AttemptWrite {
    AttemptWrite {
        response_status: Some(200),
        error: None,
        response_excerpt: Some("ok".into()),
        new_status: DeliveryStatus::Succeeded,
        next_attempt_at: None,
        ..failed_attempt(delivery, attempt)
    }
}

async fn apply_one(store: &Store, op: WriteOp) -> WriteResult {
    let mut results = store.apply(&[op]).await.unwrap();
    assert_eq!(results.len(), 1);
    results.pop().unwrap()
}

async fn status_of(store: &Store, id: DeliveryId) -> DeliveryStatus {
    store.get_delivery(id).await.unwrap().unwrap().status
}

fn counts(pairs: Vec<(DeliveryStatus, u64)>) -> HashMap<DeliveryStatus, u64> {
    pairs.into_iter().collect()
}

/// Polls a future once, which for a ledger write means: enqueued.
fn poll_once<F: Future>(fut: &mut Pin<Box<F>>) -> Poll<F::Output> {
    fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

/// An attempt of a delivery the ledger does not have: SQLite's foreign key
/// refuses it, PostgreSQL's ledger (which has no key there) finds it.
fn is_unknown_delivery(err: &StoreError) -> bool {
    match err {
        StoreError::UnknownDelivery(_) => true,
        StoreError::Batch(inner) => is_unknown_delivery(inner),
        StoreError::Database(e) => e
            .as_database_error()
            .is_some_and(|d| d.is_foreign_key_violation()),
        _ => false,
    }
}

// --- tests ----------------------------------------------------------------------

async fn migrating_twice_is_harmless(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    // Data written before the second run is untouched.
    assert_eq!(store.get_workspace(&ws).await.unwrap().unwrap().id, ws);
}

async fn workspaces_are_created_once(db: TestDb) {
    let store = &db.store;
    let first = Workspace {
        id: WorkspaceId::parse("acme-eu").unwrap(),
        name: "Acme EU".into(),
        created_at: now() - Duration::hours(1),
    };
    let second = Workspace {
        id: WorkspaceId::parse("acme-us").unwrap(),
        name: "Acme US".into(),
        created_at: now(),
    };
    store.create_workspace(&first).await.unwrap();
    store.create_workspace(&second).await.unwrap();

    let again = Workspace {
        name: "someone else".into(),
        ..first.clone()
    };
    let err = store.create_workspace(&again).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { what: "workspace" }),
        "{err:?}"
    );

    assert_eq!(
        store.get_workspace(&first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store
            .get_workspace(&WorkspaceId::parse("nope").unwrap())
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.list_workspaces().await.unwrap(), vec![first, second]);
}

async fn subscription_fingerprint_tracks_every_change(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    // Each change gives a fingerprint other than the one before it, which
    // is what a cache loaded before the change compares against.
    let mut last = store.subscriptions_fingerprint().await.unwrap();
    let mut changed = |fingerprint| {
        assert_ne!(fingerprint, last);
        last = fingerprint;
    };

    let mut sub = subscription(&ws, &[EventType::OrderCreated], &[]);
    store.insert_subscription(&sub).await.unwrap();
    changed(store.subscriptions_fingerprint().await.unwrap());

    // Updates (to the status as well) stamp a later updated_at.
    sub.status = SubscriptionStatus::Disabled;
    sub.updated_at += chrono::Duration::milliseconds(5);
    assert!(store.update_subscription(&sub).await.unwrap());
    changed(store.subscriptions_fingerprint().await.unwrap());

    store.delete_subscription(&ws, sub.id).await.unwrap();
    changed(store.subscriptions_fingerprint().await.unwrap());
    // Unchanged ledger, unchanged fingerprint.
    assert_eq!(
        store.subscriptions_fingerprint().await.unwrap(),
        store.subscriptions_fingerprint().await.unwrap()
    );
}

async fn subscriptions_round_trip_and_page(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let mut subs = Vec::new();
    for i in 0..5 {
        let mut sub = subscription(
            &ws,
            &[EventType::OrderCreated, EventType::ShipmentCreated],
            &["amazon-de", "shopify"],
        );
        sub.name = format!("endpoint {i}");
        store.insert_subscription(&sub).await.unwrap();
        subs.push(sub);
    }
    subs.sort_by_key(|s| s.id);

    let got = store.get_subscription(&ws, subs[2].id).await.unwrap();
    assert_eq!(got.as_ref(), Some(&subs[2]));

    let page1 = store.list_subscriptions(&ws, 2, None).await.unwrap();
    assert_eq!(page1, subs[0..2]);
    let page2 = store
        .list_subscriptions(&ws, 2, Some(page1[1].id))
        .await
        .unwrap();
    assert_eq!(page2, subs[2..4]);
    let page3 = store
        .list_subscriptions(&ws, 2, Some(page2[1].id))
        .await
        .unwrap();
    assert_eq!(page3, subs[4..5]);
    assert!(
        store
            .list_subscriptions(&ws, 2, Some(page3[0].id))
            .await
            .unwrap()
            .is_empty()
    );

    // Update replaces every mutable field, including a rotation.
    let mut updated = subs[1].clone();
    updated.name = "renamed".into();
    updated.url = WebhookUrl::parse("http://erp.example.com:8080/v2?x=1").unwrap();
    updated.event_types = vec![EventType::RefundRequested];
    updated.channels = vec![];
    updated.previous_secret = Some(updated.secret.clone());
    updated.previous_secret_expires_at = Some(now() + Duration::hours(24));
    updated.secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    updated.status = SubscriptionStatus::Disabled;
    updated.updated_at = now() + Duration::seconds(1);
    assert!(store.update_subscription(&updated).await.unwrap());
    assert_eq!(
        store.get_subscription(&ws, updated.id).await.unwrap(),
        Some(updated.clone())
    );

    let mut stranger = subscription(&ws, &[EventType::OrderCreated], &[]);
    stranger.name = "never stored".into();
    assert!(!store.update_subscription(&stranger).await.unwrap());

    let err = store.insert_subscription(&subs[0]).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                what: "subscription"
            }
        ),
        "{err:?}"
    );

    assert!(store.delete_subscription(&ws, subs[0].id).await.unwrap());
    assert!(!store.delete_subscription(&ws, subs[0].id).await.unwrap());
    assert_eq!(store.get_subscription(&ws, subs[0].id).await.unwrap(), None);
    let remaining = store.list_subscriptions(&ws, 100, None).await.unwrap();
    assert_eq!(
        remaining.iter().map(|s| s.id).collect::<Vec<_>>(),
        subs[1..].iter().map(|s| s.id).collect::<Vec<_>>()
    );
}

async fn subscriptions_are_scoped_to_their_workspace(db: TestDb) {
    let store = &db.store;
    let mine = workspace(store).await;
    let theirs = workspace(store).await;
    let sub = stored_subscription(store, &mine).await;

    assert_eq!(store.get_subscription(&theirs, sub.id).await.unwrap(), None);
    assert!(
        store
            .list_subscriptions(&theirs, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!store.delete_subscription(&theirs, sub.id).await.unwrap());
    let hijack = Subscription {
        workspace_id: theirs.clone(),
        name: "hijacked".into(),
        ..sub.clone()
    };
    assert!(!store.update_subscription(&hijack).await.unwrap());
    assert_eq!(
        store.get_subscription(&mine, sub.id).await.unwrap(),
        Some(sub)
    );
}

async fn subscription_needs_its_workspace(db: TestDb) {
    let store = &db.store;
    let sub = subscription(&WorkspaceId::generate(), &[EventType::OrderCreated], &[]);
    let err = store.insert_subscription(&sub).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "workspace" }),
        "{err:?}"
    );
    assert!(store.load_enabled_subscriptions().await.unwrap().is_empty());
}

async fn enabled_subscriptions_skip_disabled(db: TestDb) {
    let store = &db.store;
    let a = workspace(store).await;
    let b = workspace(store).await;
    let on_a = stored_subscription(store, &a).await;
    let on_b = stored_subscription(store, &b).await;
    let mut off = subscription(&a, &[EventType::OrderCreated], &[]);
    off.status = SubscriptionStatus::Disabled;
    store.insert_subscription(&off).await.unwrap();

    let mut expected = vec![on_a.clone(), on_b];
    expected.sort_by_key(|s| s.id);
    assert_eq!(store.load_enabled_subscriptions().await.unwrap(), expected);

    // Disabling one takes it out; re-enabling brings it back.
    let disabled = Subscription {
        status: SubscriptionStatus::Disabled,
        ..on_a.clone()
    };
    assert!(store.update_subscription(&disabled).await.unwrap());
    let ids: Vec<_> = store
        .load_enabled_subscriptions()
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert!(!ids.contains(&on_a.id) && ids.len() == 1);
}

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

fn hold(delivery_id: DeliveryId, attempt: u32, until: DateTime<Utc>) -> WriteOp {
    WriteOp::Hold {
        delivery_id,
        attempt,
        until,
    }
}

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
    let dead = store.give_up_held(&[old, pending]).await.unwrap();
    assert_eq!(dead, [old]);
    let record = store.get_delivery(old).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.held_until, record.next_attempt_at),
        (DeliveryStatus::Dead, None, None)
    );
    assert_eq!(status_of(store, pending).await, DeliveryStatus::Pending);
    assert_eq!(
        store.give_up_held(&[old]).await.unwrap(),
        [],
        "given up once"
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

async fn ledger_commits_concurrent_writes(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let sub = SubscriptionId::generate();
    let ledger = Ledger::start(store.clone(), LedgerOptions::default());

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..500 {
        let ledger = ledger.clone();
        let event = event(&ws);
        tasks.spawn(async move {
            let (op, deliveries) = fan_out(&event, &[sub]);
            let result = ledger.write(op).await.unwrap();
            assert_eq!(
                result,
                WriteResult::FanOut {
                    to_publish: deliveries.clone()
                }
            );
            deliveries[0].0
        });
    }
    let mut ids = Vec::new();
    while let Some(id) = tasks.join_next().await {
        ids.push(id.unwrap());
    }
    assert_eq!(ids.len(), 500);
    assert_eq!(
        counts(store.delivery_counts().await.unwrap()),
        HashMap::from([(DeliveryStatus::Pending, 500)])
    );

    // Then an attempt for each, concurrently, through write_many in pairs.
    let mut tasks = tokio::task::JoinSet::new();
    for pair in ids.chunks(2) {
        let ledger = ledger.clone();
        let ops: Vec<_> = pair
            .iter()
            .map(|&id| WriteOp::Attempt(succeeded_attempt(id, 1)))
            .collect();
        tasks.spawn(async move { ledger.write_many(ops).await.unwrap() });
    }
    while let Some(results) = tasks.join_next().await {
        assert_eq!(
            results.unwrap(),
            vec![WriteResult::Attempt { recorded: true }; 2]
        );
    }
    assert_eq!(
        counts(store.delivery_counts().await.unwrap()),
        HashMap::from([(DeliveryStatus::Succeeded, 500)])
    );
    for id in ids.iter().step_by(50) {
        assert_eq!(store.list_attempts(*id).await.unwrap().len(), 1);
    }
    ledger.shutdown().await;
}

async fn ledger_fails_only_the_bad_request(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let ledger = Ledger::start(store.clone(), LedgerOptions::default());
    let sub = SubscriptionId::generate();
    let events: Vec<Event> = (0..4).map(|_| event(&ws)).collect();
    let missing = DeliveryId::derive(&EventId::generate(), sub);

    // With the write lock held elsewhere, the writer stalls on its first
    // batch and every later request queues: they commit together after.
    let lock = db.hold_write_lock().await;
    let mut writes = Vec::new();
    for (i, event) in events.iter().enumerate() {
        if i == 2 {
            let bad = WriteOp::Attempt(failed_attempt(missing, 1));
            writes.push(Box::pin(ledger.write(bad)));
        }
        writes.push(Box::pin(ledger.write(fan_out(event, &[sub]).0)));
    }
    for write in &mut writes {
        assert!(poll_once(write).is_pending());
    }
    lock.release().await;

    let mut results = Vec::new();
    for write in writes {
        results.push(write.await);
    }
    assert_eq!(results.len(), 5);
    let err = results.remove(2).unwrap_err();
    assert!(is_unknown_delivery(&err), "{err:?}");
    for (result, event) in results.into_iter().zip(&events) {
        assert_eq!(
            result.unwrap(),
            WriteResult::FanOut {
                to_publish: vec![(DeliveryId::derive(&event.id, sub), sub)]
            }
        );
        assert_eq!(
            store
                .deliveries_of_event(&event.workspace_id, &event.id)
                .await
                .unwrap()
                .len(),
            1
        );
    }
    assert!(store.list_attempts(missing).await.unwrap().is_empty());

    // The ledger keeps going afterwards.
    let next = event(&ws);
    assert!(ledger.write(fan_out(&next, &[sub]).0).await.is_ok());
    ledger.shutdown().await;
}

async fn ledger_shutdown_flushes_queued_writes(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let ledger = Ledger::start(
        store.clone(),
        LedgerOptions {
            max_batch: 8,
            ..LedgerOptions::default()
        },
    );
    let handle = ledger.clone();
    let sub = SubscriptionId::generate();
    let events: Vec<Event> = (0..20).map(|_| event(&ws)).collect();

    let lock = db.hold_write_lock().await;
    let mut writes: Vec<_> = events
        .iter()
        .map(|e| Box::pin(handle.write(fan_out(e, &[sub]).0)))
        .collect();
    for write in &mut writes {
        assert!(poll_once(write).is_pending());
    }
    let mut shutdown = Box::pin(ledger.shutdown());
    assert!(poll_once(&mut shutdown).is_pending());
    lock.release().await;
    shutdown.await;

    // Everything queued before shutdown is committed and answered.
    for write in writes {
        assert!(matches!(write.await, Ok(WriteResult::FanOut { .. })));
    }
    assert_eq!(
        counts(store.delivery_counts().await.unwrap()),
        HashMap::from([(DeliveryStatus::Pending, 20)])
    );

    // After shutdown, every handle refuses.
    let late = handle.write(fan_out(&event(&ws), &[sub]).0).await;
    assert!(matches!(late, Err(StoreError::LedgerClosed)), "{late:?}");
    handle.shutdown().await;
}

/// Two stores on one SQLite file stand in for two worker processes: their
/// writers contend for the file's lock and both must get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_file_shared_by_two_stores() {
    run(TestDb::sqlite().await, |db: TestDb| async move {
        let other = Store::connect(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        other.migrate().await.unwrap();
        let ws = workspace(&db.store).await;
        let sub = SubscriptionId::generate();
        let ledgers = [
            Ledger::start(db.store.clone(), LedgerOptions::default()),
            Ledger::start(other.clone(), LedgerOptions::default()),
        ];
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..400 {
            let ledger = ledgers[i % 2].clone();
            let event = event(&ws);
            tasks.spawn(async move { ledger.write(fan_out(&event, &[sub]).0).await });
        }
        while let Some(result) = tasks.join_next().await {
            assert!(matches!(result.unwrap(), Ok(WriteResult::FanOut { .. })));
        }
        for ledger in ledgers {
            ledger.shutdown().await;
        }
        assert_eq!(
            counts(other.delivery_counts().await.unwrap()),
            HashMap::from([(DeliveryStatus::Pending, 400)])
        );
        other.close().await;
    })
    .await;
}

// --- API keys and the delivery log ---------------------------------------------

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

// --- events keyed by workspace -------------------------------------------------

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
