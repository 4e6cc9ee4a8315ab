//! The console's queries, written once for both backends: what each binds,
//! where it runs and how its rows become the console's types. The SQL is
//! each backend's ([`ConsoleSql`], beside this file).

use chrono::{DateTime, Utc};
use courier_model::{DeliveryStatus, SubscriptionId, WorkspaceId};
use sqlx::database::HasStatementCache;
use sqlx::{Database, Executor, IntoArguments};

use super::{ConsoleSession, PortalLink, SessionKind, WebhookHealth};
use crate::dialect::{Bind, Columns, Conn, Dialect, Row, finish};
use crate::error::refused;
use crate::rows::{self, corrupt};
use crate::{DeliveryFilter, Result};

/// A backend's console SQL. Each statement's parameters are bound in the
/// order [`ConsoleQueries`] binds them.
pub(crate) trait ConsoleSql: Dialect {
    /// id_hash, kind, workspace_id, read_only, csrf_token, created_at,
    /// expires_at.
    const INSERT_CONSOLE_SESSION: &'static str;
    /// id_hash, now: the session's columns when it has not expired.
    const FIND_CONSOLE_SESSION: &'static str;
    /// id_hash.
    const DELETE_CONSOLE_SESSION: &'static str;
    /// now.
    const PRUNE_CONSOLE_SESSIONS: &'static str;
    /// now.
    const PRUNE_PORTAL_LINKS: &'static str;

    /// token_hash, workspace_id, read_only, created_at, expires_at.
    const INSERT_PORTAL_LINK: &'static str;
    /// token_hash, now: one UPDATE that marks an unused, unexpired link
    /// used and returns it.
    const REDEEM_PORTAL_LINK: &'static str;

    /// workspace, since: a row per subscription (see `health`).
    const WEBHOOK_HEALTH: &'static str;
    /// workspace, since: hour, status, n.
    const OUTCOMES_BY_HOUR: &'static str;
    /// workspace, event type or NULL, status or NULL: n.
    const COUNT_DELIVERIES: &'static str;
    /// As `COUNT_DELIVERIES`, then the subscription: a statement of its
    /// own, so that its index is used whatever plan the server caches.
    const COUNT_SUBSCRIPTION_DELIVERIES: &'static str;
}

pub(crate) trait ConsoleQueries: ConsoleSql
where
    Self::Db: HasStatementCache,
    for<'c> &'c mut Conn<Self>: Executor<'c, Database = Self::Db>,
    <Self::Db as Database>::Arguments: IntoArguments<Self::Db>,
    for<'a> &'a str: Bind<'a, Self::Db>,
    for<'a> Option<&'a str>: Bind<'a, Self::Db>,
    for<'a> bool: Bind<'a, Self::Db>,
{
    // --- sessions -----------------------------------------------------------

    async fn insert_console_session(&self, session: &ConsoleSession) -> Result<()> {
        let mut conn = self.writer().await?;
        let done = sqlx::query::<Self::Db>(Self::INSERT_CONSOLE_SESSION)
            .bind(session.id_hash.as_str())
            .bind(session.kind.as_str())
            .bind(session.workspace_id.as_ref().map(|w| w.as_str()))
            .bind(session.read_only)
            .bind(session.csrf_token.as_str())
            .bind(Self::ts(&session.created_at))
            .bind(Self::ts(&session.expires_at))
            .execute(&mut *conn)
            .await
            .map_err(|e| refused(e, "console session"));
        Self::finish_write(conn, done.map(|_| ())).await
    }

    async fn find_console_session(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ConsoleSession>> {
        sqlx::query::<Self::Db>(Self::FIND_CONSOLE_SESSION)
            .bind(id_hash)
            .bind(Self::ts(&now))
            .fetch_optional(self.reads())
            .await?
            .map(|row| session::<Self>(&row))
            .transpose()
    }

    async fn delete_console_session(&self, id_hash: &str) -> Result<bool> {
        let mut conn = self.writer().await?;
        let done = sqlx::query::<Self::Db>(Self::DELETE_CONSOLE_SESSION)
            .bind(id_hash)
            .execute(&mut *conn)
            .await;
        let done = Self::finish_write(conn, done.map_err(Into::into)).await?;
        Ok(Self::rows_affected(&done) > 0)
    }

    async fn prune_console(&self, now: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.begin().await?;
        let result: Result<u64> = async {
            let mut pruned = 0;
            for statement in [Self::PRUNE_CONSOLE_SESSIONS, Self::PRUNE_PORTAL_LINKS] {
                let done = sqlx::query::<Self::Db>(statement)
                    .bind(Self::ts(&now))
                    .execute(&mut *tx)
                    .await?;
                pruned += Self::rows_affected(&done);
            }
            Ok(pruned)
        }
        .await;
        finish(tx, result).await
    }

    // --- portal links -------------------------------------------------------

    async fn insert_portal_link(&self, token_hash: &str, link: &PortalLink) -> Result<()> {
        let mut conn = self.writer().await?;
        let done = sqlx::query::<Self::Db>(Self::INSERT_PORTAL_LINK)
            .bind(token_hash)
            .bind(link.workspace_id.as_str())
            .bind(link.read_only)
            .bind(Self::ts(&link.created_at))
            .bind(Self::ts(&link.expires_at))
            .execute(&mut *conn)
            .await
            .map_err(|e| refused(e, "portal link"));
        Self::finish_write(conn, done.map(|_| ())).await
    }

    async fn redeem_portal_link(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PortalLink>> {
        let mut conn = self.writer().await?;
        let redeemed = sqlx::query::<Self::Db>(Self::REDEEM_PORTAL_LINK)
            .bind(token_hash)
            .bind(Self::ts(&now))
            .fetch_optional(&mut *conn)
            .await;
        let redeemed = Self::finish_write(conn, redeemed.map_err(Into::into)).await?;
        redeemed.map(|row| portal_link::<Self>(&row)).transpose()
    }

    // --- read models ----------------------------------------------------------
    //
    // Not kept as prepared statements (`persistent(false)`), so PostgreSQL
    // plans each with the workspace at hand. A cached generic plan guesses a
    // workspace's share of the deliveries from how many workspaces there
    // are: with a few, it read the whole table for a small workspace too
    // (measured, 1.2 M deliveries in 3 workspaces, a 20 k one: 719 ms
    // against 100 ms planned for it). Console reads are rare enough that
    // planning each costs nothing that matters.

    async fn webhook_health(
        &self,
        workspace: &WorkspaceId,
        since: DateTime<Utc>,
    ) -> Result<Vec<WebhookHealth>> {
        sqlx::query::<Self::Db>(Self::WEBHOOK_HEALTH)
            .persistent(false)
            .bind(workspace.as_str())
            .bind(Self::ts(&since))
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(health::<Self>)
            .collect()
    }

    async fn delivery_outcomes_by_hour(
        &self,
        workspace: &WorkspaceId,
        since: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, DeliveryStatus, u64)>> {
        sqlx::query::<Self::Db>(Self::OUTCOMES_BY_HOUR)
            .persistent(false)
            .bind(workspace.as_str())
            .bind(Self::ts(&since))
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(|row| {
                let status = rows::delivery_status("deliveries.status", &row.text("status")?)?;
                Ok((Self::ts_of(row, "hour")?, status, count(row, "n")?))
            })
            .collect()
    }

    async fn count_deliveries(
        &self,
        workspace: &WorkspaceId,
        filter: &DeliveryFilter,
    ) -> Result<u64> {
        let event_type = filter.event_type.map(|t| t.as_str());
        let status = filter.status.map(|s| s.as_str());
        let query = match filter.subscription {
            None => sqlx::query::<Self::Db>(Self::COUNT_DELIVERIES)
                .bind(workspace.as_str())
                .bind(event_type)
                .bind(status),
            Some(subscription) => sqlx::query::<Self::Db>(Self::COUNT_SUBSCRIPTION_DELIVERIES)
                .bind(workspace.as_str())
                .bind(event_type)
                .bind(status)
                .bind(Self::uuid(subscription.0)),
        };
        count(&query.persistent(false).fetch_one(self.reads()).await?, "n")
    }
}

impl<D: ConsoleSql> ConsoleQueries for D
where
    D::Db: HasStatementCache,
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
    for<'a> &'a str: Bind<'a, D::Db>,
    for<'a> Option<&'a str>: Bind<'a, D::Db>,
    for<'a> bool: Bind<'a, D::Db>,
{
}

/// A `COUNT(*)`, which is never negative.
fn count(row: &impl Columns, col: &str) -> Result<u64> {
    let n = row.count(col)?;
    u64::try_from(n).map_err(|_| corrupt(col, format!("count {n} is negative")))
}

/// Reads `id_hash, kind, workspace_id, read_only, csrf_token, created_at,
/// expires_at` of a session.
fn session<D: Dialect>(row: &Row<D>) -> Result<ConsoleSession> {
    let kind = row.text("kind")?;
    Ok(ConsoleSession {
        id_hash: row.text("id_hash")?,
        kind: SessionKind::parse(&kind).ok_or_else(|| {
            corrupt(
                "console_sessions.kind",
                format!("unknown session kind {kind:?}"),
            )
        })?,
        workspace_id: row
            .opt_text("workspace_id")?
            .map(|w| rows::workspace_id("console_sessions.workspace_id", w))
            .transpose()?,
        read_only: row.flag("read_only")?,
        csrf_token: row.text("csrf_token")?,
        created_at: D::ts_of(row, "created_at")?,
        expires_at: D::ts_of(row, "expires_at")?,
    })
}

/// Reads `workspace_id, read_only, created_at, expires_at` of a link.
fn portal_link<D: Dialect>(row: &Row<D>) -> Result<PortalLink> {
    Ok(PortalLink {
        workspace_id: rows::workspace_id("portal_links.workspace_id", row.text("workspace_id")?)?,
        read_only: row.flag("read_only")?,
        created_at: D::ts_of(row, "created_at")?,
        expires_at: D::ts_of(row, "expires_at")?,
    })
}

/// Reads a row of `WEBHOOK_HEALTH`.
fn health<D: Dialect>(row: &Row<D>) -> Result<WebhookHealth> {
    Ok(WebhookHealth {
        subscription_id: SubscriptionId(D::uuid_of(row, "subscription_id")?),
        succeeded: count(row, "succeeded")?,
        dead: count(row, "dead")?,
        canceled: count(row, "canceled")?,
        retrying: count(row, "retrying")?,
        pending: count(row, "pending")?,
        last_attempt_at: D::opt_ts_of(row, "last_attempt_at")?,
        last_response_status: rows::u16_from(
            "deliveries.last_response_status",
            D::opt_int(row, "last_response_status")?,
        )?,
        waiting: count(row, "waiting")?,
        held: count(row, "held")?,
    })
}
