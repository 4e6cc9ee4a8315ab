//! Subscriptions ("webhooks") and the matching rule: enabled, same workspace,
//! lists the event type, and lists no channels or the event's channel.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Event, EventType, SubscriptionId, WebhookSecret, WebhookUrl, WorkspaceId};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The offending field, as named in the API and the CLI.
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// The rule for names people give things (webhooks, workspaces, API keys),
/// checked on the name as stored, without surrounding whitespace: 1 to
/// `max_len` characters and no control characters. PostgreSQL cannot store
/// a NUL in text at all, and the others (line breaks, escape sequences)
/// would forge lines in logs and the CLI's output.
pub fn validate_name(
    field: &'static str,
    name: &str,
    max_len: usize,
) -> Result<(), ValidationError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > max_len {
        return Err(ValidationError::new(
            field,
            format!("must be 1-{max_len} characters"),
        ));
    }
    if let Some((at, c)) = name.chars().enumerate().find(|(_, c)| c.is_control()) {
        return Err(ValidationError::new(
            field,
            format!(
                "must not contain control characters; found U+{:04X} at character {}",
                u32::from(c),
                at + 1
            ),
        ));
    }
    Ok(())
}

/// An order channel (a marketplace or shop the order came from).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Channel(String);

/// As its text, borrowed (no clone per serialized event).
impl Serialize for Channel {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl Channel {
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        let ok = !value.is_empty()
            && value.len() <= Self::MAX_LEN
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(ValidationError::new(
                "channels",
                format!(
                    "channel {value:?} must be 1-{} letters, digits, '-', '_', '.' or ':'",
                    Self::MAX_LEN
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Channel {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, ValidationError> {
        Self::parse(&value)
    }
}

impl From<Channel> for String {
    fn from(c: Channel) -> String {
        c.0
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Enabled,
    Disabled,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "enabled" => Some(Self::Enabled),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }
}

/// Why a webhook is disabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisabledReason {
    /// Someone switched it off (API, GraphQL, console, CLI).
    Manual,
    /// Its endpoint kept failing, with no success, for
    /// `endpoints.disable_after`.
    Failing,
    /// Its endpoint answered `410 Gone`: it asked not to be sent anything
    /// more.
    Gone,
}

impl DisabledReason {
    pub const ALL: &'static [DisabledReason] = &[Self::Manual, Self::Failing, Self::Gone];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Failing => "failing",
            Self::Gone => "gone",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.as_str() == value)
    }

    /// What a person reads about it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Manual => "switched off by hand",
            Self::Failing => "its endpoint kept failing",
            Self::Gone => "its endpoint answered 410 Gone",
        }
    }
}

/// When and why a webhook was disabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disabled {
    pub reason: DisabledReason,
    pub at: DateTime<Utc>,
}

/// A customer's endpoint and what it wants to receive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: SubscriptionId,
    pub workspace_id: WorkspaceId,
    pub name: String,
    pub url: WebhookUrl,
    pub event_types: Vec<EventType>,
    /// Empty means every channel.
    pub channels: Vec<Channel>,
    pub secret: WebhookSecret,
    /// The secret before the last rotation, still signing until
    /// `previous_secret_expires_at` so receivers can switch without a gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<WebhookSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub status: SubscriptionStatus,
    /// Why and since when it is disabled: set exactly when `status` is
    /// disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Disabled>,
    /// What this webhook sets for itself instead of courier's defaults.
    #[serde(default)]
    pub settings: WebhookSettings,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A webhook's own settings; `None` (or empty) takes courier's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WebhookSettings {
    /// Free text for the people who manage it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Request timeout, instead of `delivery.timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    /// Attempts before a delivery is dead, instead of `retry.max_attempts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Extra request headers sent with every attempt (never courier's own
    /// `webhook-*` or content headers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Requests per second the endpoint is sent at most, across replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// A request-rate limit: `per_second` on average, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl Subscription {
    pub const MAX_NAME_LEN: usize = 200;

    pub fn validate_name(name: &str) -> Result<(), ValidationError> {
        validate_name("name", name, Self::MAX_NAME_LEN)
    }

    /// Disables it for `reason` at `at` (no change if already disabled: the
    /// first reason stands).
    pub fn disable(&mut self, reason: DisabledReason, at: DateTime<Utc>) {
        if self.status == SubscriptionStatus::Enabled {
            self.status = SubscriptionStatus::Disabled;
            self.disabled = Some(Disabled { reason, at });
        }
    }

    /// Enables it again.
    pub fn enable(&mut self) {
        self.status = SubscriptionStatus::Enabled;
        self.disabled = None;
    }

    pub fn validate_event_types(types: &[EventType]) -> Result<(), ValidationError> {
        if types.is_empty() {
            return Err(ValidationError::new(
                "events",
                "must list at least one event type",
            ));
        }
        Ok(())
    }

    /// The matching rule of DESIGN.md: enabled, and listening to the event.
    pub fn matches(&self, event: &Event) -> bool {
        self.status == SubscriptionStatus::Enabled && self.listens_to(event)
    }

    /// Whether the event is one it asked for, enabled or not: a disabled
    /// webhook's deliveries of such events are kept, paused.
    pub fn listens_to(&self, event: &Event) -> bool {
        self.workspace_id == event.workspace_id
            && self.event_types.contains(&event.event_type)
            && self.accepts_channel(event.channel.as_ref())
    }

    fn accepts_channel(&self, channel: Option<&Channel>) -> bool {
        self.channels.is_empty() || channel.is_some_and(|c| self.channels.contains(c))
    }

    /// Every secret that signs a delivery made at `now`: the current one, and
    /// the previous one while its grace period lasts.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&WebhookSecret> {
        let mut secrets = vec![&self.secret];
        if let (Some(previous), Some(until)) =
            (&self.previous_secret, self.previous_secret_expires_at)
            && now < until
        {
            secrets.push(previous);
        }
        secrets
    }
}

/// What an attempt needs of a webhook: where to POST, with which of its
/// settings, and how to sign. A [`Subscription`] read from the ledger is
/// one (the delivery stage), and so is a match of the
/// [`SubscriptionIndex`](crate::SubscriptionIndex) (the fan-out), which
/// keeps only this much of each webhook.
pub trait DeliveryTarget: Send + Sync {
    fn id(&self) -> SubscriptionId;
    fn workspace_id(&self) -> &WorkspaceId;
    fn url(&self) -> &WebhookUrl;
    /// The settings attempts use (the index leaves the description out).
    fn settings(&self) -> &WebhookSettings;
    /// The `webhook-signature` value of message `msg_id` sent at `at`: one
    /// `v1,` signature per secret signing then ([`Subscription::signing_secrets`]).
    fn signature(&self, msg_id: &str, at: DateTime<Utc>, body: &[u8]) -> String;
}

impl DeliveryTarget for Subscription {
    fn id(&self) -> SubscriptionId {
        self.id
    }

    fn workspace_id(&self) -> &WorkspaceId {
        &self.workspace_id
    }

    fn url(&self) -> &WebhookUrl {
        &self.url
    }

    fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    fn signature(&self, msg_id: &str, at: DateTime<Utc>, body: &[u8]) -> String {
        crate::sign_headers(self.signing_secrets(at), msg_id, at.timestamp(), body)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::SubscriptionIndex;
    use serde_json::json;

    pub(crate) fn sub(
        ws: &str,
        types: &[EventType],
        channels: &[&str],
        enabled: bool,
    ) -> Subscription {
        let now = Utc::now();
        Subscription {
            id: SubscriptionId::generate(),
            workspace_id: WorkspaceId::parse(ws).unwrap(),
            name: "test".into(),
            url: WebhookUrl::parse("https://example.com/hook").unwrap(),
            event_types: types.to_vec(),
            channels: channels
                .iter()
                .map(|c| Channel::parse(c).unwrap())
                .collect(),
            secret: WebhookSecret::generate(),
            previous_secret: None,
            previous_secret_expires_at: None,
            status: if enabled {
                SubscriptionStatus::Enabled
            } else {
                SubscriptionStatus::Disabled
            },
            disabled: (!enabled).then_some(Disabled {
                reason: DisabledReason::Manual,
                at: now,
            }),
            settings: WebhookSettings::default(),
            created_at: now,
            updated_at: now,
        }
    }

    pub(crate) fn event(ws: &str, ty: EventType, channel: Option<&str>) -> Event {
        Event::new(
            WorkspaceId::parse(ws).unwrap(),
            ty,
            channel.map(|c| Channel::parse(c).unwrap()),
            json!({}),
        )
        .unwrap()
    }

    #[test]
    fn matching_rule() {
        use EventType::*;
        let all_channels = sub("a", &[OrderCreated, OrderCanceled], &[], true);
        let amazon_only = sub("a", &[OrderCreated], &["amazon"], true);
        let disabled = sub("a", &[OrderCreated], &[], false);
        let other_ws = sub("b", &[OrderCreated], &[], true);
        let two_channels = sub("a", &[OrderCanceled], &["ebay", "otto", "ebay"], true);
        let subs = [
            &all_channels,
            &amazon_only,
            &disabled,
            &other_ws,
            &two_channels,
        ];

        let names = |e: &Event| -> Vec<SubscriptionId> {
            subs.iter().filter(|s| s.matches(e)).map(|s| s.id).collect()
        };
        assert_eq!(
            names(&event("a", OrderCreated, Some("amazon"))),
            [all_channels.id, amazon_only.id]
        );
        assert_eq!(
            names(&event("a", OrderCreated, Some("ebay"))),
            [all_channels.id]
        );
        assert_eq!(names(&event("a", OrderCreated, None)), [all_channels.id]);
        assert_eq!(names(&event("a", OrderCanceled, None)), [all_channels.id]);
        assert!(names(&event("a", ShipmentCreated, None)).is_empty());
        assert_eq!(names(&event("b", OrderCreated, None)), [other_ws.id]);
        // The disabled one still listens: its deliveries are kept, paused.
        assert!(disabled.listens_to(&event("a", OrderCreated, None)));

        // The index agrees with the rule for every case, and holds the
        // disabled one too.
        let index = SubscriptionIndex::new(subs.iter().map(|s| (*s).clone()));
        assert_eq!(index.len(), 5);
        for e in [
            event("a", OrderCreated, Some("amazon")),
            event("a", OrderCreated, Some("ebay")),
            event("a", OrderCanceled, None),
            event("a", OrderCanceled, Some("ebay")),
            event("a", OrderCanceled, Some("otto")),
            event("a", OrderCanceled, Some("amazon")),
            event("b", OrderCreated, Some("x")),
            event("c", OrderCreated, None),
        ] {
            let mut from_index: Vec<_> = index
                .matching(&e)
                .iter()
                .filter(|s| s.is_enabled())
                .map(|s| s.id())
                .collect();
            let mut expected = names(&e);
            from_index.sort();
            expected.sort();
            assert_eq!(
                from_index, expected,
                "{:?} on {:?}",
                e.event_type, e.channel
            );
        }
    }

    #[test]
    fn previous_secret_signs_during_grace_only() {
        let mut s = sub("a", &[EventType::OrderCreated], &[], true);
        let now = Utc::now();
        assert_eq!(s.signing_secrets(now).len(), 1);
        s.previous_secret = Some(WebhookSecret::generate());
        s.previous_secret_expires_at = Some(now + chrono::Duration::hours(1));
        assert_eq!(s.signing_secrets(now).len(), 2);
        assert_eq!(s.signing_secrets(now + chrono::Duration::hours(2)).len(), 1);
    }

    #[test]
    fn validation() {
        assert!(Subscription::validate_name("ok").is_ok());
        assert!(Subscription::validate_name("Bestellungen → ERP ✓").is_ok());
        // Stored trimmed, so a line break around the name is no harm.
        assert!(Subscription::validate_name("from a pipe\n").is_ok());
        assert_eq!(Subscription::validate_name(" ").unwrap_err().field, "name");
        for bad in [
            "a\0b",
            "line\nbreak",
            "tab\there",
            "\u{1b}[31mred",
            "del\u{7f}",
            "next\u{85}line",
        ] {
            let err = Subscription::validate_name(bad).unwrap_err();
            assert_eq!(err.field, "name", "{bad:?}");
            assert!(err.message.contains("control characters"), "{err}");
        }
        assert_eq!(
            validate_name("name", "a\0b", 10).unwrap_err().message,
            "must not contain control characters; found U+0000 at character 2"
        );
        assert_eq!(
            Subscription::validate_event_types(&[]).unwrap_err().field,
            "events"
        );
        assert_eq!(Channel::parse("a b").unwrap_err().field, "channels");
    }
}
