//! The SQLite backend: the embedded default, one file on local disk.
//!
//! SQLite allows one writer at a time. Every write goes through a pool of
//! exactly one connection and opens its transaction with `BEGIN IMMEDIATE`,
//! so the write lock is taken up front: a deferred transaction that reads
//! first and writes later gets `SQLITE_BUSY` at once in WAL mode instead of
//! waiting. Other processes on the same file queue on `busy_timeout`. Reads
//! use a separate pool and never wait for the writer (WAL).
//!
//! The writer never checkpoints on the hot path: a task of its own, on a
//! connection of its own, copies the WAL into the database file a few
//! times a second (`PRAGMA wal_checkpoint(PASSIVE)`, which waits for
//! nobody and blocks nobody), so a commit pays for its own WAL frames and
//! fsync only. The writer's own automatic checkpoint stays as a backstop at
//! a larger size: under sustained writes a passive checkpoint may never
//! find the WAL idle long enough to restart it, and the backstop (which
//! then finds almost every frame copied already) bounds its growth.
//!
//! `synchronous=FULL` in WAL mode by default: a commit is on disk when it
//! returns, so it survives a power loss as well as the process crashing.
//! The ledger alone holds held deliveries and the retries it owes, their
//! events long acked, so a rolled-back commit would lose them. The ledger
//! commits in groups, so the fsync is paid per batch, not per event, and
//! on SQLite it spaces its commits a few milliseconds apart so that a
//! moderate rate still makes groups (`LedgerOptions::sqlite_commit_interval`).
//! `synchronous=NORMAL` (`database.sqlite_synchronous = "normal"`) only
//! survives the process crashing; it is there as an explicit opt-in.
//!
//! The SQLite library is built without memory statistics
//! (`SQLITE_DEFAULT_MEMSTATUS=0`, set for every build in
//! `.cargo/config.toml`). With them, every allocation and free inside
//! SQLite takes one process-wide mutex; sqlx's connection threads allocate
//! each value they read and courier's tasks free it, so the two took turns
//! on that mutex for every column of every row (loading a million webhooks
//! took twice as long with it: docs/benchmarks.md, "loading a million
//! webhooks").
//!
//! SQLite has no timestamp or UUID types: timestamps are stored as RFC 3339
//! text with exactly six fractional digits, so that text order is time order,
//! and UUIDs as lowercase hyphenated text. Lists are JSON arrays.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use courier_model::{DeliveryStatus, Event, EventData, Subscription};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteQueryResult, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Pool, Row, Sqlite, SqliteConnection, Transaction};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::batch::{self, Conflicts, NewDelivery, PendingOfEvents};
use crate::dialect::{Dialect, finish};
use crate::rows::{self, corrupt};
use crate::{AttemptWrite, Result, SqliteSync, StoreError, StoreOptions};

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How long a write waits for another process holding the file's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the checkpoint task copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// WAL pages (4 KiB each) past which the writer checkpoints itself, the
/// backstop of the checkpoint task: 32 MiB, against SQLite's 1,000 pages.
const WAL_BACKSTOP_PAGES: u32 = 8192;

/// The size the WAL file is cut back to after the writer restarted it.
const WAL_SIZE_LIMIT: u64 = 64 << 20;

/// The writer keeps its temporary storage in memory (`temp_store`): every
/// multi-row statement in a transaction keeps a statement journal (the
/// pages it changes, to undo it alone should it fail), and past 64 KiB
/// SQLite spills that journal to a temporary file, created, written and
/// deleted per statement: about 20 KiB of file writes per event before,
/// more with many webhooks. `VACUUM`, whose temporary copy is the whole
/// database, switches back to files while it runs (`Store::vacuum`).
const WRITER_TEMP_STORE: &str = "memory";

/// The writer's page cache, in KiB (SQLite's default is 2 MiB): the ledger's
/// indexes keyed by random ids (deliveries, attempts) take a page each per
/// insert, and a page evicted between batches is read back from the file.
const WRITER_CACHE_KIB: u32 = 32 << 10;

#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// One connection: SQLite has one writer, and queueing writers here is
    /// cheaper than letting them spin on the file lock.
    writer: SqlitePool,
    /// Readers never block on the writer in WAL mode.
    reader: SqlitePool,
    /// Checkpoints off the writer's path; stops with the last clone.
    checkpoints: Arc<Checkpoints>,
}

/// The checkpoint task: stopped by `close`, or when the last clone of the
/// store is dropped (the sender with it).
#[derive(Debug)]
struct Checkpoints {
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpoints {
    fn start(conn: SqliteConnection) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(checkpoint_loop(conn, stopped));
        Self {
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    async fn stop(&self) {
        self.stop.send_replace(true);
        let task = self.task.lock().ok().and_then(|mut task| task.take());
        if let Some(task) = task {
            // A panicked task has nothing left to stop.
            let _ = task.await;
        }
    }
}

/// Copies the WAL into the database file every [`CHECKPOINT_EVERY`], with
/// a passive checkpoint: it copies what no reader still needs, takes no
/// write lock, and returns at once when there is nothing to copy.
async fn checkpoint_loop(mut conn: SqliteConnection, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // Stopped, or every handle dropped.
            _ = stopped.wait_for(|stop| *stop) => break,
        }
        let done: sqlx::Result<(i64, i64, i64)> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut conn)
            .await;
        match done {
            Ok((_, wal, copied)) => tracing::trace!(wal, copied, "WAL checkpointed"),
            // Busy is another checkpoint running (the writer's backstop, or
            // another process): the next tick tries again.
            Err(error) => tracing::debug!(%error, "WAL checkpoint failed"),
        }
    }
    let _ = conn.close().await;
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
        // Incremental auto-vacuum takes effect in a file created by this
        // connection (before its first table); in an older file it waits
        // for a VACUUM (`Store::vacuum`), and asking costs nothing.
        let connect = connect
            .create_if_missing(true)
            .auto_vacuum(SqliteAutoVacuum::Incremental)
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
            .connect_with(
                connect
                    .clone()
                    .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
                    .pragma("wal_autocheckpoint", WAL_BACKSTOP_PAGES.to_string())
                    .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string())
                    .pragma("temp_store", WRITER_TEMP_STORE),
            )
            .await?;
        let checkpointer = connect.connect().await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .connect_with(connect)
            .await?;
        Ok(Self {
            writer,
            reader,
            checkpoints: Arc::new(Checkpoints::start(checkpointer)),
        })
    }

    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    /// The one writer connection's pool, for statements that must not run
    /// in a transaction (vacuum) or that read the writer's own view.
    pub(crate) fn writer_pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// A write transaction (`BEGIN IMMEDIATE`) on the writer.
    pub(crate) async fn writer_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    pub async fn close(&self) {
        self.checkpoints.stop().await;
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// The stored form of a timestamp: fixed width, so text order is time order.
pub(crate) fn ts(at: &DateTime<Utc>) -> String {
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

/// Rows per statement of the hot path's inserts, largest first: a run's
/// rows go in chunks of these sizes (1,000 rows: three of 256, three of 64,
/// two of 16, two of 4), so each insert has five shapes, each prepared once
/// and kept by the connection's statement cache. 256 rows of 13 parameters stay
/// well below SQLite's 32,766 parameters.
const CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];

/// The chunk sizes `rows` rows are inserted in.
fn chunks(mut rows: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let size = CHUNKS.into_iter().find(|&size| size <= rows)?;
        rows -= size;
        Some(size)
    })
}

/// A statement of many rows (an insert's VALUES, or the VALUES an update
/// joins): `head`, then `(?, ?, ..)` with `columns` parameters per row, then
/// `tail`, its SQL built once per chunk size. The parameters are anonymous,
/// numbered in the order they appear: SQLite finds a named parameter's
/// name (which sqlx asks for each one it binds) by a walk through every
/// name, so binding 3,328 parameters named `?NNN` costs millions of steps.
/// Binding rows as parameters costs SQLite and courier far less than one
/// JSON array that `json_each` unrolls: no JSON to write, escape (1 KiB of
/// event data each), parse, and take apart again column by column.
struct RowStatements {
    head: &'static str,
    columns: usize,
    tail: &'static str,
    sql: [OnceLock<String>; CHUNKS.len()],
}

impl RowStatements {
    fn sql(&self, rows: usize) -> &str {
        let slot = CHUNKS
            .iter()
            .position(|&size| size == rows)
            .expect("a chunk size");
        self.sql[slot].get_or_init(|| {
            let row = format!("({})", vec!["?"; self.columns].join(", "));
            let mut sql = String::from(self.head);
            sql.push_str(&vec![row.as_str(); rows].join(", "));
            sql.push_str(self.tail);
            sql
        })
    }
}

/// A subscription's columns as one JSON array, in the order of
/// [`rows::SubscriptionColumns`]'s fields (serde reads a struct from an
/// array field by field); the lists as arrays.
///
/// The matching index loads each row as this one value rather than twenty:
/// sqlx copies each value of a row on its connection's thread, and the
/// loading task frees the copies on another; with a million webhooks,
/// glibc's allocator passing twenty small blocks a row between the two
/// threads was most of the load (docs/benchmarks.md, 2026-12-04).
macro_rules! subscription_as_json {
    () => {
        "json_array(s.id, s.workspace_id, s.name, s.url, json(s.event_types), \
         json(s.channels), s.secret, s.previous_secret, s.previous_secret_expires_at, \
         s.status, s.disabled_reason, s.disabled_at, s.description, s.timeout_ms, \
         s.max_attempts, s.headers, s.rate_limit_per_second, s.rate_limit_burst, \
         s.created_at, s.updated_at)"
    };
}

/// The pending deliveries of events named by a JSON array of [workspace,
/// event id] pairs. The unary plus keeps the planner off the workspace's
/// index (all of a workspace's deliveries) for the event's (its few); the
/// plan is checked in `plans.rs`.
pub(crate) const PENDING_OF_EVENTS: &str = "SELECT d.workspace_id, d.event_id, d.subscription_id, d.id \
     FROM json_each(?1) AS e \
     JOIN deliveries AS d ON d.event_id = e.value ->> 1 \
        AND +d.workspace_id = e.value ->> 0 \
     WHERE d.status = 'pending'";

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

    fn loaded_subscription(row: &SqliteRow) -> Result<Subscription> {
        let text: &str = row.try_get("s_row")?;
        serde_json::from_str::<rows::SubscriptionColumns>(text)
            .map_err(|e| corrupt("subscriptions", format!("a row as JSON: {e}")))?
            .validate()
    }

    // --- SQL ----------------------------------------------------------------

    // The matching index loads each row as one value (see
    // [`subscription_as_json`]).
    const LOAD_SUBSCRIPTIONS: &'static str = concat!(
        "SELECT ",
        subscription_as_json!(),
        " AS s_row FROM subscriptions s ORDER BY s.id"
    );
    const LOAD_ENABLED_SUBSCRIPTIONS: &'static str = concat!(
        "SELECT ",
        subscription_as_json!(),
        " AS s_row FROM subscriptions s WHERE s.status = 'enabled' ORDER BY s.id"
    );

    const INSERT_WORKSPACE: &'static str =
        "INSERT INTO workspaces (id, name, created_at) VALUES (?1, ?2, ?3)";
    const SELECT_WORKSPACE: &'static str =
        "SELECT id, name, created_at FROM workspaces WHERE id = ?1";

    /// One: SQLite, in process, gains nothing from fewer statements and
    /// loses much, binding a statement of 10,000 numbered parameters cost
    /// it about 0.4 ms per row, against 0.02 ms for a prepared single-row
    /// INSERT executed row by row in the transaction.
    const SUBSCRIPTIONS_PER_INSERT: usize = 1;
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
    const DELETE_API_KEY: &'static str = "DELETE FROM api_keys WHERE workspace_id = ?1 AND id = ?2";
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
    /// batch is applied once. The inserts bind their rows as parameters of
    /// a multi-row VALUES, in chunks of a few fixed sizes (see
    /// [`RowStatements`]).
    const PLAIN_INSERTS_FIRST: bool = false;

    type EventRows<'a> = Vec<&'a Event>;

    fn push_event<'a>(rows: &mut Vec<&'a Event>, event: &'a Event) {
        rows.push(event);
    }

    async fn insert_events(
        conn: &mut SqliteConnection,
        rows: Self::EventRows<'_>,
        now: &String,
        _: Conflicts,
    ) -> Result<HashSet<(String, String)>> {
        static INSERT: RowStatements = RowStatements {
            head: "INSERT INTO events (id, workspace_id, type, channel, occurred_at, data, \
                   received_at) VALUES ",
            columns: 7,
            tail: " ON CONFLICT (workspace_id, id) DO NOTHING RETURNING workspace_id, id",
            sql: [const { OnceLock::new() }; CHUNKS.len()],
        };
        let mut inserted = HashSet::new();
        let mut rest = rows.as_slice();
        for size in chunks(rest.len()) {
            let (chunk, after) = rest.split_at(size);
            rest = after;
            let mut query = sqlx::query_as::<_, (String, String)>(INSERT.sql(size));
            for event in chunk {
                query = query
                    .bind(event.id.as_str())
                    .bind(event.workspace_id.as_str())
                    .bind(event.event_type.as_str())
                    .bind(event.channel.as_ref().map(|c| c.as_str()))
                    .bind(ts(&event.occurred_at))
                    .bind(event.data.as_str())
                    .bind(now);
            }
            inserted.extend(query.fetch_all(&mut *conn).await?);
        }
        Ok(inserted)
    }

    type DeliveryRows<'a> = Vec<NewDelivery<'a>>;

    fn push_delivery<'a>(rows: &mut Vec<NewDelivery<'a>>, delivery: NewDelivery<'a>) {
        rows.push(delivery);
    }

    async fn insert_deliveries(
        conn: &mut SqliteConnection,
        rows: Self::DeliveryRows<'_>,
        now: &String,
        _: Conflicts,
    ) -> Result<Vec<Uuid>> {
        static INSERT: RowStatements = RowStatements {
            head: "INSERT INTO deliveries (id, event_id, subscription_id, workspace_id, \
                   event_type, status, attempts, last_response_status, last_attempt_at, \
                   next_attempt_at, held_until, created_at, updated_at) VALUES ",
            columns: 13,
            tail: " ON CONFLICT (event_id, subscription_id) DO NOTHING RETURNING id",
            sql: [const { OnceLock::new() }; CHUNKS.len()],
        };
        let mut inserted = Vec::with_capacity(rows.len());
        let mut rest = rows.as_slice();
        for size in chunks(rest.len()) {
            let (chunk, after) = rest.split_at(size);
            rest = after;
            let mut query = sqlx::query_scalar::<_, String>(INSERT.sql(size));
            for d in chunk {
                query = query
                    .bind(d.id.to_string())
                    .bind(d.event.id.as_str())
                    .bind(d.subscription.to_string())
                    .bind(d.event.workspace_id.as_str())
                    .bind(d.event.event_type.as_str())
                    .bind(d.status)
                    .bind(d.attempts)
                    .bind(d.last_response_status)
                    .bind(d.last_attempt_at.as_ref().map(ts))
                    .bind(d.next_attempt_at.as_ref().map(ts))
                    .bind(d.held_until.as_ref().map(ts))
                    .bind(now)
                    .bind(now);
            }
            for id in query.fetch_all(&mut *conn).await? {
                inserted.push(parse_uuid("deliveries.id", &id)?);
            }
        }
        Ok(inserted)
    }

    async fn pending_of_events(
        conn: &mut SqliteConnection,
        events: &[(&str, &str)],
    ) -> Result<PendingOfEvents> {
        let rows = sqlx::query_as::<_, (String, String, String, String)>(PENDING_OF_EVENTS)
            .bind(serde_json::to_string(events).expect("pairs of strings serialise"))
            .fetch_all(&mut *conn)
            .await?;
        let rows = rows
            .into_iter()
            .map(|(workspace, event, subscription, id)| {
                Ok((
                    workspace,
                    event,
                    parse_uuid("deliveries.subscription_id", &subscription)?,
                    parse_uuid("deliveries.id", &id)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(batch::pending_of_events(rows))
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
        static INSERT: RowStatements = RowStatements {
            head: "INSERT INTO attempts (delivery_id, attempt, url, started_at, duration_ms, \
                   response_status, error_kind, error, response_excerpt, retry_after) VALUES ",
            columns: 10,
            tail: " ON CONFLICT (delivery_id, attempt) DO NOTHING RETURNING delivery_id",
            sql: [const { OnceLock::new() }; CHUNKS.len()],
        };
        let mut recorded = HashSet::with_capacity(attempts.len());
        let mut rest = attempts;
        for size in chunks(rest.len()) {
            let (chunk, after) = rest.split_at(size);
            rest = after;
            let mut query = sqlx::query_scalar::<_, String>(INSERT.sql(size));
            for a in chunk {
                query = query
                    .bind(a.delivery_id.0.to_string())
                    .bind(a.attempt)
                    .bind(a.url.as_str())
                    .bind(ts(&a.started_at))
                    .bind(a.duration_ms)
                    .bind(a.response_status)
                    .bind(a.error_kind.map(|k| k.as_str()))
                    .bind(a.error.as_deref())
                    .bind(a.response_excerpt.as_deref())
                    .bind(a.retry_after.as_deref());
            }
            for id in query.fetch_all(&mut *conn).await? {
                recorded.insert(parse_uuid("attempts.delivery_id", &id)?);
            }
        }

        static UPDATE: RowStatements = RowStatements {
            head: "WITH u (id, status, attempt, response, started_at, next_at, held_until) \
                   AS (VALUES ",
            columns: 7,
            tail: ") UPDATE deliveries SET status = u.status, \
                   attempts = MAX(attempts, u.attempt), last_response_status = u.response, \
                   last_attempt_at = u.started_at, next_attempt_at = u.next_at, \
                   held_until = u.held_until, updated_at = ? \
                   FROM u WHERE deliveries.id = u.id",
            sql: [const { OnceLock::new() }; CHUNKS.len()],
        };
        let updates: Vec<&AttemptWrite> = attempts
            .iter()
            .zip(born)
            .filter(|(a, born)| recorded.contains(&a.delivery_id.0) && !**born)
            .map(|(a, _)| *a)
            .collect();
        let mut rest = updates.as_slice();
        for size in chunks(rest.len()) {
            let (chunk, after) = rest.split_at(size);
            rest = after;
            let mut query = sqlx::query(UPDATE.sql(size));
            for a in chunk {
                query = query
                    .bind(a.delivery_id.0.to_string())
                    .bind(a.new_status.as_str())
                    .bind(a.attempt)
                    .bind(a.response_status)
                    .bind(ts(&a.started_at))
                    .bind(a.next_attempt_at.as_ref().map(ts))
                    .bind(a.held_until.as_ref().map(ts));
            }
            query.bind(now).execute(&mut *conn).await?;
        }
        Ok(recorded)
    }

    async fn hold(
        conn: &mut SqliteConnection,
        holds: &[(Uuid, u32, DateTime<Utc>)],
        now: &String,
    ) -> Result<HashSet<Uuid>> {
        static HOLD: RowStatements = RowStatements {
            head: "WITH u (id, attempt, until) AS (VALUES ",
            columns: 3,
            tail: ") UPDATE deliveries SET held_until = u.until, next_attempt_at = u.until, \
                   updated_at = ? FROM u WHERE deliveries.id = u.id \
                   AND deliveries.attempts = u.attempt - 1 \
                   AND deliveries.status IN ('pending', 'retrying') RETURNING deliveries.id",
            sql: [const { OnceLock::new() }; CHUNKS.len()],
        };
        let mut held = HashSet::with_capacity(holds.len());
        let mut rest = holds;
        for size in chunks(rest.len()) {
            let (chunk, after) = rest.split_at(size);
            rest = after;
            let mut query = sqlx::query_scalar::<_, String>(HOLD.sql(size));
            for (id, attempt, until) in chunk {
                query = query.bind(id.to_string()).bind(*attempt).bind(ts(until));
            }
            for id in query.bind(now).fetch_all(&mut *conn).await? {
                held.insert(parse_uuid("deliveries.id", &id)?);
            }
        }
        Ok(held)
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

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    /// The linked SQLite keeps no memory statistics (see the module's
    /// documentation): a build that lost `.cargo/config.toml`'s flag, or
    /// that overrode `LIBSQLITE3_FLAGS`, fails here. The options are the
    /// library's, so any connection shows them; an in-memory one needs no
    /// file.
    #[tokio::test]
    async fn sqlite_is_built_without_memory_statistics() {
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite");
        let options: Vec<String> = sqlx::query_scalar("PRAGMA compile_options")
            .fetch_all(&mut conn)
            .await
            .expect("compile options");
        conn.close().await.ok();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "SQLite was built with memory statistics: set LIBSQLITE3_FLAGS to \
             \"SQLITE_DEFAULT_MEMSTATUS=0\" (as .cargo/config.toml does) and rebuild; \
             compile options: {options:?}"
        );
    }
}
