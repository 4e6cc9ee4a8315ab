//! Standard Webhooks signing: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`, several signatures space-separated while a
//! secret is being rotated.

use std::fmt;

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error(
        "secret must be base64 (optionally prefixed with whsec_), as Standard Webhooks libraries decode it"
    )]
    NotBase64,
    #[error("secret decodes to {0} bytes; between 8 and 64 are required")]
    BadLength(usize),
}

/// A signing secret, kept exactly as the customer registered it: Standard
/// Webhooks libraries strip an optional `whsec_` and base64-decode the rest,
/// so courier signs with the same decoded key whichever form was given.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookSecret {
    text: String,
    key: Vec<u8>,
}

impl WebhookSecret {
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text.strip_prefix(PREFIX).unwrap_or(text);
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        if !(8..=64).contains(&key.len()) {
            return Err(SecretError::BadLength(key.len()));
        }
        Ok(Self {
            text: text.to_owned(),
            key,
        })
    }

    /// A fresh `whsec_` secret of 24 random bytes.
    pub fn generate() -> Self {
        let mut key = vec![0u8; 24];
        rand::rng().fill(&mut key[..]);
        Self {
            text: format!("{PREFIX}{}", STANDARD.encode(&key)),
            key,
        }
    }

    /// The secret as registered; shown to its owner, never logged.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        sign_with_key(&self.key, msg_id, timestamp, body)
    }

    /// The decoded key that signs (the subscription index keeps only this).
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }
}

/// `v1,<base64 signature>` of one message, signed with a decoded key.
pub(crate) fn sign_with_key(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key size");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl TryFrom<String> for WebhookSecret {
    type Error = SecretError;
    fn try_from(value: String) -> Result<Self, SecretError> {
        Self::parse(&value)
    }
}

impl From<WebhookSecret> for String {
    fn from(secret: WebhookSecret) -> String {
        secret.text
    }
}

/// The value of the `webhook-signature` header: one `v1,` signature per
/// secret, space-separated, so receivers holding either secret verify.
pub fn sign_headers<'a>(
    secrets: impl IntoIterator<Item = &'a WebhookSecret>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .into_iter()
        .map(|s| s.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_test_vector() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn prefix_is_optional_and_kept_as_given() {
        let bare = WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let prefixed = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(bare.expose(), "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(bare.sign("a", 1, b"x"), prefixed.sign("a", 1, b"x"));
        // The form existing integrations register: 16 base64 characters.
        assert!(WebhookSecret::parse("QWZTFnMEXhqZKNmu").is_ok());
    }

    #[test]
    fn refuses_secrets_libraries_cannot_use() {
        assert_eq!(
            WebhookSecret::parse("not base64!"),
            Err(SecretError::NotBase64)
        );
        assert_eq!(
            WebhookSecret::parse("whsec_AAAA"),
            Err(SecretError::BadLength(3))
        );
    }

    #[test]
    fn generated_secrets_parse_and_differ() {
        let a = WebhookSecret::generate();
        let b = WebhookSecret::generate();
        assert!(a.expose().starts_with("whsec_"));
        assert_ne!(a, b);
        assert_eq!(WebhookSecret::parse(a.expose()).unwrap(), a);
        assert_eq!(format!("{a:?}"), "WebhookSecret(<redacted>)");
    }

    #[test]
    fn rotation_sends_both_signatures() {
        let old = WebhookSecret::generate();
        let new = WebhookSecret::generate();
        let header = sign_headers([&new, &old], "id", 5, b"{}");
        let parts: Vec<_> = header.split(' ').collect();
        assert_eq!(parts, [new.sign("id", 5, b"{}"), old.sign("id", 5, b"{}")]);
    }
}
