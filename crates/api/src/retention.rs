//! `GET` and `PUT /v1/workspaces/{ws}/retention`: how long the ledger keeps
//! a workspace's finished deliveries, and its own override of the
//! deployment's `retention.succeeded_days` and `retention.failed_days`.
//!
//! The admin token or a key of the workspace may read and set it, as
//! portal links: a workspace may keep its history shorter (privacy) or
//! longer, up to `retention.max_days`, which the operator sets. GraphQL's
//! `retention` and `retentionUpdate` come here too.

use axum::Json;
use axum::extract::{Path, State};
use chrono::Utc;
use courier_model::{RetentionOverride, WorkspaceId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::AdminOrKey;
use crate::error::{Envelope, ErrorEnvelope};
use crate::extract::JsonBody;
use crate::openapi::WorkspaceIdParam;
use crate::webhooks::Whole;
use crate::{ApiError, ApiState};

/// Days, as applied or as set for the deployment.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionDaysView {
    /// Days a succeeded delivery is kept after it finished (and an event
    /// that matched no webhook after it was received).
    pub succeeded_days: u32,
    /// Days a dead or canceled delivery is kept after it finished.
    pub failed_days: u32,
}

/// A workspace's own values; null takes the deployment's.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionOverrideView {
    pub succeeded_days: Option<u32>,
    pub failed_days: Option<u32>,
}

/// How long the ledger keeps a workspace's finished deliveries. An event
/// goes, with its deliveries and their attempts, once every delivery of
/// it finished (succeeded, dead or canceled) and is older than this since
/// it did; nothing pending, retrying or paused ever goes.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionView {
    /// What applies: the workspace's own values where it has them, the
    /// deployment's otherwise.
    pub effective: RetentionDaysView,
    /// The workspace's own values.
    #[serde(rename = "override")]
    pub own: RetentionOverrideView,
    /// The deployment's (`retention.succeeded_days`, `retention.failed_days`).
    pub defaults: RetentionDaysView,
    /// The most an override may ask for (`retention.max_days`).
    pub max_days: u32,
}

/// A workspace's own retention, replacing what it had. A value left out
/// or null takes the deployment's; `{}` goes back to the deployment's
/// entirely.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetentionInput {
    #[serde(default)]
    #[schema(schema_with = crate::openapi::retention_days)]
    pub succeeded_days: Option<Whole>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::retention_days)]
    pub failed_days: Option<Whole>,
}

fn view(state: &ApiState, own: Option<RetentionOverride>) -> RetentionView {
    let policy = state.options().retention;
    let effective = policy.effective(own.as_ref());
    let own = own.unwrap_or_default();
    RetentionView {
        effective: RetentionDaysView {
            succeeded_days: effective.succeeded,
            failed_days: effective.failed,
        },
        own: RetentionOverrideView {
            succeeded_days: own.succeeded,
            failed_days: own.failed,
        },
        defaults: RetentionDaysView {
            succeeded_days: policy.defaults.succeeded,
            failed_days: policy.defaults.failed,
        },
        max_days: policy.max_days,
    }
}

/// The workspace's retention, if it exists.
pub async fn get(state: &ApiState, ws: &WorkspaceId) -> Result<RetentionView, ApiError> {
    if state.store().get_workspace(ws).await?.is_none() {
        return Err(ApiError::NotFound("workspace"));
    }
    let own = state.store().retention_override(ws).await?;
    Ok(view(state, own))
}

/// Replaces the workspace's override after checking it; the fields are
/// refused by the names given (REST's camelCase, GraphQL's too).
pub async fn set(
    state: &ApiState,
    ws: &WorkspaceId,
    succeeded_days: Option<i64>,
    failed_days: Option<i64>,
) -> Result<RetentionView, ApiError> {
    if state.store().get_workspace(ws).await?.is_none() {
        return Err(ApiError::NotFound("workspace"));
    }
    let max = state.options().retention.max_days;
    let days = |field: &'static str, value: Option<i64>| -> Result<Option<u32>, ApiError> {
        value
            .map(|v| {
                u32::try_from(v)
                    .ok()
                    .filter(|d| (1..=max).contains(d))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            field,
                            format!(
                                "must be between 1 and {max} days (retention.max_days), or \
                                 null for the deployment's"
                            ),
                        )
                    })
            })
            .transpose()
    };
    let own = RetentionOverride {
        succeeded: days("succeededDays", succeeded_days)?,
        failed: days("failedDays", failed_days)?,
    };
    state
        .store()
        .set_retention_override(ws, &own, Utc::now())
        .await
        .map_err(|e| match e {
            courier_store::StoreError::NotFound { .. } => ApiError::NotFound("workspace"),
            other => other.into(),
        })?;
    Ok(view(state, (!own.is_empty()).then_some(own)))
}

/// How long the ledger keeps this workspace's finished deliveries (admin
/// token or a key of the workspace).
#[utoipa::path(get, path = "/v1/workspaces/{ws}/retention", tag = "retention",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id")),
    responses((status = 200, description = "what applies, the workspace's own values and the \
            deployment's", body = Envelope<RetentionView>),
        (status = 401, description = "no valid admin token or key", body = ErrorEnvelope),
        (status = 404, description = "no such workspace for this caller", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get_retention(
    caller: AdminOrKey,
    State(state): State<ApiState>,
    Path(ws): Path<String>,
) -> Result<Json<Envelope<RetentionView>>, ApiError> {
    let ws = caller.workspace(&ws)?;
    Ok(Envelope::ok(get(&state, &ws).await?))
}

/// Sets this workspace's own retention, replacing what it had (admin
/// token or a key of the workspace). Pruning uses it from its next round.
#[utoipa::path(put, path = "/v1/workspaces/{ws}/retention", tag = "retention",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id")),
    request_body(content = Option<RetentionInput>, description = "may be empty: back to the \
        deployment's"),
    responses((status = 200, description = "the retention that applies now",
            body = Envelope<RetentionView>),
        (status = 400, description = "the body is not a JSON object of these fields",
            body = ErrorEnvelope),
        (status = 401, description = "no valid admin token or key", body = ErrorEnvelope),
        (status = 404, description = "no such workspace for this caller", body = ErrorEnvelope),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorEnvelope),
        (status = 422, description = "`succeededDays` or `failedDays` out of range",
            body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn put_retention(
    caller: AdminOrKey,
    State(state): State<ApiState>,
    Path(ws): Path<String>,
    JsonBody(input): JsonBody<RetentionInput>,
) -> Result<Json<Envelope<RetentionView>>, ApiError> {
    let ws = caller.workspace(&ws)?;
    let view = set(
        &state,
        &ws,
        input.succeeded_days.map(|w| w.0),
        input.failed_days.map(|w| w.0),
    )
    .await?;
    Ok(Envelope::ok(view))
}
