//! The webhook HTTP client: one POST per attempt, bounded in time and in how
//! much of the response it reads, and unable to reach addresses that
//! customers must not point courier at (loopback, private networks, cloud
//! metadata) unless the deployment allows it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_model::{AttemptResult, DeliveryTarget, ErrorKind, WebhookUrl};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use crate::SignedWebhook;

/// How much of a response body is kept in the ledger.
pub const RESPONSE_EXCERPT_BYTES: usize = 4 * 1024;

#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub timeout: Duration,
    pub allow_private_networks: bool,
    /// The most requests in flight at once, and so the most connections
    /// to one host worth keeping open between requests.
    pub max_in_flight: usize,
}

/// What one POST produced, ready for the ledger.
#[derive(Clone, Debug)]
pub struct HttpOutcome {
    pub result: AttemptResult,
    pub duration: Duration,
    /// A short description when no response arrived.
    pub error: Option<String>,
    pub excerpt: Option<String>,
    /// The response's `Retry-After`, as sent (at most
    /// [`MAX_KEPT_HEADER_BYTES`]).
    pub retry_after: Option<String>,
}

/// A response header kept for the ledger is cut at this length: a receiver
/// decides what it sends, courier decides what it stores.
pub const MAX_KEPT_HEADER_BYTES: usize = 128;

/// What one request sets for itself instead of the client's defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct SendOptions {
    /// The request's timeout, connect to last byte; never longer than the
    /// client's ([`HttpOptions::timeout`], `delivery.timeout_ms`): what the
    /// deployment sized its worker slots and delivery leases on.
    pub timeout: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct WebhookClient {
    client: reqwest::Client,
    allow_private_networks: bool,
    timeout: Duration,
}

/// The HTTP client could not be built (its TLS backend failed to start).
#[derive(Debug, thiserror::Error)]
#[error("could not build the webhook HTTP client")]
pub struct ClientError(#[source] reqwest::Error);

#[derive(Debug, thiserror::Error)]
#[error(
    "{host} resolves only to private or local addresses, which courier does not call while \
     delivery.allow_private_networks is false"
)]
struct BlockedAddress {
    host: String,
}

/// Resolves names like the system would, then drops every address courier
/// must not call. Reqwest connects only to what this returns, so a DNS name
/// pointing at 127.0.0.1 is caught at connect time, not just at validation.
#[derive(Debug)]
struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(BlockedAddress { host }) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

impl WebhookClient {
    pub fn new(options: &HttpOptions) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(crate::USER_AGENT)
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(10)))
            // A redirect would let an endpoint bounce courier anywhere, and
            // proxies from the environment would bypass the address filter.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            // One attempt is one request: courier's own schedule retries.
            .retry(reqwest::retry::never())
            .tcp_nodelay(true)
            // Enough to keep every connection that can be busy at once: many
            // webhooks often share one receiving host, and a pool smaller
            // than the requests in flight to it closes connections after
            // each response and opens new ones.
            .pool_max_idle_per_host(options.max_in_flight.max(1));
        if !options.allow_private_networks {
            builder = builder.dns_resolver(Arc::new(PublicOnlyResolver));
        }
        Ok(Self {
            client: builder.build().map_err(ClientError)?,
            allow_private_networks: options.allow_private_networks,
            timeout: options.timeout,
        })
    }

    /// The longest a request may take ([`HttpOptions::timeout`]).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// POSTs a signed webhook to `url` and reports what happened. Never
    /// fails: every failure is an outcome to record.
    pub async fn send(&self, url: &WebhookUrl, webhook: SignedWebhook) -> HttpOutcome {
        self.send_with(url, webhook, SendOptions::default()).await
    }

    /// [`Self::send`], with the request's own options.
    pub async fn send_with(
        &self,
        url: &WebhookUrl,
        webhook: SignedWebhook,
        options: SendOptions,
    ) -> HttpOutcome {
        let timeout = options
            .timeout
            .map_or(self.timeout, |t| t.min(self.timeout));
        self.post(url, webhook.headers, webhook.body, timeout).await
    }

    /// POSTs a webhook signed for `subscription` to its URL with its own
    /// settings: its headers after courier's (never replacing them, see
    /// [`SignedWebhook::with_headers`]) and its timeout (at most the
    /// client's).
    pub async fn send_for(
        &self,
        subscription: &(impl DeliveryTarget + ?Sized),
        webhook: SignedWebhook,
    ) -> HttpOutcome {
        let settings = subscription.settings();
        let options = SendOptions {
            timeout: settings
                .timeout_ms
                .map(|ms| Duration::from_millis(u64::from(ms))),
        };
        self.send_with(
            subscription.url(),
            webhook.with_headers(&settings.headers),
            options,
        )
        .await
    }

    async fn post(
        &self,
        url: &WebhookUrl,
        headers: HeaderMap,
        body: Vec<u8>,
        timeout: Duration,
    ) -> HttpOutcome {
        let started = Instant::now();
        let failed = |kind: ErrorKind, error: String| HttpOutcome {
            result: AttemptResult::Failed { kind },
            duration: started.elapsed(),
            error: Some(error),
            excerpt: None,
            retry_after: None,
        };

        // IP literals never reach the resolver, so check them here.
        if !self.allow_private_networks
            && let Some(ip) = literal_ip(url)
            && !is_public(ip)
        {
            return failed(
                ErrorKind::Blocked,
                format!(
                    "{ip} is a private or local address, which courier does not call while \
                     delivery.allow_private_networks is false"
                ),
            );
        }

        let response = self
            .client
            .post(url.as_url().clone())
            .headers(headers)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .timeout(timeout)
            .body(body)
            .send()
            .await;
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                let (kind, message) = describe(&e);
                return failed(kind, message);
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .map(|v| kept_header(v.as_bytes()));

        // Read at most the excerpt; the rest of the body is not our business.
        let mut excerpt = Vec::new();
        let mut body_error = None;
        while excerpt.len() < RESPONSE_EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = RESPONSE_EXCERPT_BYTES - excerpt.len();
                    excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                Err(e) => {
                    body_error = Some(describe(&e).1);
                    break;
                }
            }
        }
        HttpOutcome {
            result: AttemptResult::Response { status },
            duration: started.elapsed(),
            error: body_error,
            excerpt: (!excerpt.is_empty()).then(|| excerpt_text(&excerpt)),
            retry_after,
        }
    }
}

fn literal_ip(url: &WebhookUrl) -> Option<IpAddr> {
    match url.as_url().host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// Classifies a reqwest error and renders it with its causes, which is where
/// the useful part ("connection refused") lives.
fn describe(error: &reqwest::Error) -> (ErrorKind, String) {
    let mut message = error.to_string();
    let mut blocked = false;
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.downcast_ref::<BlockedAddress>().is_some() {
            blocked = true;
        }
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    let kind = if blocked {
        ErrorKind::Blocked
    } else if error.is_timeout() {
        ErrorKind::Timeout
    } else if error.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Other
    };
    (kind, message)
}

/// Whether an address is on the public internet. Conservative: anything
/// loopback, private, link-local, shared, documentation, multicast or
/// reserved is not.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            is_public_v6(v6)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x0064 && ip.segments()[1] == 0xff9b)) // NAT64, may map private v4
}

/// A header value as text the ledger can store, cut to
/// [`MAX_KEPT_HEADER_BYTES`] on a character boundary.
fn kept_header(bytes: &[u8]) -> String {
    let mut text = excerpt_text(&bytes[..bytes.len().min(MAX_KEPT_HEADER_BYTES)]);
    while text.len() > MAX_KEPT_HEADER_BYTES {
        text.pop();
    }
    text
}

/// A response excerpt as text the ledger can store: invalid UTF-8 and NUL
/// (which PostgreSQL text refuses) become U+FFFD.
fn excerpt_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "\u{FFFD}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_model::Subscription;

    #[test]
    fn kept_headers_are_bounded_text() {
        assert_eq!(kept_header(b"120"), "120");
        let long = "é".repeat(100);
        let kept = kept_header(long.as_bytes());
        assert!(kept.len() <= MAX_KEPT_HEADER_BYTES, "{}", kept.len());
        assert!(kept.starts_with("éé"));
        assert_eq!(kept_header(b"a\0b"), "a\u{FFFD}b");
    }

    #[test]
    fn excerpts_are_text_a_database_takes() {
        assert_eq!(excerpt_text(b"ok"), "ok");
        // PostgreSQL text cannot hold NUL; invalid UTF-8 is replaced too.
        assert_eq!(excerpt_text(b"a\0b\xffc"), "a\u{FFFD}b\u{FFFD}c");
    }

    #[test]
    fn public_and_private_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn refuses_private_literals_and_names_without_sending() {
        let client = WebhookClient::new(&HttpOptions {
            timeout: Duration::from_secs(2),
            allow_private_networks: false,
            max_in_flight: 4,
        })
        .unwrap();
        // Nothing listens there; a Blocked result proves no connection was tried.
        for url in [
            "http://127.0.0.1:1/hook",
            "http://[::1]:1/",
            "http://localhost:1/",
        ] {
            let outcome = client
                .post(
                    &WebhookUrl::parse(url).unwrap(),
                    HeaderMap::new(),
                    b"{}".to_vec(),
                    client.timeout(),
                )
                .await;
            assert_eq!(
                outcome.result,
                AttemptResult::Failed {
                    kind: ErrorKind::Blocked
                },
                "{url}: {:?}",
                outcome.error
            );
            // The message names the setting that would allow it.
            let error = outcome.error.unwrap();
            assert!(
                error.contains("delivery.allow_private_networks"),
                "{url}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn connection_refused_is_a_connect_error() {
        let client = WebhookClient::new(&HttpOptions {
            timeout: Duration::from_secs(2),
            allow_private_networks: true,
            max_in_flight: 4,
        })
        .unwrap();
        // Bind then drop to find a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = WebhookUrl::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let outcome = client
            .post(&url, HeaderMap::new(), b"{}".to_vec(), client.timeout())
            .await;
        assert_eq!(
            outcome.result,
            AttemptResult::Failed {
                kind: ErrorKind::Connect
            }
        );
        assert!(outcome.error.unwrap().contains("refused"));
    }

    /// A one-connection HTTP server: answers each request after `delay`
    /// with 204 and hands over the request head, lower-cased.
    async fn receiver(delay: Duration) -> (WebhookUrl, tokio::sync::mpsc::Receiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url =
            WebhookUrl::parse(&format!("http://{}/hook", listener.local_addr().unwrap())).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tx
                        .send(String::from_utf8_lossy(&head).to_ascii_lowercase())
                        .await;
                    tokio::time::sleep(delay).await;
                    let _ = socket
                        .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        (url, rx)
    }

    fn subscription(url: WebhookUrl, timeout_ms: Option<u32>) -> Subscription {
        let now = chrono::Utc::now();
        Subscription {
            id: courier_model::SubscriptionId::generate(),
            workspace_id: courier_model::WorkspaceId::parse("acme").unwrap(),
            name: "erp".into(),
            url,
            event_types: vec![courier_model::EventType::OrderCreated],
            channels: vec![],
            secret: courier_model::WebhookSecret::generate(),
            previous_secret: None,
            previous_secret_expires_at: None,
            status: courier_model::SubscriptionStatus::Enabled,
            disabled: None,
            settings: courier_model::WebhookSettings {
                timeout_ms,
                headers: vec![
                    ("X-Api-Key".into(), "k-1".into()),
                    ("Webhook-Signature".into(), "v1,forged".into()),
                    ("Content-Type".into(), "text/plain".into()),
                ],
                ..Default::default()
            },
            created_at: now,
            updated_at: now,
        }
    }

    fn local_client(timeout: Duration) -> WebhookClient {
        WebhookClient::new(&HttpOptions {
            timeout,
            allow_private_networks: true,
            max_in_flight: 4,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_webhooks_headers_go_along_but_never_replace_courier_headers() {
        let (url, mut heads) = receiver(Duration::ZERO).await;
        let sub = subscription(url, None);
        let at = chrono::Utc::now();
        let webhook = SignedWebhook::new(&sub, "d-1", at, b"{}".to_vec());
        let signature = webhook.headers()["webhook-signature"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        let outcome = local_client(Duration::from_secs(5))
            .send_for(&sub, webhook)
            .await;
        assert_eq!(outcome.result, AttemptResult::Response { status: 204 });
        let head = heads.recv().await.unwrap();
        let lines: Vec<&str> = head.lines().collect();
        let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
        assert!(lines.contains(&"x-api-key: k-1"), "{head}");
        assert!(lines.contains(&"content-type: application/json"), "{head}");
        assert_eq!(count("content-type:"), 1, "{head}");
        assert!(
            lines.contains(&format!("webhook-signature: {signature}").as_str()),
            "{head}"
        );
        assert_eq!(count("webhook-signature:"), 1, "{head}");
    }

    #[tokio::test]
    async fn a_webhooks_timeout_applies_but_never_exceeds_the_clients() {
        let (url, _heads) = receiver(Duration::from_secs(3)).await;
        let client = local_client(Duration::from_secs(10));
        let sub = subscription(url.clone(), Some(200));
        let started = Instant::now();
        let webhook = SignedWebhook::new(&sub, "d-1", chrono::Utc::now(), b"{}".to_vec());
        let outcome = client.send_for(&sub, webhook).await;
        assert_eq!(
            outcome.result,
            AttemptResult::Failed {
                kind: ErrorKind::Timeout
            }
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );

        // Longer than the client's: the client's holds.
        let client = local_client(Duration::from_millis(300));
        let sub = subscription(url, Some(60_000));
        let started = Instant::now();
        let webhook = SignedWebhook::new(&sub, "d-2", chrono::Utc::now(), b"{}".to_vec());
        let outcome = client.send_for(&sub, webhook).await;
        assert_eq!(
            outcome.result,
            AttemptResult::Failed {
                kind: ErrorKind::Timeout
            }
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
