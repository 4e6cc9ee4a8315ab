//! Creating and changing webhooks (subscriptions): validation of what an
//! operator or customer sends, shared by the admin CLI (`courier webhook
//! ...`) and the API, so both refuse the same things with the same field
//! names. Nothing is written until everything validated. The API's handlers
//! come here through `crate::service`, which also tells the workers.

use chrono::{DateTime, Duration, Utc};
use courier_model::{
    Channel, EventType, Subscription, SubscriptionId, SubscriptionStatus, ValidationError,
    WebhookSecret, WebhookUrl, WorkspaceId,
};
use courier_store::{Store, StoreError};
use serde::Deserialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("ledger error")]
    Store(#[source] StoreError),
}

impl From<StoreError> for WebhookError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { what } => WebhookError::NotFound(what),
            other => WebhookError::Store(other),
        }
    }
}

/// A new webhook as clients send it.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    #[schema(schema_with = crate::openapi::webhook_name)]
    pub name: String,
    #[schema(schema_with = crate::openapi::webhook_url)]
    pub url: String,
    #[schema(schema_with = crate::openapi::event_types)]
    pub events: Vec<String>,
    /// Order channels to receive events of; empty or absent means all.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::channels)]
    pub channels: Vec<String>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::new_secret)]
    pub secret: Option<String>,
    /// Whether it receives events; true when absent.
    #[serde(default = "default_true")]
    pub active: bool,
}

fn default_true() -> bool {
    true
}

/// A change to a webhook; absent fields stay as they are.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    #[schema(schema_with = crate::openapi::webhook_name_or_null)]
    pub name: Option<String>,
    #[schema(schema_with = crate::openapi::webhook_url_or_null)]
    pub url: Option<String>,
    #[schema(schema_with = crate::openapi::event_types_or_null)]
    pub events: Option<Vec<String>>,
    #[schema(schema_with = crate::openapi::channels_or_null)]
    pub channels: Option<Vec<String>>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::replacement_secret)]
    pub secret: Option<String>,
    pub active: Option<bool>,
}

/// What deployment policy allows for endpoint URLs.
#[derive(Clone, Copy, Debug)]
pub struct UrlPolicy {
    pub require_https: bool,
}

fn parse_url(url: &str, policy: UrlPolicy) -> Result<WebhookUrl, ValidationError> {
    let parsed = WebhookUrl::parse(url).map_err(|e| ValidationError::new("url", e.to_string()))?;
    parsed
        .check_https(policy.require_https)
        .map_err(|e| ValidationError::new("url", e.to_string()))?;
    Ok(parsed)
}

fn parse_events(events: &[String]) -> Result<Vec<EventType>, ValidationError> {
    let mut types = Vec::with_capacity(events.len());
    for name in events {
        let ty =
            EventType::parse(name).map_err(|e| ValidationError::new("events", e.to_string()))?;
        if !types.contains(&ty) {
            types.push(ty);
        }
    }
    Subscription::validate_event_types(&types)?;
    Ok(types)
}

fn parse_channels(channels: &[String]) -> Result<Vec<Channel>, ValidationError> {
    let mut parsed = Vec::with_capacity(channels.len());
    for c in channels {
        let c = Channel::parse(c)?;
        if !parsed.contains(&c) {
            parsed.push(c);
        }
    }
    Ok(parsed)
}

fn parse_secret(secret: &str) -> Result<WebhookSecret, ValidationError> {
    WebhookSecret::parse(secret).map_err(|e| ValidationError::new("secret", e.to_string()))
}

fn status(active: bool) -> SubscriptionStatus {
    if active {
        SubscriptionStatus::Enabled
    } else {
        SubscriptionStatus::Disabled
    }
}

/// Every problem with a new webhook, one per field, in form order (the
/// API answers with the first; the console shows each next to its field).
pub fn check_new(input: &NewWebhook, policy: UrlPolicy) -> Vec<ValidationError> {
    let mut problems = vec![
        Subscription::validate_name(&input.name).err(),
        parse_url(&input.url, policy).err(),
        parse_events(&input.events).err(),
        parse_channels(&input.channels).err(),
    ];
    if let Some(secret) = input.secret.as_deref() {
        problems.push(parse_secret(secret).err());
    }
    problems.into_iter().flatten().collect()
}

/// Every problem with a change to a webhook, one per field.
pub fn check_patch(patch: &WebhookPatch, policy: UrlPolicy) -> Vec<ValidationError> {
    [
        patch
            .name
            .as_deref()
            .and_then(|n| Subscription::validate_name(n).err()),
        patch
            .url
            .as_deref()
            .and_then(|u| parse_url(u, policy).err()),
        patch.events.as_deref().and_then(|e| parse_events(e).err()),
        patch
            .channels
            .as_deref()
            .and_then(|c| parse_channels(c).err()),
        patch.secret.as_deref().and_then(|s| parse_secret(s).err()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Validates everything before writing anything.
pub async fn create(
    store: &Store,
    workspace: &WorkspaceId,
    input: NewWebhook,
    policy: UrlPolicy,
) -> Result<Subscription, WebhookError> {
    Subscription::validate_name(&input.name)?;
    let url = parse_url(&input.url, policy)?;
    let event_types = parse_events(&input.events)?;
    let channels = parse_channels(&input.channels)?;
    let secret = match input.secret.as_deref() {
        Some(s) => parse_secret(s)?,
        None => WebhookSecret::generate(),
    };
    let now = Utc::now();
    let sub = Subscription {
        id: SubscriptionId::generate(),
        workspace_id: workspace.clone(),
        name: input.name.trim().to_owned(),
        url,
        event_types,
        channels,
        secret,
        previous_secret: None,
        previous_secret_expires_at: None,
        status: status(input.active),
        created_at: now,
        updated_at: now,
    };
    store.insert_subscription(&sub).await?;
    Ok(sub)
}

pub async fn update(
    store: &Store,
    workspace: &WorkspaceId,
    id: SubscriptionId,
    patch: WebhookPatch,
    policy: UrlPolicy,
) -> Result<Subscription, WebhookError> {
    let mut sub = store
        .get_subscription(workspace, id)
        .await?
        .ok_or(WebhookError::NotFound("webhook"))?;
    if let Some(name) = patch.name {
        Subscription::validate_name(&name)?;
        sub.name = name.trim().to_owned();
    }
    if let Some(url) = patch.url {
        sub.url = parse_url(&url, policy)?;
    }
    if let Some(events) = patch.events {
        sub.event_types = parse_events(&events)?;
    }
    if let Some(channels) = patch.channels {
        sub.channels = parse_channels(&channels)?;
    }
    if let Some(secret) = patch.secret {
        sub.secret = parse_secret(&secret)?;
        sub.previous_secret = None;
        sub.previous_secret_expires_at = None;
    }
    if let Some(active) = patch.active {
        sub.status = status(active);
    }
    sub.updated_at = Utc::now();
    if !store.update_subscription(&sub).await? {
        return Err(WebhookError::NotFound("webhook"));
    }
    Ok(sub)
}

pub async fn delete(
    store: &Store,
    workspace: &WorkspaceId,
    id: SubscriptionId,
) -> Result<(), WebhookError> {
    if store.delete_subscription(workspace, id).await? {
        Ok(())
    } else {
        Err(WebhookError::NotFound("webhook"))
    }
}

/// Replaces the secret with `new_secret` (or a generated one) and keeps the
/// old one signing until `now + grace`, so receivers can switch without
/// rejecting a single delivery. A rotation during a grace period ends the
/// earlier one: only two secrets ever sign.
pub async fn rotate_secret(
    store: &Store,
    workspace: &WorkspaceId,
    id: SubscriptionId,
    new_secret: Option<&str>,
    grace: Duration,
) -> Result<Subscription, WebhookError> {
    let secret = match new_secret {
        Some(s) => parse_secret(s)?,
        None => WebhookSecret::generate(),
    };
    let mut sub = store
        .get_subscription(workspace, id)
        .await?
        .ok_or(WebhookError::NotFound("webhook"))?;
    let now = Utc::now();
    sub.previous_secret = Some(std::mem::replace(&mut sub.secret, secret));
    sub.previous_secret_expires_at = Some(now + grace);
    sub.updated_at = now;
    if !store.update_subscription(&sub).await? {
        return Err(WebhookError::NotFound("webhook"));
    }
    Ok(sub)
}

/// When the previous secret stops signing, if one still does at `now`.
pub fn previous_secret_expiry(sub: &Subscription, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    sub.previous_secret_expires_at
        .filter(|until| sub.previous_secret.is_some() && now < *until)
}
