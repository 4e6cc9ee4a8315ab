//! `GET /v1/workspaces/{ws}/events/{id}`: what courier did with one event.
//!
//! "Why did my webhook not fire?" is the first question of every
//! integrator. The fan-out stage records every event it consumes, matched
//! or not, so this answers it: courier never received the event (404), or
//! received it at `receivedAt` and matched the webhooks its deliveries
//! name, none included.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use courier_model::EventData;
use courier_store::{DeliveryLogEntry, EventRecord};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::WorkspaceKey;
use crate::error::{Envelope, ErrorEnvelope};
use crate::openapi::{EventIdParam, WorkspaceIdParam};
use crate::service::Service;
use crate::views::DeliveryView;
use crate::{ApiError, ApiState};

/// An event as courier received it, with the deliveries it led to.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub id: String,
    pub workspace_id: String,
    #[serde(rename = "type")]
    #[schema(value_type = crate::openapi::EventTypeName)]
    pub event_type: String,
    pub channel: Option<String>,
    /// When the upstream says the event happened.
    pub occurred_at: DateTime<Utc>,
    /// When courier recorded it.
    pub received_at: DateTime<Utc>,
    #[schema(schema_with = crate::openapi::published_data)]
    pub data: EventData,
    /// How many webhooks it matched when it was received: one delivery
    /// each. Zero means no enabled webhook of the workspace listed its type
    /// (and its channel, when the webhook lists channels).
    pub matched: usize,
    /// Its deliveries, oldest first.
    pub deliveries: Vec<DeliveryView>,
}

impl EventView {
    pub fn new(record: EventRecord, deliveries: Vec<DeliveryLogEntry>) -> Self {
        let EventRecord { event, received_at } = record;
        Self {
            id: event.id.to_string(),
            workspace_id: event.workspace_id.to_string(),
            event_type: event.event_type.as_str().to_owned(),
            channel: event.channel.map(|c| c.as_str().to_owned()),
            occurred_at: event.occurred_at,
            received_at,
            data: event.data,
            matched: deliveries.len(),
            deliveries: deliveries.into_iter().map(DeliveryView::from).collect(),
        }
    }
}

/// One event: when courier received it, which webhooks it matched (none
/// included) and how each delivery went. 404 when courier never received
/// an event of that id in this workspace (or has not recorded it yet: it
/// is recorded once the fan-out has matched it).
#[utoipa::path(get, path = "/v1/workspaces/{ws}/events/{id}", tag = "events",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id"),
        ("id" = inline(EventIdParam), Path, description = "event id, as published")),
    responses((status = 200, description = "the event and its deliveries", body = Envelope<EventView>),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace for this key, or courier has not \
            recorded an event of this id in it", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get_event(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path((ws, id)): Path<(String, String)>,
) -> Result<Json<Envelope<EventView>>, ApiError> {
    let ws = key.workspace(&ws)?;
    let (record, deliveries) = Service::new(&state, &ws)
        .event(&id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    Ok(Envelope::ok(EventView::new(record, deliveries)))
}
