//! The operational events courier publishes about a workspace's own
//! webhooks: `webhook.failing`, `webhook.disabled` and `webhook.recovered`.
//! They travel as ordinary events of that workspace, so an operational
//! webhook (one subscribed to these types) receives them signed and retried
//! like any other delivery.
//!
//! Each has an id derived from the webhook and the episode it is about, so
//! that two replicas reporting the same thing publish the same event, which
//! the ledger records once.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::{DisabledReason, Event, EventId, EventType, Subscription};

/// What the webhook's latest failed attempt got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LastFailure {
    pub at: Option<DateTime<Utc>>,
    /// The response status, when there was a response.
    pub status: Option<u16>,
    /// Otherwise what went wrong (`timeout`, `connect`, ...).
    pub error: Option<String>,
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn webhook(sub: &Subscription) -> Value {
    json!({
        "webhook_id": sub.id.to_string(),
        "webhook_name": sub.name,
        "url": sub.url.as_str(),
    })
}

fn with(mut base: Value, more: Value) -> Value {
    if let (Some(base), Value::Object(more)) = (base.as_object_mut(), more) {
        base.extend(more);
    }
    base
}

fn id(kind: &str, sub: &Subscription, episode: DateTime<Utc>) -> EventId {
    EventId::parse(format!(
        "whk_{kind}_{}_{}",
        sub.id.0.simple(),
        episode.timestamp_micros()
    ))
    .expect("a notice id is a valid event id")
}

fn event(id: EventId, sub: &Subscription, ty: EventType, data: Value) -> Event {
    let mut event =
        Event::new(sub.workspace_id.clone(), ty, None, data).expect("a notice is a valid event");
    event.id = id;
    event
}

/// `webhook.failing`: `failures` attempts in a row failed since `since`.
pub fn failing(
    sub: &Subscription,
    since: DateTime<Utc>,
    failures: u32,
    last: &LastFailure,
) -> Event {
    let data = with(
        webhook(sub),
        json!({
            "failing_since": time(since),
            "consecutive_failures": failures,
            "last_failure": {
                "at": last.at.map(time),
                "response_status": last.status,
                "error": last.error,
            },
        }),
    );
    event(
        id("failing", sub, since),
        sub,
        EventType::WebhookFailing,
        data,
    )
}

/// `webhook.disabled`: courier disabled it at `at` for `reason`.
pub fn disabled(
    sub: &Subscription,
    reason: DisabledReason,
    at: DateTime<Utc>,
    failing_since: Option<DateTime<Utc>>,
    paused_deliveries: u64,
) -> Event {
    let data = with(
        webhook(sub),
        json!({
            "reason": reason.as_str(),
            "disabled_at": time(at),
            "failing_since": failing_since.map(time),
            "paused_deliveries": paused_deliveries,
        }),
    );
    event(
        id("disabled", sub, at),
        sub,
        EventType::WebhookDisabled,
        data,
    )
}

/// `webhook.recovered`: a success at `at` ended the failing episode that
/// began at `since` (and was reported).
pub fn recovered(sub: &Subscription, since: DateTime<Utc>, at: DateTime<Utc>) -> Event {
    let data = with(
        webhook(sub),
        json!({
            "failing_since": time(since),
            "recovered_at": time(at),
        }),
    );
    event(
        id("recovered", sub, since),
        sub,
        EventType::WebhookRecovered,
        data,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SubscriptionId, SubscriptionStatus, WebhookSecret, WebhookUrl, WorkspaceId};

    fn sub() -> Subscription {
        let now = Utc::now();
        Subscription {
            id: SubscriptionId::generate(),
            workspace_id: WorkspaceId::parse("acme").unwrap(),
            name: "erp".into(),
            url: WebhookUrl::parse("https://erp.example.com/hook").unwrap(),
            event_types: vec![EventType::OrderCreated],
            channels: vec![],
            secret: WebhookSecret::generate(),
            previous_secret: None,
            previous_secret_expires_at: None,
            status: SubscriptionStatus::Enabled,
            disabled: None,
            settings: Default::default(),
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn one_id_per_webhook_and_episode() {
        let s = sub();
        let since = Utc::now();
        let last = LastFailure::default();
        assert_eq!(
            failing(&s, since, 5, &last).id,
            failing(&s, since, 7, &last).id
        );
        let later = since + chrono::Duration::seconds(1);
        assert_ne!(
            failing(&s, since, 5, &last).id,
            failing(&s, later, 5, &last).id
        );
        assert_ne!(
            failing(&s, since, 5, &last).id,
            recovered(&s, since, later).id
        );
        let other = sub();
        assert_ne!(
            failing(&s, since, 5, &last).id,
            failing(&other, since, 5, &last).id
        );
    }

    #[test]
    fn payloads_name_the_webhook_in_its_workspace() {
        let s = sub();
        let at = Utc::now();
        let e = disabled(&s, DisabledReason::Gone, at, None, 3);
        assert_eq!(e.workspace_id, s.workspace_id);
        assert_eq!(e.event_type, EventType::WebhookDisabled);
        let data: Value = serde_json::from_slice(&e.webhook_body()).unwrap();
        let data = &data["data"];
        assert_eq!(data["webhook_id"], s.id.to_string());
        assert_eq!(data["reason"], "gone");
        assert_eq!(data["paused_deliveries"], 3);
        assert!(data["failing_since"].is_null());
    }
}
