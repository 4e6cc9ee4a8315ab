//! Admin routes, behind `api.admin_token`: creating workspaces (tenants) and
//! their API keys. Also the event-type catalogue, which needs no key.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use courier_model::{EventType, WorkspaceId};
use courier_store::Workspace;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Admin;
use crate::error::{Envelope, ErrorEnvelope};
use crate::extract::JsonBody;
use crate::keys::{self, ApiKeyError};
use crate::openapi::WorkspaceIdParam;
use crate::{ApiError, ApiState};

pub const MAX_WORKSPACE_NAME_LEN: usize = 200;

#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeView {
    /// The dotted name used in REST and on the wire (`order.created`).
    #[schema(value_type = crate::openapi::EventTypeName)]
    pub name: String,
    /// The GraphQL enum value (`ORDER_CREATED`).
    #[serde(rename = "graphqlName")]
    pub graphql_name: String,
    pub description: String,
}

/// Every event type a webhook can subscribe to.
#[utoipa::path(get, path = "/v1/event-types", tag = "event-types",
    responses((status = 200, description = "every event type, in catalogue order",
        body = Envelope<Vec<EventTypeView>>)))]
pub async fn event_types() -> Json<Envelope<Vec<EventTypeView>>> {
    Envelope::ok(
        EventType::ALL
            .iter()
            .map(|t| EventTypeView {
                name: t.as_str().to_owned(),
                graphql_name: t.graphql_name().to_owned(),
                description: t.description().to_owned(),
            })
            .collect(),
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    #[serde(default)]
    #[schema(schema_with = crate::openapi::new_workspace_id)]
    pub id: Option<String>,
    #[schema(schema_with = crate::openapi::workspace_name)]
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceView {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// Creates a workspace (admin token).
#[utoipa::path(post, path = "/v1/workspaces", tag = "admin",
    request_body = NewWorkspace,
    responses((status = 201, description = "the workspace", body = Envelope<WorkspaceView>),
        (status = 400, description = "the body is not a JSON object of these fields",
            body = ErrorEnvelope),
        (status = 401, description = "no admin token, a wrong one, or the admin routes \
            are closed (no `api.admin_token`)", body = ErrorEnvelope),
        (status = 409, description = "a workspace with this id exists", body = ErrorEnvelope),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorEnvelope),
        (status = 422, description = "`id` or `name` breaks its rule", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create_workspace(
    _admin: Admin,
    State(state): State<ApiState>,
    JsonBody(input): JsonBody<NewWorkspace>,
) -> Result<(StatusCode, Json<Envelope<WorkspaceView>>), ApiError> {
    let id = match input.id {
        Some(id) => WorkspaceId::parse(id).map_err(|e| ApiError::invalid("id", e.to_string()))?,
        None => WorkspaceId::generate(),
    };
    courier_model::validate_name("name", &input.name, MAX_WORKSPACE_NAME_LEN)?;
    let name = input.name.trim();
    let workspace = Workspace {
        id,
        name: name.to_owned(),
        created_at: Utc::now(),
    };
    state.store().create_workspace(&workspace).await?;
    Ok((
        StatusCode::CREATED,
        Envelope::ok(WorkspaceView {
            id: workspace.id.to_string(),
            name: workspace.name,
            created_at: workspace.created_at,
        }),
    ))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    #[serde(default)]
    #[schema(schema_with = crate::openapi::key_name)]
    pub name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyView {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    /// The key itself: shown this once, stored only as a hash.
    pub key: String,
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
}

/// Creates an API key for a workspace (admin token).
#[utoipa::path(post, path = "/v1/workspaces/{ws}/api-keys", tag = "admin",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id")),
    request_body(content = Option<NewApiKey>, description = "may be empty: a key named `default`"),
    responses((status = 201, description = "the key, shown this once", body = Envelope<ApiKeyView>),
        (status = 400, description = "the body is not a JSON object of these fields",
            body = ErrorEnvelope),
        (status = 401, description = "no admin token, a wrong one, or the admin routes \
            are closed (no `api.admin_token`)", body = ErrorEnvelope),
        (status = 404, description = "no such workspace", body = ErrorEnvelope),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorEnvelope),
        (status = 422, description = "`name` breaks its rule", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create_api_key(
    _admin: Admin,
    State(state): State<ApiState>,
    Path(ws): Path<String>,
    JsonBody(input): JsonBody<NewApiKey>,
) -> Result<(StatusCode, Json<Envelope<ApiKeyView>>), ApiError> {
    let ws = WorkspaceId::parse(ws).map_err(|_| ApiError::NotFound("workspace"))?;
    let (key, record) = keys::create_api_key(state.store(), &ws, input.name.as_deref())
        .await
        .map_err(|e| match e {
            ApiKeyError::InvalidName(invalid) => invalid.into(),
            ApiKeyError::WorkspaceNotFound => ApiError::NotFound("workspace"),
            ApiKeyError::Store(s) => s.into(),
        })?;
    Ok((
        StatusCode::CREATED,
        Envelope::ok(ApiKeyView {
            id: record.id,
            workspace_id: record.workspace_id.to_string(),
            name: record.name,
            key,
            key_prefix: record.key_prefix,
            created_at: record.created_at,
        }),
    ))
}

/// A key as listed: never the key itself, which only its creator saw.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySummary {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
}

/// The API keys of a workspace, oldest first (admin token).
#[utoipa::path(get, path = "/v1/workspaces/{ws}/api-keys", tag = "admin",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id")),
    responses((status = 200, description = "the workspace's keys (without the keys themselves)",
            body = Envelope<Vec<ApiKeySummary>>),
        (status = 401, description = "no admin token, a wrong one, or the admin routes \
            are closed (no `api.admin_token`)", body = ErrorEnvelope),
        (status = 404, description = "no such workspace", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list_api_keys(
    _admin: Admin,
    State(state): State<ApiState>,
    Path(ws): Path<String>,
) -> Result<Json<Envelope<Vec<ApiKeySummary>>>, ApiError> {
    let ws = existing_workspace(&state, &ws).await?;
    let keys = state.store().list_api_keys(&ws).await?;
    Ok(Envelope::ok(keys.into_iter().map(summary).collect()))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokedKey {
    pub id: String,
    /// Whether every running courier was told at once. When false (the
    /// broker could not be reached), processes that verified the key in
    /// the last minute may accept it until their cached answer expires,
    /// 60 s at most.
    pub announced: bool,
}

/// Revokes an API key (admin token): the ledger forgets it, and every
/// courier process is told at once to stop accepting it.
#[utoipa::path(delete, path = "/v1/workspaces/{ws}/api-keys/{id}", tag = "admin",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id"),
        ("id" = String, Path, description = "the key's id (`key_...`), not the key")),
    responses((status = 200, description = "revoked", body = Envelope<RevokedKey>),
        (status = 401, description = "no admin token, a wrong one, or the admin routes \
            are closed (no `api.admin_token`)", body = ErrorEnvelope),
        (status = 404, description = "no such workspace, or no such key in it",
            body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn revoke_api_key(
    _admin: Admin,
    State(state): State<ApiState>,
    Path((ws, id)): Path<(String, String)>,
) -> Result<Json<Envelope<RevokedKey>>, ApiError> {
    let ws = existing_workspace(&state, &ws).await?;
    let announced = keys::revoke_api_key(state.store(), state.changes(), &ws, &id)
        .await?
        .ok_or(ApiError::NotFound("api key"))?;
    // This process forgets it whatever the broker said.
    state.key_cache().revoked(&id);
    Ok(Envelope::ok(RevokedKey { id, announced }))
}

async fn existing_workspace(state: &ApiState, ws: &str) -> Result<WorkspaceId, ApiError> {
    let ws = WorkspaceId::parse(ws).map_err(|_| ApiError::NotFound("workspace"))?;
    match state.store().get_workspace(&ws).await? {
        Some(_) => Ok(ws),
        None => Err(ApiError::NotFound("workspace")),
    }
}

fn summary(record: courier_store::ApiKeyRecord) -> ApiKeySummary {
    ApiKeySummary {
        id: record.id,
        workspace_id: record.workspace_id.to_string(),
        name: record.name,
        key_prefix: record.key_prefix,
        created_at: record.created_at,
    }
}
