//! Who is calling: a workspace API key (`Authorization: Bearer ck_...`) or
//! the admin token from `api.admin_token`. Missing or unknown credentials
//! are 401; a key on another workspace's path is 404, indistinguishable
//! from a workspace that does not exist.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use courier_model::WorkspaceId;

use crate::{ApiError, ApiState, keys};

pub(crate) fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer <api key>".into()))?;
    // The scheme is case-insensitive (RFC 9110): `bearer` is `Bearer`.
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("Authorization must be Bearer <api key>".into()))
}

/// A caller holding a valid key of one workspace.
#[derive(Clone, Debug)]
pub struct WorkspaceKey {
    pub workspace: WorkspaceId,
}

impl WorkspaceKey {
    /// The workspace of the path, if this key may see it. Anything else,
    /// including a malformed id, is "not found".
    pub fn workspace(&self, path_workspace: &str) -> Result<WorkspaceId, ApiError> {
        if self.workspace.as_str() == path_workspace {
            Ok(self.workspace.clone())
        } else {
            Err(ApiError::NotFound("workspace"))
        }
    }

    /// The workspace of a key, or `Unauthorized` for anything that is not
    /// a key the ledger knows. Keys verified lately come from the cache
    /// (see [`crate::key_cache`]); unknown keys are never cached.
    pub async fn from_token(state: &ApiState, token: &str) -> Result<Self, ApiError> {
        let unknown = || ApiError::Unauthorized("invalid API key".into());
        if !keys::looks_like_key(token) {
            return Err(unknown());
        }
        let digest = keys::digest(token);
        let cache = state.key_cache();
        if let Some(workspace) = cache.get(&digest) {
            return Ok(Self { workspace });
        }
        let since = cache.epoch();
        let record = state
            .store()
            .find_api_key(&keys::hex(&digest))
            .await?
            .ok_or_else(unknown)?;
        cache.remember(since, digest, &record.id, record.workspace_id.clone());
        Ok(Self {
            workspace: record.workspace_id,
        })
    }
}

impl FromRequestParts<ApiState> for WorkspaceKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        Self::from_token(state, token).await
    }
}

/// A caller holding the admin token.
#[derive(Clone, Copy, Debug)]
pub struct Admin;

impl Admin {
    /// Whether `token` is the admin token; `Unauthorized` saying why not
    /// (including that none is configured).
    pub fn check(state: &ApiState, token: &str) -> Result<Self, ApiError> {
        let Some(expected) = state.options().admin_token.as_deref() else {
            return Err(ApiError::Unauthorized(
                "admin routes are closed: set api.admin_token to open them".into(),
            ));
        };
        if constant_time_eq(token.as_bytes(), expected.as_bytes()) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized("invalid admin token".into()))
        }
    }
}

impl FromRequestParts<ApiState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        Self::check(state, bearer(parts)?)
    }
}

/// The admin token, or a key of the workspace in the path: for routes an
/// operator may call for any workspace and a workspace for itself.
#[derive(Clone, Debug)]
pub enum AdminOrKey {
    Admin,
    Key(WorkspaceKey),
}

impl AdminOrKey {
    /// The workspace of the path, if this caller may act on it: any
    /// well-formed id for the admin (the route then finds out whether it
    /// exists), only its own for a key.
    pub fn workspace(&self, path_workspace: &str) -> Result<WorkspaceId, ApiError> {
        match self {
            Self::Admin => {
                WorkspaceId::parse(path_workspace).map_err(|_| ApiError::NotFound("workspace"))
            }
            Self::Key(key) => key.workspace(path_workspace),
        }
    }
}

impl FromRequestParts<ApiState> for AdminOrKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        if !keys::looks_like_key(token) {
            return Admin::check(state, token).map(|_| Self::Admin);
        }
        match WorkspaceKey::from_token(state, token).await {
            // An admin token may happen to be shaped like a key.
            Err(unknown @ ApiError::Unauthorized(_)) => Admin::check(state, token)
                .map(|_| Self::Admin)
                .map_err(|_| unknown),
            known => known.map(Self::Key),
        }
    }
}

/// The admin token is compared directly (not looked up by hash), so the
/// comparison must not reveal how long a matching prefix was.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(authorization: Option<&str>) -> Parts {
        let mut request = axum::http::Request::builder();
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer ck_1", "bearer ck_1", "BEARER  ck_1 "] {
            assert_eq!(bearer(&parts(Some(header))).unwrap(), "ck_1", "{header}");
        }
        for header in ["Basic ck_1", "Bearer", "Bearer ", "ck_1", "Bearerck_1"] {
            assert!(bearer(&parts(Some(header))).is_err(), "{header}");
        }
        assert!(bearer(&parts(None)).is_err());
    }
}
