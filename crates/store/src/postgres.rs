//! The PostgreSQL backend, for deployments with several workers: its
//! connections, encodings and SQL. The batch plan and the queries are the
//! shared ones (`batch.rs`, `queries.rs`); a run's rows travel as arrays
//! that `UNNEST` turns back into rows.
//!
//! UUIDs, timestamps and lists (`TEXT[]`) are native types; event data is
//! `json`, which keeps the text as given.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use courier_model::{DeliveryId, DeliveryStatus, Event, EventData};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::{Connection, PgConnection, Pool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::batch::{self, Conflicts, NewDelivery, PendingOfEvents};
use crate::dialect::Dialect;
use crate::rows::{self, i32_saturating};
use crate::{AttemptWrite, Result, StoreError, StoreOptions};

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// How long opening the first connection may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        // One connection first, bounded in time: a wrong port, host,
        // password or database name fails now with its cause, where the
        // pool would retry it in silence until its own wait ran out.
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url)).await {
            Ok(connection) => connection?.close().await?,
            Err(_) => {
                let waited = format!("no answer within {} s", CONNECT_TIMEOUT.as_secs());
                let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, waited);
                return Err(sqlx::Error::Io(timed_out).into());
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    /// Safe to run from several processes at once: sqlx serialises
    /// migrations with an advisory lock.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        self.pool.acquire().await?.ping().await?;
        Ok(())
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// An INSERT statement in both forms: `$conflict` is its ON CONFLICT
/// clause, left out when no conflict is expected.
macro_rules! insert {
    ($conflicts:expr, $head:literal, $conflict:literal, $tail:literal) => {
        match $conflicts {
            Conflicts::Unexpected => concat!($head, " ", $tail),
            Conflicts::Expected => concat!($head, " ", $conflict, " ", $tail),
        }
    };
}

/// A run's events, one array per column.
#[derive(Default)]
pub(crate) struct EventColumns<'a> {
    ids: Vec<&'a str>,
    workspaces: Vec<&'a str>,
    types: Vec<&'a str>,
    channels: Vec<Option<&'a str>>,
    occurred: Vec<DateTime<Utc>>,
    data: Vec<&'a str>,
}

/// A run's deliveries, one array per column.
#[derive(Default)]
pub(crate) struct DeliveryColumns<'a> {
    ids: Vec<Uuid>,
    events: Vec<&'a str>,
    subscriptions: Vec<Uuid>,
    workspaces: Vec<&'a str>,
    types: Vec<&'a str>,
    status: Vec<&'static str>,
    attempts: Vec<i32>,
    response: Vec<Option<i32>>,
    last: Vec<Option<DateTime<Utc>>>,
    next: Vec<Option<DateTime<Utc>>>,
    held: Vec<Option<DateTime<Utc>>>,
}

impl Dialect for PgStore {
    type Db = Postgres;

    // --- connections ------------------------------------------------------

    fn reads(&self) -> &Pool<Postgres> {
        &self.pool
    }

    async fn begin(&self) -> sqlx::Result<Transaction<'static, Postgres>> {
        self.pool.begin().await
    }

    /// Any pooled connection: a single statement is its own transaction.
    type Writer = PoolConnection<Postgres>;

    async fn writer(&self) -> Result<PoolConnection<Postgres>> {
        Ok(self.pool.acquire().await?)
    }

    async fn finish_write<T: Send>(_: PoolConnection<Postgres>, result: Result<T>) -> Result<T> {
        result
    }

    // --- encodings --------------------------------------------------------

    type Uuid = Uuid;
    type Ts = DateTime<Utc>;
    type List = Vec<String>;
    type Ids = Vec<Uuid>;

    fn uuid(id: Uuid) -> Uuid {
        id
    }

    fn ts(at: &DateTime<Utc>) -> DateTime<Utc> {
        *at
    }

    fn list(items: Vec<String>) -> Vec<String> {
        items
    }

    fn ids(ids: impl Iterator<Item = Uuid>) -> Result<Vec<Uuid>> {
        Ok(ids.collect())
    }

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    // --- decodings --------------------------------------------------------

    fn uuid_of(row: &PgRow, col: &str) -> Result<Uuid> {
        Ok(row.try_get(col)?)
    }

    fn opt_uuid_of(row: &PgRow, col: &str) -> Result<Option<Uuid>> {
        Ok(row.try_get(col)?)
    }

    fn int(row: &PgRow, col: &str) -> Result<i64> {
        Ok(i64::from(row.try_get::<i32, _>(col)?))
    }

    fn opt_int(row: &PgRow, col: &str) -> Result<Option<i64>> {
        Ok(row.try_get::<Option<i32>, _>(col)?.map(i64::from))
    }

    fn ts_of(row: &PgRow, col: &str) -> Result<DateTime<Utc>> {
        Ok(row.try_get(col)?)
    }

    fn opt_ts_of(row: &PgRow, col: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(row.try_get(col)?)
    }

    fn list_of(row: &PgRow, col: &str) -> Result<Vec<String>> {
        Ok(row.try_get(col)?)
    }

    fn data_of(row: &PgRow, col: &str) -> Result<EventData> {
        Ok(row.try_get::<sqlx::types::Json<EventData>, _>(col)?.0)
    }

    // --- SQL ----------------------------------------------------------------

    const INSERT_WORKSPACE: &'static str =
        "INSERT INTO workspaces (id, name, created_at) VALUES ($1, $2, $3)";
    const SELECT_WORKSPACE: &'static str =
        "SELECT id, name, created_at FROM workspaces WHERE id = $1";

    /// 500 rows of 20 parameters a statement: a round trip each instead
    /// of 500.
    const SUBSCRIPTIONS_PER_INSERT: usize = 500;
    const INSERT_SUBSCRIPTION: &'static str = "INSERT INTO subscriptions (id, workspace_id, name, \
         url, event_types, channels, secret, previous_secret, previous_secret_expires_at, status, \
         created_at, updated_at, disabled_reason, disabled_at, description, timeout_ms, \
         max_attempts, headers, rate_limit_per_second, rate_limit_burst) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
         $13, $14, $15, $16, $17, $18, $19, $20)";
    const SELECT_SUBSCRIPTION: &'static str = concat!(
        "SELECT ",
        rows::subscription_columns!(),
        " FROM subscriptions s WHERE s.id = $1 AND s.workspace_id = $2"
    );
    const LIST_SUBSCRIPTIONS: &'static str = concat!(
        "SELECT ",
        rows::subscription_columns!(),
        " FROM subscriptions s WHERE s.workspace_id = $1 ORDER BY s.id LIMIT $2"
    );
    const LIST_SUBSCRIPTIONS_AFTER: &'static str = concat!(
        "SELECT ",
        rows::subscription_columns!(),
        " FROM subscriptions s WHERE s.workspace_id = $1 AND s.id > $3 ORDER BY s.id LIMIT $2"
    );
    const UPDATE_SUBSCRIPTION: &'static str = "UPDATE subscriptions SET name = $3, url = $4, \
         event_types = $5, channels = $6, secret = $7, previous_secret = $8, \
         previous_secret_expires_at = $9, status = $10, updated_at = $11, \
         disabled_reason = $12, disabled_at = $13, description = $14, timeout_ms = $15, \
         max_attempts = $16, headers = $17, rate_limit_per_second = $18, \
         rate_limit_burst = $19 \
         WHERE id = $1 AND workspace_id = $2";
    const DELETE_SUBSCRIPTION: &'static str =
        "DELETE FROM subscriptions WHERE id = $1 AND workspace_id = $2";

    const SELECT_DELIVERY_CONTEXT: &'static str = concat!(
        "SELECT ",
        rows::delivery_columns!(),
        ", ",
        rows::event_columns!(),
        ", ",
        rows::subscription_columns!(),
        " FROM deliveries d \
         JOIN events e ON e.workspace_id = d.workspace_id AND e.id = d.event_id \
         LEFT JOIN subscriptions s ON s.id = d.subscription_id \
         AND s.workspace_id = d.workspace_id \
         WHERE d.id = $1"
    );
    const HELD_DUE: &'static str = "SELECT d.subscription_id, s.url, COUNT(*) AS due \
         FROM deliveries d LEFT JOIN subscriptions s ON s.id = d.subscription_id \
         WHERE d.held_until IS NOT NULL AND d.held_until <= $1 \
         GROUP BY d.subscription_id, s.url";
    /// `SKIP LOCKED`: two workers claiming at once take different rows.
    const CLAIM_HELD: &'static str = "UPDATE deliveries d SET held_until = $4 FROM ( \
             SELECT id FROM deliveries WHERE subscription_id = $1 \
             AND held_until IS NOT NULL AND held_until <= $3 \
             AND ($5::timestamptz IS NULL OR created_at < $5) \
             AND status IN ('pending', 'retrying') \
             ORDER BY held_until LIMIT $2 FOR UPDATE SKIP LOCKED \
         ) c WHERE d.id = c.id \
         RETURNING d.id, d.event_id, d.subscription_id, d.event_type, d.attempts";
    const GIVE_UP_HELD: &'static str = "UPDATE deliveries SET status = 'dead', \
         held_until = NULL, next_attempt_at = NULL, updated_at = $2, dead_reason = $3 \
         WHERE id = ANY($1::uuid[]) AND held_until IS NOT NULL \
         AND status IN ('pending', 'retrying') RETURNING id";

    const SELECT_DELIVERY: &'static str = concat!(
        "SELECT ",
        rows::delivery_columns!(),
        " FROM deliveries d WHERE d.id = $1"
    );
    const DELIVERIES_OF_EVENT: &'static str = concat!(
        "SELECT ",
        rows::delivery_columns!(),
        " FROM deliveries d WHERE d.event_id = $1 AND d.workspace_id = $2 \
         ORDER BY d.created_at, d.id"
    );
    const LIST_ATTEMPTS: &'static str = concat!(
        "SELECT ",
        rows::attempt_columns!(),
        " FROM attempts a WHERE a.delivery_id = $1 ORDER BY a.attempt"
    );

    const INSERT_API_KEY: &'static str = "INSERT INTO api_keys (id, workspace_id, name, \
         key_hash, key_prefix, created_at) VALUES ($1, $2, $3, $4, $5, $6)";
    const FIND_API_KEY: &'static str =
        "SELECT id, workspace_id, name, key_prefix, created_at FROM api_keys WHERE key_hash = $1";
    const LIST_API_KEYS: &'static str = "SELECT id, workspace_id, name, key_prefix, created_at \
         FROM api_keys WHERE workspace_id = $1 ORDER BY created_at, id";
    const DELETE_API_KEY: &'static str = "DELETE FROM api_keys WHERE workspace_id = $1 AND id = $2";
    const LIST_DELIVERIES: &'static str = concat!(
        rows::delivery_log_select!(),
        "WHERE d.workspace_id = $1 \
         AND ($2::text IS NULL OR d.event_type = $2) \
         AND ($3::text IS NULL OR d.status = $3) \
         AND ($4::uuid IS NULL OR d.subscription_id = $4) \
         AND ($5::timestamptz IS NULL OR (d.created_at, d.id) < ($5, $6::uuid)) \
         ORDER BY d.created_at DESC, d.id DESC LIMIT $7"
    );
    const SELECT_DELIVERY_ENTRY: &'static str = concat!(
        rows::delivery_log_select!(),
        "WHERE d.id = $1 AND d.workspace_id = $2"
    );
    const SELECT_EVENT: &'static str = concat!(
        "SELECT ",
        rows::event_columns!(),
        ", e.received_at AS e_received_at FROM events e \
         WHERE e.workspace_id = $1 AND e.id = $2"
    );
    const EVENT_DELIVERIES: &'static str = concat!(
        rows::delivery_log_select!(),
        "WHERE d.event_id = $1 AND d.workspace_id = $2 ORDER BY d.created_at, d.id"
    );
    /// FOR UPDATE: the returned "before" must be what the UPDATE replaced.
    const REOPEN_SELECT: &'static str = concat!(
        "SELECT ",
        rows::delivery_columns!(),
        " FROM deliveries d WHERE d.id = $1 AND d.workspace_id = $2 FOR UPDATE"
    );
    const REOPEN_FAILED_SELECT: &'static str = concat!(
        "SELECT ",
        rows::delivery_columns!(),
        " FROM deliveries d WHERE d.workspace_id = $1 AND d.subscription_id = $2 \
         AND d.status IN ('dead', 'canceled') AND d.created_at >= $3 \
         ORDER BY d.created_at, d.id LIMIT $4 FOR UPDATE"
    );
    const REOPEN: &'static str = "UPDATE deliveries SET status = 'retrying', \
         next_attempt_at = $1, held_until = NULL, updated_at = $1, dead_reason = NULL \
         WHERE id = ANY($2::uuid[])";
    const RESTORE_DELIVERY: &'static str = "UPDATE deliveries SET status = $2, \
         next_attempt_at = $3, held_until = $5, updated_at = $7 \
         WHERE id = $1 AND workspace_id = $6 AND status = 'retrying' AND attempts = $4";

    // --- the hot path -------------------------------------------------------

    /// Nearly every batch holds only rows the ledger does not have yet, and
    /// a plain INSERT costs PostgreSQL much less than one with ON CONFLICT,
    /// which inserts speculatively: 60,000 events with their deliveries and
    /// first attempts took 1.8-1.9 s of its CPU plain against 2.2-2.6 s with
    /// ON CONFLICT (pgbench, the ledger's own row shapes, 70 events per
    /// transaction). So a batch is tried plain first.
    const PLAIN_INSERTS_FIRST: bool = true;

    type EventRows<'a> = EventColumns<'a>;

    fn push_event<'a>(rows: &mut EventColumns<'a>, event: &'a Event) {
        rows.ids.push(event.id.as_str());
        rows.workspaces.push(event.workspace_id.as_str());
        rows.types.push(event.event_type.as_str());
        rows.channels
            .push(event.channel.as_ref().map(|c| c.as_str()));
        rows.occurred.push(event.occurred_at);
        rows.data.push(event.data.as_str());
    }

    async fn insert_events(
        conn: &mut PgConnection,
        rows: Self::EventRows<'_>,
        now: &DateTime<Utc>,
        conflicts: Conflicts,
    ) -> Result<HashSet<(String, String)>> {
        Ok(sqlx::query_as(insert!(
            conflicts,
            "INSERT INTO events (id, workspace_id, type, channel, occurred_at, data, received_at) \
             SELECT u.id, u.workspace_id, u.type, u.channel, u.occurred_at, u.data::json, $7 \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], \
             $6::text[]) AS u(id, workspace_id, type, channel, occurred_at, data)",
            "ON CONFLICT (workspace_id, id) DO NOTHING",
            "RETURNING workspace_id, id"
        ))
        .bind(&rows.ids)
        .bind(&rows.workspaces)
        .bind(&rows.types)
        .bind(&rows.channels)
        .bind(&rows.occurred)
        .bind(&rows.data)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect())
    }

    type DeliveryRows<'a> = DeliveryColumns<'a>;

    fn push_delivery<'a>(rows: &mut DeliveryColumns<'a>, delivery: NewDelivery<'a>) {
        rows.ids.push(delivery.id);
        rows.events.push(delivery.event.id.as_str());
        rows.subscriptions.push(delivery.subscription);
        rows.workspaces.push(delivery.event.workspace_id.as_str());
        rows.types.push(delivery.event.event_type.as_str());
        rows.status.push(delivery.status);
        rows.attempts.push(i32::from(delivery.attempts));
        rows.response
            .push(delivery.last_response_status.map(i32::from));
        rows.last.push(delivery.last_attempt_at);
        rows.next.push(delivery.next_attempt_at);
        rows.held.push(delivery.held_until);
    }

    async fn insert_deliveries(
        conn: &mut PgConnection,
        rows: Self::DeliveryRows<'_>,
        now: &DateTime<Utc>,
        conflicts: Conflicts,
    ) -> Result<Vec<Uuid>> {
        Ok(sqlx::query_scalar(insert!(
            conflicts,
            "INSERT INTO deliveries (id, event_id, subscription_id, workspace_id, event_type, \
             status, attempts, last_response_status, last_attempt_at, next_attempt_at, \
             held_until, created_at, updated_at) \
             SELECT u.id, u.event_id, u.subscription_id, u.workspace_id, u.event_type, \
             u.status, u.attempts, u.last_response_status, u.last_attempt_at, \
             u.next_attempt_at, u.held_until, $11, $11 \
             FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], \
             $6::text[], $7::int[], $8::int[], $9::timestamptz[], $10::timestamptz[], \
             $12::timestamptz[]) \
             AS u(id, event_id, subscription_id, workspace_id, event_type, status, attempts, \
             last_response_status, last_attempt_at, next_attempt_at, held_until)",
            "ON CONFLICT (event_id, subscription_id) DO NOTHING",
            "RETURNING id"
        ))
        .bind(&rows.ids)
        .bind(&rows.events)
        .bind(&rows.subscriptions)
        .bind(&rows.workspaces)
        .bind(&rows.types)
        .bind(&rows.status)
        .bind(&rows.attempts)
        .bind(&rows.response)
        .bind(&rows.last)
        .bind(&rows.next)
        .bind(now)
        .bind(&rows.held)
        .fetch_all(&mut *conn)
        .await?)
    }

    async fn pending_of_events(
        conn: &mut PgConnection,
        events: &[(&str, &str)],
    ) -> Result<PendingOfEvents> {
        let (workspaces, ids): (Vec<&str>, Vec<&str>) = events.iter().copied().unzip();
        let rows: Vec<(String, String, Uuid, Uuid)> = sqlx::query_as(
            "SELECT d.workspace_id, d.event_id, d.subscription_id, d.id \
             FROM UNNEST($1::text[], $2::text[]) AS e (workspace_id, id) \
             JOIN deliveries AS d ON d.event_id = e.id AND d.workspace_id = e.workspace_id \
             WHERE d.status = 'pending'",
        )
        .bind(workspaces)
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
        Ok(batch::pending_of_events(rows))
    }

    /// One statement inserts the attempt rows and updates the deliveries
    /// whose attempt was new.
    async fn record_attempts(
        conn: &mut PgConnection,
        attempts: &[&AttemptWrite],
        born: &[bool],
        now: &DateTime<Utc>,
        conflicts: Conflicts,
    ) -> Result<HashSet<Uuid>> {
        // No foreign key stands behind attempts (see migration 0002): an
        // attempt whose delivery is not in the ledger shows as a new attempt
        // that updated no delivery, and fails the batch as the key would have.
        let inserted: Vec<(Uuid, bool)> = sqlx::query_as(insert!(
            conflicts,
            "WITH u AS ( \
                 SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::timestamptz[], \
                     $5::int[], $6::int[], $7::text[], $8::text[], $9::text[], $10::text[], \
                     $11::timestamptz[], $13::bool[], $14::timestamptz[], $15::text[]) \
                 AS u(delivery_id, attempt, url, started_at, duration_ms, response_status, \
                     error_kind, error, response_excerpt, new_status, next_attempt_at, born, \
                     held_until, retry_after) \
             ), ins AS ( \
                 INSERT INTO attempts (delivery_id, attempt, url, started_at, duration_ms, \
                     response_status, error_kind, error, response_excerpt, retry_after) \
                 SELECT delivery_id, attempt, url, started_at, duration_ms, response_status, \
                     error_kind, error, response_excerpt, retry_after FROM u",
            "ON CONFLICT (delivery_id, attempt) DO NOTHING",
            "RETURNING delivery_id, attempt \
             ), upd AS ( \
                 UPDATE deliveries d SET status = u.new_status, \
                     attempts = GREATEST(d.attempts, u.attempt), \
                     last_response_status = u.response_status, last_attempt_at = u.started_at, \
                     next_attempt_at = u.next_attempt_at, held_until = u.held_until, \
                     updated_at = $12 \
                 FROM ins JOIN u ON u.delivery_id = ins.delivery_id AND u.attempt = ins.attempt \
                 WHERE d.id = ins.delivery_id AND NOT u.born \
                 RETURNING d.id \
             ) \
             SELECT ins.delivery_id, u.born OR upd.id IS NOT NULL \
             FROM ins JOIN u ON u.delivery_id = ins.delivery_id AND u.attempt = ins.attempt \
             LEFT JOIN upd ON upd.id = ins.delivery_id"
        ))
        .bind(attempts.iter().map(|a| a.delivery_id.0).collect::<Vec<_>>())
        .bind(
            attempts
                .iter()
                .map(|a| i32_saturating(a.attempt))
                .collect::<Vec<_>>(),
        )
        .bind(attempts.iter().map(|a| a.url.as_str()).collect::<Vec<_>>())
        .bind(attempts.iter().map(|a| a.started_at).collect::<Vec<_>>())
        .bind(
            attempts
                .iter()
                .map(|a| i32_saturating(a.duration_ms))
                .collect::<Vec<_>>(),
        )
        .bind(
            attempts
                .iter()
                .map(|a| a.response_status.map(i32::from))
                .collect::<Vec<_>>(),
        )
        .bind(
            attempts
                .iter()
                .map(|a| a.error_kind.map(|k| k.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(
            attempts
                .iter()
                .map(|a| a.error.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            attempts
                .iter()
                .map(|a| a.response_excerpt.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            attempts
                .iter()
                .map(|a| a.new_status.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            attempts
                .iter()
                .map(|a| a.next_attempt_at)
                .collect::<Vec<_>>(),
        )
        .bind(now)
        .bind(born)
        .bind(attempts.iter().map(|a| a.held_until).collect::<Vec<_>>())
        .bind(
            attempts
                .iter()
                .map(|a| a.retry_after.as_deref())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *conn)
        .await?;
        if let Some(&(missing, _)) = inserted.iter().find(|(_, known)| !known) {
            return Err(StoreError::UnknownDelivery(DeliveryId(missing)));
        }
        Ok(inserted.into_iter().map(|(id, _)| id).collect())
    }

    async fn hold(
        conn: &mut PgConnection,
        holds: &[(Uuid, u32, DateTime<Utc>)],
        now: &DateTime<Utc>,
    ) -> Result<HashSet<Uuid>> {
        let (mut ids, mut attempts, mut untils) = (vec![], vec![], vec![]);
        for &(id, attempt, until) in holds {
            ids.push(id);
            attempts.push(i32_saturating(attempt));
            untils.push(until);
        }
        Ok(sqlx::query_scalar(
            "UPDATE deliveries d SET held_until = u.until, next_attempt_at = u.until, \
             updated_at = $4 \
             FROM UNNEST($1::uuid[], $2::int[], $3::timestamptz[]) AS u(id, attempt, until) \
             WHERE d.id = u.id AND d.attempts = u.attempt - 1 \
             AND d.status IN ('pending', 'retrying') RETURNING d.id",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&untils)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect())
    }

    /// One statement for the whole run.
    async fn stop(
        conn: &mut PgConnection,
        ids: &[Uuid],
        to: DeliveryStatus,
        now: &DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET status = $3, next_attempt_at = NULL, \
             held_until = NULL, updated_at = $2 \
             WHERE id = ANY($1::uuid[]) AND status IN ('pending', 'retrying')",
        )
        .bind(ids)
        .bind(now)
        .bind(to.as_str())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
