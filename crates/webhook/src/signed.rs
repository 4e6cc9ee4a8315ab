//! A webhook request ready to send: its body and the headers that let the
//! receiver check where it came from.

use chrono::{DateTime, Utc};
use courier_model::{Subscription, sign_headers};
use reqwest::header::{HeaderMap, HeaderValue};

/// A signed webhook: `webhook-id`, `webhook-timestamp` and
/// `webhook-signature` (one `v1,` signature per secret the subscription
/// signs with at `at`, so a receiver holding either secret of a rotation
/// verifies).
#[derive(Debug)]
pub struct SignedWebhook {
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl SignedWebhook {
    /// Signs `body` for `subscription` as message `webhook_id` sent at `at`.
    /// Receivers deduplicate on `webhook_id`: it must stay the same across
    /// the attempts of one delivery.
    pub fn new(
        subscription: &Subscription,
        webhook_id: &str,
        at: DateTime<Utc>,
        body: Vec<u8>,
    ) -> Self {
        let timestamp = at.timestamp();
        let signature = sign_headers(
            subscription.signing_secrets(at),
            webhook_id,
            timestamp,
            &body,
        );
        let mut headers = HeaderMap::with_capacity(3);
        headers.insert("webhook-id", header_value(webhook_id));
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        headers.insert("webhook-signature", header_value(&signature));
        Self { headers, body }
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Every header courier sets on the request, as sent: the content type,
    /// the user agent and the three signature headers. (The HTTP client adds
    /// only transport headers: host, content-length, accept.)
    pub fn header_list(&self) -> Vec<(String, String)> {
        let mut list = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("user-agent".to_owned(), crate::USER_AGENT.to_owned()),
        ];
        list.extend(self.headers.iter().map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        }));
        list
    }
}

/// Ids, timestamps and base64 signatures are always valid header values;
/// an id that is not (a control character) cannot come from courier's ids.
fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("ids and base64 signatures are valid header values")
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use courier_model::{
        EventType, Subscription, SubscriptionId, SubscriptionStatus, WebhookSecret, WebhookUrl,
        WorkspaceId,
    };

    use super::*;

    fn subscription(previous: Option<(WebhookSecret, DateTime<Utc>)>) -> Subscription {
        let now = Utc::now();
        Subscription {
            id: SubscriptionId::generate(),
            workspace_id: WorkspaceId::parse("acme").unwrap(),
            name: "erp".into(),
            url: WebhookUrl::parse("https://erp.example.com/hooks").unwrap(),
            event_types: vec![EventType::OrderCreated],
            channels: vec![],
            secret: WebhookSecret::generate(),
            previous_secret_expires_at: previous.as_ref().map(|(_, until)| *until),
            previous_secret: previous.map(|(secret, _)| secret),
            status: SubscriptionStatus::Enabled,
            created_at: now,
            updated_at: now,
        }
    }

    fn header<'a>(webhook: &'a SignedWebhook, name: &str) -> &'a str {
        webhook.headers()[name].to_str().unwrap()
    }

    #[test]
    fn headers_name_the_message_its_time_and_its_signature() {
        let sub = subscription(None);
        let at = Utc::now();
        let webhook = SignedWebhook::new(&sub, "d-1", at, b"{}".to_vec());
        assert_eq!(header(&webhook, "webhook-id"), "d-1");
        assert_eq!(
            header(&webhook, "webhook-timestamp"),
            at.timestamp().to_string()
        );
        assert_eq!(
            header(&webhook, "webhook-signature"),
            sub.secret.sign("d-1", at.timestamp(), b"{}")
        );
        assert_eq!(webhook.body(), b"{}");
        let names: Vec<String> = webhook.header_list().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "user-agent",
                "webhook-id",
                "webhook-timestamp",
                "webhook-signature"
            ]
        );
    }

    #[test]
    fn a_rotated_secret_signs_too_until_it_expires() {
        let at = Utc::now();
        let old = WebhookSecret::generate();
        let sub = subscription(Some((old.clone(), at + Duration::hours(1))));
        let during = SignedWebhook::new(&sub, "d-1", at, b"{}".to_vec());
        let signatures: Vec<&str> = header(&during, "webhook-signature").split(' ').collect();
        assert_eq!(
            signatures,
            [
                sub.secret.sign("d-1", at.timestamp(), b"{}"),
                old.sign("d-1", at.timestamp(), b"{}")
            ]
        );
        let after = SignedWebhook::new(&sub, "d-1", at + Duration::hours(2), b"{}".to_vec());
        assert_eq!(header(&after, "webhook-signature").split(' ').count(), 1);
    }
}
