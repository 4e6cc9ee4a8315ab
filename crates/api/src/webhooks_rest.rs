//! `/v1/workspaces/{ws}/webhooks...`: create, list, get, update, delete,
//! rotate the secret, replay failed deliveries, and the per-webhook event
//! view.
//!
//! The handlers read requests and shape answers; the reads and changes
//! themselves are the [`Service`]'s, shared with GraphQL (every change
//! reaches the workers from there, and applies to the next event). Deleting a webhook keeps its delivery history (the
//! workspace's delivery log still lists it); deliveries still waiting for an
//! attempt are marked `canceled` by the worker when that attempt comes up.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use courier_model::SubscriptionId;
use courier_store::DeliveryFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::WorkspaceKey;
use crate::error::{Envelope, ErrorEnvelope};
use crate::extract::{JsonBody, QueryParams};
use crate::openapi::WorkspaceIdParam;
use crate::service::{MAX_RECOVER, PageRequest, Service};
use crate::views::{
    Page, WebhookEventView, WebhookUpdated, WebhookView, decode_webhook_cursor, page_size,
};
use crate::webhooks::{NewWebhook, WebhookPatch};
use crate::{ApiError, ApiState};

pub(crate) fn webhook_id(id: &str) -> Result<SubscriptionId, ApiError> {
    SubscriptionId::parse(id).map_err(|_| ApiError::NotFound("webhook"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub first: Option<u32>,
    /// `pageInfo.endCursor` of the previous page (opaque).
    #[param(min_length = 1)]
    pub after: Option<String>,
}

/// Creates a webhook.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/webhooks", tag = "webhooks",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id")),
    request_body = NewWebhook,
    responses((status = 201, description = "the webhook, with its secret", body = Envelope<WebhookView>),
        (status = 400, description = "the body is not a JSON object of these fields", body = ErrorEnvelope),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace for this key", body = ErrorEnvelope),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorEnvelope),
        (status = 422, description = "a field breaks its rule (the first one, named in \
            `field`)", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create_webhook(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path(ws): Path<String>,
    JsonBody(input): JsonBody<NewWebhook>,
) -> Result<(StatusCode, Json<Envelope<WebhookView>>), ApiError> {
    let ws = key.workspace(&ws)?;
    let sub = Service::new(&state, &ws).create_webhook(input).await?;
    Ok((
        StatusCode::CREATED,
        Envelope::ok(WebhookView::new(&sub, true)),
    ))
}

/// Lists webhooks, oldest first.
#[utoipa::path(get, path = "/v1/workspaces/{ws}/webhooks", tag = "webhooks",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id"), PageQuery),
    responses((status = 200, description = "a page of webhooks, without their secrets", body = Envelope<Page<WebhookView>>),
        (status = 400, description = "an unknown query parameter, or one that is not of its type", body = ErrorEnvelope),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace for this key", body = ErrorEnvelope),
        (status = 422, description = "`first` out of 1-100, or an `after` this API did not \
            hand out", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list_webhooks(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path(ws): Path<String>,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<Json<Envelope<Page<WebhookView>>>, ApiError> {
    let ws = key.workspace(&ws)?;
    let limit = page_size(query.first)?;
    let after = query
        .after
        .as_deref()
        .map(decode_webhook_cursor)
        .transpose()?;
    let rows = Service::new(&state, &ws).webhooks(limit + 1, after).await?;
    Ok(Envelope::ok(Page::from_rows(
        rows,
        limit,
        |s| s.id.to_string(),
        |s| WebhookView::new(&s, false),
    )))
}

/// One webhook, with its secret.
#[utoipa::path(get, path = "/v1/workspaces/{ws}/webhooks/{id}", tag = "webhooks",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id"),
        ("id" = String, Path, format = "uuid", description = "webhook id")),
    responses((status = 200, description = "the webhook, with its secret", body = Envelope<WebhookView>),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace or webhook for this key", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get_webhook(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path((ws, id)): Path<(String, String)>,
) -> Result<Json<Envelope<WebhookView>>, ApiError> {
    let ws = key.workspace(&ws)?;
    let sub = Service::new(&state, &ws).webhook(webhook_id(&id)?).await?;
    Ok(Envelope::ok(WebhookView::new(&sub, true)))
}

/// Changes any field; absent fields stay as they are. `active: true` on a
/// disabled webhook replays the deliveries paused while it was off
/// (`replayPaused: false` cancels them instead); `statusChange` counts them.
#[utoipa::path(patch, path = "/v1/workspaces/{ws}/webhooks/{id}", tag = "webhooks",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id"),
        ("id" = String, Path, format = "uuid", description = "webhook id")),
    request_body(content = Option<WebhookPatch>, description = "the fields to change; may be empty"),
    responses((status = 200, description = "the webhook as changed, with its secret, and \
            `statusChange`: how many of its deliveries were paused, replayed or canceled", body = Envelope<WebhookUpdated>),
        (status = 400, description = "the body is not a JSON object of these fields", body = ErrorEnvelope),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace or webhook for this key", body = ErrorEnvelope),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorEnvelope),
        (status = 422, description = "a field breaks its rule (the first one, named in \
            `field`); nothing changed", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn update_webhook(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path((ws, id)): Path<(String, String)>,
    JsonBody(patch): JsonBody<WebhookPatch>,
) -> Result<Json<Envelope<WebhookUpdated>>, ApiError> {
    let ws = key.workspace(&ws)?;
    let (sub, status_change) = Service::new(&state, &ws)
        .update_webhook(webhook_id(&id)?, patch)
        .await?;
    Ok(Envelope::ok(WebhookUpdated {
        webhook: WebhookView::new(&sub, true),
        status_change,
    }))
}

/// Deletes a webhook: 204, no body. Its delivery history stays readable.
#[utoipa::path(delete, path = "/v1/workspaces/{ws}/webhooks/{id}", tag = "webhooks",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id"),
        ("id" = String, Path, format = "uuid", description = "webhook id")),
    responses((status = 204, description = "deleted"),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace or webhook for this key", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn delete_webhook(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path((ws, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let ws = key.workspace(&ws)?;
    Service::new(&state, &ws)
        .delete_webhook(webhook_id(&id)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    #[serde(default)]
    #[schema(schema_with = crate::openapi::rotated_secret)]
    pub secret: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotatedSecret {
    pub secret: String,
    /// Until then deliveries carry signatures with both the old and the new
    /// secret.
    pub previous_secret_expires_at: DateTime<Utc>,
}

/// Replaces the secret; the old one keeps signing for a grace period.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id"),
        ("id" = String, Path, format = "uuid", description = "webhook id")),
    request_body(content = Option<RotateSecret>, description = "may be empty: a generated secret"),
    responses((status = 200, description = "the new secret, and until when the old one \
            still signs", body = Envelope<RotatedSecret>),
        (status = 400, description = "the body is not a JSON object of these fields", body = ErrorEnvelope),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace or webhook for this key", body = ErrorEnvelope),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorEnvelope),
        (status = 422, description = "`secret` is not a valid secret", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn rotate_secret(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path((ws, id)): Path<(String, String)>,
    JsonBody(input): JsonBody<RotateSecret>,
) -> Result<Json<Envelope<RotatedSecret>>, ApiError> {
    let ws = key.workspace(&ws)?;
    let sub = Service::new(&state, &ws)
        .rotate_secret(webhook_id(&id)?, input.secret.as_deref())
        .await?;
    Ok(Envelope::ok(RotatedSecret {
        secret: sub.secret.expose().to_owned(),
        previous_secret_expires_at: sub
            .previous_secret_expires_at
            .expect("rotation sets the expiry"),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    /// Replay `dead` and `canceled` deliveries created at or after this
    /// time (RFC 3339).
    pub since: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recovered {
    /// Deliveries queued again, oldest first.
    pub delivery_ids: Vec<String>,
    /// True when more remain: call again with the same `since`.
    pub has_more: bool,
}

/// Queues the failed (dead or canceled) deliveries of a webhook again.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/webhooks/{id}/recover", tag = "webhooks",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id"),
        ("id" = String, Path, format = "uuid", description = "webhook id")),
    request_body = Recover,
    responses((status = 202, description = "the deliveries queued again", body = Envelope<Recovered>),
        (status = 400, description = "the body is not a JSON object of these fields", body = ErrorEnvelope),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace or webhook for this key", body = ErrorEnvelope),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorEnvelope),
        (status = 503, description = "no broker connection, or the broker refused a \
            message; the deliveries not queued are as they were, try again", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn recover(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path((ws, id)): Path<(String, String)>,
    JsonBody(input): JsonBody<Recover>,
) -> Result<(StatusCode, Json<Envelope<Recovered>>), ApiError> {
    let ws = key.workspace(&ws)?;
    let reopened = Service::new(&state, &ws)
        .recover(webhook_id(&id)?, input.since)
        .await?;
    let has_more = reopened.len() as u32 == MAX_RECOVER;
    let delivery_ids = reopened.iter().map(|d| d.id.to_string()).collect();
    Ok((
        StatusCode::ACCEPTED,
        Envelope::ok(Recovered {
            delivery_ids,
            has_more,
        }),
    ))
}

/// The events delivered to one webhook, newest first: status, response
/// code, latest attempt, number of attempts.
#[utoipa::path(get, path = "/v1/workspaces/{ws}/webhooks/{id}/events", tag = "webhooks",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id"),
        ("id" = String, Path, format = "uuid", description = "webhook id"), PageQuery),
    responses((status = 200, description = "a page of its events", body = Envelope<Page<WebhookEventView>>),
        (status = 400, description = "an unknown query parameter, or one that is not of its type", body = ErrorEnvelope),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace or webhook for this key", body = ErrorEnvelope),
        (status = 422, description = "`first` out of 1-100, or an `after` this API did not \
            hand out", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn webhook_events(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path((ws, id)): Path<(String, String)>,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<Json<Envelope<Page<WebhookEventView>>>, ApiError> {
    let ws = key.workspace(&ws)?;
    let service = Service::new(&state, &ws);
    let id = webhook_id(&id)?;
    service.webhook(id).await?;
    let page = PageRequest::parse(query.first, query.after.as_deref())?;
    let filter = DeliveryFilter {
        subscription: Some(id),
        ..DeliveryFilter::default()
    };
    let log = service.delivery_log(&filter, page).await?;
    Ok(Envelope::ok(Page::from_log(log, WebhookEventView::from)))
}
