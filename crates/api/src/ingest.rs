//! `POST /v1/workspaces/{ws}/events`: HTTP ingest for upstreams that cannot
//! speak AMQP. The event is validated like one from the broker, published
//! with confirms, and only then answered with 202: an
//! accepted event is as durable as one published with courier-producer.
//! `data` is kept as the text of the request, so receivers get its bytes.
//! `POST /v1/workspaces/{ws}/events/batch` does the same for up to 1,000
//! events a request, for upstreams that emit in bulk. Both publish through
//! [`crate::groups`]: the events of requests that arrive together travel to
//! the fan-out queue as one message.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use courier_model::{Channel, Event, EventData, EventId, EventType, WorkspaceId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::WorkspaceKey;
use crate::error::{Envelope, ErrorEnvelope};
use crate::extract::JsonBody;
use crate::groups::NotPublished;
use crate::openapi::WorkspaceIdParam;
use crate::{ApiError, ApiState, MAX_BATCH_BODY_BYTES, MAX_INGEST_BODY_BYTES};

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
    let (event, body) = accept(&ws, input)?;
    let id = event.id;
    state
        .groups()
        .publish(id.clone(), body)
        .await
        .map_err(unavailable)?;
    Ok((
        StatusCode::ACCEPTED,
        Envelope::ok(Accepted { id: id.into() }),
    ))
}

/// Checks one event as the broker path would and encodes it.
fn accept(ws: &WorkspaceId, input: NewEvent) -> Result<(Event, Vec<u8>), ApiError> {
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
        workspace_id: ws.clone(),
        event_type,
        channel,
        occurred_at: input.occurred_at.unwrap_or_else(Utc::now),
        data: input.data,
    };
    let body = event.to_vec()?;
    Ok((event, body))
}

/// 503, and what to do about it.
fn unavailable(reason: NotPublished) -> ApiError {
    ApiError::Unavailable(match reason {
        NotPublished::NoBroker => "no broker connection right now; try again".into(),
        NotPublished::NotConfirmed => "the broker did not accept the event; try again".into(),
    })
}

/// Events a batch may hold.
pub const MAX_BATCH_EVENTS: usize = 1000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEvents {
    /// 1 to 1,000 events, each as `POST /v1/workspaces/{ws}/events` takes it.
    #[schema(min_items = 1, max_items = 1000)]
    pub events: Vec<NewEvent>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    /// Events the broker confirmed.
    pub accepted: usize,
    /// Events it did not (then the answer is 503).
    pub failed: usize,
    /// One per event, in the order sent.
    pub events: Vec<BatchEventResult>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchEventResult {
    /// The event's id: as given, or the one generated.
    pub id: String,
    /// Whether the broker confirmed it.
    pub accepted: bool,
}

/// The batch route's answer: its results, and an error when some events
/// were not accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchEnvelope {
    pub data: BatchResult,
    #[schema(nullable)]
    pub error: Option<crate::error::ErrorBody>,
}

/// Publishes up to 1,000 events in one request; 202 once the broker
/// confirmed every one. All or nothing is checked: one invalid event
/// refuses the batch, naming it (`events[3].type`), and publishes nothing.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/events/batch", tag = "events",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id")),
    request_body = NewEvents,
    responses((status = 202, description = "the broker has every event", body = BatchEnvelope),
        (status = 400, description = "the body is not a JSON object of these fields", body = ErrorEnvelope),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace for this key", body = ErrorEnvelope),
        (status = 413, description = "the body is larger than 8 MiB, or an event larger \
            than 256 KiB", body = ErrorEnvelope),
        (status = 422, description = "no events or more than 1,000, or an event breaks a \
            rule (`field` names it, e.g. `events[3].type`); nothing was published",
            body = ErrorEnvelope),
        (status = 503, description = "no broker connection, or the broker did not confirm \
            some events: `data.events` says which were accepted, `error` why the others \
            were not; send those again with their ids, which deliver nothing twice",
            body = BatchEnvelope)),
    security(("bearer" = [])))]
pub async fn ingest_batch(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path(ws): Path<String>,
    JsonBody(input): JsonBody<NewEvents, MAX_BATCH_BODY_BYTES>,
) -> Result<(StatusCode, Json<BatchEnvelope>), ApiError> {
    let ws = key.workspace(&ws)?;
    if input.events.is_empty() || input.events.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::invalid(
            "events",
            format!(
                "a batch holds 1 to {MAX_BATCH_EVENTS} events, not {}; split larger ones",
                input.events.len()
            ),
        ));
    }
    let events = input
        .events
        .into_iter()
        .enumerate()
        .map(|(i, event)| accept(&ws, event).map_err(|e| in_batch(i, e)))
        .collect::<Result<Vec<_>, _>>()?;
    // Every event is queued before any answer is awaited: the batch goes
    // out in as few groups as their limits allow.
    let groups = state.groups();
    let mut ids = Vec::with_capacity(events.len());
    let mut answers = Vec::with_capacity(events.len());
    for (event, body) in events {
        answers.push(groups.submit(event.id.clone(), body).await);
        ids.push(event.id);
    }
    let confirmed: Vec<Result<(), NotPublished>> = futures_util::future::join_all(
        answers
            .into_iter()
            .map(|answer| async { answer.await.unwrap_or(Err(NotPublished::NotConfirmed)) }),
    )
    .await;
    let unavailable = confirmed
        .contains(&Err(NotPublished::NoBroker))
        .then(|| unavailable(NotPublished::NoBroker));
    let results: Vec<BatchEventResult> = ids
        .iter()
        .zip(&confirmed)
        .map(|(id, confirmed)| BatchEventResult {
            id: id.to_string(),
            accepted: confirmed.is_ok(),
        })
        .collect();
    let accepted = results.iter().filter(|r| r.accepted).count();
    let failed = results.len() - accepted;
    let data = BatchResult {
        accepted,
        failed,
        events: results,
    };
    if failed == 0 {
        return Ok((
            StatusCode::ACCEPTED,
            Json(BatchEnvelope { data, error: None }),
        ));
    }
    let error = unavailable.unwrap_or_else(|| {
        ApiError::Unavailable(format!(
            "the broker did not confirm {failed} of {} events; send those again with the \
             ids in data.events (an id delivers nothing twice)",
            data.events.len()
        ))
    });
    Ok((
        StatusCode::SERVICE_UNAVAILABLE,
        Json(BatchEnvelope {
            error: Some(error.body()),
            data,
        }),
    ))
}

/// An event's error, its field named by its place in the batch.
fn in_batch(index: usize, error: ApiError) -> ApiError {
    let place = |field: Option<String>| {
        Some(match field {
            Some(field) => format!("events[{index}].{field}"),
            None => format!("events[{index}]"),
        })
    };
    match error {
        ApiError::Invalid { field, message } => ApiError::Invalid {
            field: place(field),
            message,
        },
        ApiError::BadRequest { field, message } => ApiError::BadRequest {
            field: place(field),
            message,
        },
        other => other,
    }
}
