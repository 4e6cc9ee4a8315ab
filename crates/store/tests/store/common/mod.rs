//! The harness every area shares: a migrated, empty ledger per test (a
//! [`ScratchDb`]: a temp file, or a fresh PostgreSQL database dropped
//! afterwards), run on both backends by [`on_both_backends!`], and the
//! builders the tests write their rows with.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use courier_model::{
    Channel, DeliveryId, DeliveryStatus, Event, EventData, EventId, EventType, Subscription,
    SubscriptionId, SubscriptionStatus, WebhookSecret, WebhookUrl, WorkspaceId,
};
use courier_store::scratch::{ScratchDb, pg_admin_url, unique_name};
use courier_store::{AttemptWrite, Backend, Store, StoreError, Workspace, WriteOp, WriteResult};
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection, SqliteConnection};

// --- harness ------------------------------------------------------------------

/// A ledger that belongs to one test. Clones share the database, which is
/// removed by [`TestDb::remove`] or, failing that, when the last clone goes.
#[derive(Clone)]
pub struct TestDb {
    pub store: Store,
    pub url: String,
    scratch: Arc<ScratchDb>,
}

impl TestDb {
    pub async fn sqlite() -> Self {
        Self::sqlite_unmigrated().await.migrated().await
    }

    pub async fn postgres() -> Self {
        Self::postgres_unmigrated().await.migrated().await
    }

    /// A ledger file with no tables yet.
    pub async fn sqlite_unmigrated() -> Self {
        Self::unmigrated(Backend::Sqlite).await
    }

    /// A new, empty PostgreSQL database, reached through
    /// `COURIER_TEST_POSTGRES_URL` (default: the local server, trust auth).
    pub async fn postgres_unmigrated() -> Self {
        Self::unmigrated(Backend::Postgres).await
    }

    async fn unmigrated(backend: Backend) -> Self {
        let admin = pg_admin_url("COURIER_TEST_POSTGRES_URL");
        let scratch = ScratchDb::create(backend, &unique_name("store"), &admin)
            .await
            .expect("PostgreSQL reachable for tests");
        let store = scratch.connect().await.expect("connect");
        Self {
            store,
            url: scratch.url().to_owned(),
            scratch: Arc::new(scratch),
        }
    }

    async fn migrated(self) -> Self {
        self.store.migrate().await.expect("migrate");
        self
    }

    pub async fn remove(self) {
        self.store.close().await;
        // A clone still alive (a task the test left running) removes it
        // when it goes.
        if let Ok(scratch) = Arc::try_unwrap(self.scratch) {
            scratch.remove().await.expect("drop test database");
        }
    }

    /// Takes the write lock the ledger needs, from a connection of its own,
    /// so that ledger writes queue up until [`WriteLock::release`].
    pub async fn hold_write_lock(&self) -> WriteLock {
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

pub enum WriteLock {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl WriteLock {
    pub async fn release(self) {
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
pub async fn run<F, Fut>(db: TestDb, test: F)
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

/// `sqlite::<name>` and `postgres::<name>` tests from each
/// `async fn name(db: TestDb)` of the module it is invoked in.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    $crate::common::run($crate::common::TestDb::sqlite().await, super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    $crate::common::run($crate::common::TestDb::postgres().await, super::$name).await;
                }
            )*
        }
    };
}

// --- builders -------------------------------------------------------------------

/// Both databases keep microseconds; values written at finer precision would
/// not compare equal after a round trip.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub async fn workspace(store: &Store) -> WorkspaceId {
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

pub fn subscription(ws: &WorkspaceId, types: &[EventType], channels: &[&str]) -> Subscription {
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
        disabled: None,
        settings: Default::default(),
        created_at: at,
        updated_at: at,
    }
}

pub async fn stored_subscription(store: &Store, ws: &WorkspaceId) -> Subscription {
    let sub = subscription(ws, &[EventType::OrderCreated], &[]);
    store.insert_subscription(&sub).await.unwrap();
    sub
}

pub fn event(ws: &WorkspaceId) -> Event {
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

pub fn fan_out(
    event: &Event,
    subs: &[SubscriptionId],
) -> (WriteOp, Vec<(DeliveryId, SubscriptionId)>) {
    let deliveries: Vec<_> = subs
        .iter()
        .map(|&s| (DeliveryId::derive(&event.id, s), s))
        .collect();
    let op = WriteOp::FanOut {
        event: Arc::new(event.clone()),
        deliveries: deliveries.clone(),
        paused: Vec::new(),
    };
    (op, deliveries)
}

/// A failed attempt (HTTP 503) scheduling a retry in a minute.
pub fn failed_attempt(delivery: DeliveryId, attempt: u32) -> AttemptWrite {
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
        retry_after: None,
        new_status: DeliveryStatus::Retrying,
        next_attempt_at: Some(started_at + Duration::minutes(1)),
        held_until: None,
    }
}

pub fn succeeded_attempt(delivery: DeliveryId, attempt: u32) -> AttemptWrite {
    AttemptWrite {
        response_status: Some(200),
        error: None,
        response_excerpt: Some("ok".into()),
        retry_after: None,
        new_status: DeliveryStatus::Succeeded,
        next_attempt_at: None,
        ..failed_attempt(delivery, attempt)
    }
}

pub async fn apply_one(store: &Store, op: WriteOp) -> WriteResult {
    let mut results = store.apply(&[op]).await.unwrap();
    assert_eq!(results.len(), 1);
    results.pop().unwrap()
}

pub async fn status_of(store: &Store, id: DeliveryId) -> DeliveryStatus {
    store.get_delivery(id).await.unwrap().unwrap().status
}

pub fn counts(pairs: Vec<(DeliveryStatus, u64)>) -> HashMap<DeliveryStatus, u64> {
    pairs.into_iter().collect()
}

/// An attempt of a delivery the ledger does not have: SQLite's foreign key
/// refuses it, PostgreSQL's ledger (which has no key there) finds it.
pub fn is_unknown_delivery(err: &StoreError) -> bool {
    match err {
        StoreError::UnknownDelivery(_) => true,
        StoreError::Batch(inner) => is_unknown_delivery(inner),
        StoreError::Database(e) => e
            .as_database_error()
            .is_some_and(|d| d.is_foreign_key_violation()),
        _ => false,
    }
}

pub fn hold(delivery_id: DeliveryId, attempt: u32, until: DateTime<Utc>) -> WriteOp {
    WriteOp::Hold {
        delivery_id,
        attempt,
        until,
    }
}
