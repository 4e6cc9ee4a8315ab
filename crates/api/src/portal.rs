//! `POST /v1/workspaces/{ws}/portal-links`: a single-use link that opens the
//! web console for one workspace only, for an operator to hand a customer
//! (or to put in an `<iframe>` of their own app).
//!
//! The link carries a random token (`cpl_` + 32 bytes); the ledger keeps
//! only its SHA-256 hash, when it expires and whether it was used. The
//! console redeems it once (an atomic update in the ledger, so two replicas
//! cannot both accept it) and opens a session scoped to the workspace,
//! read-only when the link says so. Only the admin token or a key of that
//! workspace can create one.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use courier_model::WorkspaceId;
use courier_store::PortalLink;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::AdminOrKey;
use crate::error::{Envelope, ErrorEnvelope};
use crate::extract::JsonBody;
use crate::keys::hash_key;
use crate::openapi::WorkspaceIdParam;
use crate::{ApiError, ApiState};

const TOKEN_PREFIX: &str = "cpl_";
/// Where the console redeems a link; the token follows.
pub const PORTAL_PATH: &str = "/console/portal/";

/// Where portal links point and how long they live.
#[derive(Clone, Debug)]
pub struct PortalOptions {
    /// The console's address as a customer's browser reaches it
    /// (`console.public_url`), e.g. `https://hooks.example.com`. `None`
    /// when the console is off: no link can be made.
    pub base_url: Option<String>,
    /// `console.portal_link_ttl`: how long a link may wait to be opened
    /// when the request does not say.
    pub default_ttl: chrono::Duration,
    /// The longest a request may ask for.
    pub max_ttl: chrono::Duration,
}

impl Default for PortalOptions {
    fn default() -> Self {
        Self {
            base_url: None,
            default_ttl: chrono::Duration::minutes(10),
            max_ttl: chrono::Duration::hours(24),
        }
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewPortalLink {
    /// The session it opens can look but not change anything. Default false.
    #[serde(default)]
    pub read_only: bool,
    /// How long the link may wait to be opened, in seconds: 1 to
    /// `console.portal_link_max_ttl_seconds` (86400 unless the deployment
    /// says otherwise); `console.portal_link_ttl_seconds` when absent.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 86400)]
    pub ttl_seconds: Option<u32>,
}

/// JSON has one kind of number: `600.0` is 600, an `integer` to JSON
/// Schema, and what Python's `timedelta.total_seconds()` gives. Refused
/// (400) only when it is not a whole number a `u32` holds.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    number
        .as_u64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f))
                .map(|f| f as u64)
        })
        .and_then(|n| u32::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid value: {number}, expected a whole number of seconds"
            ))
        })
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortalLinkView {
    /// Open once, before `expiresAt`, in a browser or an iframe of an
    /// origin listed in `console.frame_ancestors`.
    pub url: String,
    pub workspace_id: String,
    pub read_only: bool,
    pub expires_at: DateTime<Utc>,
}

/// Creates a single-use link to the web console for this workspace only
/// (admin token or a key of the workspace).
#[utoipa::path(post, path = "/v1/workspaces/{ws}/portal-links", tag = "portal",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id")),
    request_body(content = Option<NewPortalLink>, description = "may be empty: a link that may change things, with the default lifetime"),
    responses((status = 201, description = "the link, shown this once", body = Envelope<PortalLinkView>),
        (status = 400, description = "the body is not a JSON object of these fields", body = ErrorEnvelope),
        (status = 401, description = "no valid admin token or key", body = ErrorEnvelope),
        (status = 404, description = "no such workspace for this caller", body = ErrorEnvelope),
        (status = 409, description = "the console is turned off", body = ErrorEnvelope),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorEnvelope),
        (status = 422, description = "ttlSeconds out of range", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create_portal_link(
    caller: AdminOrKey,
    State(state): State<ApiState>,
    Path(ws): Path<String>,
    JsonBody(input): JsonBody<NewPortalLink>,
) -> Result<(StatusCode, Json<Envelope<PortalLinkView>>), ApiError> {
    let ws = caller.workspace(&ws)?;
    let link = create_link(&state, &ws, &input).await?;
    Ok((StatusCode::CREATED, Envelope::ok(link)))
}

/// Makes a link for `ws` (the caller may act on it) and records it; the
/// REST route and the console both come here.
pub async fn create_link(
    state: &ApiState,
    ws: &WorkspaceId,
    input: &NewPortalLink,
) -> Result<PortalLinkView, ApiError> {
    let options = &state.options().portal;
    let Some(base) = options.base_url.as_deref() else {
        return Err(ApiError::Conflict(
            "the web console is turned off (console.enabled = false): no portal to link to".into(),
        ));
    };
    let ttl = match input.ttl_seconds {
        None => options.default_ttl,
        Some(seconds) => {
            let ttl = chrono::Duration::seconds(i64::from(seconds));
            if seconds == 0 || ttl > options.max_ttl {
                return Err(ApiError::invalid(
                    "ttlSeconds",
                    format!(
                        "must be between 1 and {} (console.portal_link_max_ttl)",
                        options.max_ttl.num_seconds()
                    ),
                ));
            }
            ttl
        }
    };
    let now = Utc::now();
    let link = PortalLink {
        workspace_id: ws.clone(),
        read_only: input.read_only,
        created_at: now,
        expires_at: now + ttl,
    };
    let token = generate_token();
    state
        .store()
        .insert_portal_link(&hash_key(&token), &link)
        .await?;
    Ok(PortalLinkView {
        url: format!("{}{PORTAL_PATH}{token}", base.trim_end_matches('/')),
        workspace_id: ws.to_string(),
        read_only: link.read_only,
        expires_at: link.expires_at,
    })
}

fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes[..]);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The ledger's key for a token from a link: its hash, or `None` for text
/// that cannot be a token (refused without a database round trip).
pub fn token_hash(token: &str) -> Option<String> {
    let looks_right = token.len() == TOKEN_PREFIX.len() + 43
        && token.starts_with(TOKEN_PREFIX)
        && token[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    looks_right.then(|| hash_key(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_recognised_and_hashed() {
        let a = generate_token();
        assert_ne!(a, generate_token());
        assert_eq!(token_hash(&a), Some(hash_key(&a)));
        assert_eq!(token_hash("cpl_short"), None);
        assert_eq!(token_hash(&a.replace("cpl_", "ck_x")), None);
    }

    #[test]
    fn a_lifetime_is_any_whole_number() {
        let ttl = |json: &str| {
            serde_json::from_str::<NewPortalLink>(json)
                .map(|l| l.ttl_seconds)
                .map_err(|e| e.to_string())
        };
        assert_eq!(ttl(r#"{"ttlSeconds": 600}"#), Ok(Some(600)));
        assert_eq!(ttl(r#"{"ttlSeconds": 600.0}"#), Ok(Some(600)));
        assert_eq!(ttl(r#"{"ttlSeconds": 6e2}"#), Ok(Some(600)));
        assert_eq!(ttl(r#"{"ttlSeconds": null}"#), Ok(None));
        assert_eq!(ttl("{}"), Ok(None));
        for bad in ["600.5", "-1", "4294967296", "1e300", "\"600\""] {
            let err = ttl(&format!(r#"{{"ttlSeconds": {bad}}}"#)).unwrap_err();
            assert!(
                err.contains("ttl") || err.contains("invalid"),
                "{bad}: {err}"
            );
        }
    }
}
