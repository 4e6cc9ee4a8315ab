//! Creating and changing webhooks (subscriptions): validation of what an
//! operator or customer sends, shared by the admin CLI (`courier webhook
//! ...`) and the API, so both refuse the same things with the same field
//! names. Nothing is written until everything validated. The API's handlers
//! come here through `crate::service`, which also tells the workers.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use courier_model::{
    Channel, Disabled, DisabledReason, EventType, RateLimit, Subscription, SubscriptionId,
    SubscriptionStatus, ValidationError, WebhookSecret, WebhookSettings, WebhookUrl, WorkspaceId,
};
use courier_store::{PausedDeliveries, Store, StoreError};
use serde::{Deserialize, Deserializer, Serialize};
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
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
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
    #[serde(default)]
    #[schema(schema_with = crate::openapi::description)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::timeout_ms)]
    pub timeout_ms: Option<Whole>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::max_attempts)]
    pub max_attempts: Option<Whole>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::headers)]
    pub headers: Option<HeaderList>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::rate_limit)]
    pub rate_limit: Option<RateLimitInput>,
}

fn default_true() -> bool {
    true
}

/// Most characters of a description.
pub const MAX_DESCRIPTION_LEN: usize = 1000;
/// The shortest request timeout a webhook may set; the longest is the
/// deployment's `delivery.timeout_ms` ([`WebhookPolicy::max_timeout_ms`]).
pub const MIN_TIMEOUT_MS: u32 = 100;
/// A webhook's attempts, as `retry.max_attempts`.
pub const MAX_ATTEMPTS: u32 = 100;
/// Most headers a webhook sets, and the longest name and value.
pub const MAX_HEADERS: usize = 20;
pub const MAX_HEADER_NAME_LEN: usize = 256;
pub const MAX_HEADER_VALUE_LEN: usize = 1024;
/// The highest rate limit and burst.
pub const MAX_RATE: u32 = 10_000;

/// A webhook's own request headers as clients send and see them: a JSON
/// object of name -> value, in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderList(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for HeaderList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = HeaderList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of header names and string values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<HeaderList, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                Ok(HeaderList(pairs))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

impl Serialize for HeaderList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// A rate limit as clients send it.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitInput {
    /// Requests per second on average, 1-10000.
    #[schema(value_type = i64, minimum = 1, maximum = 10000)]
    pub per_second: Whole,
    /// Requests sent at once after a quiet spell, 1-10000; `perSecond`
    /// when absent or null.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 10000)]
    pub burst: Option<Whole>,
}

/// `Some(value)` for a member that is there, null included (`Some(None)`):
/// with `#[serde(default)]`, an absent member stays `None`. So a PATCH can
/// tell "leave it" (absent) from "clear it" (null).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A JSON number that is a whole number, as JSON Schema's `integer` reads
/// it: `808` and `808.0` alike (JavaScript and Python clients send either).
/// Anything else is refused (400), naming the value; range checks come
/// later, per field, with their own messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Whole(pub i64);

impl From<i64> for Whole {
    fn from(n: i64) -> Self {
        Self(n)
    }
}

impl From<i32> for Whole {
    fn from(n: i32) -> Self {
        Self(i64::from(n))
    }
}

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = serde_json::Number::deserialize(deserializer)?;
        number
            .as_i64()
            .or_else(|| {
                number
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
            .map(Whole)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid value: {number}, expected a whole number"
                ))
            })
    }
}

/// A change to a webhook; absent fields stay as they are. Of the
/// settings (`description`, `timeoutMs`, `maxAttempts`, `headers`,
/// `rateLimit`), null clears one: the deployment's default applies again.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
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
    /// When `active` turns a disabled webhook on: whether the deliveries
    /// kept paused while it was off are sent now (true when absent) or
    /// canceled.
    #[serde(default)]
    pub replay_paused: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = crate::openapi::description)]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = crate::openapi::timeout_ms)]
    pub timeout_ms: Option<Option<Whole>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = crate::openapi::max_attempts)]
    pub max_attempts: Option<Option<Whole>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = crate::openapi::headers)]
    pub headers: Option<Option<HeaderList>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = crate::openapi::rate_limit)]
    pub rate_limit: Option<Option<RateLimitInput>>,
}

/// What saving a webhook did to its deliveries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusChange {
    /// Outstanding deliveries paused because it was disabled.
    pub paused: u64,
    /// Paused deliveries due again because it was enabled.
    pub replayed: u64,
    /// Paused deliveries canceled because it was enabled with
    /// `replayPaused: false`.
    pub canceled: u64,
}

/// What deployment policy allows for endpoint URLs.
#[derive(Clone, Copy, Debug)]
pub struct UrlPolicy {
    pub require_https: bool,
}

/// What deployment policy allows for webhooks: their URLs, and the
/// longest request timeout one may set. A [`UrlPolicy`] converts to one
/// with [`MAX_TIMEOUT_MS`], the most `delivery.timeout_ms` can be.
#[derive(Clone, Copy, Debug)]
pub struct WebhookPolicy {
    pub require_https: bool,
    /// `delivery.timeout_ms`: a webhook may shorten its requests' timeout,
    /// not lengthen it. Worker slots per endpoint, the lease on a claimed
    /// held delivery (the timeout and 10 s) and the shutdown grace are
    /// sized on it; a longer attempt would outlive its lease and could be
    /// made twice.
    pub max_timeout_ms: u32,
}

/// The most `delivery.timeout_ms` can be set to.
pub const MAX_TIMEOUT_MS: u32 = 300_000;

impl From<UrlPolicy> for WebhookPolicy {
    fn from(policy: UrlPolicy) -> Self {
        Self {
            require_https: policy.require_https,
            max_timeout_ms: MAX_TIMEOUT_MS,
        }
    }
}

fn parse_url(url: &str, policy: WebhookPolicy) -> Result<WebhookUrl, ValidationError> {
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

/// A description: at most [`MAX_DESCRIPTION_LEN`] characters as sent, no
/// control characters but line breaks (`\n`); stored without surrounding
/// whitespace, and blank is none.
pub fn parse_description(text: &str) -> Result<Option<String>, ValidationError> {
    if text.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(ValidationError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    if let Some((at, c)) = text
        .chars()
        .enumerate()
        .find(|&(_, c)| c.is_control() && c != '\n')
    {
        return Err(ValidationError::new(
            "description",
            format!(
                "must not contain control characters other than line breaks (\\n); found \
                 U+{:04X} at character {}",
                u32::from(c),
                at + 1
            ),
        ));
    }
    let text = text.trim();
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

pub fn parse_timeout_ms(ms: Whole, policy: WebhookPolicy) -> Result<u32, ValidationError> {
    let max = policy.max_timeout_ms.max(MIN_TIMEOUT_MS);
    u32::try_from(ms.0)
        .ok()
        .filter(|ms| (MIN_TIMEOUT_MS..=max).contains(ms))
        .ok_or_else(|| {
            ValidationError::new(
                "timeoutMs",
                format!(
                    "must be {MIN_TIMEOUT_MS}-{max} milliseconds (at most this deployment's \
                     delivery.timeout_ms)"
                ),
            )
        })
}

pub fn parse_max_attempts(n: Whole) -> Result<u32, ValidationError> {
    u32::try_from(n.0)
        .ok()
        .filter(|n| (1..=MAX_ATTEMPTS).contains(n))
        .ok_or_else(|| ValidationError::new("maxAttempts", format!("must be 1-{MAX_ATTEMPTS}")))
}

/// An HTTP token character (RFC 9110), what a header name is made of.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A webhook's headers: at most [`MAX_HEADERS`]; names of 1-256 token
/// characters, none that courier sets itself
/// ([`courier_webhook::is_reserved_header`]); values of 1-1024 visible
/// ASCII characters and inner spaces. A name given twice (in any case) is
/// sent twice.
pub fn parse_headers(headers: &HeaderList) -> Result<Vec<(String, String)>, ValidationError> {
    let invalid = |message: String| ValidationError::new("headers", message);
    if headers.0.len() > MAX_HEADERS {
        return Err(invalid(format!("must be at most {MAX_HEADERS} headers")));
    }
    for (name, value) in &headers.0 {
        if name.is_empty() || name.len() > MAX_HEADER_NAME_LEN || !name.chars().all(is_tchar) {
            return Err(invalid(format!(
                "header name {name:?} must be 1-{MAX_HEADER_NAME_LEN} letters, digits or \
                 !#$%&'*+-.^_`|~"
            )));
        }
        if courier_webhook::is_reserved_header(name) {
            return Err(invalid(format!(
                "header {name:?} is courier's own (webhook-*, content-*, host, user-agent, \
                 connection and proxy headers are not allowed)"
            )));
        }
        let visible = |c: char| c.is_ascii_graphic();
        let ok = !value.is_empty()
            && value.len() <= MAX_HEADER_VALUE_LEN
            && value.chars().all(|c| visible(c) || c == ' ')
            && value.starts_with(visible)
            && value.ends_with(visible);
        if !ok {
            return Err(invalid(format!(
                "the value of header {name:?} must be 1-{MAX_HEADER_VALUE_LEN} visible ASCII \
                 characters (spaces only between them)"
            )));
        }
    }
    Ok(headers.0.clone())
}

/// Both halves of a rate limit, each refused under its own name.
fn check_rate_limit(input: &RateLimitInput) -> [Option<ValidationError>; 2] {
    let in_range = |n: Whole| {
        u32::try_from(n.0)
            .ok()
            .filter(|n| (1..=MAX_RATE).contains(n))
    };
    [
        in_range(input.per_second)
            .is_none()
            .then(|| ValidationError::new("rateLimit.perSecond", format!("must be 1-{MAX_RATE}"))),
        input
            .burst
            .filter(|&b| in_range(b).is_none())
            .map(|_| ValidationError::new("rateLimit.burst", format!("must be 1-{MAX_RATE}"))),
    ]
}

pub fn parse_rate_limit(input: &RateLimitInput) -> Result<RateLimit, ValidationError> {
    if let Some(e) = check_rate_limit(input).into_iter().flatten().next() {
        return Err(e);
    }
    let per_second = input.per_second.0 as u32;
    Ok(RateLimit {
        per_second,
        burst: input.burst.map_or(per_second, |b| b.0 as u32),
    })
}

/// The settings' problems, one per field (two for a rate limit).
fn check_settings(
    description: Option<&str>,
    timeout_ms: Option<Whole>,
    max_attempts: Option<Whole>,
    headers: Option<&HeaderList>,
    rate_limit: Option<&RateLimitInput>,
    policy: WebhookPolicy,
) -> Vec<Option<ValidationError>> {
    let mut problems = vec![
        description.and_then(|d| parse_description(d).err()),
        timeout_ms.and_then(|t| parse_timeout_ms(t, policy).err()),
        max_attempts.and_then(|n| parse_max_attempts(n).err()),
        headers.and_then(|h| parse_headers(h).err()),
    ];
    if let Some(rate) = rate_limit {
        problems.extend(check_rate_limit(rate));
    }
    problems
}

/// A patch's settings applied to `settings`: a value replaces, null clears.
fn apply_settings(
    settings: &mut WebhookSettings,
    patch: &WebhookPatch,
    policy: WebhookPolicy,
) -> Result<(), ValidationError> {
    if let Some(d) = &patch.description {
        settings.description = d.as_deref().map(parse_description).transpose()?.flatten();
    }
    if let Some(t) = patch.timeout_ms {
        settings.timeout_ms = t.map(|t| parse_timeout_ms(t, policy)).transpose()?;
    }
    if let Some(n) = patch.max_attempts {
        settings.max_attempts = n.map(parse_max_attempts).transpose()?;
    }
    if let Some(h) = &patch.headers {
        settings.headers = h
            .as_ref()
            .map(parse_headers)
            .transpose()?
            .unwrap_or_default();
    }
    if let Some(r) = &patch.rate_limit {
        settings.rate_limit = r.as_ref().map(parse_rate_limit).transpose()?;
    }
    Ok(())
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
pub fn check_new(input: &NewWebhook, policy: impl Into<WebhookPolicy>) -> Vec<ValidationError> {
    let policy = policy.into();
    let mut problems = vec![
        Subscription::validate_name(&input.name).err(),
        parse_url(&input.url, policy).err(),
        parse_events(&input.events).err(),
        parse_channels(&input.channels).err(),
    ];
    if let Some(secret) = input.secret.as_deref() {
        problems.push(parse_secret(secret).err());
    }
    problems.extend(check_settings(
        input.description.as_deref(),
        input.timeout_ms,
        input.max_attempts,
        input.headers.as_ref(),
        input.rate_limit.as_ref(),
        policy,
    ));
    problems.into_iter().flatten().collect()
}

/// Every problem with a change to a webhook, one per field.
pub fn check_patch(patch: &WebhookPatch, policy: impl Into<WebhookPolicy>) -> Vec<ValidationError> {
    let policy = policy.into();
    let settings = check_settings(
        patch.description.as_ref().and_then(|d| d.as_deref()),
        patch.timeout_ms.flatten(),
        patch.max_attempts.flatten(),
        patch.headers.as_ref().and_then(|h| h.as_ref()),
        patch.rate_limit.as_ref().and_then(|r| r.as_ref()),
        policy,
    );
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
    .chain(settings)
    .flatten()
    .collect()
}

/// Validates everything before writing anything.
pub async fn create(
    store: &Store,
    workspace: &WorkspaceId,
    input: NewWebhook,
    policy: impl Into<WebhookPolicy>,
) -> Result<Subscription, WebhookError> {
    let policy = policy.into();
    if let Some(problem) = check_new(&input, policy).into_iter().next() {
        return Err(problem.into());
    }
    Subscription::validate_name(&input.name)?;
    let url = parse_url(&input.url, policy)?;
    let event_types = parse_events(&input.events)?;
    let channels = parse_channels(&input.channels)?;
    let secret = match input.secret.as_deref() {
        Some(s) => parse_secret(s)?,
        None => WebhookSecret::generate(),
    };
    let settings = WebhookSettings {
        description: input
            .description
            .as_deref()
            .map(parse_description)
            .transpose()?
            .flatten(),
        timeout_ms: input
            .timeout_ms
            .map(|t| parse_timeout_ms(t, policy))
            .transpose()?,
        max_attempts: input.max_attempts.map(parse_max_attempts).transpose()?,
        headers: input
            .headers
            .as_ref()
            .map(parse_headers)
            .transpose()?
            .unwrap_or_default(),
        rate_limit: input
            .rate_limit
            .as_ref()
            .map(parse_rate_limit)
            .transpose()?,
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
        disabled: (!input.active).then_some(Disabled {
            reason: DisabledReason::Manual,
            at: now,
        }),
        settings,
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
    policy: impl Into<WebhookPolicy>,
) -> Result<Subscription, WebhookError> {
    Ok(update_reporting(store, workspace, id, patch, policy)
        .await?
        .0)
}

/// Applies the patch; says too what it did to the webhook's deliveries. A
/// webhook switched off keeps its outstanding deliveries, paused; switched
/// on again, it gets them (or, with `replay_paused: false`, they are
/// canceled). Both in the transaction that saves the webhook.
pub async fn update_reporting(
    store: &Store,
    workspace: &WorkspaceId,
    id: SubscriptionId,
    patch: WebhookPatch,
    policy: impl Into<WebhookPolicy>,
) -> Result<(Subscription, StatusChange), WebhookError> {
    let policy = policy.into();
    let mut sub = store
        .get_subscription(workspace, id)
        .await?
        .ok_or(WebhookError::NotFound("webhook"))?;
    // The first problem in form order, as the console lists them.
    if let Some(problem) = check_patch(&patch, policy).into_iter().next() {
        return Err(problem.into());
    }
    apply_settings(&mut sub.settings, &patch, policy)?;
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
    // As the ledger keeps times: what this answers is what a read returns.
    sub.updated_at = Utc::now().trunc_subsecs(6);
    let then = match (sub.status, patch.active) {
        (SubscriptionStatus::Enabled, Some(false)) => {
            sub.disable(DisabledReason::Manual, sub.updated_at);
            PausedDeliveries::Pause
        }
        (SubscriptionStatus::Disabled, Some(true)) => {
            sub.enable();
            if patch.replay_paused.unwrap_or(true) {
                PausedDeliveries::Replay
            } else {
                PausedDeliveries::Cancel
            }
        }
        _ => PausedDeliveries::Keep,
    };
    let changed = store
        .update_subscription_and(&sub, then)
        .await?
        .ok_or(WebhookError::NotFound("webhook"))?;
    let mut change = StatusChange::default();
    match then {
        PausedDeliveries::Pause => change.paused = changed,
        PausedDeliveries::Replay => change.replayed = changed,
        PausedDeliveries::Cancel => change.canceled = changed,
        PausedDeliveries::Keep => {}
    }
    Ok((sub, change))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_are_integers_as_json_schema_reads_them() {
        let whole = |json: &str| serde_json::from_str::<Whole>(json).map(|w| w.0);
        assert_eq!(whole("808").unwrap(), 808);
        assert_eq!(whole("808.0").unwrap(), 808);
        assert_eq!(whole("-3").unwrap(), -3);
        assert_eq!(whole("1e3").unwrap(), 1000);
        for refused in ["808.5", "1e300", "\"808\"", "null"] {
            let error = whole(refused).unwrap_err().to_string();
            assert!(
                error.contains("expected") || error.contains("invalid"),
                "{refused}: {error}"
            );
        }
    }
}
