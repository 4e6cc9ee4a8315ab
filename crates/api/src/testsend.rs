//! `POST .../webhooks/{id}/test`: sends signed test events to a webhook's
//! endpoint now and reports what happened. Test sends go through the
//! delivery client (same timeout, same private-network rule, same headers
//! and signatures, including both secrets during a rotation) but are not
//! recorded in the ledger: they are not deliveries of real events. Data the
//! caller gives is sent as its text, like a real event's.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use courier_model::{Event, EventData, EventType, Subscription};
use courier_webhook::SignedWebhook;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::WorkspaceKey;
use crate::error::{Envelope, ErrorEnvelope};
use crate::extract::JsonBody;
use crate::openapi::WorkspaceIdParam;
use crate::samples::sample_data;
use crate::service::Service;
use crate::webhooks_rest::webhook_id;
use crate::{ApiError, ApiState};

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// The event type to send (with a sample payload). Absent: one test per
    /// event type the webhook subscribes to.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::EventTypeName>)]
    pub event: Option<String>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::event_data_or_null)]
    pub data: Option<EventData>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestResult {
    #[schema(value_type = crate::openapi::EventTypeName)]
    pub event: String,
    pub url: String,
    /// Absent when no response arrived.
    pub response_status: Option<u16>,
    pub duration_ms: u64,
    /// Why the test failed, when it did.
    pub error: Option<String>,
    pub succeeded: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestReport {
    pub started_at: DateTime<Utc>,
    pub tests_run: usize,
    pub tests_succeeded: usize,
    pub tests_failed: usize,
    pub tests: Vec<TestResult>,
}

/// Sends test events to the webhook's endpoint now.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/webhooks/{id}/test", tag = "webhooks",
    params(("ws" = inline(WorkspaceIdParam), Path, description = "workspace id"),
        ("id" = String, Path, format = "uuid", description = "webhook id")),
    request_body(content = Option<TestRequest>, description = "may be empty: one test per event type the webhook subscribes to, with sample data"),
    responses((status = 200, description = "what each test send got; a failed send is \
            reported here, not as an error status", body = Envelope<TestReport>),
        (status = 400, description = "the body is not a JSON object of these fields", body = ErrorEnvelope),
        (status = 401, description = "no API key, or one courier does not know", body = ErrorEnvelope),
        (status = 404, description = "no such workspace or webhook for this key", body = ErrorEnvelope),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorEnvelope),
        (status = 422, description = "`event` is not an event type, or `data` is not an \
            object or nests deeper than 63 levels", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn test_webhook(
    key: WorkspaceKey,
    State(state): State<ApiState>,
    Path((ws, id)): Path<(String, String)>,
    JsonBody(input): JsonBody<TestRequest>,
) -> Result<Json<Envelope<TestReport>>, ApiError> {
    let ws = key.workspace(&ws)?;
    let event = input
        .event
        .as_deref()
        .map(|name| EventType::parse(name).map_err(|e| ApiError::invalid("event", e.to_string())))
        .transpose()?;
    let report = Service::new(&state, &ws)
        .test_send(webhook_id(&id)?, event, input.data)
        .await?;
    Ok(Envelope::ok(report))
}

/// Sends one test per type (the sample payload of each, or `data`) to
/// `sub`'s endpoint, one after the other: a test report is read by a
/// person, and a slow endpoint should not be hit with a burst.
pub(crate) async fn send_tests(
    state: &ApiState,
    sub: &Subscription,
    types: &[EventType],
    data: Option<&EventData>,
) -> Result<TestReport, ApiError> {
    let started_at = Utc::now();
    let mut tests = Vec::with_capacity(types.len());
    for &ty in types {
        let event = match data {
            Some(data) => Event::with_data(sub.workspace_id.clone(), ty, None, data.clone())?,
            None => Event::new(sub.workspace_id.clone(), ty, None, sample_data(ty))
                .map_err(ApiError::internal)?,
        };
        // A webhook-id of its own, so a receiver never takes a test for a
        // delivery it has seen.
        let msg_id = format!("msg_test_{}", uuid::Uuid::now_v7().simple());
        let webhook = SignedWebhook::new(sub, &msg_id, Utc::now(), event.webhook_body());
        let outcome = state.client().send(&sub.url, webhook).await;
        let (response_status, succeeded) = match outcome.result {
            courier_model::AttemptResult::Response { status } => {
                (Some(status), (200..300).contains(&status))
            }
            courier_model::AttemptResult::Failed { .. } => (None, false),
        };
        let error = match (&outcome.error, response_status) {
            (Some(e), _) => Some(e.clone()),
            (None, Some(s)) if !succeeded => Some(format!("endpoint answered HTTP {s}")),
            _ => None,
        };
        tests.push(TestResult {
            event: ty.as_str().to_owned(),
            url: sub.url.to_string(),
            response_status,
            duration_ms: u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
            error,
            succeeded,
        });
    }
    let tests_succeeded = tests.iter().filter(|t| t.succeeded).count();
    Ok(TestReport {
        started_at,
        tests_run: tests.len(),
        tests_succeeded,
        tests_failed: tests.len() - tests_succeeded,
        tests,
    })
}
