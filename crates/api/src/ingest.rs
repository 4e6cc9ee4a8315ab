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
use crate::openapi::WorkspaceIdParam;
use crate::{ApiError, ApiState, MAX_INGEST_BODY_BYTES};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    #[serde(default)]
    #[schema(schema_with = crate::openapi::new_event_id)]
    pub id: Option<String>,
    #[serde(rename = "type")]
    #[schema(value_type = crate::openapi::IngestEventTypeName)]
    pub event_type: String,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::channel)]
    pub channel: Option<String>,
    /// When it happened (RFC 3339); now when absent.
    #[serde(default, rename = "occurredAt")]
    pub occurred_at: Option<DateTime<Utc>>,
    #[schema(schema_with = crate::openapi::event_data)]
    pub data: EventData,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// The event's id: as given, or the one generated.
    pub id: String,
}

/// Publishes an event; 202 once the broker confirmed it.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/events", tag = "events",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id")),
    request_body = NewEvent,
    responses((status = 202, description = "the broker has the event", body = Envelope<Accepted>),
        (status = 400, description = "the body is not a JSON object of these fields", body = ErrorEnvelope),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace for this key", body = ErrorEnvelope),
        (status = 413, description = "the body is larger than 260 KiB, or the event larger \
            than 256 KiB", body = ErrorEnvelope),
        (status = 422, description = "`id`, `type` or `channel` breaks its rule, or `data` \
            is not an object or nests deeper than 63 levels", body = ErrorEnvelope),
        (status = 503, description = "no broker connection, or the broker did not confirm \
            the event; try again (the same id delivers nothing twice)", body = ErrorEnvelope)),
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
    if event_type.is_operational() {
        return Err(ApiError::invalid(
            "type",
            format!(
                "{event_type} is published by courier itself about the workspace's webhooks; \
                 upstreams cannot send it"
            ),
        ));
    }
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
