//! The SQLite backend: the embedded default, one file on local disk.
//!
//! SQLite allows one writer at a time. Every write goes through a pool of
//! exactly one connection and opens its transaction with `BEGIN IMMEDIATE`,
//! so the write lock is taken up front: a deferred transaction that reads
//! first and writes later gets `SQLITE_BUSY` at once in WAL mode instead of
//! waiting. Other processes on the same file queue on `busy_timeout`. Reads
//! use a separate pool and never wait for the writer (WAL).
//!
//! `synchronous=FULL` in WAL mode by default: a commit is on disk when it
//! returns, so it survives a power loss as well as the process crashing.
//! The ledger alone holds held deliveries and the retries it owes, their
//! events long acked, so a rolled-back commit would lose them. The ledger
//! commits in groups, so the fsync is paid per batch, not per event.
//! `synchronous=NORMAL` (`database.sqlite_synchronous = "normal"`) only
//! survives the process crashing; it is there as an explicit opt-in.
//!
//! SQLite has no timestamp or UUID types: timestamps are stored as RFC 3339
//! text with exactly six fractional digits, so that text order is time order,
//! and UUIDs as lowercase hyphenated text. Lists are JSON arrays.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use courier_model::{DeliveryStatus, Event, EventData};
use serde_json::{Value, json};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Pool, Row, Sqlite, SqliteConnection, Transaction};
use uuid::Uuid;

use crate::batch::{Conflicts, NewDelivery};
use crate::dialect::{Dialect, finish};
use crate::rows::{self, corrupt};
use crate::{AttemptWrite, Result, SqliteSync, StoreError, StoreOptions};

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How long a write waits for another process holding the file's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// One connection: SQLite has one writer, and queueing writers here is
    /// cheaper than letting them spin on the file lock.
    writer: SqlitePool,
    /// Readers never block on the writer in WAL mode.
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating when missing) the file named by `sqlite://PATH` or
    /// `sqlite:PATH`. In-memory databases are refused: the writer and reader
    /// pools would each see their own, empty database.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        let connect = SqliteConnectOptions::from_str(url)?;
        if connect.get_filename().as_os_str().is_empty()
            || url.contains(":memory:")
            || url.contains("mode=memory")
        {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        let connect = connect
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match options.sqlite_sync {
                SqliteSync::Full => SqliteSynchronous::Full,
                SqliteSync::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);

        // The writer connects first: it creates the file and switches it to
        // WAL before any reader opens it.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .connect_with(connect)
            .await?;
        Ok(Self { writer, reader })
    }

    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// The stored form of a timestamp: fixed width, so text order is time order.
fn ts(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(column: &str, value: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            corrupt(
                column,
                format!("{value:?} is not an RFC 3339 timestamp: {e}"),
            )
        })
}

fn parse_uuid(column: &str, value: &str) -> Result<Uuid> {
    Uuid::parse_str(value).map_err(|e| corrupt(column, format!("{value:?} is not a UUID: {e}")))
}

fn json_list(items: &[String]) -> String {
    // Serializing strings cannot fail; an empty array is the safe fallback.
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

/// UUIDs as a JSON array of their text, for `json_each`. Their text needs no
/// escaping.
fn json_ids(ids: impl Iterator<Item = Uuid>) -> String {
    let mut json = String::from("[");
    for (i, id) in ids.enumerate() {
        if i > 0 {
            json.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(json, "\"{id}\"");
    }
    json.push(']');
    json
}

/// Rows as one JSON array that `json_each` unrolls (SQLite's UNNEST).
fn json_rows(table: &str, rows: &[Value]) -> Result<String> {
    serde_json::to_string(rows).map_err(|e| corrupt(table, e))
}

impl Dialect for SqliteStore {
    type Db = Sqlite;

    // --- connections ------------------------------------------------------

    fn reads(&self) -> &Pool<Sqlite> {
        &self.reader
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front: a deferred
    /// transaction that reads first and writes later gets `SQLITE_BUSY` at
    /// once in WAL mode instead of waiting.
    async fn begin(&self) -> sqlx::Result<Transaction<'static, Sqlite>> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    /// Even a single UPDATE goes through `BEGIN IMMEDIATE`: as an
    /// autocommit statement it would read first and could fail with an
    /// unretried `SQLITE_BUSY_SNAPSHOT` when another process committed in
    /// between.
    type Writer = Transaction<'static, Sqlite>;

    async fn writer(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.begin().await?)
    }

    async fn finish_write<T: Send>(
        tx: Transaction<'static, Sqlite>,
        result: Result<T>,
    ) -> Result<T> {
        finish(tx, result).await
    }

    // --- encodings --------------------------------------------------------

    type Uuid = String;
    type Ts = String;
    type List = String;
    type Ids = String;

    fn uuid(id: Uuid) -> String {
        id.to_string()
    }

    fn ts(at: &DateTime<Utc>) -> String {
        ts(at)
    }

    fn list(items: Vec<String>) -> String {
        json_list(&items)
    }

    fn ids(ids: impl Iterator<Item = Uuid>) -> Result<String> {
        Ok(json_ids(ids))
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    // --- decodings --------------------------------------------------------

    fn uuid_of(row: &SqliteRow, col: &str) -> Result<Uuid> {
        parse_uuid(col, row.try_get(col)?)
    }

    fn opt_uuid_of(row: &SqliteRow, col: &str) -> Result<Option<Uuid>> {
        row.try_get::<Option<&str>, _>(col)?
            .map(|v| parse_uuid(col, v))
            .transpose()
    }

    fn int(row: &SqliteRow, col: &str) -> Result<i64> {
        Ok(row.try_get(col)?)
    }

    fn opt_int(row: &SqliteRow, col: &str) -> Result<Option<i64>> {
        Ok(row.try_get(col)?)
    }

    fn ts_of(row: &SqliteRow, col: &str) -> Result<DateTime<Utc>> {
        parse_ts(col, row.try_get(col)?)
    }

    fn opt_ts_of(row: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>> {
        row.try_get::<Option<&str>, _>(col)?
            .map(|v| parse_ts(col, v))
            .transpose()
    }

    fn list_of(row: &SqliteRow, col: &str) -> Result<Vec<String>> {
        serde_json::from_str(row.try_get(col)?)
            .map_err(|e| corrupt(col, format!("not a JSON array of strings: {e}")))
    }

    fn data_of(row: &SqliteRow, col: &str) -> Result<EventData> {
        let data: &str = row.try_get(col)?;
        EventData::from_text(data.to_owned()).map_err(|e| corrupt(col, e))
    }

    // --- SQL ----------------------------------------------------------------

    const INSERT_WORKSPACE: &'static str =
        "INSERT INTO workspaces (id, name, created_at) VALUES (?1, ?2, ?3)";
    const SELECT_WORKSPACE: &'static str =
        "SELECT id, name, created_at FROM workspaces WHERE id = ?1";

    const INSERT_SUBSCRIPTION: &'static str = "INSERT INTO subscriptions (id, workspace_id, name, \
         url, event_types, channels, secret, previous_secret, previous_secret_expires_at, status, \
         created_at, updated_at, disabled_reason, disabled_at, description, timeout_ms, \
         max_attempts, headers, rate_limit_per_second, rate_limit_burst) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, \
         ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)";
    const SELECT_SUBSCRIPTION: &'static str = concat!(
        "SELECT ",
        rows::subscription_columns!(),
        " FROM subscriptions s WHERE s.id = ?1 AND s.workspace_id = ?2"
    );
    const LIST_SUBSCRIPTIONS: &'static str = concat!(
        "SELECT ",
        rows::subscription_columns!(),
        " FROM subscriptions s WHERE s.workspace_id = ?1 ORDER BY s.id LIMIT ?2"
    );
    /// Hyphenated lowercase UUIDs sort as text exactly as they sort as
    /// numbers, so `id > ?` pages in id (= creation) order.
    const LIST_SUBSCRIPTIONS_AFTER: &'static str = concat!(
        "SELECT ",
        rows::subscription_columns!(),
        " FROM subscriptions s WHERE s.workspace_id = ?1 AND s.id > ?3 ORDER BY s.id LIMIT ?2"
    );
    const UPDATE_SUBSCRIPTION: &'static str = "UPDATE subscriptions SET name = ?3, url = ?4, \
         event_types = ?5, channels = ?6, secret = ?7, previous_secret = ?8, \
         previous_secret_expires_at = ?9, status = ?10, updated_at = ?11, \
         disabled_reason = ?12, disabled_at = ?13, description = ?14, timeout_ms = ?15, \
         max_attempts = ?16, headers = ?17, rate_limit_per_second = ?18, \
         rate_limit_burst = ?19 \
         WHERE id = ?1 AND workspace_id = ?2";
    const DELETE_SUBSCRIPTION: &'static str =
        "DELETE FROM subscriptions WHERE id = ?1 AND workspace_id = ?2";

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
         WHERE d.id = ?1"
    );
    const HELD_DUE: &'static str = "SELECT d.subscription_id, s.url, COUNT(*) AS due \
         FROM deliveries d LEFT JOIN subscriptions s ON s.id = d.subscription_id \
         WHERE d.held_until IS NOT NULL AND d.held_until <= ?1 \
         GROUP BY d.subscription_id, s.url";
    /// One writer at a time: two workers claiming at once take different
    /// rows.
    const CLAIM_HELD: &'static str = "UPDATE deliveries SET held_until = ?4 WHERE id IN ( \
             SELECT id FROM deliveries WHERE subscription_id = ?1 \
             AND held_until IS NOT NULL AND held_until <= ?3 \
             AND (?5 IS NULL OR created_at < ?5) \
             AND status IN ('pending', 'retrying') \
             ORDER BY held_until LIMIT ?2 \
         ) RETURNING id, event_id, subscription_id, event_type, attempts";
    const GIVE_UP_HELD: &'static str = "UPDATE deliveries SET status = 'dead', \
         held_until = NULL, next_attempt_at = NULL, updated_at = ?2, dead_reason = ?3 \
         WHERE id IN (SELECT value FROM json_each(?1)) AND held_until IS NOT NULL \
         AND status IN ('pending', 'retrying') RETURNING id";

    const SELECT_DELIVERY: &'static str = concat!(
        "SELECT ",
        rows::delivery_columns!(),
        " FROM deliveries d WHERE d.id = ?1"
    );
    const DELIVERIES_OF_EVENT: &'static str = concat!(
        "SELECT ",
        rows::delivery_columns!(),
        " FROM deliveries d WHERE d.event_id = ?1 AND d.workspace_id = ?2 \
         ORDER BY d.created_at, d.id"
    );
    const LIST_ATTEMPTS: &'static str = concat!(
        "SELECT ",
        rows::attempt_columns!(),
        " FROM attempts a WHERE a.delivery_id = ?1 ORDER BY a.attempt"
    );

    const INSERT_API_KEY: &'static str = "INSERT INTO api_keys (id, workspace_id, name, \
         key_hash, key_prefix, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
    const FIND_API_KEY: &'static str =
        "SELECT id, workspace_id, name, key_prefix, created_at FROM api_keys WHERE key_hash = ?1";
    const LIST_API_KEYS: &'static str = "SELECT id, workspace_id, name, key_prefix, created_at \
         FROM api_keys WHERE workspace_id = ?1 ORDER BY created_at, id";
    const DELETE_API_KEY: &'static str =
        "DELETE FROM api_keys WHERE workspace_id = ?1 AND id = ?2";
    const LIST_DELIVERIES: &'static str = concat!(
        rows::delivery_log_select!(),
        "WHERE d.workspace_id = ?1 \
         AND (?2 IS NULL OR d.event_type = ?2) \
         AND (?3 IS NULL OR d.status = ?3) \
         AND (?4 IS NULL OR d.subscription_id = ?4) \
         AND (?5 IS NULL OR (d.created_at, d.id) < (?5, ?6)) \
         ORDER BY d.created_at DESC, d.id DESC LIMIT ?7"
    );
    const SELECT_DELIVERY_ENTRY: &'static str = concat!(
        rows::delivery_log_select!(),
        "WHERE d.id = ?1 AND d.workspace_id = ?2"
    );
    const SELECT_EVENT: &'static str = concat!(
        "SELECT ",
        rows::event_columns!(),
        ", e.received_at AS e_received_at FROM events e \
         WHERE e.workspace_id = ?1 AND e.id = ?2"
    );
    const EVENT_DELIVERIES: &'static str = concat!(
        rows::delivery_log_select!(),
        "WHERE d.event_id = ?1 AND d.workspace_id = ?2 ORDER BY d.created_at, d.id"
    );
    /// No FOR UPDATE: the write transaction holds the only write lock.
    const REOPEN_SELECT: &'static str = concat!(
        "SELECT ",
        rows::delivery_columns!(),
        " FROM deliveries d WHERE d.id = ?1 AND d.workspace_id = ?2"
    );
    const REOPEN_FAILED_SELECT: &'static str = concat!(
        "SELECT ",
        rows::delivery_columns!(),
        " FROM deliveries d WHERE d.workspace_id = ?1 AND d.subscription_id = ?2 \
         AND d.status IN ('dead', 'canceled') AND d.created_at >= ?3 \
         ORDER BY d.created_at, d.id LIMIT ?4"
    );
    const REOPEN: &'static str = "UPDATE deliveries SET status = 'retrying', \
         next_attempt_at = ?1, held_until = NULL, updated_at = ?1, dead_reason = NULL \
         WHERE id IN (SELECT value FROM json_each(?2))";
    const RESTORE_DELIVERY: &'static str = "UPDATE deliveries SET status = ?2, \
         next_attempt_at = ?3, held_until = ?5, updated_at = ?7 \
         WHERE id = ?1 AND workspace_id = ?6 AND status = 'retrying' AND attempts = ?4";

    // --- the hot path -------------------------------------------------------

    /// SQLite inserts nothing speculatively, so ON CONFLICT costs it nothing
    /// a plain INSERT would not: every insert carries its clause, and a
    /// batch is applied once. Each statement takes its rows as one JSON
    /// array that `json_each` unrolls (SQLite's UNNEST); `WHERE true`
    /// resolves SQLite's parsing ambiguity between a join's ON and the
    /// upsert's ON CONFLICT.
    const PLAIN_INSERTS_FIRST: bool = false;

    type EventRows<'a> = Vec<Value>;

    fn push_event(rows: &mut Vec<Value>, event: &Event) {
        rows.push(json!([
            event.id.as_str(),
            event.workspace_id.as_str(),
            event.event_type.as_str(),
            event.channel.as_ref().map(|c| c.as_str()),
            ts(&event.occurred_at),
            event.data.as_str(),
        ]));
    }

    async fn insert_events(
        conn: &mut SqliteConnection,
        rows: Self::EventRows<'_>,
        now: &String,
        _: Conflicts,
    ) -> Result<HashSet<(String, String)>> {
        Ok(sqlx::query_as(
            "INSERT INTO events (id, workspace_id, type, channel, occurred_at, data, received_at) \
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
             json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
             json_extract(value, '$[4]'), json_extract(value, '$[5]'), ?2 \
             FROM json_each(?1) WHERE true ON CONFLICT (workspace_id, id) DO NOTHING \
             RETURNING workspace_id, id",
        )
        .bind(json_rows("events", &rows)?)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect())
    }

    type DeliveryRows<'a> = Vec<Value>;

    fn push_delivery(rows: &mut Vec<Value>, delivery: NewDelivery<'_>) {
        rows.push(json!([
            delivery.id.to_string(),
            delivery.event.id.as_str(),
            delivery.subscription.to_string(),
            delivery.event.workspace_id.as_str(),
            delivery.event.event_type.as_str(),
            delivery.status,
            delivery.attempts,
            delivery.last_response_status,
            delivery.last_attempt_at.as_ref().map(ts),
            delivery.next_attempt_at.as_ref().map(ts),
            delivery.held_until.as_ref().map(ts),
        ]));
    }

    async fn insert_deliveries(
        conn: &mut SqliteConnection,
        rows: Self::DeliveryRows<'_>,
        now: &String,
        _: Conflicts,
    ) -> Result<Vec<Uuid>> {
        sqlx::query_scalar::<_, String>(
            "INSERT INTO deliveries (id, event_id, subscription_id, workspace_id, event_type, \
             status, attempts, last_response_status, last_attempt_at, next_attempt_at, \
             held_until, created_at, updated_at) \
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
             json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
             json_extract(value, '$[4]'), json_extract(value, '$[5]'), \
             json_extract(value, '$[6]'), json_extract(value, '$[7]'), \
             json_extract(value, '$[8]'), json_extract(value, '$[9]'), \
             json_extract(value, '$[10]'), ?2, ?2 \
             FROM json_each(?1) WHERE true \
             ON CONFLICT (event_id, subscription_id) DO NOTHING RETURNING id",
        )
        .bind(json_rows("deliveries", &rows)?)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|id| parse_uuid("deliveries.id", id))
        .collect()
    }

    async fn still_pending(conn: &mut SqliteConnection, ids: &[Uuid]) -> Result<HashSet<Uuid>> {
        sqlx::query_scalar::<_, String>(
            "SELECT id FROM deliveries WHERE status = 'pending' \
             AND id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_ids(ids.iter().copied()))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|id| parse_uuid("deliveries.id", id))
        .collect()
    }

    /// One statement inserts the attempt rows (an attempt number already
    /// recorded changes nothing), one updates the deliveries whose attempt
    /// was new.
    async fn record_attempts(
        conn: &mut SqliteConnection,
        attempts: &[&AttemptWrite],
        born: &[bool],
        now: &String,
        _: Conflicts,
    ) -> Result<HashSet<Uuid>> {
        let rows: Vec<Value> = attempts
            .iter()
            .map(|a| {
                json!([
                    a.delivery_id.0.to_string(),
                    a.attempt,
                    a.url,
                    ts(&a.started_at),
                    a.duration_ms,
                    a.response_status,
                    a.error_kind.map(|k| k.as_str()),
                    a.error,
                    a.response_excerpt,
                    a.retry_after,
                ])
            })
            .collect();
        let recorded: HashSet<Uuid> = sqlx::query_scalar::<_, String>(
            "INSERT INTO attempts (delivery_id, attempt, url, started_at, duration_ms, \
             response_status, error_kind, error, response_excerpt, retry_after) \
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
             json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
             json_extract(value, '$[4]'), json_extract(value, '$[5]'), \
             json_extract(value, '$[6]'), json_extract(value, '$[7]'), \
             json_extract(value, '$[8]'), json_extract(value, '$[9]') \
             FROM json_each(?1) WHERE true \
             ON CONFLICT (delivery_id, attempt) DO NOTHING RETURNING delivery_id",
        )
        .bind(json_rows("attempts", &rows)?)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|id| parse_uuid("attempts.delivery_id", id))
        .collect::<Result<_>>()?;

        let updates: Vec<Value> = attempts
            .iter()
            .zip(born)
            .filter(|(a, born)| recorded.contains(&a.delivery_id.0) && !**born)
            .map(|(a, _)| {
                json!([
                    a.delivery_id.0.to_string(),
                    a.new_status.as_str(),
                    a.attempt,
                    a.response_status,
                    ts(&a.started_at),
                    a.next_attempt_at.as_ref().map(ts),
                    a.held_until.as_ref().map(ts),
                ])
            })
            .collect();
        if !updates.is_empty() {
            sqlx::query(
                "UPDATE deliveries SET status = json_extract(u.value, '$[1]'), \
                 attempts = MAX(attempts, json_extract(u.value, '$[2]')), \
                 last_response_status = json_extract(u.value, '$[3]'), \
                 last_attempt_at = json_extract(u.value, '$[4]'), \
                 next_attempt_at = json_extract(u.value, '$[5]'), \
                 held_until = json_extract(u.value, '$[6]'), updated_at = ?2 \
                 FROM json_each(?1) AS u WHERE deliveries.id = json_extract(u.value, '$[0]')",
            )
            .bind(json_rows("deliveries", &updates)?)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
        Ok(recorded)
    }

    async fn hold(
        conn: &mut SqliteConnection,
        holds: &[(Uuid, u32, DateTime<Utc>)],
        now: &String,
    ) -> Result<HashSet<Uuid>> {
        let rows: Vec<Value> = holds
            .iter()
            .map(|(id, attempt, until)| json!([id.to_string(), attempt, ts(until)]))
            .collect();
        sqlx::query_scalar::<_, String>(
            "UPDATE deliveries SET held_until = json_extract(u.value, '$[2]'), \
             next_attempt_at = json_extract(u.value, '$[2]'), updated_at = ?2 \
             FROM json_each(?1) AS u WHERE deliveries.id = json_extract(u.value, '$[0]') \
             AND deliveries.attempts = json_extract(u.value, '$[1]') - 1 \
             AND deliveries.status IN ('pending', 'retrying') RETURNING deliveries.id",
        )
        .bind(json_rows("deliveries", &rows)?)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|id| parse_uuid("deliveries.id", id))
        .collect()
    }

    /// One statement per delivery: cancels and pauses are rare.
    async fn stop(
        conn: &mut SqliteConnection,
        ids: &[Uuid],
        to: DeliveryStatus,
        now: &String,
    ) -> Result<()> {
        for id in ids {
            sqlx::query(
                "UPDATE deliveries SET status = ?3, next_attempt_at = NULL, \
                 held_until = NULL, updated_at = ?2 \
                 WHERE id = ?1 AND status IN ('pending', 'retrying')",
            )
            .bind(id.to_string())
            .bind(now)
            .bind(to.as_str())
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
