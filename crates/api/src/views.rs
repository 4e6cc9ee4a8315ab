//! What the REST API returns: camelCase JSON views of ledger records, and
//! the opaque pagination cursors.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeZone, Utc};
use courier_model::{DeliveryId, Subscription, SubscriptionId, SubscriptionStatus};
use courier_store::{AttemptRecord, DeliveryCursor, DeliveryLogEntry};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiError;
use crate::openapi::{DeadReasonName, DeliveryStatusName, ErrorKindName, EventTypeName};
use crate::service::LogPage;

/// Most rows one page returns; `first` defaults to 20.
pub const MAX_PAGE: u32 = 100;
pub const DEFAULT_PAGE: u32 = 20;

pub fn page_size(first: Option<u32>) -> Result<u32, ApiError> {
    match first.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        _ => Err(ApiError::invalid(
            "first",
            format!("must be between 1 and {MAX_PAGE}"),
        )),
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PageInfo {
    pub has_next_page: bool,
    /// Pass as `after` to get the next page.
    pub end_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(rename = "pageInfo")]
    pub page_info: PageInfo,
}

impl<T> Page<T> {
    /// `rows` was fetched with one row more than the page holds: that extra
    /// row only tells whether there is a next page.
    pub fn from_rows<R>(
        mut rows: Vec<R>,
        limit: u32,
        cursor: impl Fn(&R) -> String,
        view: impl Fn(R) -> T,
    ) -> Self {
        let has_next_page = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let end_cursor = rows.last().map(&cursor);
        Self {
            items: rows.into_iter().map(view).collect(),
            page_info: PageInfo {
                has_next_page,
                end_cursor,
            },
        }
    }

    /// A page of the delivery log, each row shown as `view`.
    pub(crate) fn from_log(log: LogPage, view: impl Fn(DeliveryLogEntry) -> T) -> Self {
        let end_cursor = log.rows.last().map(|r| encode_delivery_cursor(r.cursor()));
        Self {
            items: log.rows.into_iter().map(view).collect(),
            page_info: PageInfo {
                has_next_page: log.has_next_page,
                end_cursor,
            },
        }
    }
}

/// Delivery cursors are (created_at in microseconds, id), base64url: opaque
/// to clients, exact for both databases (which keep microseconds).
pub fn encode_delivery_cursor(cursor: DeliveryCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}:{}",
        cursor.created_at.timestamp_micros(),
        cursor.id
    ))
}

pub fn decode_delivery_cursor(text: &str) -> Result<DeliveryCursor, ApiError> {
    let bad = || ApiError::invalid("after", "is not a cursor this API returned");
    let raw = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (micros, id) = raw.split_once(':').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let created_at = Utc.timestamp_micros(micros).single().ok_or_else(bad)?;
    let id = DeliveryId::parse(id).map_err(|_| bad())?;
    Ok(DeliveryCursor { created_at, id })
}

pub fn decode_webhook_cursor(text: &str) -> Result<SubscriptionId, ApiError> {
    SubscriptionId::parse(text)
        .map_err(|_| ApiError::invalid("after", "is not a cursor this API returned"))
}

/// A webhook. `secret` is shown on create, get, update and rotation, to the
/// workspace that owns it, and left out of lists.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    #[schema(format = "uuid")]
    pub id: String,
    pub name: String,
    pub url: String,
    #[schema(value_type = Vec<EventTypeName>)]
    pub events: Vec<String>,
    /// Empty: every channel.
    pub channels: Vec<String>,
    pub active: bool,
    /// Shown on create, get, update and rotation; absent from lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub secret: Option<String>,
    /// While a rotated-out secret still signs: when it stops.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = DateTime<Utc>)]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// `enabled` or `disabled` (`active` says the same).
    #[schema(schema_with = crate::openapi::webhook_status)]
    pub status: &'static str,
    /// Why it is disabled: `manual` (switched off through the API, GraphQL,
    /// the console or the CLI), `failing` (its endpoint kept failing for
    /// `endpoints.disable_after`) or `gone` (its endpoint answered 410);
    /// null while enabled.
    #[schema(schema_with = crate::openapi::disabled_reason)]
    pub disabled_reason: Option<&'static str>,
    /// Since when it is disabled; null while enabled.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Free text for the people who manage it.
    pub description: Option<String>,
    /// Its requests' timeout in milliseconds; null: `delivery.timeout_ms`.
    pub timeout_ms: Option<u32>,
    /// Attempts before a delivery is dead; null: `retry.max_attempts`.
    pub max_attempts: Option<u32>,
    /// Extra request headers sent with every attempt, name -> value. Shown
    /// where the secret is (they may hold credentials); absent from lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::openapi::header_view)]
    pub headers: Option<crate::webhooks::HeaderList>,
    /// Requests per second the endpoint gets at most; null: no limit.
    pub rate_limit: Option<RateLimitView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A webhook's request-rate limit.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitView {
    /// Requests per second on average, across every worker.
    pub per_second: u32,
    /// Requests sent at once after a quiet spell.
    pub burst: u32,
}

/// A webhook as a PATCH changed it, and what that did to its deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookUpdated {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// Deliveries paused (it was switched off), replayed or canceled (it
    /// was switched on again, with `replayPaused` true or false); zeros
    /// when `active` did not change.
    #[serde(rename = "statusChange")]
    pub status_change: crate::webhooks::StatusChange,
}

impl WebhookView {
    pub fn new(sub: &Subscription, with_secret: bool) -> Self {
        Self {
            id: sub.id.to_string(),
            name: sub.name.clone(),
            url: sub.url.to_string(),
            events: sub
                .event_types
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
            channels: sub.channels.iter().map(|c| c.as_str().to_owned()).collect(),
            active: sub.status == SubscriptionStatus::Enabled,
            secret: with_secret.then(|| sub.secret.expose().to_owned()),
            previous_secret_expires_at: crate::webhooks::previous_secret_expiry(sub, Utc::now()),
            status: sub.status.as_str(),
            disabled_reason: sub.disabled.map(|d| d.reason.as_str()),
            disabled_at: sub.disabled.map(|d| d.at),
            description: sub.settings.description.clone(),
            timeout_ms: sub.settings.timeout_ms,
            max_attempts: sub.settings.max_attempts,
            headers: with_secret.then(|| crate::webhooks::HeaderList(sub.settings.headers.clone())),
            rate_limit: sub.settings.rate_limit.map(|r| RateLimitView {
                per_second: r.per_second,
                burst: r.burst,
            }),
            created_at: sub.created_at,
            updated_at: sub.updated_at,
        }
    }
}

/// One row of a delivery log.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    #[schema(format = "uuid")]
    pub id: String,
    pub event_id: String,
    #[serde(rename = "type")]
    #[schema(value_type = EventTypeName)]
    pub event_type: String,
    #[schema(format = "uuid")]
    pub webhook_id: String,
    /// The URL of the latest attempt, or the webhook's URL before any.
    pub url: Option<String>,
    pub created_at: DateTime<Utc>,
    #[schema(value_type = DeliveryStatusName)]
    pub status: String,
    /// HTTP status of the latest attempt, if it got a response.
    pub response_status: Option<u16>,
    pub attempts: u32,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Why a `dead` delivery died with attempts to spare: `circuit_open`
    /// when it waited behind its webhook's open circuit until its retry
    /// schedule's time was used up. `null` when its attempts ran out, or
    /// it is not dead.
    #[schema(value_type = Option<DeadReasonName>)]
    pub dead_reason: Option<String>,
}

impl From<DeliveryLogEntry> for DeliveryView {
    fn from(entry: DeliveryLogEntry) -> Self {
        let d = entry.delivery;
        Self {
            id: d.id.to_string(),
            event_id: d.event_id.to_string(),
            event_type: d.event_type.as_str().to_owned(),
            webhook_id: d.subscription_id.to_string(),
            url: entry.url,
            created_at: d.created_at,
            status: d.status.as_str().to_owned(),
            response_status: d.last_response_status,
            attempts: d.attempts,
            last_attempt_at: d.last_attempt_at,
            next_attempt_at: d.next_attempt_at,
            dead_reason: entry.dead_reason.map(|r| r.as_str().to_owned()),
        }
    }
}

/// One event as delivered to one webhook.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEventView {
    pub event_id: String,
    #[serde(rename = "type")]
    #[schema(value_type = EventTypeName)]
    pub event_type: String,
    #[schema(format = "uuid")]
    pub delivery_id: String,
    #[schema(value_type = DeliveryStatusName)]
    pub status: String,
    pub response_status: Option<u16>,
    pub attempts: u32,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<DeliveryLogEntry> for WebhookEventView {
    fn from(entry: DeliveryLogEntry) -> Self {
        let d = entry.delivery;
        Self {
            event_id: d.event_id.to_string(),
            event_type: d.event_type.as_str().to_owned(),
            delivery_id: d.id.to_string(),
            status: d.status.as_str().to_owned(),
            response_status: d.last_response_status,
            attempts: d.attempts,
            last_attempt_at: d.last_attempt_at,
            created_at: d.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    pub attempt: u32,
    pub url: String,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u32,
    pub response_status: Option<u16>,
    /// Why no response arrived, when none did.
    #[schema(value_type = Option<ErrorKindName>)]
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// The first few KiB of the response body.
    pub response_excerpt: Option<String>,
    /// The response's `Retry-After` header, as sent (a 429 or 503 asking
    /// for a wait: the next attempt came after it, within
    /// `retry.retry_after_min_ms`..`retry.retry_after_max_ms`).
    pub retry_after: Option<String>,
}

impl From<AttemptRecord> for AttemptView {
    fn from(a: AttemptRecord) -> Self {
        Self {
            attempt: a.attempt,
            url: a.url,
            started_at: a.started_at,
            duration_ms: a.duration_ms,
            response_status: a.response_status,
            error_kind: a.error_kind.map(|k| k.as_str().to_owned()),
            error: a.error,
            response_excerpt: a.response_excerpt,
            retry_after: a.retry_after,
        }
    }
}

/// A delivery with all its attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliveryView,
    #[serde(rename = "attemptLog")]
    pub attempt_log: Vec<AttemptView>,
}
