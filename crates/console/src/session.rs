//! Sessions: who is signed in, to which workspace, and whether they may
//! change anything.
//!
//! A session is a row in the ledger (so every API replica knows it, and
//! signing out ends it everywhere) keyed by the SHA-256 of a random cookie
//! value; the cookie is HttpOnly, SameSite=Strict and Secure behind https,
//! scoped to `/console`, and dies with the session. Each session has its own
//! CSRF token, which every form carries in a hidden field and every POST is
//! checked against. The sign-in form, before any session exists, is
//! protected the same way by a short-lived cookie of its own (double
//! submit).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use courier_model::WorkspaceId;
use courier_store::{ConsoleSession, SessionKind};
use rand::RngExt;
use sha2::{Digest, Sha256};

use crate::form::FormData;
use crate::{Console, PageError};

pub(crate) const SESSION_COOKIE: &str = "courier_session";
pub(crate) const SIGN_IN_COOKIE: &str = "courier_sign_in";

/// 32 random bytes, base64url: cookie values and CSRF tokens.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes[..]);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hash(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The value of cookie `name` in the request, if sent.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for a console cookie: HttpOnly, for `/console`
/// only, SameSite=Strict, Secure behind https.
pub(crate) fn set_cookie(
    console: &Console,
    name: &str,
    value: &str,
    max_age: chrono::Duration,
) -> HeaderValue {
    cookie_header(
        name,
        value,
        max_age,
        console.options().secure_cookies,
        false,
    )
}

/// The cookie of a portal session. A portal shown in an `<iframe>` of
/// another site (an allowed frame ancestor) gets no SameSite=Strict cookie:
/// browsers neither set nor send those in a cross-site frame. There, and
/// only behind https, the session cookie is `SameSite=None; Secure;
/// Partitioned` (kept apart per embedding site, CHIPS), and the CSRF token
/// of every form is what stops cross-site posts.
pub(crate) fn portal_cookie(
    console: &Console,
    value: &str,
    max_age: chrono::Duration,
) -> HeaderValue {
    let options = console.options();
    let cross_site = options.secure_cookies && !options.frame_ancestors.is_empty();
    cookie_header(
        SESSION_COOKIE,
        value,
        max_age,
        options.secure_cookies,
        cross_site,
    )
}

fn cookie_header(
    name: &str,
    value: &str,
    max_age: chrono::Duration,
    secure: bool,
    cross_site: bool,
) -> HeaderValue {
    let same_site = if cross_site {
        "None; Partitioned"
    } else {
        "Strict"
    };
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite={same_site}; Max-Age={}{secure}",
        max_age.num_seconds().max(0)
    );
    HeaderValue::from_str(&cookie).expect("cookie values are base64url")
}

pub(crate) fn clear_cookie(console: &Console, name: &str) -> HeaderValue {
    set_cookie(console, name, "", chrono::Duration::zero())
}

/// Constant-time comparison for tokens a client sends back.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A signed-in person.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub record: ConsoleSession,
}

impl Session {
    /// Starts a session and returns it with the cookie that carries it.
    pub(crate) async fn start(
        console: &Console,
        kind: SessionKind,
        workspace: Option<WorkspaceId>,
        read_only: bool,
    ) -> Result<(Self, HeaderValue), PageError> {
        let value = random_token();
        let now = Utc::now();
        let ttl = console.options().session_ttl;
        let record = ConsoleSession {
            id_hash: hash(&value),
            kind,
            workspace_id: workspace,
            read_only,
            csrf_token: random_token(),
            created_at: now,
            expires_at: now + ttl,
        };
        let store = console.api().store();
        store.insert_console_session(&record).await?;
        // Expired sessions and links would otherwise stay forever; signing
        // in is rare enough to pay for tidying up.
        if let Err(e) = store.prune_console(now).await {
            tracing::warn!(error = %courier_model::error_chain(&e), "could not remove expired console sessions");
        }
        let cookie = if kind == SessionKind::Portal {
            portal_cookie(console, &value, ttl)
        } else {
            set_cookie(console, SESSION_COOKIE, &value, ttl)
        };
        Ok((Self { record }, cookie))
    }

    /// Ends the session of the request's cookie, if any.
    pub(crate) async fn end(console: &Console, headers: &HeaderMap) -> Result<(), PageError> {
        if let Some(value) = cookie(headers, SESSION_COOKIE) {
            console
                .api()
                .store()
                .delete_console_session(&hash(value))
                .await?;
        }
        Ok(())
    }

    pub(crate) fn is_admin(&self) -> bool {
        self.record.kind == SessionKind::Admin
    }

    pub(crate) fn is_portal(&self) -> bool {
        self.record.kind == SessionKind::Portal
    }

    pub(crate) fn csrf(&self) -> &str {
        &self.record.csrf_token
    }

    /// The workspace of the path, if this session may see it; anything
    /// else is "not found", exactly like a workspace that does not exist.
    pub(crate) async fn workspace(
        &self,
        console: &Console,
        path_workspace: &str,
    ) -> Result<WorkspaceId, PageError> {
        let id = WorkspaceId::parse(path_workspace).map_err(|_| PageError::NotFound)?;
        match &self.record.workspace_id {
            Some(own) if *own == id => Ok(id),
            Some(_) => Err(PageError::NotFound),
            None if self.is_admin() => match console.api().store().get_workspace(&id).await? {
                Some(_) => Ok(id),
                None => Err(PageError::NotFound),
            },
            None => Err(PageError::NotFound),
        }
    }

    /// What every state-changing form must pass: the session may change
    /// things, and the form carries the session's CSRF token.
    pub(crate) fn check_write(&self, form: &FormData) -> Result<(), PageError> {
        self.check_csrf(form)?;
        if self.record.read_only {
            return Err(PageError::Forbidden(
                "this session is read-only: it can look but not change anything",
            ));
        }
        Ok(())
    }

    /// The form carries the session's CSRF token.
    pub(crate) fn check_csrf(&self, form: &FormData) -> Result<(), PageError> {
        match form.get("csrf") {
            Some(token) if same_token(token, &self.record.csrf_token) => Ok(()),
            _ => Err(PageError::Csrf),
        }
    }
}

impl FromRequestParts<Console> for Session {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, PageError> {
        let Some(value) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(PageError::SignIn);
        };
        let record = console
            .api()
            .store()
            .find_console_session(&hash(value), Utc::now())
            .await?
            .ok_or(PageError::SignIn)?;
        Ok(Self { record })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; courier_session=xyz; b=2"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "courier_sessio"), None);
        assert_eq!(cookie(&headers, "b"), Some("2"));
    }

    #[test]
    fn cookies_are_strict_unless_a_portal_is_framed_cross_site() {
        let strict = cookie_header("s", "v", chrono::Duration::hours(1), false, false);
        assert_eq!(
            strict.to_str().unwrap(),
            "s=v; Path=/console; HttpOnly; SameSite=Strict; Max-Age=3600"
        );
        let secure = cookie_header("s", "v", chrono::Duration::hours(1), true, false);
        assert!(
            secure
                .to_str()
                .unwrap()
                .ends_with("SameSite=Strict; Max-Age=3600; Secure")
        );
        let framed = cookie_header("s", "v", chrono::Duration::zero(), true, true);
        assert_eq!(
            framed.to_str().unwrap(),
            "s=v; Path=/console; HttpOnly; SameSite=None; Partitioned; Max-Age=0; Secure"
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
        assert_ne!(random_token(), random_token());
    }
}
