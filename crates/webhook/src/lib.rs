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
    WebhookClient, is_public,
};
pub use signed::SignedWebhook;

/// The `user-agent` of every webhook request.
pub const USER_AGENT: &str = concat!("courier/", env!("CARGO_PKG_VERSION"));
