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

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use courier_model::{
    DeliveryId, DeliveryStatus, EventData, EventId, Subscription, SubscriptionId, WorkspaceId,
};
use futures_util::TryStreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, migrate::Migrator};
use uuid::Uuid;

use crate::rows::{
    self, AttemptParts, DeliveryParts, EventParts, SubscriptionParts, WorkspaceParts, corrupt,
};
use crate::{
    ApiKeyRecord, AttemptRecord, AttemptWrite, DeliveryContext, DeliveryCursor, DeliveryFilter,
    DeliveryLogEntry, DeliveryRecord, EventRecord, HeldDelivery, HeldDue, Result, SqliteSync,
    StoreError, StoreOptions, SubscriptionsFingerprint, Workspace, WriteOp, WriteResult,
    in_callers_order, kind_order,
};

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

fn parse_opt_ts(column: &str, value: Option<String>) -> Result<Option<DateTime<Utc>>> {
    value.map(|v| parse_ts(column, &v)).transpose()
}

fn parse_uuid(column: &str, value: &str) -> Result<Uuid> {
    Uuid::parse_str(value).map_err(|e| corrupt(column, format!("{value:?} is not a UUID: {e}")))
}

fn parse_list(column: &str, value: &str) -> Result<Vec<String>> {
    serde_json::from_str(value)
        .map_err(|e| corrupt(column, format!("not a JSON array of strings: {e}")))
}

fn json_list(items: &[String]) -> String {
    // Serializing strings cannot fail; an empty array is the safe fallback.
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

fn workspace_from_row(row: &SqliteRow) -> Result<Workspace> {
    WorkspaceParts {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: parse_ts("workspaces.created_at", row.try_get("created_at")?)?,
    }
    .into_model()
}

/// Reads the `s_*` columns of [`rows::subscription_columns`].
fn subscription_from_row(row: &SqliteRow) -> Result<Subscription> {
    SubscriptionParts {
        id: parse_uuid("subscriptions.id", row.try_get("s_id")?)?,
        workspace_id: row.try_get("s_workspace_id")?,
        name: row.try_get("s_name")?,
        url: row.try_get("s_url")?,
        event_types: parse_list("subscriptions.event_types", row.try_get("s_event_types")?)?,
        channels: parse_list("subscriptions.channels", row.try_get("s_channels")?)?,
        secret: row.try_get("s_secret")?,
        previous_secret: row.try_get("s_previous_secret")?,
        previous_secret_expires_at: parse_opt_ts(
            "subscriptions.previous_secret_expires_at",
            row.try_get("s_previous_secret_expires_at")?,
        )?,
        status: row.try_get("s_status")?,
        created_at: parse_ts("subscriptions.created_at", row.try_get("s_created_at")?)?,
        updated_at: parse_ts("subscriptions.updated_at", row.try_get("s_updated_at")?)?,
    }
    .into_model()
}

fn delivery_from_row(row: &SqliteRow) -> Result<DeliveryRecord> {
    DeliveryParts {
        id: parse_uuid("deliveries.id", row.try_get("id")?)?,
        event_id: row.try_get("event_id")?,
        subscription_id: parse_uuid(
            "deliveries.subscription_id",
            row.try_get("subscription_id")?,
        )?,
        workspace_id: row.try_get("workspace_id")?,
        event_type: row.try_get("event_type")?,
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        last_response_status: row.try_get("last_response_status")?,
        last_attempt_at: parse_opt_ts(
            "deliveries.last_attempt_at",
            row.try_get("last_attempt_at")?,
        )?,
        next_attempt_at: parse_opt_ts(
            "deliveries.next_attempt_at",
            row.try_get("next_attempt_at")?,
        )?,
        held_until: parse_opt_ts("deliveries.held_until", row.try_get("held_until")?)?,
        created_at: parse_ts("deliveries.created_at", row.try_get("created_at")?)?,
        updated_at: parse_ts("deliveries.updated_at", row.try_get("updated_at")?)?,
    }
    .into_model()
}

fn event_from_row(row: &SqliteRow) -> Result<courier_model::Event> {
    let data: &str = row.try_get("e_data")?;
    EventParts {
        id: row.try_get("e_id")?,
        workspace_id: row.try_get("e_workspace_id")?,
        event_type: row.try_get("e_type")?,
        channel: row.try_get("e_channel")?,
        occurred_at: parse_ts("events.occurred_at", row.try_get("e_occurred_at")?)?,
        data: EventData::from_text(data.to_owned()).map_err(|e| corrupt("events.data", e))?,
    }
    .into_model()
}

fn attempt_from_row(row: &SqliteRow) -> Result<AttemptRecord> {
    AttemptParts {
        delivery_id: parse_uuid("attempts.delivery_id", row.try_get("delivery_id")?)?,
        attempt: row.try_get("attempt")?,
        url: row.try_get("url")?,
        started_at: parse_ts("attempts.started_at", row.try_get("started_at")?)?,
        duration_ms: row.try_get("duration_ms")?,
        response_status: row.try_get("response_status")?,
        error_kind: row.try_get("error_kind")?,
        error: row.try_get("error")?,
        response_excerpt: row.try_get("response_excerpt")?,
    }
    .into_model()
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|e| e.is_foreign_key_violation())
}

impl SqliteStore {
    /// Runs `work` in a write transaction on the writer connection. Even a
    /// single UPDATE goes through `BEGIN IMMEDIATE`: as an autocommit
    /// statement it would read first and could fail with an unretried
    /// `SQLITE_BUSY_SNAPSHOT` when another process committed in between.
    async fn write<T>(
        &self,
        work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T>,
    ) -> Result<T> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        match work(&mut tx).await {
            Ok(value) => {
                tx.commit().await?;
                Ok(value)
            }
            Err(err) => {
                // Roll back now rather than on drop, so the single writer
                // connection is clean for whoever writes next.
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(error = %rollback, "rolling back a failed SQLite write failed");
                }
                Err(err)
            }
        }
    }

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

    // --- workspaces -------------------------------------------------------

    pub async fn create_workspace(&self, workspace: &Workspace) -> Result<()> {
        self.write(async |conn| {
            sqlx::query("INSERT INTO workspaces (id, name, created_at) VALUES (?1, ?2, ?3)")
                .bind(workspace.id.as_str())
                .bind(&workspace.name)
                .bind(ts(&workspace.created_at))
                .execute(conn)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict { what: "workspace" }
                    } else {
                        e.into()
                    }
                })?;
            Ok(())
        })
        .await
    }

    pub async fn get_workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>> {
        sqlx::query("SELECT id, name, created_at FROM workspaces WHERE id = ?1")
            .bind(id.as_str())
            .fetch_optional(&self.reader)
            .await?
            .map(|row| workspace_from_row(&row))
            .transpose()
    }

    pub async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
        sqlx::query("SELECT id, name, created_at FROM workspaces ORDER BY created_at, id")
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(workspace_from_row)
            .collect()
    }

    // --- subscriptions ----------------------------------------------------

    pub async fn insert_subscription(&self, sub: &Subscription) -> Result<()> {
        self.write(async |conn| {
            sqlx::query(
                "INSERT INTO subscriptions (id, workspace_id, name, url, event_types, channels, \
                 secret, previous_secret, previous_secret_expires_at, status, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .bind(sub.id.0.to_string())
            .bind(sub.workspace_id.as_str())
            .bind(&sub.name)
            .bind(sub.url.as_str())
            .bind(json_list(&rows::event_type_names(&sub.event_types)))
            .bind(json_list(&rows::channel_names(&sub.channels)))
            .bind(sub.secret.expose())
            .bind(sub.previous_secret.as_ref().map(|s| s.expose()))
            .bind(sub.previous_secret_expires_at.as_ref().map(ts))
            .bind(sub.status.as_str())
            .bind(ts(&sub.created_at))
            .bind(ts(&sub.updated_at))
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                if is_foreign_key_violation(&e) {
                    StoreError::NotFound { what: "workspace" }
                } else if is_unique_violation(&e) {
                    StoreError::Conflict {
                        what: "subscription",
                    }
                } else {
                    e.into()
                }
            })?;
            Ok(())
        })
        .await
    }

    pub async fn get_subscription(
        &self,
        workspace: &WorkspaceId,
        id: SubscriptionId,
    ) -> Result<Option<Subscription>> {
        sqlx::query(concat!(
            "SELECT ",
            rows::subscription_columns!(),
            " FROM subscriptions s WHERE s.id = ?1 AND s.workspace_id = ?2"
        ))
        .bind(id.0.to_string())
        .bind(workspace.as_str())
        .fetch_optional(&self.reader)
        .await?
        .map(|row| subscription_from_row(&row))
        .transpose()
    }

    pub async fn list_subscriptions(
        &self,
        workspace: &WorkspaceId,
        limit: u32,
        after: Option<SubscriptionId>,
    ) -> Result<Vec<Subscription>> {
        // Hyphenated lowercase UUIDs sort as text exactly as they sort as
        // numbers, so `id > ?` pages in id (= creation) order.
        sqlx::query(concat!(
            "SELECT ",
            rows::subscription_columns!(),
            " FROM subscriptions s WHERE s.workspace_id = ?1 AND s.id > COALESCE(?2, '') \
             ORDER BY s.id LIMIT ?3"
        ))
        .bind(workspace.as_str())
        .bind(after.map(|a| a.0.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(subscription_from_row)
        .collect()
    }

    pub async fn update_subscription(&self, sub: &Subscription) -> Result<bool> {
        self.write(async |conn| {
            let done = sqlx::query(
                "UPDATE subscriptions SET name = ?3, url = ?4, event_types = ?5, channels = ?6, \
                 secret = ?7, previous_secret = ?8, previous_secret_expires_at = ?9, status = ?10, \
                 updated_at = ?11 WHERE id = ?1 AND workspace_id = ?2",
            )
            .bind(sub.id.0.to_string())
            .bind(sub.workspace_id.as_str())
            .bind(&sub.name)
            .bind(sub.url.as_str())
            .bind(json_list(&rows::event_type_names(&sub.event_types)))
            .bind(json_list(&rows::channel_names(&sub.channels)))
            .bind(sub.secret.expose())
            .bind(sub.previous_secret.as_ref().map(|s| s.expose()))
            .bind(sub.previous_secret_expires_at.as_ref().map(ts))
            .bind(sub.status.as_str())
            .bind(ts(&sub.updated_at))
            .execute(&mut *conn)
            .await?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    pub async fn delete_subscription(
        &self,
        workspace: &WorkspaceId,
        id: SubscriptionId,
    ) -> Result<bool> {
        self.write(async |conn| {
            let done = sqlx::query("DELETE FROM subscriptions WHERE id = ?1 AND workspace_id = ?2")
                .bind(id.0.to_string())
                .bind(workspace.as_str())
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    /// Streams every enabled subscription into `each`, one row at a time,
    /// so a large set is never held twice in memory. Returns how many.
    pub async fn for_each_enabled_subscription(
        &self,
        each: &mut (dyn FnMut(Subscription) + Send),
    ) -> Result<usize> {
        let mut rows = sqlx::query(concat!(
            "SELECT ",
            rows::subscription_columns!(),
            " FROM subscriptions s WHERE s.status = 'enabled' ORDER BY s.id"
        ))
        .fetch(&self.reader);
        let mut n = 0;
        while let Some(row) = rows.try_next().await? {
            each(subscription_from_row(&row)?);
            n += 1;
        }
        Ok(n)
    }

    pub async fn subscriptions_fingerprint(&self) -> Result<SubscriptionsFingerprint> {
        let version = sqlx::query_scalar("SELECT version FROM subscriptions_version")
            .fetch_one(&self.reader)
            .await?;
        Ok(SubscriptionsFingerprint { version })
    }

    // --- hot path -----------------------------------------------------------

    pub async fn apply(&self, ops: &[WriteOp]) -> Result<Vec<WriteResult>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.write(async |conn| apply_in(conn, ops).await).await
    }

    pub async fn held_due(&self, now: DateTime<Utc>) -> Result<Vec<HeldDue>> {
        sqlx::query_as::<_, (String, Option<String>, i64)>(
            "SELECT d.subscription_id, s.url, COUNT(*) FROM deliveries d \
             LEFT JOIN subscriptions s ON s.id = d.subscription_id \
             WHERE d.held_until IS NOT NULL AND d.held_until <= ?1 \
             GROUP BY d.subscription_id, s.url",
        )
        .bind(ts(&now))
        .fetch_all(&self.reader)
        .await?
        .into_iter()
        .map(|(id, url, n)| {
            Ok(HeldDue {
                subscription_id: SubscriptionId(parse_uuid("deliveries.subscription_id", &id)?),
                url,
                due: u64::try_from(n).unwrap_or(0),
            })
        })
        .collect()
    }

    /// `Store::claim_held`, and `Store::claim_expired` when `created_before`
    /// is set. One writer at a time: two workers claiming at once take
    /// different rows.
    pub async fn claim(
        &self,
        subscription: SubscriptionId,
        created_before: Option<DateTime<Utc>>,
        limit: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<HeldDelivery>> {
        let rows = self
            .write(async |conn| {
                Ok(sqlx::query_as(
                    "UPDATE deliveries SET held_until = ?4 WHERE id IN ( \
                         SELECT id FROM deliveries WHERE subscription_id = ?1 \
                         AND held_until IS NOT NULL AND held_until <= ?3 \
                         AND (?5 IS NULL OR created_at < ?5) \
                         AND status IN ('pending', 'retrying') \
                         ORDER BY held_until LIMIT ?2 \
                     ) RETURNING id, event_id, subscription_id, event_type, attempts",
                )
                .bind(subscription.0.to_string())
                .bind(i64::from(limit))
                .bind(ts(&now))
                .bind(ts(&lease_until))
                .bind(created_before.as_ref().map(ts))
                .fetch_all(&mut *conn)
                .await?)
            })
            .await?;
        held_from_rows(rows)
    }

    pub async fn give_up_held(&self, ids: &[DeliveryId]) -> Result<Vec<DeliveryId>> {
        let ids: Vec<String> = ids.iter().map(|id| id.0.to_string()).collect();
        let ids = serde_json::to_string(&ids).map_err(|e| corrupt("deliveries.id", e))?;
        let dead: Vec<String> = self
            .write(async |conn| {
                Ok(sqlx::query_scalar(
                    "UPDATE deliveries SET status = 'dead', held_until = NULL, \
                     next_attempt_at = NULL, updated_at = ?2 \
                     WHERE id IN (SELECT value FROM json_each(?1)) \
                     AND held_until IS NOT NULL AND status IN ('pending', 'retrying') \
                     RETURNING id",
                )
                .bind(&ids)
                .bind(ts(&Utc::now()))
                .fetch_all(&mut *conn)
                .await?)
            })
            .await?;
        dead.iter()
            .map(|id| Ok(DeliveryId(parse_uuid("deliveries.id", id)?)))
            .collect()
    }

    pub async fn delivery_context(&self, id: DeliveryId) -> Result<Option<DeliveryContext>> {
        let row = sqlx::query(concat!(
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
        ))
        .bind(id.0.to_string())
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let subscription_id: Option<&str> = row.try_get("s_id")?;
        Ok(Some(DeliveryContext {
            delivery: delivery_from_row(&row)?,
            event: event_from_row(&row)?,
            subscription: match subscription_id {
                Some(_) => Some(subscription_from_row(&row)?),
                None => None,
            },
        }))
    }

    // --- reads for operators and tests ---------------------------------------

    pub async fn get_delivery(&self, id: DeliveryId) -> Result<Option<DeliveryRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            rows::delivery_columns!(),
            " FROM deliveries d WHERE d.id = ?1"
        ))
        .bind(id.0.to_string())
        .fetch_optional(&self.reader)
        .await?
        .map(|row| delivery_from_row(&row))
        .transpose()
    }

    pub async fn deliveries_of_event(
        &self,
        workspace: &WorkspaceId,
        event: &EventId,
    ) -> Result<Vec<DeliveryRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            rows::delivery_columns!(),
            " FROM deliveries d WHERE d.event_id = ?1 AND d.workspace_id = ?2 \
             ORDER BY d.created_at, d.id"
        ))
        .bind(event.as_str())
        .bind(workspace.as_str())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(delivery_from_row)
        .collect()
    }

    pub async fn list_attempts(&self, delivery: DeliveryId) -> Result<Vec<AttemptRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            rows::attempt_columns!(),
            " FROM attempts a WHERE a.delivery_id = ?1 ORDER BY a.attempt"
        ))
        .bind(delivery.0.to_string())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(attempt_from_row)
        .collect()
    }

    pub async fn delivery_counts(&self) -> Result<Vec<(DeliveryStatus, u64)>> {
        sqlx::query("SELECT status, COUNT(*) AS n FROM deliveries GROUP BY status ORDER BY status")
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|row| {
                let status = rows::delivery_status("deliveries.status", row.try_get("status")?)?;
                let n: i64 = row.try_get("n")?;
                Ok((status, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }
}

/// Applies `ops` inside the caller's write transaction, in kind order like
/// the PostgreSQL ledger (see [`WriteOp`]). A run of fan-outs takes two or
/// three statements, a run of attempts two: every statement is a round
/// trip to the connection's thread, and the commit (an fsync of the WAL)
/// happens once per batch.
async fn apply_in(conn: &mut SqliteConnection, ops: &[WriteOp]) -> Result<Vec<WriteResult>> {
    let now = ts(&Utc::now());
    let order = kind_order(ops);
    let sorted: Vec<&WriteOp> = order.iter().map(|&i| &ops[i]).collect();
    let first_attempts = crate::first_attempts(sorted.iter().copied());
    let first_holds = crate::first_holds(sorted.iter().copied(), &first_attempts);
    let mut born_attempted = HashSet::new();
    let mut born_held = HashSet::new();
    let mut results = Vec::with_capacity(ops.len());
    for run in crate::runs(&sorted) {
        match run[0] {
            WriteOp::FanOut { .. } => {
                let births = Births {
                    first_attempts: &first_attempts,
                    first_holds: &first_holds,
                    born_attempted: &mut born_attempted,
                    born_held: &mut born_held,
                };
                results.extend(fan_out_run(conn, run, &now, births).await?);
                continue;
            }
            WriteOp::Attempt(_) => {
                results.extend(attempt_run(conn, run, &now, &mut born_attempted).await?);
                continue;
            }
            WriteOp::Hold { .. } => {
                results.extend(hold_run(conn, run, &now, &mut born_held).await?);
                continue;
            }
            WriteOp::Cancel { .. } => {}
        }
        for op in run {
            let result = match op {
                WriteOp::Cancel { delivery_id } => {
                    sqlx::query(
                        "UPDATE deliveries SET status = 'canceled', next_attempt_at = NULL, \
                         held_until = NULL, updated_at = ?2 \
                         WHERE id = ?1 AND status IN ('pending', 'retrying')",
                    )
                    .bind(delivery_id.0.to_string())
                    .bind(&now)
                    .execute(&mut *conn)
                    .await?;
                    WriteResult::Canceled
                }
                WriteOp::FanOut { .. } | WriteOp::Attempt(_) | WriteOp::Hold { .. } => {
                    unreachable!("runs hold one kind of op")
                }
            };
            results.push(result);
        }
    }
    in_callers_order(&order, results)
}

/// The first attempts and holds of a batch, and the deliveries inserted in
/// their state.
struct Births<'a, 'b> {
    first_attempts: &'a HashMap<Uuid, &'b AttemptWrite>,
    first_holds: &'a HashMap<Uuid, DateTime<Utc>>,
    born_attempted: &'a mut HashSet<Uuid>,
    born_held: &'a mut HashSet<Uuid>,
}

/// Fan-outs: one statement inserts the new events, one the deliveries (those
/// attempted in this batch already in their first attempt's state), and
/// one finds which deliveries of events seen before are still pending. Each
/// takes its rows as one JSON array that `json_each` unrolls (SQLite's
/// UNNEST); `WHERE true` resolves SQLite's parsing ambiguity between a
/// join's ON and the upsert's ON CONFLICT.
async fn fan_out_run(
    conn: &mut SqliteConnection,
    run: &[&WriteOp],
    now: &str,
    births: Births<'_, '_>,
) -> Result<Vec<WriteResult>> {
    let fan_outs: Vec<(&courier_model::Event, &[(DeliveryId, SubscriptionId)])> = run
        .iter()
        .filter_map(|op| match op {
            WriteOp::FanOut { event, deliveries } => Some((event.as_ref(), deliveries.as_slice())),
            _ => None,
        })
        .collect();

    // An event twice in one run is inserted by its first op only.
    let mut first_op_of_event: HashMap<(&str, &str), usize> = HashMap::new();
    let mut events = Vec::new();
    for (i, (event, _)) in fan_outs.iter().enumerate() {
        if first_op_of_event.contains_key(&rows::event_key(event)) {
            continue;
        }
        first_op_of_event.insert(rows::event_key(event), i);
        let data = event.data.as_str();
        events.push(serde_json::json!([
            event.id.as_str(),
            event.workspace_id.as_str(),
            event.event_type.as_str(),
            event.channel.as_ref().map(|c| c.as_str()),
            ts(&event.occurred_at),
            data,
        ]));
    }
    let events = serde_json::to_string(&events).map_err(|e| corrupt("events", e))?;
    let new_events: HashSet<(String, String)> = sqlx::query_as(
        "INSERT INTO events (id, workspace_id, type, channel, occurred_at, data, received_at) \
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
         json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
         json_extract(value, '$[4]'), json_extract(value, '$[5]'), ?2 \
         FROM json_each(?1) WHERE true ON CONFLICT (workspace_id, id) DO NOTHING \
         RETURNING workspace_id, id",
    )
    .bind(&events)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();

    let mut seen = HashSet::new();
    let mut delivery_rows = Vec::new();
    for (event, deliveries) in &fan_outs {
        for (d, s) in *deliveries {
            if !seen.insert(d.0) {
                continue;
            }
            let (event_id, ws, ty) = (
                event.id.as_str(),
                event.workspace_id.as_str(),
                event.event_type.as_str(),
            );
            let held = births.first_holds.get(&d.0).map(ts);
            delivery_rows.push(match births.first_attempts.get(&d.0) {
                None => serde_json::json!([
                    d.0.to_string(),
                    event_id,
                    s.0.to_string(),
                    ws,
                    ty,
                    "pending",
                    0,
                    null,
                    null,
                    held,
                    held
                ]),
                Some(a) => serde_json::json!([
                    d.0.to_string(),
                    event_id,
                    s.0.to_string(),
                    ws,
                    ty,
                    a.new_status.as_str(),
                    1,
                    a.response_status,
                    ts(&a.started_at),
                    a.next_attempt_at.as_ref().map(ts),
                    a.held_until.as_ref().map(ts),
                ]),
            });
        }
    }
    if !delivery_rows.is_empty() {
        let delivery_rows =
            serde_json::to_string(&delivery_rows).map_err(|e| corrupt("deliveries", e))?;
        let created: Vec<String> = sqlx::query_scalar(
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
        .bind(&delivery_rows)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        for id in created {
            let id = parse_uuid("deliveries.id", &id)?;
            if births.first_attempts.contains_key(&id) {
                births.born_attempted.insert(id);
            } else if births.first_holds.contains_key(&id) {
                births.born_held.insert(id);
            }
        }
    }

    let is_new = |i: usize, event: &courier_model::Event| {
        rows::contains_event(&new_events, event)
            && first_op_of_event.get(&rows::event_key(event)) == Some(&i)
    };
    // Events seen before publish only what is still pending: one lookup for
    // all of them.
    let recheck: Vec<String> = fan_outs
        .iter()
        .enumerate()
        .filter(|(i, (event, _))| !is_new(*i, event))
        .flat_map(|(_, (_, deliveries))| deliveries.iter().map(|(d, _)| d.0.to_string()))
        .collect();
    let mut pending: HashSet<Uuid> = if recheck.is_empty() {
        HashSet::new()
    } else {
        let recheck = serde_json::to_string(&recheck).map_err(|e| corrupt("deliveries", e))?;
        sqlx::query_scalar::<_, String>(
            "SELECT id FROM deliveries WHERE status = 'pending' \
             AND id IN (SELECT value FROM json_each(?1))",
        )
        .bind(&recheck)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|id| parse_uuid("deliveries.id", id))
        .collect::<Result<_>>()?
    };
    // Applied one by one, every fan-out comes before every attempt and
    // hold: to them, a delivery born attempted or held is still pending.
    pending.extend(births.born_attempted.iter().copied());
    pending.extend(births.born_held.iter().copied());
    Ok(fan_outs
        .iter()
        .enumerate()
        .map(|(i, (event, deliveries))| WriteResult::FanOut {
            to_publish: rows::to_publish(deliveries, is_new(i, event), &pending),
        })
        .collect())
}

/// Attempts of distinct deliveries: one statement inserts the attempt rows
/// (an attempt number already recorded changes nothing), one updates the
/// deliveries whose attempt was new, except those born in this batch
/// already in their first attempt's state. Both take their rows as one
/// JSON array.
async fn attempt_run(
    conn: &mut SqliteConnection,
    run: &[&WriteOp],
    now: &str,
    born_attempted: &mut HashSet<Uuid>,
) -> Result<Vec<WriteResult>> {
    let attempts: Vec<&AttemptWrite> = run
        .iter()
        .filter_map(|op| match op {
            WriteOp::Attempt(a) => Some(a),
            _ => None,
        })
        .collect();
    let rows: Vec<serde_json::Value> = attempts
        .iter()
        .map(|a| {
            serde_json::json!([
                a.delivery_id.0.to_string(),
                a.attempt,
                a.url,
                ts(&a.started_at),
                a.duration_ms,
                a.response_status,
                a.error_kind.map(|k| k.as_str()),
                a.error,
                a.response_excerpt,
            ])
        })
        .collect();
    let rows = serde_json::to_string(&rows).map_err(|e| corrupt("attempts", e))?;
    let recorded: HashSet<Uuid> = sqlx::query_scalar::<_, String>(
        "INSERT INTO attempts (delivery_id, attempt, url, started_at, duration_ms, \
         response_status, error_kind, error, response_excerpt) \
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
         json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
         json_extract(value, '$[4]'), json_extract(value, '$[5]'), \
         json_extract(value, '$[6]'), json_extract(value, '$[7]'), \
         json_extract(value, '$[8]') FROM json_each(?1) WHERE true \
         ON CONFLICT (delivery_id, attempt) DO NOTHING RETURNING delivery_id",
    )
    .bind(&rows)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|id| parse_uuid("attempts.delivery_id", id))
    .collect::<Result<_>>()?;

    let updates: Vec<serde_json::Value> = attempts
        .iter()
        .filter(|a| recorded.contains(&a.delivery_id.0))
        .filter(|a| !(a.attempt == 1 && born_attempted.remove(&a.delivery_id.0)))
        .map(|a| {
            serde_json::json!([
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
        let updates = serde_json::to_string(&updates).map_err(|e| corrupt("deliveries", e))?;
        sqlx::query(
            "UPDATE deliveries SET status = json_extract(u.value, '$[1]'), \
             attempts = MAX(attempts, json_extract(u.value, '$[2]')), \
             last_response_status = json_extract(u.value, '$[3]'), \
             last_attempt_at = json_extract(u.value, '$[4]'), \
             next_attempt_at = json_extract(u.value, '$[5]'), \
             held_until = json_extract(u.value, '$[6]'), updated_at = ?2 \
             FROM json_each(?1) AS u WHERE deliveries.id = json_extract(u.value, '$[0]')",
        )
        .bind(&updates)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(attempts
        .iter()
        .map(|a| WriteResult::Attempt {
            recorded: recorded.contains(&a.delivery_id.0),
        })
        .collect())
}

/// Holds: one statement holds every delivery that still owes the attempt
/// named, except those born held in this batch.
async fn hold_run(
    conn: &mut SqliteConnection,
    run: &[&WriteOp],
    now: &str,
    born_held: &mut HashSet<Uuid>,
) -> Result<Vec<WriteResult>> {
    let holds: Vec<(Uuid, u32, String)> = run
        .iter()
        .filter_map(|op| match op {
            WriteOp::Hold {
                delivery_id,
                attempt,
                until,
            } => Some((delivery_id.0, *attempt, ts(until))),
            _ => None,
        })
        .collect();
    let born: Vec<bool> = holds
        .iter()
        .map(|(id, attempt, _)| *attempt == 1 && born_held.remove(id))
        .collect();
    let rows: Vec<serde_json::Value> = holds
        .iter()
        .zip(&born)
        .filter(|(_, born)| !**born)
        .map(|((id, attempt, until), _)| serde_json::json!([id.to_string(), attempt, until]))
        .collect();
    let held: HashSet<Uuid> = if rows.is_empty() {
        HashSet::new()
    } else {
        let rows = serde_json::to_string(&rows).map_err(|e| corrupt("deliveries", e))?;
        sqlx::query_scalar::<_, String>(
            "UPDATE deliveries SET held_until = json_extract(u.value, '$[2]'), \
             next_attempt_at = json_extract(u.value, '$[2]'), updated_at = ?2 \
             FROM json_each(?1) AS u WHERE deliveries.id = json_extract(u.value, '$[0]') \
             AND deliveries.attempts = json_extract(u.value, '$[1]') - 1 \
             AND deliveries.status IN ('pending', 'retrying') RETURNING deliveries.id",
        )
        .bind(&rows)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|id| parse_uuid("deliveries.id", id))
        .collect::<Result<_>>()?
    };
    Ok(holds
        .iter()
        .zip(born)
        .map(|((id, _, _), born)| WriteResult::Held {
            held: born || held.contains(id),
        })
        .collect())
}

// --- API keys and the delivery log ------------------------------------------

/// The delivery log's columns: the delivery, plus the URL of its latest
/// attempt or else its subscription's current one.
macro_rules! delivery_log_select {
    () => {
        concat!(
            "SELECT ",
            rows::delivery_columns!(),
            ", COALESCE((SELECT a.url FROM attempts a WHERE a.delivery_id = d.id \
             ORDER BY a.attempt DESC LIMIT 1), s.url) AS url \
             FROM deliveries d LEFT JOIN subscriptions s ON s.id = d.subscription_id \
             AND s.workspace_id = d.workspace_id "
        )
    };
}

fn api_key_from_row(row: &SqliteRow) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: row.try_get("id")?,
        workspace_id: rows::workspace_id("api_keys.workspace_id", row.try_get("workspace_id")?)?,
        name: row.try_get("name")?,
        key_prefix: row.try_get("key_prefix")?,
        created_at: parse_ts("api_keys.created_at", row.try_get("created_at")?)?,
    })
}

fn log_entry_from_row(row: &SqliteRow) -> Result<DeliveryLogEntry> {
    Ok(DeliveryLogEntry {
        delivery: delivery_from_row(row)?,
        url: row.try_get("url")?,
    })
}

impl SqliteStore {
    pub async fn insert_api_key(&self, key: &ApiKeyRecord, key_hash: &str) -> Result<()> {
        self.write(async |conn| {
            sqlx::query(
                "INSERT INTO api_keys (id, workspace_id, name, key_hash, key_prefix, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(&key.id)
            .bind(key.workspace_id.as_str())
            .bind(&key.name)
            .bind(key_hash)
            .bind(&key.key_prefix)
            .bind(ts(&key.created_at))
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                if is_foreign_key_violation(&e) {
                    StoreError::NotFound { what: "workspace" }
                } else if is_unique_violation(&e) {
                    StoreError::Conflict { what: "api key" }
                } else {
                    e.into()
                }
            })?;
            Ok(())
        })
        .await
    }

    pub async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        sqlx::query(
            "SELECT id, workspace_id, name, key_prefix, created_at FROM api_keys \
             WHERE key_hash = ?1",
        )
        .bind(key_hash)
        .fetch_optional(&self.reader)
        .await?
        .map(|row| api_key_from_row(&row))
        .transpose()
    }

    pub async fn list_deliveries(
        &self,
        workspace: &WorkspaceId,
        filter: &DeliveryFilter,
        limit: u32,
        after: Option<DeliveryCursor>,
    ) -> Result<Vec<DeliveryLogEntry>> {
        sqlx::query(concat!(
            delivery_log_select!(),
            "WHERE d.workspace_id = ?1 \
             AND (?2 IS NULL OR d.event_type = ?2) \
             AND (?3 IS NULL OR d.status = ?3) \
             AND (?4 IS NULL OR d.subscription_id = ?4) \
             AND (?5 IS NULL OR (d.created_at, d.id) < (?5, ?6)) \
             ORDER BY d.created_at DESC, d.id DESC LIMIT ?7"
        ))
        .bind(workspace.as_str())
        .bind(filter.event_type.map(|t| t.as_str()))
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.subscription.map(|s| s.0.to_string()))
        .bind(after.map(|c| ts(&c.created_at)))
        .bind(after.map(|c| c.id.0.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(log_entry_from_row)
        .collect()
    }

    pub async fn get_delivery_entry(
        &self,
        workspace: &WorkspaceId,
        id: DeliveryId,
    ) -> Result<Option<DeliveryLogEntry>> {
        sqlx::query(concat!(
            delivery_log_select!(),
            "WHERE d.id = ?1 AND d.workspace_id = ?2"
        ))
        .bind(id.0.to_string())
        .bind(workspace.as_str())
        .fetch_optional(&self.reader)
        .await?
        .map(|row| log_entry_from_row(&row))
        .transpose()
    }

    pub async fn get_event(
        &self,
        workspace: &WorkspaceId,
        id: &EventId,
    ) -> Result<Option<EventRecord>> {
        let Some(row) = sqlx::query(concat!(
            "SELECT ",
            rows::event_columns!(),
            ", e.received_at AS e_received_at FROM events e \
             WHERE e.workspace_id = ?1 AND e.id = ?2"
        ))
        .bind(workspace.as_str())
        .bind(id.as_str())
        .fetch_optional(&self.reader)
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(EventRecord {
            event: event_from_row(&row)?,
            received_at: parse_ts("events.received_at", row.try_get("e_received_at")?)?,
        }))
    }

    pub async fn event_deliveries(
        &self,
        workspace: &WorkspaceId,
        id: &EventId,
    ) -> Result<Vec<DeliveryLogEntry>> {
        sqlx::query(concat!(
            delivery_log_select!(),
            "WHERE d.event_id = ?1 AND d.workspace_id = ?2 ORDER BY d.created_at, d.id"
        ))
        .bind(id.as_str())
        .bind(workspace.as_str())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(log_entry_from_row)
        .collect()
    }

    pub async fn reopen_delivery(
        &self,
        workspace: &WorkspaceId,
        id: DeliveryId,
    ) -> Result<Option<DeliveryRecord>> {
        self.write(async |conn| {
            let before = sqlx::query(concat!(
                "SELECT ",
                rows::delivery_columns!(),
                " FROM deliveries d WHERE d.id = ?1 AND d.workspace_id = ?2"
            ))
            .bind(id.0.to_string())
            .bind(workspace.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .map(|row| delivery_from_row(&row))
            .transpose()?;
            if before.is_some() {
                reopen(conn, &[id]).await?;
            }
            Ok(before)
        })
        .await
    }

    pub async fn reopen_failed_deliveries(
        &self,
        workspace: &WorkspaceId,
        subscription: SubscriptionId,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>> {
        self.write(async |conn| {
            let before = sqlx::query(concat!(
                "SELECT ",
                rows::delivery_columns!(),
                " FROM deliveries d WHERE d.workspace_id = ?1 AND d.subscription_id = ?2 \
                 AND d.status IN ('dead', 'canceled') AND d.created_at >= ?3 \
                 ORDER BY d.created_at, d.id LIMIT ?4"
            ))
            .bind(workspace.as_str())
            .bind(subscription.0.to_string())
            .bind(ts(&since))
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(delivery_from_row)
            .collect::<Result<Vec<_>>>()?;
            let ids: Vec<DeliveryId> = before.iter().map(|d| d.id).collect();
            reopen(conn, &ids).await?;
            Ok(before)
        })
        .await
    }

    pub async fn restore_delivery(&self, before: &DeliveryRecord) -> Result<bool> {
        self.write(async |conn| {
            let done = sqlx::query(
                "UPDATE deliveries SET status = ?2, next_attempt_at = ?3, updated_at = ?4, \
                 held_until = ?6 WHERE id = ?1 AND workspace_id = ?7 AND status = 'retrying' \
                 AND attempts = ?5",
            )
            .bind(before.id.0.to_string())
            .bind(before.status.as_str())
            .bind(before.next_attempt_at.as_ref().map(ts))
            .bind(ts(&Utc::now()))
            .bind(i64::from(before.attempts))
            .bind(before.held_until.as_ref().map(ts))
            .bind(before.workspace_id.as_str())
            .execute(&mut *conn)
            .await?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }
}

fn held_from_rows(rows: Vec<(String, String, String, String, i64)>) -> Result<Vec<HeldDelivery>> {
    rows.into_iter()
        .map(|(id, event_id, subscription_id, event_type, attempts)| {
            rows::HeldParts {
                id: parse_uuid("deliveries.id", &id)?,
                event_id,
                subscription_id: parse_uuid("deliveries.subscription_id", &subscription_id)?,
                event_type,
                attempts,
            }
            .into_model()
        })
        .collect()
}

/// Sets deliveries to `retrying`, due now, keeping their attempt counts; a
/// held one is no longer held (the caller publishes its message).
async fn reopen(conn: &mut SqliteConnection, ids: &[DeliveryId]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = ids.iter().map(|id| id.0.to_string()).collect();
    let ids = serde_json::to_string(&ids).map_err(|e| corrupt("deliveries.id", e))?;
    let now = ts(&Utc::now());
    sqlx::query(
        "UPDATE deliveries SET status = 'retrying', next_attempt_at = ?1, held_until = NULL, \
         updated_at = ?1 WHERE id IN (SELECT value FROM json_each(?2))",
    )
    .bind(&now)
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
