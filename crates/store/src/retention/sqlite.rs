//! Retention's SQL for SQLite, the lease that lets one process prune at a
//! time, and giving freed pages back to the file system.
//!
//! Every batch runs in a `BEGIN IMMEDIATE` transaction, which holds the
//! file's one write lock: nothing changes the rows it checked before it
//! removes them. The lease only keeps two processes on one file (`courier
//! serve` and `courier prune`, say) from doing the same work at once.

use std::time::Duration;

use chrono::Utc;

use crate::retention::Reclaimed;
use crate::retention::queries::RetentionSql;
use crate::{Result, SqliteStore};

/// The lease's row in `ledger_leases`.
const LEASE: &str = "prune";

/// Pages one incremental vacuum step gives back: 4 MiB of 4 KiB pages,
/// a few milliseconds of the writer's time each.
const VACUUM_STEP_PAGES: i64 = 1024;

impl RetentionSql for SqliteStore {
    const SELECT_OVERRIDE: &'static str = "SELECT succeeded_days, failed_days \
         FROM workspace_retention WHERE workspace_id = ?1";
    const UPSERT_OVERRIDE: &'static str = "INSERT INTO workspace_retention \
         (workspace_id, succeeded_days, failed_days, updated_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (workspace_id) DO UPDATE SET succeeded_days = excluded.succeeded_days, \
         failed_days = excluded.failed_days, updated_at = excluded.updated_at";
    const DELETE_OVERRIDE: &'static str = "DELETE FROM workspace_retention WHERE workspace_id = ?1";

    const PRUNE_CANDIDATES: &'static str = "SELECT e.id, e.received_at FROM events e \
         WHERE e.workspace_id = ?1 AND e.received_at < ?2 \
         AND (e.received_at, e.id) > (?3, ?4) \
         AND (e.received_at < ?5 OR EXISTS (SELECT 1 FROM deliveries d \
             WHERE d.event_id = e.id AND d.workspace_id = e.workspace_id)) \
         AND NOT EXISTS (SELECT 1 FROM deliveries d \
             WHERE d.event_id = e.id AND d.workspace_id = e.workspace_id \
             AND NOT ((d.status = 'succeeded' AND d.updated_at < ?5) \
                 OR (d.status IN ('dead', 'canceled') AND d.updated_at < ?6))) \
         ORDER BY e.received_at, e.id LIMIT ?7";
    const DELIVERIES_OF_EVENTS: &'static str = "SELECT id, event_id, status, updated_at \
         FROM deliveries WHERE workspace_id = ?1 \
         AND event_id IN (SELECT value FROM json_each(?2))";
    const LOCK_DELIVERIES_OF_EVENTS: &'static str = Self::DELIVERIES_OF_EVENTS;
    const COUNT_ATTEMPTS: &'static str = "SELECT COUNT(*) AS n FROM attempts \
         WHERE delivery_id IN (SELECT value FROM json_each(?1))";
    const DELETE_ATTEMPTS: &'static str =
        "DELETE FROM attempts WHERE delivery_id IN (SELECT value FROM json_each(?1))";
    const DELETE_DELIVERIES: &'static str =
        "DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(?1))";
    const DELETE_EVENTS: &'static str = "DELETE FROM events \
         WHERE workspace_id = ?1 AND id IN (SELECT value FROM json_each(?2)) \
         AND NOT EXISTS (SELECT 1 FROM deliveries d \
             WHERE d.event_id = events.id AND d.workspace_id = events.workspace_id)";
}

/// The `prune` row of `ledger_leases`, held until it expires or is
/// released. A process that dies holding it delays the next run by the
/// lease's length at most.
#[derive(Debug)]
pub(crate) struct Lease {
    store: SqliteStore,
    holder: String,
}

impl Lease {
    pub(crate) async fn try_take(
        store: &SqliteStore,
        holder: &str,
        lease: Duration,
    ) -> Result<Option<Self>> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::hours(1));
        // A unique holder, so this process's release never ends another's.
        let holder = format!("{holder} {}", uuid::Uuid::new_v4().simple());
        let mut tx = store.writer_tx().await?;
        let taken = sqlx::query(
            "INSERT INTO ledger_leases (name, holder, expires_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at WHERE ledger_leases.expires_at <= ?4",
        )
        .bind(LEASE)
        .bind(&holder)
        .bind(crate::sqlite::ts(&until))
        .bind(crate::sqlite::ts(&now))
        .execute(&mut *tx)
        .await;
        let taken = crate::dialect::finish(tx, taken.map_err(Into::into)).await?;
        Ok((taken.rows_affected() > 0).then(|| Self {
            store: store.clone(),
            holder,
        }))
    }

    pub(crate) async fn release(self) {
        let released = async {
            let mut tx = self.store.writer_tx().await?;
            let done = sqlx::query("DELETE FROM ledger_leases WHERE name = ?1 AND holder = ?2")
                .bind(LEASE)
                .bind(&self.holder)
                .execute(&mut *tx)
                .await;
            crate::dialect::finish(tx, done.map_err(Into::into)).await
        }
        .await;
        if let Err(error) = released {
            tracing::warn!(error = %courier_model::error_chain(&error), "releasing the pruning lease failed; it runs out by itself");
        }
    }
}

impl SqliteStore {
    /// Incremental vacuum, [`VACUUM_STEP_PAGES`] at a time, until the
    /// free list is empty; nothing when the file does not use it.
    pub(crate) async fn reclaim_space(&self) -> Result<Reclaimed> {
        let mut conn = self.writer_pool().acquire().await?;
        let (mode,): (i64,) = sqlx::query_as("PRAGMA auto_vacuum")
            .fetch_one(&mut *conn)
            .await?;
        let (page_size,): (i64,) = sqlx::query_as("PRAGMA page_size")
            .fetch_one(&mut *conn)
            .await?;
        drop(conn);
        let mut reclaimed = Reclaimed {
            incremental: mode == 2,
            ..Reclaimed::default()
        };
        if !reclaimed.incremental {
            return Ok(reclaimed);
        }
        loop {
            // The writer is given back between steps, so the hot path's
            // commits go in between them.
            let mut conn = self.writer_pool().acquire().await?;
            let (free,): (i64,) = sqlx::query_as("PRAGMA freelist_count")
                .fetch_one(&mut *conn)
                .await?;
            if free == 0 {
                break;
            }
            let step = free.min(VACUUM_STEP_PAGES);
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "PRAGMA incremental_vacuum({step})"
            )))
            .execute(&mut *conn)
            .await?;
            let (left,): (i64,) = sqlx::query_as("PRAGMA freelist_count")
                .fetch_one(&mut *conn)
                .await?;
            let given = u64::try_from(free - left).unwrap_or(0);
            reclaimed.pages += given;
            if given == 0 {
                // Nothing moved (another process holds pages): next run.
                break;
            }
        }
        reclaimed.bytes = reclaimed.pages * u64::try_from(page_size).unwrap_or(4096);
        Ok(reclaimed)
    }

    /// `VACUUM`: rewrites the file, with the incremental auto-vacuum every
    /// connection asks for (see `SqliteStore::connect`). Its temporary copy
    /// is the whole database, so it goes to a file, not to the writer's
    /// in-memory temporary storage.
    pub(crate) async fn vacuum(&self) -> Result<Reclaimed> {
        let mut conn = self.writer_pool().acquire().await?;
        let (before, page_size) = file_pages(&mut conn).await?;
        sqlx::query("PRAGMA temp_store = file")
            .execute(&mut *conn)
            .await?;
        let vacuumed = sqlx::query("VACUUM").execute(&mut *conn).await;
        // Back to the writer's setting (`WRITER_TEMP_STORE`) whatever VACUUM
        // did; should even that fail, the connection is closed rather than
        // returned to the pool as it is.
        if let Err(error) = sqlx::query("PRAGMA temp_store = memory")
            .execute(&mut *conn)
            .await
        {
            drop(conn.detach());
            return Err(error.into());
        }
        vacuumed?;
        let (after, _) = file_pages(&mut conn).await?;
        let (mode,): (i64,) = sqlx::query_as("PRAGMA auto_vacuum")
            .fetch_one(&mut *conn)
            .await?;
        let pages = u64::try_from(before - after).unwrap_or(0);
        Ok(Reclaimed {
            incremental: mode == 2,
            pages,
            bytes: pages * u64::try_from(page_size).unwrap_or(4096),
        })
    }
}

/// The file's pages and their size.
async fn file_pages(conn: &mut sqlx::SqliteConnection) -> Result<(i64, i64)> {
    let (pages,): (i64,) = sqlx::query_as("PRAGMA page_count")
        .fetch_one(&mut *conn)
        .await?;
    let (page_size,): (i64,) = sqlx::query_as("PRAGMA page_size")
        .fetch_one(&mut *conn)
        .await?;
    Ok((pages, page_size))
}

#[cfg(test)]
mod tests {
    use crate::scratch::{ScratchDb, unique_name};
    use crate::{Backend, Store};

    /// The writer's temporary storage (statement journals) is in memory,
    /// and stays so after a `VACUUM`, which runs with files.
    #[tokio::test]
    async fn the_writer_keeps_temporary_storage_in_memory_across_a_vacuum() {
        // The admin URL is only used for PostgreSQL.
        let db = ScratchDb::create(Backend::Sqlite, &unique_name("tempstore"), "")
            .await
            .expect("scratch file");
        let Store::Sqlite(store) = db.migrated().await.expect("migrate") else {
            panic!("a SQLite scratch database gave another store");
        };
        // 2 is MEMORY; 0 (DEFAULT) would be files in this build.
        let temp_store = || async {
            let (mode,): (i64,) = sqlx::query_as("PRAGMA temp_store")
                .fetch_one(store.writer_pool())
                .await
                .expect("temp_store");
            mode
        };
        assert_eq!(temp_store().await, 2);
        store.vacuum().await.expect("vacuum");
        assert_eq!(temp_store().await, 2);
        store.close().await;
        db.remove().await.expect("remove");
    }
}
