//! Rows back into domain types, shared by both backends.
//!
//! Each backend says how its database decodes a column (it alone knows how
//! timestamps, UUIDs and lists are stored: see the decodings of
//! [`Dialect`]); which columns make a workspace, a subscription, a delivery
//! or an attempt, the validation that turns them into model types, and the
//! `Corrupt` errors naming the offending column live here once. The column
//! lists that both backends select are here too, as macros so queries stay
//! `&'static str`.

use std::fmt::Display;

use chrono::{DateTime, Utc};

use courier_model::{
    Channel, DeliveryId, DeliveryStatus, Disabled, DisabledReason, ErrorKind, Event, EventId,
    EventType, RateLimit, Subscription, SubscriptionId, SubscriptionStatus, WebhookSecret,
    WebhookSettings, WebhookUrl, WorkspaceId,
};

use crate::dialect::{Bind, Columns, Dialect, Row};
use crate::{
    ApiKeyRecord, AttemptRecord, DeadReason, DeliveryLogEntry, DeliveryRecord, HeldDelivery,
    Result, StoreError, Workspace,
};

/// Subscription columns, aliased `s_*` so they can share a row with a
/// delivery's (see `delivery_context`). Expects `subscriptions` as `s`.
macro_rules! subscription_columns {
    () => {
        "s.id AS s_id, s.workspace_id AS s_workspace_id, s.name AS s_name, s.url AS s_url, \
         s.event_types AS s_event_types, s.channels AS s_channels, s.secret AS s_secret, \
         s.previous_secret AS s_previous_secret, \
         s.previous_secret_expires_at AS s_previous_secret_expires_at, s.status AS s_status, \
         s.disabled_reason AS s_disabled_reason, s.disabled_at AS s_disabled_at, \
         s.description AS s_description, s.timeout_ms AS s_timeout_ms, \
         s.max_attempts AS s_max_attempts, s.headers AS s_headers, \
         s.rate_limit_per_second AS s_rate_limit_per_second, \
         s.rate_limit_burst AS s_rate_limit_burst, \
         s.created_at AS s_created_at, s.updated_at AS s_updated_at"
    };
}

/// Delivery columns, unaliased. Expects `deliveries` as `d`.
macro_rules! delivery_columns {
    () => {
        "d.id, d.event_id, d.subscription_id, d.workspace_id, d.event_type, d.status, \
         d.attempts, d.last_response_status, d.last_attempt_at, d.next_attempt_at, \
         d.held_until, d.created_at, d.updated_at"
    };
}

/// Event columns, aliased `e_*`. Expects `events` as `e`.
macro_rules! event_columns {
    () => {
        "e.id AS e_id, e.workspace_id AS e_workspace_id, e.type AS e_type, \
         e.channel AS e_channel, e.occurred_at AS e_occurred_at, e.data AS e_data"
    };
}

/// Attempt columns, unaliased. Expects `attempts` as `a`.
macro_rules! attempt_columns {
    () => {
        "a.delivery_id, a.attempt, a.url, a.started_at, a.duration_ms, a.response_status, \
         a.error_kind, a.error, a.response_excerpt, a.retry_after"
    };
}

/// The delivery log's columns: the delivery, plus the URL of its latest
/// attempt or else its subscription's current one. A statement goes on with
/// its WHERE clause.
macro_rules! delivery_log_select {
    () => {
        concat!(
            "SELECT ",
            $crate::rows::delivery_columns!(),
            ", d.dead_reason, \
             COALESCE((SELECT a.url FROM attempts a WHERE a.delivery_id = d.id \
             ORDER BY a.attempt DESC LIMIT 1), s.url) AS url \
             FROM deliveries d LEFT JOIN subscriptions s ON s.id = d.subscription_id \
             AND s.workspace_id = d.workspace_id "
        )
    };
}

pub(crate) use {
    attempt_columns, delivery_columns, delivery_log_select, event_columns, subscription_columns,
};

/// A stored value that the domain refuses. `column` is `table.column`.
pub(crate) fn corrupt(column: &str, problem: impl Display) -> StoreError {
    StoreError::Corrupt(format!("{column}: {problem}"))
}

pub(crate) fn workspace_id(column: &str, value: String) -> Result<WorkspaceId> {
    WorkspaceId::parse(value).map_err(|e| corrupt(column, e))
}

pub(crate) fn event_type(column: &str, value: &str) -> Result<EventType> {
    EventType::parse(value).map_err(|e| corrupt(column, e))
}

fn u32_from(column: &str, value: i64) -> Result<u32> {
    u32::try_from(value).map_err(|_| corrupt(column, format!("{value} is out of range")))
}

pub(crate) fn u16_from(column: &str, value: Option<i64>) -> Result<Option<u16>> {
    value
        .map(|v| {
            u16::try_from(v).map_err(|_| corrupt(column, format!("{v} is not an HTTP status")))
        })
        .transpose()
}

/// Attempt numbers and durations never come near `i32::MAX` (about 24 days
/// of milliseconds); saturating keeps the write infallible.
pub(crate) fn i32_saturating(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// Reads a row of `SELECT id, name, created_at FROM workspaces`.
pub(crate) fn workspace<D: Dialect>(row: &Row<D>) -> Result<Workspace> {
    Ok(Workspace {
        id: workspace_id("workspaces.id", row.text("id")?)?,
        name: row.text("name")?,
        created_at: D::ts_of(row, "created_at")?,
    })
}

/// Binds, after what a subscription INSERT or UPDATE binds first, its
/// lifecycle and settings columns in their order there: disabled reason
/// and time, description, timeout, max attempts, headers (a JSON array of
/// pairs), rate limit and burst.
pub(crate) fn bind_lifecycle<'q, D: Dialect>(
    query: sqlx::query::Query<'q, D::Db, <D::Db as sqlx::Database>::Arguments>,
    sub: &'q Subscription,
) -> sqlx::query::Query<'q, D::Db, <D::Db as sqlx::Database>::Arguments>
where
    for<'a> Option<&'a str>: Bind<'a, D::Db>,
    for<'a> Option<i64>: Bind<'a, D::Db>,
    for<'a> String: Bind<'a, D::Db>,
    for<'a> Option<D::Ts>: Bind<'a, D::Db>,
{
    let settings = &sub.settings;
    let headers = serde_json::to_string(&settings.headers).expect("pairs of strings serialize");
    query
        .bind(sub.disabled.map(|d| d.reason.as_str()))
        .bind(sub.disabled.as_ref().map(|d| D::ts(&d.at)))
        .bind(settings.description.as_deref())
        .bind(settings.timeout_ms.map(i64::from))
        .bind(settings.max_attempts.map(i64::from))
        .bind(headers)
        .bind(settings.rate_limit.map(|r| i64::from(r.per_second)))
        .bind(settings.rate_limit.map(|r| i64::from(r.burst)))
}

/// Binds, after what `query` has bound already, every column of `sub` in
/// the order of `Dialect::INSERT_SUBSCRIPTION`'s VALUES: the one place
/// that says what creating a subscription writes, for one row or many.
pub(crate) fn bind_subscription_insert<'q, D: Dialect>(
    query: sqlx::query::Query<'q, D::Db, <D::Db as sqlx::Database>::Arguments>,
    sub: &'q Subscription,
) -> sqlx::query::Query<'q, D::Db, <D::Db as sqlx::Database>::Arguments>
where
    for<'a> &'a str: Bind<'a, D::Db>,
    for<'a> Option<&'a str>: Bind<'a, D::Db>,
    for<'a> Option<i64>: Bind<'a, D::Db>,
    for<'a> String: Bind<'a, D::Db>,
    for<'a> Option<D::Ts>: Bind<'a, D::Db>,
{
    let query = bind_definition::<D>(query, sub)
        .bind(D::ts(&sub.created_at))
        .bind(D::ts(&sub.updated_at));
    bind_lifecycle::<D>(query, sub)
}

/// Binds what a subscription's owner defines, from its id to its status:
/// the columns INSERT_SUBSCRIPTION and UPDATE_SUBSCRIPTION both begin with.
fn bind_definition<'q, D: Dialect>(
    query: sqlx::query::Query<'q, D::Db, <D::Db as sqlx::Database>::Arguments>,
    sub: &'q Subscription,
) -> sqlx::query::Query<'q, D::Db, <D::Db as sqlx::Database>::Arguments>
where
    for<'a> &'a str: Bind<'a, D::Db>,
    for<'a> Option<&'a str>: Bind<'a, D::Db>,
    for<'a> Option<D::Ts>: Bind<'a, D::Db>,
{
    query
        .bind(D::uuid(sub.id.0))
        .bind(sub.workspace_id.as_str())
        .bind(sub.name.as_str())
        .bind(sub.url.as_str())
        .bind(D::list(event_type_names(&sub.event_types)))
        .bind(D::list(channel_names(&sub.channels)))
        .bind(sub.secret.expose())
        .bind(sub.previous_secret.as_ref().map(|s| s.expose()))
        .bind(sub.previous_secret_expires_at.as_ref().map(D::ts))
        .bind(sub.status.as_str())
}

/// `Dialect::INSERT_SUBSCRIPTION` for `rows` rows: its column list with
/// that many VALUES tuples, numbered on in the statement's own placeholder
/// style (`$n` or `?n`).
pub(crate) fn multi_row_insert(single: &str, rows: usize) -> String {
    let (head, values) = single
        .split_once("VALUES")
        .expect("an INSERT ... VALUES statement");
    let columns = values.matches(',').count() + 1;
    let mark = values
        .trim_start()
        .trim_start_matches('(')
        .chars()
        .next()
        .expect("a placeholder");
    let mut sql = String::with_capacity(head.len() + rows * columns * 6);
    sql.push_str(head);
    sql.push_str("VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push(mark);
            sql.push_str(&(row * columns + column + 1).to_string());
        }
        sql.push(')');
    }
    sql
}

/// `Dialect::UPDATE_SUBSCRIPTION` with every column of `sub` bound: the
/// one statement that saves a subscription, alone or in a transaction.
pub(crate) fn subscription_update<D: Dialect>(
    sub: &Subscription,
) -> sqlx::query::Query<'_, D::Db, <D::Db as sqlx::Database>::Arguments>
where
    for<'a> &'a str: Bind<'a, D::Db>,
    for<'a> Option<&'a str>: Bind<'a, D::Db>,
    for<'a> Option<i64>: Bind<'a, D::Db>,
    for<'a> String: Bind<'a, D::Db>,
    for<'a> Option<D::Ts>: Bind<'a, D::Db>,
{
    let query = bind_definition::<D>(sqlx::query::<D::Db>(D::UPDATE_SUBSCRIPTION), sub)
        .bind(D::ts(&sub.updated_at));
    bind_lifecycle::<D>(query, sub)
}

/// A subscription's columns as the database gave them, before validation.
/// Each backend reads them its own way ([`subscription`], or SQLite's load
/// of the matching index, which deserializes them from a JSON array in
/// this field order); [`SubscriptionColumns::validate`] is shared.
#[derive(serde::Deserialize)]
pub(crate) struct SubscriptionColumns {
    pub id: uuid::Uuid,
    pub workspace_id: String,
    pub name: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub channels: Vec<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub status: String,
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub description: Option<String>,
    pub timeout_ms: Option<i64>,
    pub max_attempts: Option<i64>,
    /// A JSON array of [name, value] pairs.
    pub headers: String,
    pub rate_limit_per_second: Option<i64>,
    pub rate_limit_burst: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Reads the `s_*` columns of [`subscription_columns`].
pub(crate) fn subscription<D: Dialect>(row: &Row<D>) -> Result<Subscription> {
    SubscriptionColumns {
        id: D::uuid_of(row, "s_id")?,
        workspace_id: row.text("s_workspace_id")?,
        name: row.text("s_name")?,
        url: row.text("s_url")?,
        event_types: D::list_of(row, "s_event_types")?,
        channels: D::list_of(row, "s_channels")?,
        secret: row.text("s_secret")?,
        previous_secret: row.opt_text("s_previous_secret")?,
        previous_secret_expires_at: D::opt_ts_of(row, "s_previous_secret_expires_at")?,
        status: row.text("s_status")?,
        disabled_reason: row.opt_text("s_disabled_reason")?,
        disabled_at: D::opt_ts_of(row, "s_disabled_at")?,
        description: row.opt_text("s_description")?,
        timeout_ms: D::opt_int(row, "s_timeout_ms")?,
        max_attempts: D::opt_int(row, "s_max_attempts")?,
        headers: row.text("s_headers")?,
        rate_limit_per_second: D::opt_int(row, "s_rate_limit_per_second")?,
        rate_limit_burst: D::opt_int(row, "s_rate_limit_burst")?,
        created_at: D::ts_of(row, "s_created_at")?,
        updated_at: D::ts_of(row, "s_updated_at")?,
    }
    .validate()
}

impl SubscriptionColumns {
    /// The subscription these columns hold, or `Corrupt` naming the column
    /// that breaks its rule.
    pub(crate) fn validate(self) -> Result<Subscription> {
        let event_types = self
            .event_types
            .iter()
            .map(|t| event_type("subscriptions.event_types", t))
            .collect::<Result<Vec<_>>>()?;
        let channels = self
            .channels
            .iter()
            .map(|c| Channel::parse(c).map_err(|e| corrupt("subscriptions.channels", e)))
            .collect::<Result<Vec<_>>>()?;
        let previous_secret = self
            .previous_secret
            .map(|s| {
                WebhookSecret::parse(&s).map_err(|e| corrupt("subscriptions.previous_secret", e))
            })
            .transpose()?;
        let status = SubscriptionStatus::parse(&self.status).ok_or_else(|| {
            corrupt(
                "subscriptions.status",
                format!("unknown status {:?}", self.status),
            )
        })?;
        let disabled = match status {
            SubscriptionStatus::Enabled => None,
            SubscriptionStatus::Disabled => {
                let reason = disabled_reason(self.disabled_reason)?;
                let at = self.disabled_at.unwrap_or(self.updated_at);
                Some(Disabled { reason, at })
            }
        };
        let positive = |value: Option<i64>, name: &str| -> Result<Option<u32>> {
            value
                .map(|v| {
                    u32::try_from(v).ok().filter(|v| *v > 0).ok_or_else(|| {
                        corrupt(name, format!("{v} is not a positive 32-bit number"))
                    })
                })
                .transpose()
        };
        let headers: Vec<(String, String)> =
            serde_json::from_str(&self.headers).map_err(|e| corrupt("subscriptions.headers", e))?;
        let rate_limit = match (
            positive(
                self.rate_limit_per_second,
                "subscriptions.rate_limit_per_second",
            )?,
            positive(self.rate_limit_burst, "subscriptions.rate_limit_burst")?,
        ) {
            (Some(per_second), burst) => Some(RateLimit {
                per_second,
                burst: burst.unwrap_or(per_second),
            }),
            (None, _) => None,
        };
        let settings = WebhookSettings {
            description: self.description,
            timeout_ms: positive(self.timeout_ms, "subscriptions.timeout_ms")?,
            max_attempts: positive(self.max_attempts, "subscriptions.max_attempts")?,
            headers,
            rate_limit,
        };
        Ok(Subscription {
            id: SubscriptionId(self.id),
            workspace_id: workspace_id("subscriptions.workspace_id", self.workspace_id)?,
            name: self.name,
            url: WebhookUrl::parse(&self.url).map_err(|e| corrupt("subscriptions.url", e))?,
            event_types,
            channels,
            secret: WebhookSecret::parse(&self.secret)
                .map_err(|e| corrupt("subscriptions.secret", e))?,
            previous_secret,
            previous_secret_expires_at: self.previous_secret_expires_at,
            status,
            disabled,
            settings,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// A disabled subscription's `disabled_reason`: none for those disabled
/// before reasons were recorded, or by hand in SQL (someone switched it
/// off).
pub(crate) fn disabled_reason(value: Option<String>) -> Result<DisabledReason> {
    match value {
        None => Ok(DisabledReason::Manual),
        Some(r) => DisabledReason::parse(&r).ok_or_else(|| {
            corrupt(
                "subscriptions.disabled_reason",
                format!("unknown reason {r:?}"),
            )
        }),
    }
}

pub(crate) fn delivery_status(column: &str, value: &str) -> Result<DeliveryStatus> {
    DeliveryStatus::parse(value)
        .ok_or_else(|| corrupt(column, format!("unknown delivery status {value:?}")))
}

fn event_id(column: &str, value: String) -> Result<EventId> {
    EventId::parse(value).map_err(|e| corrupt(column, e))
}

/// Reads the columns of [`delivery_columns`].
pub(crate) fn delivery<D: Dialect>(row: &Row<D>) -> Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        id: DeliveryId(D::uuid_of(row, "id")?),
        event_id: event_id("deliveries.event_id", row.text("event_id")?)?,
        subscription_id: SubscriptionId(D::uuid_of(row, "subscription_id")?),
        workspace_id: workspace_id("deliveries.workspace_id", row.text("workspace_id")?)?,
        event_type: event_type("deliveries.event_type", &row.text("event_type")?)?,
        status: delivery_status("deliveries.status", &row.text("status")?)?,
        attempts: u32_from("deliveries.attempts", D::int(row, "attempts")?)?,
        last_response_status: u16_from(
            "deliveries.last_response_status",
            D::opt_int(row, "last_response_status")?,
        )?,
        last_attempt_at: D::opt_ts_of(row, "last_attempt_at")?,
        next_attempt_at: D::opt_ts_of(row, "next_attempt_at")?,
        held_until: D::opt_ts_of(row, "held_until")?,
        created_at: D::ts_of(row, "created_at")?,
        updated_at: D::ts_of(row, "updated_at")?,
    })
}

/// Reads a delivery log row: [`delivery_log_select`].
pub(crate) fn log_entry<D: Dialect>(row: &Row<D>) -> Result<DeliveryLogEntry> {
    Ok(DeliveryLogEntry {
        delivery: delivery::<D>(row)?,
        url: row.opt_text("url")?,
        dead_reason: row
            .opt_text("dead_reason")?
            .map(|r| {
                DeadReason::parse(&r).ok_or_else(|| {
                    corrupt("deliveries.dead_reason", format!("unknown reason {r:?}"))
                })
            })
            .transpose()?,
    })
}

/// Reads `id, event_id, subscription_id, event_type, attempts` of a
/// delivery.
pub(crate) fn held<D: Dialect>(row: &Row<D>) -> Result<HeldDelivery> {
    Ok(HeldDelivery {
        id: DeliveryId(D::uuid_of(row, "id")?),
        event_id: event_id("deliveries.event_id", row.text("event_id")?)?,
        subscription_id: SubscriptionId(D::uuid_of(row, "subscription_id")?),
        event_type: event_type("deliveries.event_type", &row.text("event_type")?)?,
        attempts: u32_from("deliveries.attempts", D::int(row, "attempts")?)?,
    })
}

/// Reads the `e_*` columns of [`event_columns`].
pub(crate) fn event<D: Dialect>(row: &Row<D>) -> Result<Event> {
    Ok(Event {
        id: event_id("events.id", row.text("e_id")?)?,
        workspace_id: workspace_id("events.workspace_id", row.text("e_workspace_id")?)?,
        event_type: event_type("events.type", &row.text("e_type")?)?,
        channel: row
            .opt_text("e_channel")?
            .map(|c| Channel::parse(&c).map_err(|e| corrupt("events.channel", e)))
            .transpose()?,
        occurred_at: D::ts_of(row, "e_occurred_at")?,
        data: D::data_of(row, "e_data")?,
    })
}

/// Reads the columns of [`attempt_columns`].
pub(crate) fn attempt<D: Dialect>(row: &Row<D>) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        delivery_id: DeliveryId(D::uuid_of(row, "delivery_id")?),
        attempt: u32_from("attempts.attempt", D::int(row, "attempt")?)?,
        url: row.text("url")?,
        started_at: D::ts_of(row, "started_at")?,
        duration_ms: u32_from("attempts.duration_ms", D::int(row, "duration_ms")?)?,
        response_status: u16_from(
            "attempts.response_status",
            D::opt_int(row, "response_status")?,
        )?,
        error_kind: row
            .opt_text("error_kind")?
            .map(|k| {
                ErrorKind::parse(&k).ok_or_else(|| {
                    corrupt("attempts.error_kind", format!("unknown error kind {k:?}"))
                })
            })
            .transpose()?,
        error: row.opt_text("error")?,
        response_excerpt: row.opt_text("response_excerpt")?,
        retry_after: row.opt_text("retry_after")?,
    })
}

/// Reads `id, workspace_id, name, key_prefix, created_at` of an API key.
pub(crate) fn api_key<D: Dialect>(row: &Row<D>) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: row.text("id")?,
        workspace_id: workspace_id("api_keys.workspace_id", row.text("workspace_id")?)?,
        name: row.text("name")?,
        key_prefix: row.text("key_prefix")?,
        created_at: D::ts_of(row, "created_at")?,
    })
}

/// Lists are stored as their wire names (PostgreSQL `TEXT[]`, SQLite a JSON
/// array), so the rows stay readable to an operator with `psql`/`sqlite3`.
pub(crate) fn event_type_names(types: &[EventType]) -> Vec<String> {
    types.iter().map(|t| t.as_str().to_owned()).collect()
}

pub(crate) fn channel_names(channels: &[Channel]) -> Vec<String> {
    channels.iter().map(|c| c.as_str().to_owned()).collect()
}

/// What identifies an event in the ledger: its workspace and its id. Ids
/// are the upstreams', so two workspaces may use the same one.
pub(crate) fn event_key(event: &Event) -> (&str, &str) {
    (event.workspace_id.as_str(), event.id.as_str())
}
