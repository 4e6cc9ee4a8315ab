//! Workspace API keys: `ck_` + 32 random bytes in base64url. Only a SHA-256
//! hash and a short prefix are stored, so a leaked ledger leaks no usable
//! key; the plaintext is shown once, when the key is created. Keys are never
//! logged.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use courier_model::WorkspaceId;
use courier_store::{ApiKeyRecord, Store, StoreError};
use rand::RngExt;
use sha2::{Digest, Sha256};

use crate::key_cache::KeyDigest;

const KEY_PREFIX: &str = "ck_";
/// Characters of the key kept in clear for recognising it: `ck_` plus six,
/// 36 bits that do not help guess the other 220.
const SHOWN_PREFIX_LEN: usize = 9;
pub const MAX_KEY_NAME_LEN: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error(transparent)]
    InvalidName(courier_model::ValidationError),
    #[error("workspace not found")]
    WorkspaceNotFound,
    #[error("ledger error")]
    Store(#[source] StoreError),
}

/// The stored form of a key: lowercase hex SHA-256.
pub fn hash_key(key: &str) -> String {
    hex(&digest(key))
}

/// The SHA-256 of a key.
pub fn digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// Lowercase hex, the form the ledger stores a digest in.
pub fn hex(digest: &KeyDigest) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(64);
    for b in digest {
        text.push(DIGITS[usize::from(b >> 4)] as char);
        text.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    text
}

fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes[..]);
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Creates a key for `workspace` (which must exist). Returns the plaintext
/// key, the only time it exists outside the caller's hands, and its record.
pub async fn create_api_key(
    store: &Store,
    workspace: &WorkspaceId,
    name: Option<&str>,
) -> Result<(String, ApiKeyRecord), ApiKeyError> {
    let name = name.map(str::trim).unwrap_or("default");
    courier_model::validate_name("name", name, MAX_KEY_NAME_LEN)
        .map_err(ApiKeyError::InvalidName)?;
    let key = generate_key();
    let record = ApiKeyRecord {
        id: format!("key_{}", uuid::Uuid::now_v7().simple()),
        workspace_id: workspace.clone(),
        name: name.to_owned(),
        key_prefix: key[..SHOWN_PREFIX_LEN].to_owned(),
        created_at: Utc::now(),
    };
    store
        .insert_api_key(&record, &hash_key(&key))
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => ApiKeyError::WorkspaceNotFound,
            other => ApiKeyError::Store(other),
        })?;
    Ok((key, record))
}

/// Revokes key `id` of `workspace`: deletes it from the ledger, then tells
/// every courier process through `changes`. `None` when the workspace has
/// no such key; otherwise whether the notice was confirmed (false: it was
/// logged, and caches elsewhere let the key expire within
/// [`crate::key_cache::MAX_AGE`]).
pub async fn revoke_api_key(
    store: &Store,
    changes: &dyn crate::SubscriptionChanges,
    workspace: &WorkspaceId,
    id: &str,
) -> Result<Option<bool>, StoreError> {
    if !store.delete_api_key(workspace, id).await? {
        return Ok(None);
    }
    let announced = match changes.key_revoked(workspace, id).await {
        Ok(()) => true,
        Err(reason) => {
            tracing::warn!(workspace_id = %workspace, key_id = id, reason,
                "revoked an API key but could not tell the other courier processes; \
                 those that verified it lately accept it for up to a minute more");
            false
        }
    };
    Ok(Some(announced))
}

/// Whether `text` could be a key at all; anything else is refused without
/// a database round trip.
pub(crate) fn looks_like_key(text: &str) -> bool {
    text.len() == KEY_PREFIX.len() + 43
        && text.starts_with(KEY_PREFIX)
        && text[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert!(looks_like_key(&a), "{a}");
        assert!(!looks_like_key("ck_short"));
        assert_eq!(hash_key("abc").len(), 64);
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
