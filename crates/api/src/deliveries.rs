//! `/v1/workspaces/{ws}/deliveries...`: the delivery log (newest first,
//! cursor paginated, filtered by type, status and webhook), one delivery
//! with its attempts, and manual redelivery.
//!
//! Redelivery reopens the delivery in the ledger (status `retrying`, attempt
//! count kept) and then publishes a delivery message for attempt
//! `attempts + 1`, with confirms. The worker fences on attempt numbers, so
//! exactly one more attempt is made even if the message is duplicated; if
//! the publish fails the ledger change is undone.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use courier_model::{DeliveryId, EventType};
use courier_store::DeliveryFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::WorkspaceKey;
use crate::error::{Envelope, ErrorEnvelope};
use crate::extract::QueryParams;
use crate::openapi::{DeliveryStatusName, EventTypeName, WorkspaceIdParam};
use crate::service::{PageRequest, Service, status_filter, webhook_filter};
use crate::views::{AttemptView, DeliveryDetail, DeliveryView, Page};
use crate::{ApiError, ApiState};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Page size, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub first: Option<u32>,
    /// `pageInfo.endCursor` of the previous page (opaque).
    #[param(min_length = 1)]
    pub after: Option<String>,
    /// Only this event type.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<EventTypeName>)]
    pub event_type: Option<String>,
    /// Only this status.
    #[param(value_type = Option<DeliveryStatusName>)]
    pub status: Option<String>,
    /// Only deliveries to this webhook id (also after it was deleted).
    #[param(format = "uuid")]
    pub webhook: Option<String>,
}

impl DeliveryQuery {
    fn filter(&self) -> Result<DeliveryFilter, ApiError> {
        Ok(DeliveryFilter {
            event_type: self
                .event_type
                .as_deref()
                .map(|t| EventType::parse(t).map_err(|e| ApiError::invalid("type", e.to_string())))
                .transpose()?,
            status: self
                .status
                .as_deref()
                .map(|s| status_filter("status", s))
                .transpose()?,
            subscription: self
                .webhook
                .as_deref()
                .map(|w| webhook_filter("webhook", w))
                .transpose()?,
        })
    }
}

/// The delivery log, newest first. Pages are stable while new deliveries
/// arrive: they sort before every cursor already handed out.
#[utoipa::path(get, path = "/v1/workspaces/{ws}/deliveries", tag = "deliveries",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id"), DeliveryQuery),
    responses((status = 200, description = "a page of the log", body = Envelope<Page<DeliveryView>>),
        (status = 400, description = "an unknown query parameter, or one that is not of its type", body = ErrorEnvelope),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace for this key", body = ErrorEnvelope),
        (status = 422, description = "`first` out of 1-100, an `after` this API did not \
            hand out, or an unknown `type`, `status` or `webhook`", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list_deliveries(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path(ws): Path<String>,
    QueryParams(query): QueryParams<DeliveryQuery>,
) -> Result<Json<Envelope<Page<DeliveryView>>>, ApiError> {
    let ws = key.workspace(&ws)?;
    let page = PageRequest::parse(query.first, query.after.as_deref())?;
    let filter = query.filter()?;
    let log = Service::new(&state, &ws)
        .delivery_log(&filter, page)
        .await?;
    Ok(Envelope::ok(Page::from_log(log, DeliveryView::from)))
}

fn delivery_id(id: &str) -> Result<DeliveryId, ApiError> {
    DeliveryId::parse(id).map_err(|_| ApiError::NotFound("delivery"))
}

/// One delivery and all its attempts.
#[utoipa::path(get, path = "/v1/workspaces/{ws}/deliveries/{id}", tag = "deliveries",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id"),
        ("id" = String, Path, format = "uuid", description = "delivery id")),
    responses((status = 200, description = "the delivery and its attempts", body = Envelope<DeliveryDetail>),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace or delivery for this key", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get_delivery(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path((ws, id)): Path<(String, String)>,
) -> Result<Json<Envelope<DeliveryDetail>>, ApiError> {
    let ws = key.workspace(&ws)?;
    let (entry, attempts) = Service::new(&state, &ws)
        .delivery(delivery_id(&id)?)
        .await?;
    Ok(Envelope::ok(DeliveryDetail {
        delivery: entry.into(),
        attempt_log: attempts.into_iter().map(AttemptView::from).collect(),
    }))
}

/// The attempts of one delivery, first to last.
#[utoipa::path(get, path = "/v1/workspaces/{ws}/deliveries/{id}/attempts", tag = "deliveries",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id"),
        ("id" = String, Path, format = "uuid", description = "delivery id")),
    responses((status = 200, description = "its attempts, first to last", body = Envelope<Vec<AttemptView>>),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace or delivery for this key", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list_attempts(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path((ws, id)): Path<(String, String)>,
) -> Result<Json<Envelope<Vec<AttemptView>>>, ApiError> {
    let ws = key.workspace(&ws)?;
    let (_, attempts) = Service::new(&state, &ws)
        .delivery(delivery_id(&id)?)
        .await?;
    Ok(Envelope::ok(
        attempts.into_iter().map(AttemptView::from).collect(),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Redelivery {
    pub delivery_id: String,
    /// The attempt number the queued message carries.
    pub attempt: u32,
}

/// Queues one more attempt of a delivery, whatever its status.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/deliveries/{id}/retry", tag = "deliveries",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id"),
        ("id" = String, Path, format = "uuid", description = "delivery id")),
    responses((status = 202, description = "the next attempt is queued", body = Envelope<Redelivery>),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace or delivery for this key", body = ErrorEnvelope),
        (status = 409, description = "the delivery's webhook was deleted", body = ErrorEnvelope),
        (status = 503, description = "no broker connection, or the broker refused the \
            message; nothing changed, try again", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn retry_delivery(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path((ws, id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Envelope<Redelivery>>), ApiError> {
    let ws = key.workspace(&ws)?;
    let id = delivery_id(&id)?;
    let before = Service::new(&state, &ws).retry_delivery(id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Envelope::ok(Redelivery {
            delivery_id: id.to_string(),
            attempt: before.attempts + 1,
        }),
    ))
}
