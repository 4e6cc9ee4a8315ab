//! `POST /v1/workspaces/{ws}/events`: HTTP ingest for upstreams that cannot
//! speak AMQP. The event is validated like one from the broker, published to
//! the events exchange with confirms, and only then answered with 202: an
//! accepted event is as durable as one published with courier-producer.
//! `data` is kept as the text of the request, so receivers get its bytes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use courier_model::{Channel, Event, EventData, EventId, EventType};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::WorkspaceKey;
use crate::error::{Envelope, ErrorEnvelope};
use crate::extract::JsonBody;
use crate::{ApiError, ApiState, MAX_INGEST_BODY_BYTES};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// The upstream's id for the event; generated (`evt_...`) when absent.
    /// Publishing the same id again delivers nothing twice.
    #[serde(default)]
    pub id: Option<String>,
    /// Event type (`order.created`).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The order channel the event came from.
    #[serde(default)]
    pub channel: Option<String>,
    /// When it happened (RFC 3339); now when absent.
    #[serde(default, rename = "occurredAt")]
    pub occurred_at: Option<DateTime<Utc>>,
    /// The payload: a JSON object, delivered byte for byte as sent.
    #[schema(value_type = Object)]
    pub data: EventData,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub id: String,
}

/// Publishes an event; 202 once the broker confirmed it.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/events", tag = "events",
    params(("ws" = String, Path, description = "workspace id")),
    request_body = NewEvent,
    responses((status = 202, body = Envelope<Accepted>),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn ingest(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path(ws): Path<String>,
    JsonBody(input): JsonBody<NewEvent, MAX_INGEST_BODY_BYTES>,
) -> Result<(StatusCode, Json<Envelope<Accepted>>), ApiError> {
    let ws = key.workspace(&ws)?;
    let event_type = EventType::parse(&input.event_type)
        .map_err(|e| ApiError::invalid("type", e.to_string()))?;
    let channel = input.channel.as_deref().map(Channel::parse).transpose()?;
    let id = match input.id {
        Some(id) => EventId::parse(id).map_err(|e| ApiError::invalid("id", e.to_string()))?,
        None => EventId::generate(),
    };
    input.data.validate()?;
    let event = Event {
        id,
        workspace_id: ws,
        event_type,
        channel,
        occurred_at: input.occurred_at.unwrap_or_else(Utc::now),
        data: input.data,
    };
    let body = event.to_vec()?;
    let broker = state.broker()?;
    broker
        .publisher
        .publish_encoded(&event, &body)
        .await
        .map_err(|e| {
            tracing::error!(event_id = %event.id, error = %courier_model::error_chain(&e), "ingest publish failed");
            ApiError::Unavailable("the broker did not accept the event; try again".into())
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Envelope::ok(Accepted {
            id: event.id.to_string(),
        }),
    ))
}
