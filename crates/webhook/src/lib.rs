//! The outgoing webhook, in one place for every sender (the worker's
//! attempts, the API's test sends): the Standard Webhooks headers that sign
//! it, and the HTTP client that POSTs it, bounded in time and in how much
//! of the response it reads, and unable to reach addresses customers must
//! not point courier at (loopback, private networks, cloud metadata)
//! unless the deployment allows it.

mod client;
mod signed;

pub use client::{
    ClientError, HttpOptions, HttpOutcome, MAX_KEPT_HEADER_BYTES, RESPONSE_EXCERPT_BYTES,
    SendOptions, WebhookClient, is_public,
};
pub use signed::SignedWebhook;

/// The `user-agent` of every webhook request.
pub const USER_AGENT: &str = concat!("courier/", env!("CARGO_PKG_VERSION"));

/// Header names a webhook's own headers may not use (compared
/// case-insensitively): courier's signature headers (every `webhook-*`
/// name, the Standard Webhooks namespace), the headers that frame the body
/// (`content-type`, `content-length`, `content-encoding`,
/// `transfer-encoding`), the ones that steer the connection (`host`,
/// `connection`, `keep-alive`, `te`, `trailer`, `upgrade`, `expect`, any
/// `proxy-*`) and `user-agent`, which says the request is courier's.
/// `authorization` is allowed: receivers often want a token besides the
/// signature.
pub fn is_reserved_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    RESERVED_HEADER_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
        || RESERVED_HEADERS.contains(&name.as_str())
}

/// The name prefixes [`is_reserved_header`] refuses, lowercase.
pub const RESERVED_HEADER_PREFIXES: &[&str] = &["webhook-", "proxy-"];

/// The whole names [`is_reserved_header`] refuses, lowercase.
pub const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "user-agent",
];
