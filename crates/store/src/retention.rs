//! Retention in the ledger: per-workspace overrides, and pruning what has
//! outlived its retention.
//!
//! An event goes, with its deliveries and their attempts, when every one
//! of its deliveries is finished (`succeeded`, `dead` or `canceled`) and
//! last changed before its cutoff ([`RetentionCutoffs`]: one for
//! succeeded deliveries, one for dead and canceled ones). An event that
//! matched no webhook goes when it was received before the succeeded
//! cutoff. Nothing pending, retrying, held or paused is ever removed, nor
//! any delivery of an event that still has one.
//!
//! [`Store::prune`] takes the whole plan (every workspace's cutoffs), so
//! a backend decides how to carry it out. Today both delete in batches:
//! one workspace at a time, oldest events first, a transaction of at most
//! `batch_rows` deliveries that re-reads (and on PostgreSQL locks) the
//! deliveries it removes, so a delivery reopened meanwhile keeps its
//! event. PostgreSQL could instead drop whole time partitions older than
//! the longest retention in the plan and delete in batches only ahead of
//! them; callers would not change.
//!
//! One process prunes at a time ([`Store::try_lock_pruning`]): a
//! PostgreSQL advisory lock, or a lease row on SQLite. The lock spares
//! work, not correctness: every batch checks its rows under the
//! database's own locks. The queries are written once
//! (`retention/queries.rs`); each backend's SQL sits beside it.

mod postgres;
mod queries;
mod sqlite;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use courier_model::{
    RetentionCutoffs, RetentionDays, RetentionOverride, RetentionPolicy, WorkspaceId,
};
use serde::Serialize;

use crate::{Result, Store, dispatch};
use queries::RetentionQueries;

pub use postgres::PRUNE_LOCK_KEY;

/// What to prune: the deployment's policy, each workspace's override, and
/// the moment retention is counted back from.
#[derive(Clone, Debug)]
pub struct RetentionPlan {
    pub policy: RetentionPolicy,
    pub overrides: HashMap<WorkspaceId, RetentionOverride>,
    pub now: DateTime<Utc>,
}

impl RetentionPlan {
    /// The days that apply to `workspace`, and the cutoffs they give.
    pub fn for_workspace(&self, workspace: &WorkspaceId) -> (RetentionDays, RetentionCutoffs) {
        let days = self.policy.effective(self.overrides.get(workspace));
        (days, RetentionCutoffs::at(self.now, days))
    }
}

/// How to prune.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PruneOptions {
    /// Count what would go, remove nothing.
    pub dry_run: bool,
    /// Most deliveries one transaction removes (and events, when they
    /// have none). An event is never split: one with more deliveries than
    /// this goes in a transaction of its own.
    pub batch_rows: u32,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            batch_rows: 1000,
        }
    }
}

/// Rows removed (or, in a dry run, that would be).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PrunedRows {
    pub events: u64,
    pub deliveries: u64,
    pub attempts: u64,
}

impl PrunedRows {
    pub fn is_empty(&self) -> bool {
        self.events == 0 && self.deliveries == 0 && self.attempts == 0
    }

    pub fn add(&mut self, other: &PrunedRows) {
        self.events += other.events;
        self.deliveries += other.deliveries;
        self.attempts += other.attempts;
    }
}

/// What pruning did in one workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkspacePruned {
    pub workspace: WorkspaceId,
    pub succeeded_days: u32,
    pub failed_days: u32,
    #[serde(flatten)]
    pub rows: PrunedRows,
}

/// What [`Store::prune`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    /// The workspaces where something went (or would), in the order
    /// they were pruned.
    pub workspaces: Vec<WorkspacePruned>,
    pub total: PrunedRows,
    /// Transactions that removed something (or would have).
    pub batches: u64,
    /// Told to stop before it was done.
    pub stopped: bool,
}

/// Told after each batch, with its workspace, its rows and how long it
/// took (reading its candidates and its transaction). Pruning awaits what
/// it returns before the next batch (a pause, to leave the database to the
/// hot path), and stops after that batch on `Break` (a shutdown).
pub type OnBatch<'a> =
    dyn FnMut(&WorkspaceId, &PrunedRows, std::time::Duration) -> NextBatch + Send + 'a;

/// What [`OnBatch`] returns: resolves when the next batch may start.
pub type NextBatch = Pin<Box<dyn Future<Output = ControlFlow<()>> + Send>>;

/// SQLite's `auto_vacuum` mode, and the pages a vacuum gave back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Reclaimed {
    /// Whether the file uses incremental auto-vacuum (created so, or
    /// switched by [`Store::vacuum`]). Without it freed pages are reused
    /// but the file never shrinks.
    pub incremental: bool,
    /// Pages given back to the file system.
    pub pages: u64,
    /// Bytes given back.
    pub bytes: u64,
}

/// The right to prune, held until [`PruneLock::release`] (or dropped: the
/// PostgreSQL session holding the lock is closed, and a SQLite lease runs
/// out).
#[derive(Debug)]
pub struct PruneLock {
    inner: LockInner,
}

#[derive(Debug)]
enum LockInner {
    Postgres(postgres::AdvisoryLock),
    Sqlite(sqlite::Lease),
}

impl PruneLock {
    pub async fn release(self) {
        match self.inner {
            LockInner::Postgres(lock) => lock.release().await,
            LockInner::Sqlite(lease) => lease.release().await,
        }
    }
}

impl Store {
    // --- overrides ----------------------------------------------------------

    /// The workspace's own retention; `None` when it has none.
    pub async fn retention_override(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Option<RetentionOverride>> {
        dispatch!(self, s => s.retention_override(workspace).await)
    }

    /// Every workspace's own retention.
    pub async fn retention_overrides(&self) -> Result<HashMap<WorkspaceId, RetentionOverride>> {
        dispatch!(self, s => s.retention_overrides().await)
    }

    /// Replaces the workspace's override (an empty one removes it).
    /// `NotFound { what: "workspace" }` when there is no such workspace.
    pub async fn set_retention_override(
        &self,
        workspace: &WorkspaceId,
        own: &RetentionOverride,
        at: DateTime<Utc>,
    ) -> Result<()> {
        dispatch!(self, s => s.set_retention_override(workspace, own, at).await)
    }

    // --- pruning ------------------------------------------------------------

    /// Removes (or with `dry_run` counts) what has outlived its retention
    /// in every workspace with events, a bounded batch per transaction.
    /// `on_batch` hears of each batch and may stop it.
    pub async fn prune(
        &self,
        plan: &RetentionPlan,
        options: PruneOptions,
        on_batch: &mut OnBatch<'_>,
    ) -> Result<PruneReport> {
        dispatch!(self, s => s.prune(plan, options, on_batch).await)
    }

    /// Takes the pruning lock unless another process holds it (`None`).
    /// `holder` names this process in a SQLite lease (for operators);
    /// the lease lasts `lease`, PostgreSQL's lock as long as it is held.
    pub async fn try_lock_pruning(
        &self,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<Option<PruneLock>> {
        Ok(match self {
            Store::Postgres(s) => {
                postgres::AdvisoryLock::try_take(s)
                    .await?
                    .map(|lock| PruneLock {
                        inner: LockInner::Postgres(lock),
                    })
            }
            Store::Sqlite(s) => sqlite::Lease::try_take(s, holder, lease)
                .await?
                .map(|lease| PruneLock {
                    inner: LockInner::Sqlite(lease),
                }),
        })
    }

    /// Makes the space pruning freed reusable. SQLite (with incremental
    /// auto-vacuum) gives the free pages back to the file system, a few
    /// megabytes per write so the hot path gets the writer in between, and
    /// says how much. PostgreSQL vacuums and analyzes the pruned tables
    /// (`None`): deleted rows hold their space until a vacuum, and the
    /// server's autovacuum may be off, or wait until a fifth of a large
    /// table is dead.
    pub async fn reclaim_space(&self) -> Result<Option<Reclaimed>> {
        match self {
            Store::Postgres(s) => s.vacuum_pruned_tables().await.map(|()| None),
            Store::Sqlite(s) => s.reclaim_space().await.map(Some),
        }
    }

    /// About how many deliveries the ledger holds, from PostgreSQL's
    /// statistics (as of its last vacuum or analyze; 0 before either).
    /// Cheap; 0 on SQLite, which keeps no such figure.
    pub async fn deliveries_estimate(&self) -> Result<u64> {
        match self {
            Store::Postgres(s) => s.deliveries_estimate().await,
            Store::Sqlite(_) => Ok(0),
        }
    }

    /// Rewrites a SQLite file with incremental auto-vacuum (`VACUUM`): a
    /// file created before courier set it keeps `auto_vacuum = NONE` until
    /// then. Takes as long as copying the file, needs as much free disk
    /// again, and holds the write lock throughout: run it while courier is
    /// stopped. Does nothing on PostgreSQL (`None`).
    pub async fn vacuum(&self) -> Result<Option<Reclaimed>> {
        match self {
            Store::Postgres(_) => Ok(None),
            Store::Sqlite(s) => s.vacuum().await.map(Some),
        }
    }
}
