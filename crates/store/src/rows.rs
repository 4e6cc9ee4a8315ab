//! Stored values back into domain types, shared by both backends.
//!
//! Each backend reads its columns into the plain `*Parts` structs below (it
//! alone knows how its database encodes timestamps, UUIDs and lists); the
//! validation that turns them into model types, and the `Corrupt` errors
//! naming the offending column, live here once. The column lists that both
//! backends select are here too, as macros so queries stay `&'static str`.

use std::fmt::Display;

use chrono::{DateTime, Utc};
use courier_model::{
    Channel, DeliveryId, DeliveryStatus, ErrorKind, Event, EventData, EventId, EventType,
    Subscription, SubscriptionId, SubscriptionStatus, WebhookSecret, WebhookUrl, WorkspaceId,
};
use uuid::Uuid;

use crate::{AttemptRecord, DeliveryRecord, HeldDelivery, Result, StoreError, Workspace};

/// Subscription columns, aliased `s_*` so they can share a row with a
/// delivery's (see `delivery_context`). Expects `subscriptions` as `s`.
macro_rules! subscription_columns {
    () => {
        "s.id AS s_id, s.workspace_id AS s_workspace_id, s.name AS s_name, s.url AS s_url, \
         s.event_types AS s_event_types, s.channels AS s_channels, s.secret AS s_secret, \
         s.previous_secret AS s_previous_secret, \
         s.previous_secret_expires_at AS s_previous_secret_expires_at, s.status AS s_status, \
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
         a.error_kind, a.error, a.response_excerpt"
    };
}

pub(crate) use {attempt_columns, delivery_columns, event_columns, subscription_columns};

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

fn u16_from(column: &str, value: Option<i64>) -> Result<Option<u16>> {
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

pub(crate) struct WorkspaceParts {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl WorkspaceParts {
    pub fn into_model(self) -> Result<Workspace> {
        Ok(Workspace {
            id: workspace_id("workspaces.id", self.id)?,
            name: self.name,
            created_at: self.created_at,
        })
    }
}

pub(crate) struct SubscriptionParts {
    pub id: Uuid,
    pub workspace_id: String,
    pub name: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub channels: Vec<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl SubscriptionParts {
    pub fn into_model(self) -> Result<Subscription> {
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
            status: SubscriptionStatus::parse(&self.status).ok_or_else(|| {
                corrupt(
                    "subscriptions.status",
                    format!("unknown status {:?}", self.status),
                )
            })?,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

pub(crate) fn delivery_status(column: &str, value: &str) -> Result<DeliveryStatus> {
    DeliveryStatus::parse(value)
        .ok_or_else(|| corrupt(column, format!("unknown delivery status {value:?}")))
}

pub(crate) struct DeliveryParts {
    pub id: Uuid,
    pub event_id: String,
    pub subscription_id: Uuid,
    pub workspace_id: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i64,
    pub last_response_status: Option<i64>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub held_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl DeliveryParts {
    pub fn into_model(self) -> Result<DeliveryRecord> {
        Ok(DeliveryRecord {
            id: DeliveryId(self.id),
            event_id: EventId::parse(self.event_id)
                .map_err(|e| corrupt("deliveries.event_id", e))?,
            subscription_id: SubscriptionId(self.subscription_id),
            workspace_id: workspace_id("deliveries.workspace_id", self.workspace_id)?,
            event_type: event_type("deliveries.event_type", &self.event_type)?,
            status: delivery_status("deliveries.status", &self.status)?,
            attempts: u32_from("deliveries.attempts", self.attempts)?,
            last_response_status: u16_from(
                "deliveries.last_response_status",
                self.last_response_status,
            )?,
            last_attempt_at: self.last_attempt_at,
            next_attempt_at: self.next_attempt_at,
            held_until: self.held_until,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

pub(crate) struct HeldParts {
    pub id: Uuid,
    pub event_id: String,
    pub subscription_id: Uuid,
    pub event_type: String,
    pub attempts: i64,
}

impl HeldParts {
    pub fn into_model(self) -> Result<HeldDelivery> {
        Ok(HeldDelivery {
            id: DeliveryId(self.id),
            event_id: EventId::parse(self.event_id)
                .map_err(|e| corrupt("deliveries.event_id", e))?,
            subscription_id: SubscriptionId(self.subscription_id),
            event_type: event_type("deliveries.event_type", &self.event_type)?,
            attempts: u32_from("deliveries.attempts", self.attempts)?,
        })
    }
}

pub(crate) struct EventParts {
    pub id: String,
    pub workspace_id: String,
    pub event_type: String,
    pub channel: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub data: EventData,
}

impl EventParts {
    pub fn into_model(self) -> Result<Event> {
        Ok(Event {
            id: EventId::parse(self.id).map_err(|e| corrupt("events.id", e))?,
            workspace_id: workspace_id("events.workspace_id", self.workspace_id)?,
            event_type: event_type("events.type", &self.event_type)?,
            channel: self
                .channel
                .map(|c| Channel::parse(&c).map_err(|e| corrupt("events.channel", e)))
                .transpose()?,
            occurred_at: self.occurred_at,
            data: self.data,
        })
    }
}

pub(crate) struct AttemptParts {
    pub delivery_id: Uuid,
    pub attempt: i64,
    pub url: String,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub response_status: Option<i64>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}

impl AttemptParts {
    pub fn into_model(self) -> Result<AttemptRecord> {
        Ok(AttemptRecord {
            delivery_id: DeliveryId(self.delivery_id),
            attempt: u32_from("attempts.attempt", self.attempt)?,
            url: self.url,
            started_at: self.started_at,
            duration_ms: u32_from("attempts.duration_ms", self.duration_ms)?,
            response_status: u16_from("attempts.response_status", self.response_status)?,
            error_kind: self
                .error_kind
                .map(|k| {
                    ErrorKind::parse(&k).ok_or_else(|| {
                        corrupt("attempts.error_kind", format!("unknown error kind {k:?}"))
                    })
                })
                .transpose()?,
            error: self.error,
            response_excerpt: self.response_excerpt,
        })
    }
}

/// Lists are stored as their wire names (PostgreSQL `TEXT[]`, SQLite a JSON
/// array), so the rows stay readable to an operator with `psql`/`sqlite3`.
pub(crate) fn event_type_names(types: &[EventType]) -> Vec<String> {
    types.iter().map(|t| t.as_str().to_owned()).collect()
}

pub(crate) fn channel_names(channels: &[Channel]) -> Vec<String> {
    channels.iter().map(|c| c.as_str().to_owned()).collect()
}

/// Fan-out results in input order: everything for a newly inserted event,
/// otherwise only what the ledger still holds as pending.
pub(crate) fn to_publish(
    deliveries: &[(DeliveryId, SubscriptionId)],
    event_is_new: bool,
    pending: &std::collections::HashSet<Uuid>,
) -> Vec<(DeliveryId, SubscriptionId)> {
    if event_is_new {
        return deliveries.to_vec();
    }
    deliveries
        .iter()
        .filter(|(d, _)| pending.contains(&d.0))
        .copied()
        .collect()
}

/// What identifies an event in the ledger: its workspace and its id. Ids
/// are the upstreams', so two workspaces may use the same one.
pub(crate) fn event_key(event: &Event) -> (&str, &str) {
    (event.workspace_id.as_str(), event.id.as_str())
}

/// Whether `keys`, (workspace, id) pairs as an insert returned them, hold
/// `event`.
pub(crate) fn contains_event(
    keys: &std::collections::HashSet<(String, String)>,
    event: &Event,
) -> bool {
    keys.contains(&(
        event.workspace_id.as_str().to_owned(),
        event.id.as_str().to_owned(),
    ))
}
