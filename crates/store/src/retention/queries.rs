//! Retention's queries, written once for both backends. The SQL is each
//! backend's ([`RetentionSql`], beside this file).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use courier_model::{DeliveryStatus, RetentionCutoffs, RetentionOverride, WorkspaceId};
use sqlx::{Database, Executor, IntoArguments};
use uuid::Uuid;

use super::{OnBatch, PruneOptions, PruneReport, PrunedRows, RetentionPlan, WorkspacePruned};
use crate::Result;
use crate::dialect::{Bind, Columns, Conn, Dialect, finish};
use crate::error::refused;
use crate::rows::corrupt;

/// Every workspace with events, without reading every event: a loose
/// index scan of `events_workspace_received`, one index probe per
/// workspace. The same SQL on both backends.
const EVENT_WORKSPACES: &str = "WITH RECURSIVE w(id) AS ( \
     SELECT MIN(workspace_id) FROM events \
     UNION ALL \
     SELECT (SELECT MIN(e.workspace_id) FROM events e WHERE e.workspace_id > w.id) \
     FROM w WHERE w.id IS NOT NULL) \
     SELECT id FROM w WHERE id IS NOT NULL";

const ALL_OVERRIDES: &str =
    "SELECT workspace_id, succeeded_days, failed_days FROM workspace_retention";

/// A backend's retention SQL; parameters in the order the queries bind them.
pub(crate) trait RetentionSql: Dialect {
    /// workspace: succeeded_days, failed_days.
    const SELECT_OVERRIDE: &'static str;
    /// workspace, succeeded_days, failed_days, at.
    const UPSERT_OVERRIDE: &'static str;
    /// workspace.
    const DELETE_OVERRIDE: &'static str;
    /// workspace, latest cutoff, cursor received_at, cursor id, succeeded
    /// cutoff, failed cutoff, limit: id, received_at of the events that
    /// may go, oldest first after the cursor.
    const PRUNE_CANDIDATES: &'static str;
    /// workspace, event ids: id, event_id, status, updated_at of their
    /// deliveries.
    const DELIVERIES_OF_EVENTS: &'static str;
    /// As `DELIVERIES_OF_EVENTS`, locked until the transaction ends where
    /// the backend locks rows (SQLite's write transaction holds the file).
    const LOCK_DELIVERIES_OF_EVENTS: &'static str;
    /// delivery ids: n.
    const COUNT_ATTEMPTS: &'static str;
    /// delivery ids.
    const DELETE_ATTEMPTS: &'static str;
    /// delivery ids.
    const DELETE_DELIVERIES: &'static str;
    /// workspace, event ids: those that have no delivery left.
    const DELETE_EVENTS: &'static str;
}

/// Where a workspace's walk stands: the last event it looked at, in
/// (received_at, id) order.
pub(crate) struct Cursor {
    received_at: DateTime<Utc>,
    id: String,
}

/// An event that may go, as the candidates query found it.
pub(crate) struct Candidate {
    id: String,
    received_at: DateTime<Utc>,
}

/// One batch's outcome.
pub(crate) struct Batch {
    rows: PrunedRows,
    /// The last candidate it looked at: the next batch starts after it.
    last: Cursor,
    /// Whether it looked at every candidate it was given.
    exhausted: bool,
}

/// Whether a delivery has outlived its retention.
fn expired(status: DeliveryStatus, updated_at: DateTime<Utc>, cut: &RetentionCutoffs) -> bool {
    match status {
        DeliveryStatus::Succeeded => updated_at < cut.succeeded_before,
        DeliveryStatus::Dead | DeliveryStatus::Canceled => updated_at < cut.failed_before,
        DeliveryStatus::Pending | DeliveryStatus::Retrying | DeliveryStatus::Paused => false,
    }
}

fn days_of(value: Option<i64>, column: &str) -> Result<Option<u32>> {
    value
        .map(|v| u32::try_from(v).map_err(|_| corrupt(column, format!("{v} days"))))
        .transpose()
}

pub(crate) trait RetentionQueries: RetentionSql
where
    for<'c> &'c mut Conn<Self>: Executor<'c, Database = Self::Db>,
    <Self::Db as Database>::Arguments: IntoArguments<Self::Db>,
    for<'a> &'a str: Bind<'a, Self::Db>,
    for<'a> i64: Bind<'a, Self::Db>,
    for<'a> Option<i64>: Bind<'a, Self::Db>,
    for<'a> Self::Ts: Bind<'a, Self::Db>,
    for<'a> Self::List: Bind<'a, Self::Db>,
    for<'a> Self::Ids: Bind<'a, Self::Db>,
{
    async fn retention_override(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Option<RetentionOverride>> {
        let Some(row) = sqlx::query::<Self::Db>(Self::SELECT_OVERRIDE)
            .bind(workspace.as_str())
            .fetch_optional(self.reads())
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(RetentionOverride {
            succeeded: days_of(Self::opt_int(&row, "succeeded_days")?, "succeeded_days")?,
            failed: days_of(Self::opt_int(&row, "failed_days")?, "failed_days")?,
        }))
    }

    async fn retention_overrides(&self) -> Result<HashMap<WorkspaceId, RetentionOverride>> {
        let mut all = HashMap::new();
        for row in sqlx::query::<Self::Db>(ALL_OVERRIDES)
            .fetch_all(self.reads())
            .await?
        {
            let id = row.text("workspace_id")?;
            let workspace = WorkspaceId::parse(id.clone())
                .map_err(|e| corrupt("workspace_retention.workspace_id", format!("{id:?}: {e}")))?;
            let own = RetentionOverride {
                succeeded: days_of(Self::opt_int(&row, "succeeded_days")?, "succeeded_days")?,
                failed: days_of(Self::opt_int(&row, "failed_days")?, "failed_days")?,
            };
            all.insert(workspace, own);
        }
        Ok(all)
    }

    async fn set_retention_override(
        &self,
        workspace: &WorkspaceId,
        own: &RetentionOverride,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let mut conn = self.writer().await?;
        let done = if own.is_empty() {
            sqlx::query::<Self::Db>(Self::DELETE_OVERRIDE)
                .bind(workspace.as_str())
                .execute(&mut *conn)
                .await
                .map(|_| ())
                .map_err(Into::into)
        } else {
            sqlx::query::<Self::Db>(Self::UPSERT_OVERRIDE)
                .bind(workspace.as_str())
                .bind(own.succeeded.map(i64::from))
                .bind(own.failed.map(i64::from))
                .bind(Self::ts(&at))
                .execute(&mut *conn)
                .await
                .map(|_| ())
                .map_err(|e| refused(e, "retention"))
        };
        Self::finish_write(conn, done).await
    }

    async fn event_workspaces(&self) -> Result<Vec<WorkspaceId>> {
        sqlx::query::<Self::Db>(EVENT_WORKSPACES)
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(|row| {
                let id = row.text("id")?;
                // Events carry the workspace their upstream published
                // with, checked when they were; anything else is corrupt.
                WorkspaceId::parse(id.clone())
                    .map_err(|e| corrupt("events.workspace_id", format!("{id:?}: {e}")))
            })
            .collect()
    }

    async fn prune(
        &self,
        plan: &RetentionPlan,
        options: PruneOptions,
        on_batch: &mut OnBatch<'_>,
    ) -> Result<PruneReport> {
        let limit = options.batch_rows.max(1);
        let mut report = PruneReport {
            dry_run: options.dry_run,
            ..PruneReport::default()
        };
        for workspace in self.event_workspaces().await? {
            let (days, cut) = plan.for_workspace(&workspace);
            let mut pruned = PrunedRows::default();
            let mut cursor = Cursor {
                received_at: DateTime::UNIX_EPOCH,
                id: String::new(),
            };
            loop {
                let started = std::time::Instant::now();
                let candidates = self
                    .prune_candidates(&workspace, &cut, &cursor, limit)
                    .await?;
                if candidates.is_empty() {
                    break;
                }
                let fetched_all = candidates.len() < limit as usize;
                let batch = self
                    .prune_batch(&workspace, &cut, candidates, limit, options.dry_run)
                    .await?;
                cursor = batch.last;
                if !batch.rows.is_empty() {
                    report.batches += 1;
                    pruned.add(&batch.rows);
                    report.total.add(&batch.rows);
                    if on_batch(&workspace, &batch.rows, started.elapsed())
                        .await
                        .is_break()
                    {
                        report.stopped = true;
                    }
                }
                if report.stopped || (fetched_all && batch.exhausted) {
                    break;
                }
            }
            if !pruned.is_empty() {
                report.workspaces.push(WorkspacePruned {
                    workspace,
                    succeeded_days: days.succeeded,
                    failed_days: days.failed,
                    rows: pruned,
                });
            }
            if report.stopped {
                break;
            }
        }
        Ok(report)
    }

    /// The workspace's events after `cursor` that the ledger says may go,
    /// oldest first, at most `limit`. Read without a lock: the batch
    /// checks them again.
    async fn prune_candidates(
        &self,
        workspace: &WorkspaceId,
        cut: &RetentionCutoffs,
        cursor: &Cursor,
        limit: u32,
    ) -> Result<Vec<Candidate>> {
        sqlx::query::<Self::Db>(Self::PRUNE_CANDIDATES)
            .bind(workspace.as_str())
            .bind(Self::ts(&cut.latest()))
            .bind(Self::ts(&cursor.received_at))
            .bind(cursor.id.as_str())
            .bind(Self::ts(&cut.succeeded_before))
            .bind(Self::ts(&cut.failed_before))
            .bind(i64::from(limit))
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(|row| {
                Ok(Candidate {
                    id: row.text("id")?,
                    received_at: Self::ts_of(row, "received_at")?,
                })
            })
            .collect()
    }

    /// Removes (or counts) the candidates whose deliveries all outlived
    /// their retention, in order, until `limit` deliveries are taken. In
    /// one transaction that first reads (on PostgreSQL: locks) those
    /// deliveries, so one reopened since the candidates were read keeps
    /// its event whole.
    async fn prune_batch(
        &self,
        workspace: &WorkspaceId,
        cut: &RetentionCutoffs,
        candidates: Vec<Candidate>,
        limit: u32,
        dry_run: bool,
    ) -> Result<Batch> {
        if dry_run {
            let mut conn = self.reads().acquire().await?;
            let (events, deliveries, last, exhausted) =
                Self::take(&mut conn, workspace, cut, candidates, limit, false).await?;
            let attempts = Self::count_attempts(&mut conn, &deliveries).await?;
            return Ok(Batch {
                rows: PrunedRows {
                    events: events.len() as u64,
                    deliveries: deliveries.len() as u64,
                    attempts,
                },
                last,
                exhausted,
            });
        }
        let mut tx = self.begin().await?;
        let result: Result<Batch> = async {
            let (events, deliveries, last, exhausted) =
                Self::take(&mut tx, workspace, cut, candidates, limit, true).await?;
            let mut rows = PrunedRows::default();
            if !deliveries.is_empty() {
                // Children first: PostgreSQL's ledger keeps no foreign
                // keys on this path (migration 0002), SQLite's would
                // cascade, and either way the counts come from here.
                let done = sqlx::query::<Self::Db>(Self::DELETE_ATTEMPTS)
                    .bind(Self::ids(deliveries.iter().copied())?)
                    .execute(&mut *tx)
                    .await?;
                rows.attempts = Self::rows_affected(&done);
                let done = sqlx::query::<Self::Db>(Self::DELETE_DELIVERIES)
                    .bind(Self::ids(deliveries.iter().copied())?)
                    .execute(&mut *tx)
                    .await?;
                rows.deliveries = Self::rows_affected(&done);
            }
            if !events.is_empty() {
                let done = sqlx::query::<Self::Db>(Self::DELETE_EVENTS)
                    .bind(workspace.as_str())
                    .bind(Self::list(events))
                    .execute(&mut *tx)
                    .await?;
                rows.events = Self::rows_affected(&done);
            }
            Ok(Batch {
                rows,
                last,
                exhausted,
            })
        }
        .await;
        finish(tx, result).await
    }

    /// Reads the candidates' deliveries on `conn` and picks, in order, the
    /// events that may go and their deliveries, stopping once `limit`
    /// deliveries are picked (`lock`: and locks their deliveries). Returns them, the last candidate looked at,
    /// and whether that was the last one given.
    async fn take(
        conn: &mut Conn<Self>,
        workspace: &WorkspaceId,
        cut: &RetentionCutoffs,
        candidates: Vec<Candidate>,
        limit: u32,
        lock: bool,
    ) -> Result<(Vec<String>, Vec<Uuid>, Cursor, bool)> {
        let ids: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();
        let mut of_event: HashMap<String, Vec<(Uuid, bool)>> = HashMap::new();
        let sql = if lock {
            Self::LOCK_DELIVERIES_OF_EVENTS
        } else {
            Self::DELIVERIES_OF_EVENTS
        };
        for row in sqlx::query::<Self::Db>(sql)
            .bind(workspace.as_str())
            .bind(Self::list(ids))
            .fetch_all(&mut *conn)
            .await?
        {
            let status = row.text("status")?;
            let status = DeliveryStatus::parse(&status).ok_or_else(|| {
                corrupt("deliveries.status", format!("unknown status {status:?}"))
            })?;
            let gone = expired(status, Self::ts_of(&row, "updated_at")?, cut);
            of_event
                .entry(row.text("event_id")?)
                .or_default()
                .push((Self::uuid_of(&row, "id")?, gone));
        }
        let total = candidates.len();
        let (mut events, mut deliveries) = (Vec::new(), Vec::new());
        let mut last = None;
        for (i, candidate) in candidates.into_iter().enumerate() {
            let may_go = match of_event.get(&candidate.id) {
                // Matched nothing: kept as long as a success.
                None => candidate.received_at < cut.succeeded_before,
                Some(own) => own.iter().all(|(_, gone)| *gone),
            };
            if may_go {
                if let Some(own) = of_event.get(&candidate.id) {
                    deliveries.extend(own.iter().map(|(id, _)| *id));
                }
                events.push(candidate.id.clone());
            }
            last = Some((i, candidate));
            if deliveries.len() >= limit as usize {
                break;
            }
        }
        let (i, last) = last.expect("called with candidates");
        let cursor = Cursor {
            received_at: last.received_at,
            id: last.id,
        };
        Ok((events, deliveries, cursor, i + 1 == total))
    }

    async fn count_attempts(conn: &mut Conn<Self>, deliveries: &[Uuid]) -> Result<u64> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let row = sqlx::query::<Self::Db>(Self::COUNT_ATTEMPTS)
            .bind(Self::ids(deliveries.iter().copied())?)
            .fetch_one(&mut *conn)
            .await?;
        Ok(u64::try_from(row.count("n")?).unwrap_or(0))
    }
}

impl<D: RetentionSql> RetentionQueries for D
where
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
    for<'a> &'a str: Bind<'a, D::Db>,
    for<'a> i64: Bind<'a, D::Db>,
    for<'a> Option<i64>: Bind<'a, D::Db>,
    for<'a> D::Ts: Bind<'a, D::Db>,
    for<'a> D::List: Bind<'a, D::Db>,
    for<'a> D::Ids: Bind<'a, D::Db>,
{
}
