//! Retention's SQL for PostgreSQL, and the advisory lock that lets one
//! process prune at a time.

use sqlx::pool::PoolConnection;
use sqlx::{ConnectOptions, Connection, Postgres};

use crate::retention::queries::RetentionSql;
use crate::{PgStore, Result};

/// The key of the session-level advisory lock pruning holds
/// (`pg_try_advisory_lock`): "courprun" in ASCII. Advisory locks are per
/// database, so every courier on one ledger shares it.
pub const PRUNE_LOCK_KEY: i64 = 0x636f_7572_7072_756e;

impl RetentionSql for PgStore {
    const SELECT_OVERRIDE: &'static str = "SELECT succeeded_days, failed_days \
         FROM workspace_retention WHERE workspace_id = $1";
    const UPSERT_OVERRIDE: &'static str = "INSERT INTO workspace_retention \
         (workspace_id, succeeded_days, failed_days, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (workspace_id) DO UPDATE SET succeeded_days = EXCLUDED.succeeded_days, \
         failed_days = EXCLUDED.failed_days, updated_at = EXCLUDED.updated_at";
    const DELETE_OVERRIDE: &'static str = "DELETE FROM workspace_retention WHERE workspace_id = $1";

    const PRUNE_CANDIDATES: &'static str = "SELECT e.id, e.received_at FROM events e \
         WHERE e.workspace_id = $1 AND e.received_at < $2 \
         AND (e.received_at, e.id) > ($3, $4) \
         AND (e.received_at < $5 OR EXISTS (SELECT 1 FROM deliveries d \
             WHERE d.event_id = e.id AND d.workspace_id = e.workspace_id)) \
         AND NOT EXISTS (SELECT 1 FROM deliveries d \
             WHERE d.event_id = e.id AND d.workspace_id = e.workspace_id \
             AND NOT ((d.status = 'succeeded' AND d.updated_at < $5) \
                 OR (d.status IN ('dead', 'canceled') AND d.updated_at < $6))) \
         ORDER BY e.received_at, e.id LIMIT $7";
    const DELIVERIES_OF_EVENTS: &'static str = "SELECT id, event_id, status, updated_at \
         FROM deliveries WHERE workspace_id = $1 AND event_id = ANY($2::text[])";
    /// In id order, so two transactions locking some of the same rows
    /// take them in the same order.
    const LOCK_DELIVERIES_OF_EVENTS: &'static str = "SELECT id, event_id, status, updated_at \
         FROM deliveries WHERE workspace_id = $1 AND event_id = ANY($2::text[]) \
         ORDER BY id FOR UPDATE";
    const COUNT_ATTEMPTS: &'static str =
        "SELECT COUNT(*) AS n FROM attempts WHERE delivery_id = ANY($1::uuid[])";
    const DELETE_ATTEMPTS: &'static str =
        "DELETE FROM attempts WHERE delivery_id = ANY($1::uuid[])";
    const DELETE_DELIVERIES: &'static str = "DELETE FROM deliveries WHERE id = ANY($1::uuid[])";
    const DELETE_EVENTS: &'static str = "DELETE FROM events e \
         WHERE e.workspace_id = $1 AND e.id = ANY($2::text[]) \
         AND NOT EXISTS (SELECT 1 FROM deliveries d \
             WHERE d.event_id = e.id AND d.workspace_id = e.workspace_id)";
}

impl PgStore {
    /// `VACUUM (ANALYZE)` of the tables pruning deletes from: their dead
    /// rows' space becomes reusable, and the planner sees their new sizes.
    /// Outside a transaction, as VACUUM must be, on a connection of its own
    /// that does not log it as a slow statement (it takes seconds on a
    /// large ledger, by design).
    pub(crate) async fn vacuum_pruned_tables(&self) -> Result<()> {
        let options = (*self.pool().connect_options())
            .clone()
            .disable_statement_logging();
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        let vacuumed = sqlx::query("VACUUM (ANALYZE) events, deliveries, attempts")
            .execute(&mut conn)
            .await;
        conn.close().await.ok();
        vacuumed?;
        Ok(())
    }

    pub(crate) async fn deliveries_estimate(&self) -> Result<u64> {
        // -1 where the table was never vacuumed or analyzed.
        let (rows,): (f32,) =
            sqlx::query_as("SELECT reltuples FROM pg_class WHERE oid = 'deliveries'::regclass")
                .fetch_one(self.pool())
                .await?;
        Ok(rows.max(0.0) as u64)
    }
}

/// [`PRUNE_LOCK_KEY`], held by one pooled connection's session. The
/// connection is closed rather than pooled again when it goes, so a lock
/// whose release failed (or that was dropped unreleased) ends with it.
#[derive(Debug)]
pub(crate) struct AdvisoryLock {
    conn: PoolConnection<Postgres>,
}

impl AdvisoryLock {
    pub(crate) async fn try_take(store: &PgStore) -> Result<Option<Self>> {
        let mut conn = store.pool().acquire().await?;
        conn.close_on_drop();
        let (taken,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(PRUNE_LOCK_KEY)
            .fetch_one(&mut *conn)
            .await?;
        Ok(taken.then_some(Self { conn }))
    }

    pub(crate) async fn release(mut self) {
        let released = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(PRUNE_LOCK_KEY)
            .execute(&mut *self.conn)
            .await;
        if let Err(error) = released {
            // Closing the session releases it all the same.
            tracing::debug!(%error, "releasing the pruning lock; closing its session");
        }
    }
}
