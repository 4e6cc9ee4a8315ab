//! A webhook request ready to send: its body and the headers that let the
//! receiver check where it came from.

use chrono::{DateTime, Utc};
use courier_model::DeliveryTarget;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

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
        subscription: &(impl DeliveryTarget + ?Sized),
        webhook_id: &str,
        at: DateTime<Utc>,
        body: Vec<u8>,
    ) -> Self {
        let timestamp = at.timestamp();
        let signature = subscription.signature(webhook_id, at, &body);
        let mut headers = HeaderMap::with_capacity(3);
        headers.insert("webhook-id", header_value(webhook_id));
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        headers.insert("webhook-signature", header_value(&signature));
        Self { headers, body }
    }

    /// Adds a webhook's own headers (`WebhookSettings::headers`) after
    /// courier's: a name courier sets itself ([`crate::is_reserved_header`]:
    /// the signature, content and connection headers, the user agent) or
    /// one that is not a valid header is left out, so extra headers never
    /// replace or forge courier's. A name given twice keeps both values.
    pub fn with_headers(mut self, extra: &[(String, String)]) -> Self {
        for (name, value) in extra {
            if crate::is_reserved_header(name) {
                continue;
            }
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) else {
                continue;
            };
            self.headers.append(name, value);
        }
        self
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Every header courier sets on the request, as sent: the content type,
    /// the user agent, the three signature headers and the webhook's own
    /// (after [`Self::with_headers`]). (The HTTP client adds only transport
    /// headers: host, content-length, accept.)
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
            disabled: None,
            settings: Default::default(),
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

    #[test]
    fn extra_headers_never_replace_courier_headers() {
        let sub = subscription(None);
        let at = Utc::now();
        let plain = SignedWebhook::new(&sub, "d-1", at, b"{}".to_vec());
        let signature = header(&plain, "webhook-signature").to_owned();
        let extra: Vec<(String, String)> = [
            ("Webhook-Signature", "v1,forged"),
            ("webhook-id", "other"),
            ("Content-Type", "text/plain"),
            ("user-agent", "not-courier"),
            ("Host", "evil.example"),
            ("X-Api-Key", "k-1"),
            ("Authorization", "Bearer t"),
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("bad name", "v"),
            ("x-bad-value", "a\nb"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let webhook = plain.with_headers(&extra);
        assert_eq!(header(&webhook, "webhook-signature"), signature);
        assert_eq!(header(&webhook, "webhook-id"), "d-1");
        assert_eq!(
            webhook
                .headers()
                .get_all("webhook-signature")
                .iter()
                .count(),
            1
        );
        assert_eq!(webhook.headers().get_all("webhook-id").iter().count(), 1);
        assert!(webhook.headers().get("content-type").is_none());
        assert!(webhook.headers().get("user-agent").is_none());
        assert!(webhook.headers().get("host").is_none());
        assert_eq!(header(&webhook, "x-api-key"), "k-1");
        assert_eq!(header(&webhook, "authorization"), "Bearer t");
        assert_eq!(webhook.headers().get_all("x-multi").iter().count(), 2);
        assert!(webhook.headers().get("x-bad-value").is_none());
        let list = webhook.header_list();
        assert_eq!(
            list.iter()
                .filter(|(n, _)| n == "content-type")
                .collect::<Vec<_>>(),
            [&("content-type".to_owned(), "application/json".to_owned())]
        );
        assert!(list.contains(&("x-api-key".to_owned(), "k-1".to_owned())));
    }
}
