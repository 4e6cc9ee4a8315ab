//! The ledger's queries outside the batch plan (workspaces, subscriptions,
//! API keys, the delivery log, held deliveries, reads), written once: what
//! each binds, where it runs (reads on the read pool, writes through the
//! backend's writer) and how its rows become domain types. The SQL text is
//! each backend's (see [`Dialect`]), except for statements with no
//! parameters, which read the same on both.

use chrono::{DateTime, Utc};
use courier_model::{
    DeliveryId, DeliveryStatus, EventId, Subscription, SubscriptionId, WorkspaceId,
};
use futures_util::TryStreamExt;
use sqlx::{Database, Executor, IntoArguments};

use crate::dialect::{Bind, Columns, Conn, Dialect, finish};
use crate::error::refused;
use crate::rows;
use crate::{
    ApiKeyRecord, AttemptRecord, DeadReason, DeliveryContext, DeliveryCursor, DeliveryFilter,
    DeliveryLogEntry, DeliveryRecord, EventRecord, HeldDelivery, HeldDue, Result,
    SubscriptionsFingerprint, Workspace,
};

const LIST_WORKSPACES: &str = "SELECT id, name, created_at FROM workspaces ORDER BY created_at, id";

const SUBSCRIPTIONS_VERSION: &str = "SELECT version FROM subscriptions_version";

const DELIVERY_COUNTS: &str =
    "SELECT status, COUNT(*) AS n FROM deliveries GROUP BY status ORDER BY status";

/// The queries, for every backend. The bounds say what the shared code
/// binds and where it runs statements; both sqlx drivers meet them.
pub(crate) trait Queries: Dialect
where
    for<'c> &'c mut Conn<Self>: Executor<'c, Database = Self::Db>,
    <Self::Db as Database>::Arguments: IntoArguments<Self::Db>,
    for<'a> &'a str: Bind<'a, Self::Db>,
    for<'a> Option<&'a str>: Bind<'a, Self::Db>,
    for<'a> i64: Bind<'a, Self::Db>,
    for<'a> Option<i64>: Bind<'a, Self::Db>,
    for<'a> String: Bind<'a, Self::Db>,
    for<'a> Option<Self::Uuid>: Bind<'a, Self::Db>,
    for<'a> Option<Self::Ts>: Bind<'a, Self::Db>,
{
    // --- workspaces -------------------------------------------------------

    async fn create_workspace(&self, workspace: &Workspace) -> Result<()> {
        let mut conn = self.writer().await?;
        let done = sqlx::query::<Self::Db>(Self::INSERT_WORKSPACE)
            .bind(workspace.id.as_str())
            .bind(workspace.name.as_str())
            .bind(Self::ts(&workspace.created_at))
            .execute(&mut *conn)
            .await
            .map_err(|e| refused(e, "workspace"));
        Self::finish_write(conn, done.map(|_| ())).await
    }

    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>> {
        sqlx::query::<Self::Db>(Self::SELECT_WORKSPACE)
            .bind(id.as_str())
            .fetch_optional(self.reads())
            .await?
            .map(|row| rows::workspace::<Self>(&row))
            .transpose()
    }

    async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
        sqlx::query::<Self::Db>(LIST_WORKSPACES)
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(rows::workspace::<Self>)
            .collect()
    }

    // --- subscriptions ----------------------------------------------------

    async fn insert_subscription(&self, sub: &Subscription) -> Result<()> {
        let mut conn = self.writer().await?;
        let query = sqlx::query::<Self::Db>(Self::INSERT_SUBSCRIPTION);
        let done = rows::bind_subscription_insert::<Self>(query, sub)
            .execute(&mut *conn)
            .await
            .map_err(|e| refused(e, "subscription"));
        Self::finish_write(conn, done.map(|_| ())).await
    }

    /// Inserts many subscriptions in one transaction, rows exactly as
    /// [`Queries::insert_subscription`] writes them (`SUBSCRIPTIONS_PER_INSERT` to a
    /// statement).
    async fn insert_subscriptions(&self, subs: &[Subscription]) -> Result<()> {
        if subs.is_empty() {
            return Ok(());
        }
        let per_statement = Self::SUBSCRIPTIONS_PER_INSERT;
        let full = rows::multi_row_insert(Self::INSERT_SUBSCRIPTION, per_statement);
        let mut tx = self.begin().await?;
        let result: Result<()> = async {
            for chunk in subs.chunks(per_statement) {
                let sql = if chunk.len() == per_statement {
                    full.clone()
                } else {
                    rows::multi_row_insert(Self::INSERT_SUBSCRIPTION, chunk.len())
                };
                // Built from the statement's own text and numbers alone.
                let mut query = sqlx::query::<Self::Db>(sqlx::AssertSqlSafe(sql));
                for sub in chunk {
                    query = rows::bind_subscription_insert::<Self>(query, sub);
                }
                query
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| refused(e, "subscription"))?;
            }
            Ok(())
        }
        .await;
        finish(tx, result).await
    }

    async fn get_subscription(
        &self,
        workspace: &WorkspaceId,
        id: SubscriptionId,
    ) -> Result<Option<Subscription>> {
        sqlx::query::<Self::Db>(Self::SELECT_SUBSCRIPTION)
            .bind(Self::uuid(id.0))
            .bind(workspace.as_str())
            .fetch_optional(self.reads())
            .await?
            .map(|row| rows::subscription::<Self>(&row))
            .transpose()
    }

    async fn list_subscriptions(
        &self,
        workspace: &WorkspaceId,
        limit: u32,
        after: Option<SubscriptionId>,
    ) -> Result<Vec<Subscription>> {
        // Two statements rather than one with `IS NULL OR id > after`,
        // which would hide the index range from PostgreSQL's generic plan.
        let query = match after {
            None => sqlx::query::<Self::Db>(Self::LIST_SUBSCRIPTIONS)
                .bind(workspace.as_str())
                .bind(i64::from(limit)),
            Some(after) => sqlx::query::<Self::Db>(Self::LIST_SUBSCRIPTIONS_AFTER)
                .bind(workspace.as_str())
                .bind(i64::from(limit))
                .bind(Self::uuid(after.0)),
        };
        query
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(rows::subscription::<Self>)
            .collect()
    }

    async fn update_subscription(&self, sub: &Subscription) -> Result<bool> {
        let mut conn = self.writer().await?;
        let done = rows::subscription_update::<Self>(sub)
            .execute(&mut *conn)
            .await;
        let done = Self::finish_write(conn, done.map_err(Into::into)).await?;
        Ok(Self::rows_affected(&done) > 0)
    }

    async fn delete_subscription(
        &self,
        workspace: &WorkspaceId,
        id: SubscriptionId,
    ) -> Result<bool> {
        let mut conn = self.writer().await?;
        let done = sqlx::query::<Self::Db>(Self::DELETE_SUBSCRIPTION)
            .bind(Self::uuid(id.0))
            .bind(workspace.as_str())
            .execute(&mut *conn)
            .await;
        let done = Self::finish_write(conn, done.map_err(Into::into)).await?;
        Ok(Self::rows_affected(&done) > 0)
    }

    /// Streams every subscription (or only the enabled ones) into `each`,
    /// one row at a time, so a large set is never held twice in memory.
    /// Returns how many.
    async fn for_each_subscription(
        &self,
        enabled_only: bool,
        each: &mut (dyn FnMut(Subscription) + Send),
    ) -> Result<usize> {
        let query = if enabled_only {
            Self::LOAD_ENABLED_SUBSCRIPTIONS
        } else {
            Self::LOAD_SUBSCRIPTIONS
        };
        let mut rows = sqlx::query::<Self::Db>(query).fetch(self.reads());
        let mut n = 0;
        while let Some(row) = rows.try_next().await? {
            each(Self::loaded_subscription(&row)?);
            n += 1;
        }
        Ok(n)
    }

    async fn subscriptions_fingerprint(&self) -> Result<SubscriptionsFingerprint> {
        let row = sqlx::query::<Self::Db>(SUBSCRIPTIONS_VERSION)
            .fetch_one(self.reads())
            .await?;
        Ok(SubscriptionsFingerprint {
            version: row.count("version")?,
        })
    }

    // --- the delivery stage and held deliveries -------------------------------

    async fn delivery_context(&self, id: DeliveryId) -> Result<Option<DeliveryContext>> {
        let Some(row) = sqlx::query::<Self::Db>(Self::SELECT_DELIVERY_CONTEXT)
            .bind(Self::uuid(id.0))
            .fetch_optional(self.reads())
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(DeliveryContext {
            delivery: rows::delivery::<Self>(&row)?,
            event: rows::event::<Self>(&row)?,
            subscription: match Self::opt_uuid_of(&row, "s_id")? {
                Some(_) => Some(rows::subscription::<Self>(&row)?),
                None => None,
            },
        }))
    }

    async fn held_due(&self, now: DateTime<Utc>) -> Result<Vec<HeldDue>> {
        sqlx::query::<Self::Db>(Self::HELD_DUE)
            .bind(Self::ts(&now))
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(|row| {
                Ok(HeldDue {
                    subscription_id: SubscriptionId(Self::uuid_of(row, "subscription_id")?),
                    url: row.opt_text("url")?,
                    due: u64::try_from(row.count("due")?).unwrap_or(0),
                })
            })
            .collect()
    }

    /// `Store::claim_held`, and `Store::claim_expired` when `created_before`
    /// is set.
    async fn claim(
        &self,
        subscription: SubscriptionId,
        created_before: Option<DateTime<Utc>>,
        limit: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<HeldDelivery>> {
        let mut conn = self.writer().await?;
        let claimed = sqlx::query::<Self::Db>(Self::CLAIM_HELD)
            .bind(Self::uuid(subscription.0))
            .bind(i64::from(limit))
            .bind(Self::ts(&now))
            .bind(Self::ts(&lease_until))
            .bind(created_before.as_ref().map(Self::ts))
            .fetch_all(&mut *conn)
            .await;
        let claimed = Self::finish_write(conn, claimed.map_err(Into::into)).await?;
        claimed.iter().map(rows::held::<Self>).collect()
    }

    async fn give_up_held(
        &self,
        ids: &[DeliveryId],
        reason: DeadReason,
    ) -> Result<Vec<DeliveryId>> {
        let ids = Self::ids(ids.iter().map(|id| id.0))?;
        let mut conn = self.writer().await?;
        let dead = sqlx::query::<Self::Db>(Self::GIVE_UP_HELD)
            .bind(ids)
            .bind(Self::ts(&Utc::now()))
            .bind(reason.as_str())
            .fetch_all(&mut *conn)
            .await;
        let dead = Self::finish_write(conn, dead.map_err(Into::into)).await?;
        dead.iter()
            .map(|row| Ok(DeliveryId(Self::uuid_of(row, "id")?)))
            .collect()
    }

    // --- reads for operators and tests ---------------------------------------

    async fn get_delivery(&self, id: DeliveryId) -> Result<Option<DeliveryRecord>> {
        sqlx::query::<Self::Db>(Self::SELECT_DELIVERY)
            .bind(Self::uuid(id.0))
            .fetch_optional(self.reads())
            .await?
            .map(|row| rows::delivery::<Self>(&row))
            .transpose()
    }

    async fn deliveries_of_event(
        &self,
        workspace: &WorkspaceId,
        event: &EventId,
    ) -> Result<Vec<DeliveryRecord>> {
        sqlx::query::<Self::Db>(Self::DELIVERIES_OF_EVENT)
            .bind(event.as_str())
            .bind(workspace.as_str())
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(rows::delivery::<Self>)
            .collect()
    }

    async fn list_attempts(&self, delivery: DeliveryId) -> Result<Vec<AttemptRecord>> {
        sqlx::query::<Self::Db>(Self::LIST_ATTEMPTS)
            .bind(Self::uuid(delivery.0))
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(rows::attempt::<Self>)
            .collect()
    }

    async fn delivery_counts(&self) -> Result<Vec<(DeliveryStatus, u64)>> {
        sqlx::query::<Self::Db>(DELIVERY_COUNTS)
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(|row| {
                let status = rows::delivery_status("deliveries.status", &row.text("status")?)?;
                Ok((status, u64::try_from(row.count("n")?).unwrap_or(0)))
            })
            .collect()
    }

    // --- API keys and the delivery log ------------------------------------------

    async fn insert_api_key(&self, key: &ApiKeyRecord, key_hash: &str) -> Result<()> {
        let mut conn = self.writer().await?;
        let done = sqlx::query::<Self::Db>(Self::INSERT_API_KEY)
            .bind(key.id.as_str())
            .bind(key.workspace_id.as_str())
            .bind(key.name.as_str())
            .bind(key_hash)
            .bind(key.key_prefix.as_str())
            .bind(Self::ts(&key.created_at))
            .execute(&mut *conn)
            .await
            .map_err(|e| refused(e, "api key"));
        Self::finish_write(conn, done.map(|_| ())).await
    }

    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        sqlx::query::<Self::Db>(Self::FIND_API_KEY)
            .bind(key_hash)
            .fetch_optional(self.reads())
            .await?
            .map(|row| rows::api_key::<Self>(&row))
            .transpose()
    }

    async fn list_api_keys(&self, workspace: &WorkspaceId) -> Result<Vec<ApiKeyRecord>> {
        sqlx::query::<Self::Db>(Self::LIST_API_KEYS)
            .bind(workspace.as_str())
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(rows::api_key::<Self>)
            .collect()
    }

    async fn delete_api_key(&self, workspace: &WorkspaceId, id: &str) -> Result<bool> {
        let mut conn = self.writer().await?;
        let done = sqlx::query::<Self::Db>(Self::DELETE_API_KEY)
            .bind(workspace.as_str())
            .bind(id)
            .execute(&mut *conn)
            .await
            .map(|done| Self::rows_affected(&done) == 1)
            .map_err(crate::StoreError::from);
        Self::finish_write(conn, done).await
    }

    async fn list_deliveries(
        &self,
        workspace: &WorkspaceId,
        filter: &DeliveryFilter,
        limit: u32,
        after: Option<DeliveryCursor>,
    ) -> Result<Vec<DeliveryLogEntry>> {
        sqlx::query::<Self::Db>(Self::LIST_DELIVERIES)
            .bind(workspace.as_str())
            .bind(filter.event_type.map(|t| t.as_str()))
            .bind(filter.status.map(|s| s.as_str()))
            .bind(filter.subscription.map(|s| Self::uuid(s.0)))
            .bind(after.map(|c| Self::ts(&c.created_at)))
            .bind(after.map(|c| Self::uuid(c.id.0)))
            .bind(i64::from(limit))
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(rows::log_entry::<Self>)
            .collect()
    }

    async fn get_delivery_entry(
        &self,
        workspace: &WorkspaceId,
        id: DeliveryId,
    ) -> Result<Option<DeliveryLogEntry>> {
        sqlx::query::<Self::Db>(Self::SELECT_DELIVERY_ENTRY)
            .bind(Self::uuid(id.0))
            .bind(workspace.as_str())
            .fetch_optional(self.reads())
            .await?
            .map(|row| rows::log_entry::<Self>(&row))
            .transpose()
    }

    async fn get_event(
        &self,
        workspace: &WorkspaceId,
        id: &EventId,
    ) -> Result<Option<EventRecord>> {
        let Some(row) = sqlx::query::<Self::Db>(Self::SELECT_EVENT)
            .bind(workspace.as_str())
            .bind(id.as_str())
            .fetch_optional(self.reads())
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(EventRecord {
            event: rows::event::<Self>(&row)?,
            received_at: Self::ts_of(&row, "e_received_at")?,
        }))
    }

    async fn event_deliveries(
        &self,
        workspace: &WorkspaceId,
        id: &EventId,
    ) -> Result<Vec<DeliveryLogEntry>> {
        sqlx::query::<Self::Db>(Self::EVENT_DELIVERIES)
            .bind(id.as_str())
            .bind(workspace.as_str())
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(rows::log_entry::<Self>)
            .collect()
    }

    async fn reopen_delivery(
        &self,
        workspace: &WorkspaceId,
        id: DeliveryId,
    ) -> Result<Option<DeliveryRecord>> {
        let mut tx = self.begin().await?;
        let result: Result<_> = async {
            let before = sqlx::query::<Self::Db>(Self::REOPEN_SELECT)
                .bind(Self::uuid(id.0))
                .bind(workspace.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| rows::delivery::<Self>(&row))
                .transpose()?;
            if before.is_some() {
                Self::reopen(&mut tx, &[id]).await?;
            }
            Ok(before)
        }
        .await;
        finish(tx, result).await
    }

    async fn reopen_failed_deliveries(
        &self,
        workspace: &WorkspaceId,
        subscription: SubscriptionId,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>> {
        let mut tx = self.begin().await?;
        let result: Result<_> = async {
            let before = sqlx::query::<Self::Db>(Self::REOPEN_FAILED_SELECT)
                .bind(workspace.as_str())
                .bind(Self::uuid(subscription.0))
                .bind(Self::ts(&since))
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(rows::delivery::<Self>)
                .collect::<Result<Vec<_>>>()?;
            let ids: Vec<DeliveryId> = before.iter().map(|d| d.id).collect();
            Self::reopen(&mut tx, &ids).await?;
            Ok(before)
        }
        .await;
        finish(tx, result).await
    }

    async fn restore_delivery(&self, before: &DeliveryRecord) -> Result<bool> {
        let mut conn = self.writer().await?;
        let done = sqlx::query::<Self::Db>(Self::RESTORE_DELIVERY)
            .bind(Self::uuid(before.id.0))
            .bind(before.status.as_str())
            .bind(before.next_attempt_at.as_ref().map(Self::ts))
            .bind(i64::from(before.attempts))
            .bind(before.held_until.as_ref().map(Self::ts))
            .bind(before.workspace_id.as_str())
            .bind(Self::ts(&Utc::now()))
            .execute(&mut *conn)
            .await;
        let done = Self::finish_write(conn, done.map_err(Into::into)).await?;
        Ok(Self::rows_affected(&done) > 0)
    }

    /// Sets deliveries to `retrying`, due now, keeping their attempt counts;
    /// a held one is no longer held (the caller publishes its message).
    async fn reopen(conn: &mut Conn<Self>, ids: &[DeliveryId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query::<Self::Db>(Self::REOPEN)
            .bind(Self::ts(&Utc::now()))
            .bind(Self::ids(ids.iter().map(|id| id.0))?)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

impl<D: Dialect> Queries for D
where
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
    for<'a> &'a str: Bind<'a, D::Db>,
    for<'a> Option<&'a str>: Bind<'a, D::Db>,
    for<'a> i64: Bind<'a, D::Db>,
    for<'a> Option<i64>: Bind<'a, D::Db>,
    for<'a> String: Bind<'a, D::Db>,
    for<'a> Option<D::Uuid>: Bind<'a, D::Db>,
    for<'a> Option<D::Ts>: Bind<'a, D::Db>,
{
}
