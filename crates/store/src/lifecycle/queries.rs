//! The lifecycle's queries, written once for both backends. The SQL is each
//! backend's ([`LifecycleSql`], beside this file).

use chrono::{DateTime, Utc};
use courier_model::{DisabledReason, Subscription, SubscriptionId, WorkspaceId};
use sqlx::{Database, Executor, IntoArguments};

use super::{Disabling, EndedEpisode, LifecycleCounts, OpenEpisode, PausedDeliveries};
use crate::Result;
use crate::dialect::{Bind, Columns, Conn, Dialect, finish};
use crate::rows;

/// A backend's lifecycle SQL; parameters in the order the queries bind them.
pub(crate) trait LifecycleSql: Dialect {
    /// subscription, workspace, now.
    const PAUSE_DELIVERIES: &'static str;
    /// subscription, workspace, now.
    const REPLAY_PAUSED: &'static str;
    /// subscription, workspace, now.
    const CANCEL_PAUSED: &'static str;
    /// subscription, workspace: n.
    const COUNT_PAUSED: &'static str;
    /// subscription, workspace, reason, at.
    const DISABLE: &'static str;
    /// As `DISABLE`, then the failing episode's start.
    const DISABLE_IF_FAILING: &'static str;
    /// subscription, workspace, since: `at`, the latest success since then.
    const LAST_SUCCESS_SINCE: &'static str;
    /// subscription, since, now: a new episode in place of the one that
    /// began at `since`.
    const RESTART_FAILING: &'static str;
    /// subscription, now: no episode open.
    const FORGET_FAILING: &'static str;
    /// subscription: its circuit closed.
    const FORGET_CIRCUIT: &'static str;
    /// subscription, workspace, at: failing_since.
    const START_FAILING: &'static str;
    /// subscription, since, at.
    const REPORT_FAILING: &'static str;
    /// subscription: failing_since, failing_reported_at, locked until the
    /// transaction ends.
    const OPEN_EPISODE: &'static str;
    /// subscription, at.
    const END_FAILING: &'static str;
    /// subscription_id, failing_since, failing_reported_at of every open
    /// episode.
    const OPEN_EPISODES: &'static str;
    /// disabled_reason, n.
    const DISABLED_BY_REASON: &'static str;
    /// n.
    const PAUSED_TOTAL: &'static str;
}

pub(crate) trait LifecycleQueries: LifecycleSql
where
    for<'c> &'c mut Conn<Self>: Executor<'c, Database = Self::Db>,
    <Self::Db as Database>::Arguments: IntoArguments<Self::Db>,
    for<'a> &'a str: Bind<'a, Self::Db>,
    for<'a> Option<&'a str>: Bind<'a, Self::Db>,
    for<'a> Option<i64>: Bind<'a, Self::Db>,
    for<'a> String: Bind<'a, Self::Db>,
    for<'a> Self::Uuid: Bind<'a, Self::Db>,
    for<'a> Self::Ts: Bind<'a, Self::Db>,
    for<'a> Option<Self::Ts>: Bind<'a, Self::Db>,
    for<'a> Self::List: Bind<'a, Self::Db>,
{
    async fn update_subscription_and(
        &self,
        sub: &Subscription,
        then: PausedDeliveries,
    ) -> Result<Option<u64>> {
        let mut tx = self.begin().await?;
        let result: Result<Option<u64>> = async {
            let done = rows::subscription_update::<Self>(sub)
                .execute(&mut *tx)
                .await?;
            if Self::rows_affected(&done) == 0 {
                return Ok(None);
            }
            let statement = match then {
                PausedDeliveries::Keep => return Ok(Some(0)),
                PausedDeliveries::Pause => Self::PAUSE_DELIVERIES,
                PausedDeliveries::Replay => Self::REPLAY_PAUSED,
                PausedDeliveries::Cancel => Self::CANCEL_PAUSED,
            };
            let done = sqlx::query::<Self::Db>(statement)
                .bind(Self::uuid(sub.id.0))
                .bind(sub.workspace_id.as_str())
                .bind(Self::ts(&sub.updated_at))
                .execute(&mut *tx)
                .await?;
            if then != PausedDeliveries::Pause {
                // Enabled again: a clean slate. Its next failure starts a
                // new episode with all of `disable_after` to run, and its
                // circuit is closed (every replica reads that within a
                // second), so the replayed deliveries go out at once
                // rather than after a cool-down grown while it failed.
                sqlx::query::<Self::Db>(Self::FORGET_FAILING)
                    .bind(Self::uuid(sub.id.0))
                    .bind(Self::ts(&sub.updated_at))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query::<Self::Db>(Self::FORGET_CIRCUIT)
                    .bind(Self::uuid(sub.id.0))
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(Some(Self::rows_affected(&done)))
        }
        .await;
        finish(tx, result).await
    }

    async fn disable_subscription(
        &self,
        workspace: &WorkspaceId,
        id: SubscriptionId,
        reason: DisabledReason,
        at: DateTime<Utc>,
        failing_since: Option<DateTime<Utc>>,
    ) -> Result<Disabling> {
        let mut tx = self.begin().await?;
        let result: Result<Disabling> = async {
            if let Some(since) = failing_since {
                // A success this worker did not hear of ends the episode:
                // a new one starts now instead.
                let row = sqlx::query::<Self::Db>(Self::LAST_SUCCESS_SINCE)
                    .bind(Self::uuid(id.0))
                    .bind(workspace.as_str())
                    .bind(Self::ts(&since))
                    .fetch_one(&mut *tx)
                    .await?;
                if Self::opt_ts_of(&row, "at")?.is_some() {
                    let done = sqlx::query::<Self::Db>(Self::RESTART_FAILING)
                        .bind(Self::uuid(id.0))
                        .bind(Self::ts(&since))
                        .bind(Self::ts(&at))
                        .execute(&mut *tx)
                        .await?;
                    return Ok(if Self::rows_affected(&done) > 0 {
                        Disabling::Recovered
                    } else {
                        Disabling::Unchanged
                    });
                }
            }
            let query = match failing_since {
                None => sqlx::query::<Self::Db>(Self::DISABLE),
                Some(_) => sqlx::query::<Self::Db>(Self::DISABLE_IF_FAILING),
            }
            .bind(Self::uuid(id.0))
            .bind(workspace.as_str())
            .bind(reason.as_str())
            .bind(Self::ts(&at));
            let query = match failing_since {
                None => query,
                Some(since) => query.bind(Self::ts(&since)),
            };
            let done = query.execute(&mut *tx).await?;
            if Self::rows_affected(&done) == 0 {
                return Ok(Disabling::Unchanged);
            }
            let done = sqlx::query::<Self::Db>(Self::PAUSE_DELIVERIES)
                .bind(Self::uuid(id.0))
                .bind(workspace.as_str())
                .bind(Self::ts(&at))
                .execute(&mut *tx)
                .await?;
            Ok(Disabling::Disabled {
                paused: Self::rows_affected(&done),
            })
        }
        .await;
        finish(tx, result).await
    }

    async fn count_paused(&self, workspace: &WorkspaceId, id: SubscriptionId) -> Result<u64> {
        let row = sqlx::query::<Self::Db>(Self::COUNT_PAUSED)
            .bind(Self::uuid(id.0))
            .bind(workspace.as_str())
            .fetch_one(self.reads())
            .await?;
        Ok(u64::try_from(row.count("n")?).unwrap_or(0))
    }

    async fn start_failing(
        &self,
        workspace: &WorkspaceId,
        id: SubscriptionId,
        at: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        let mut conn = self.writer().await?;
        let row = sqlx::query::<Self::Db>(Self::START_FAILING)
            .bind(Self::uuid(id.0))
            .bind(workspace.as_str())
            .bind(Self::ts(&at))
            .fetch_optional(&mut *conn)
            .await;
        let row = Self::finish_write(conn, row.map_err(Into::into)).await?;
        row.map(|row| Self::ts_of(&row, "failing_since"))
            .transpose()
    }

    async fn report_failing(
        &self,
        id: SubscriptionId,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let mut conn = self.writer().await?;
        let done = sqlx::query::<Self::Db>(Self::REPORT_FAILING)
            .bind(Self::uuid(id.0))
            .bind(Self::ts(&since))
            .bind(Self::ts(&at))
            .execute(&mut *conn)
            .await;
        let done = Self::finish_write(conn, done.map_err(Into::into)).await?;
        Ok(Self::rows_affected(&done) > 0)
    }

    async fn end_failing(
        &self,
        id: SubscriptionId,
        at: DateTime<Utc>,
    ) -> Result<Option<EndedEpisode>> {
        let mut tx = self.begin().await?;
        let result: Result<Option<EndedEpisode>> = async {
            let Some(row) = sqlx::query::<Self::Db>(Self::OPEN_EPISODE)
                .bind(Self::uuid(id.0))
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            let episode = EndedEpisode {
                since: Self::ts_of(&row, "failing_since")?,
                reported: Self::opt_ts_of(&row, "failing_reported_at")?.is_some(),
            };
            sqlx::query::<Self::Db>(Self::END_FAILING)
                .bind(Self::uuid(id.0))
                .bind(Self::ts(&at))
                .execute(&mut *tx)
                .await?;
            Ok(Some(episode))
        }
        .await;
        finish(tx, result).await
    }

    async fn open_episodes(&self) -> Result<Vec<OpenEpisode>> {
        sqlx::query::<Self::Db>(Self::OPEN_EPISODES)
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(|row| {
                Ok(OpenEpisode {
                    subscription_id: SubscriptionId(Self::uuid_of(row, "subscription_id")?),
                    since: Self::ts_of(row, "failing_since")?,
                    reported: Self::opt_ts_of(row, "failing_reported_at")?.is_some(),
                })
            })
            .collect()
    }

    async fn lifecycle_counts(&self) -> Result<LifecycleCounts> {
        let mut counts = LifecycleCounts::default();
        for row in sqlx::query::<Self::Db>(Self::DISABLED_BY_REASON)
            .fetch_all(self.reads())
            .await?
        {
            let reason = rows::disabled_reason(row.opt_text("disabled_reason")?)?;
            let n = u64::try_from(row.count("n")?).unwrap_or(0);
            match counts.disabled.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, total)) => *total += n,
                None => counts.disabled.push((reason, n)),
            }
        }
        let row = sqlx::query::<Self::Db>(Self::PAUSED_TOTAL)
            .fetch_one(self.reads())
            .await?;
        counts.paused_deliveries = u64::try_from(row.count("n")?).unwrap_or(0);
        Ok(counts)
    }
}

impl<D: LifecycleSql> LifecycleQueries for D
where
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
    for<'a> &'a str: Bind<'a, D::Db>,
    for<'a> Option<&'a str>: Bind<'a, D::Db>,
    for<'a> Option<i64>: Bind<'a, D::Db>,
    for<'a> String: Bind<'a, D::Db>,
    for<'a> D::Uuid: Bind<'a, D::Db>,
    for<'a> D::Ts: Bind<'a, D::Db>,
    for<'a> Option<D::Ts>: Bind<'a, D::Db>,
    for<'a> D::List: Bind<'a, D::Db>,
{
}
