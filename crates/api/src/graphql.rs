//! GraphQL at `/graphql`, shaped like the operations existing webhook
//! clients already send: `webhookCreate(input: {url, type, status})`,
//! `webhookUpdate(input: {id, ...})`, `webhookDelete`, `webhooks`, and
//! `webhookLogs(first, after, filter: {type})` as a Relay connection.
//!
//! These clients know one event type per webhook: `type` is the first of a
//! webhook's types (courier webhooks may list several; `types` lists all),
//! and setting `type` replaces the list with that one type. Enum values are
//! the SCREAMING_SNAKE forms of the event types; status is ENABLED or
//! DISABLED.
//!
//! Authentication and tenancy are the REST API's: the bearer key is checked
//! before the query runs (401 without a valid key), and every resolver works
//! in that key's workspace only, so another workspace's ids are simply not
//! found. Reads and changes go through the REST API's [`Service`]: the same
//! validation, the same change notice, the same delivery-log query.
//!
//! With `api.graphql_explorer` on, `GET /graphql` is a GraphiQL page for
//! people ([`explorer`]); off, GET is refused with 405 as for any method
//! but POST.

mod explorer;

use async_graphql::{
    Context, EmptySubscription, Enum, ErrorExtensions, ID, InputObject, MaybeUndefined, Object,
    Schema, SimpleObject,
};
use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use courier_model::{DisabledReason, EventType, Subscription, SubscriptionId, SubscriptionStatus};
use courier_store::{DeliveryFilter, DeliveryLogEntry, EventRecord};
use serde_json::json;

use crate::auth::{WorkspaceKey, bearer};
use crate::extract::read_body;
use crate::service::{PageRequest, Service, status_filter, webhook_filter};
use crate::views::encode_delivery_cursor;
use crate::webhooks::{HeaderList, NewWebhook, RateLimitInput, StatusChange, WebhookPatch};
use crate::{ApiError, ApiState, MAX_BODY_BYTES};

/// Event types as GraphQL enum values (`ORDER_CREATED`); kept in step with
/// the model's closed set by a unit test below.
#[derive(Enum, Copy, Clone, Debug, Eq, PartialEq)]
#[graphql(name = "WebhookType")]
pub enum GqlEventType {
    OrderCreated,
    OrderUpdated,
    OrderStatusChanged,
    OrderCanceled,
    OrderDeleted,
    ShipmentCreated,
    ShipmentCanceled,
    ParcelStatusChanged,
    RefundRequested,
    IntegrationUpdated,
    WebhookTest,
    WebhookFailing,
    WebhookDisabled,
    WebhookRecovered,
}

impl From<GqlEventType> for EventType {
    fn from(t: GqlEventType) -> Self {
        match t {
            GqlEventType::OrderCreated => EventType::OrderCreated,
            GqlEventType::OrderUpdated => EventType::OrderUpdated,
            GqlEventType::OrderStatusChanged => EventType::OrderStatusChanged,
            GqlEventType::OrderCanceled => EventType::OrderCanceled,
            GqlEventType::OrderDeleted => EventType::OrderDeleted,
            GqlEventType::ShipmentCreated => EventType::ShipmentCreated,
            GqlEventType::ShipmentCanceled => EventType::ShipmentCanceled,
            GqlEventType::ParcelStatusChanged => EventType::ParcelStatusChanged,
            GqlEventType::RefundRequested => EventType::RefundRequested,
            GqlEventType::IntegrationUpdated => EventType::IntegrationUpdated,
            GqlEventType::WebhookTest => EventType::WebhookTest,
            GqlEventType::WebhookFailing => EventType::WebhookFailing,
            GqlEventType::WebhookDisabled => EventType::WebhookDisabled,
            GqlEventType::WebhookRecovered => EventType::WebhookRecovered,
        }
    }
}

impl From<EventType> for GqlEventType {
    fn from(t: EventType) -> Self {
        match t {
            EventType::OrderCreated => Self::OrderCreated,
            EventType::OrderUpdated => Self::OrderUpdated,
            EventType::OrderStatusChanged => Self::OrderStatusChanged,
            EventType::OrderCanceled => Self::OrderCanceled,
            EventType::OrderDeleted => Self::OrderDeleted,
            EventType::ShipmentCreated => Self::ShipmentCreated,
            EventType::ShipmentCanceled => Self::ShipmentCanceled,
            EventType::ParcelStatusChanged => Self::ParcelStatusChanged,
            EventType::RefundRequested => Self::RefundRequested,
            EventType::IntegrationUpdated => Self::IntegrationUpdated,
            EventType::WebhookTest => Self::WebhookTest,
            EventType::WebhookFailing => Self::WebhookFailing,
            EventType::WebhookDisabled => Self::WebhookDisabled,
            EventType::WebhookRecovered => Self::WebhookRecovered,
        }
    }
}

#[derive(Enum, Copy, Clone, Debug, Eq, PartialEq)]
pub enum WebhookStatus {
    Enabled,
    Disabled,
}

impl WebhookStatus {
    fn active(self) -> bool {
        self == WebhookStatus::Enabled
    }
}

/// The REST error, as a GraphQL error with `extensions.code` (and
/// `extensions.field` for validation errors).
fn gql_error(error: ApiError) -> async_graphql::Error {
    if let ApiError::Internal(source) = &error {
        tracing::error!(error = %courier_model::error_chain(source.as_ref()), "GraphQL request failed");
    }
    let body = error.body();
    async_graphql::Error::new(body.message.clone()).extend_with(|_, e| {
        e.set("code", body.code.to_uppercase());
        if let Some(field) = &body.field {
            e.set("field", field.as_str());
        }
    })
}

type GqlResult<T> = async_graphql::Result<T>;

/// What the caller's key may see and change: its workspace, through the
/// service the REST handlers use too.
fn service<'a>(ctx: &'a Context<'_>) -> Service<'a> {
    let key = ctx.data_unchecked::<WorkspaceKey>();
    Service::new(ctx.data_unchecked::<ApiState>(), &key.workspace)
}

fn webhook_id(id: &ID) -> GqlResult<SubscriptionId> {
    SubscriptionId::parse(id.as_str()).map_err(|_| gql_error(ApiError::NotFound("webhook")))
}

/// Why a webhook is disabled.
#[derive(Enum, Copy, Clone, Debug, Eq, PartialEq)]
#[graphql(name = "WebhookDisabledReason")]
pub enum GqlDisabledReason {
    /// Switched off through the API, GraphQL, the console or the CLI.
    Manual,
    /// Its endpoint kept failing for `endpoints.disable_after`.
    Failing,
    /// Its endpoint answered 410 Gone.
    Gone,
}

impl From<DisabledReason> for GqlDisabledReason {
    fn from(r: DisabledReason) -> Self {
        match r {
            DisabledReason::Manual => Self::Manual,
            DisabledReason::Failing => Self::Failing,
            DisabledReason::Gone => Self::Gone,
        }
    }
}

/// One extra request header.
#[derive(SimpleObject)]
pub struct WebhookHeader {
    name: String,
    value: String,
}

#[derive(InputObject)]
pub struct WebhookHeaderInput {
    name: String,
    value: String,
}

fn header_list(headers: Vec<WebhookHeaderInput>) -> HeaderList {
    HeaderList(headers.into_iter().map(|h| (h.name, h.value)).collect())
}

/// A request-rate limit.
#[derive(SimpleObject)]
#[graphql(name = "RateLimit")]
pub struct GqlRateLimit {
    /// Requests per second on average, across every worker.
    per_second: i32,
    /// Requests sent at once after a quiet spell.
    burst: i32,
}

#[derive(InputObject)]
#[graphql(name = "RateLimitInput")]
pub struct GqlRateLimitInput {
    /// 1-10000.
    per_second: i32,
    /// 1-10000; perSecond when absent.
    burst: Option<i32>,
}

impl From<GqlRateLimitInput> for RateLimitInput {
    fn from(r: GqlRateLimitInput) -> Self {
        Self {
            per_second: r.per_second.into(),
            burst: r.burst.map(Into::into),
        }
    }
}

/// What `webhookUpdate` did to the webhook's deliveries.
#[derive(SimpleObject)]
pub struct WebhookStatusChange {
    /// Deliveries paused because it was disabled.
    paused: i32,
    /// Paused deliveries sent again because it was enabled.
    replayed: i32,
    /// Paused deliveries canceled because it was enabled with
    /// `replayPaused: false`.
    canceled: i32,
}

fn count(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

pub struct Webhook {
    sub: Subscription,
    /// Set on `webhookUpdate`'s answer.
    change: Option<StatusChange>,
}

impl Webhook {
    fn of(sub: Subscription) -> Self {
        Self { sub, change: None }
    }
}

#[Object]
impl Webhook {
    async fn id(&self) -> ID {
        ID(self.sub.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.sub.name
    }
    async fn url(&self) -> &str {
        self.sub.url.as_str()
    }
    /// The webhook's (first) event type.
    #[graphql(name = "type")]
    async fn event_type(&self) -> Option<GqlEventType> {
        self.sub.event_types.first().copied().map(Into::into)
    }
    /// Every event type the webhook receives.
    async fn types(&self) -> Vec<GqlEventType> {
        self.sub
            .event_types
            .iter()
            .copied()
            .map(Into::into)
            .collect()
    }
    async fn channels(&self) -> Vec<&str> {
        self.sub.channels.iter().map(|c| c.as_str()).collect()
    }
    async fn status(&self) -> WebhookStatus {
        match self.sub.status {
            SubscriptionStatus::Enabled => WebhookStatus::Enabled,
            SubscriptionStatus::Disabled => WebhookStatus::Disabled,
        }
    }
    async fn secret(&self) -> &str {
        self.sub.secret.expose()
    }
    async fn created_at(&self) -> String {
        self.sub.created_at.to_rfc3339()
    }
    async fn updated_at(&self) -> String {
        self.sub.updated_at.to_rfc3339()
    }
    /// Why it is disabled; null while enabled.
    async fn disabled_reason(&self) -> Option<GqlDisabledReason> {
        self.sub.disabled.map(|d| d.reason.into())
    }
    /// Since when it is disabled (RFC 3339); null while enabled.
    async fn disabled_at(&self) -> Option<String> {
        self.sub.disabled.map(|d| d.at.to_rfc3339())
    }
    /// Free text for the people who manage it.
    async fn description(&self) -> Option<&str> {
        self.sub.settings.description.as_deref()
    }
    /// Its requests' timeout in milliseconds; null: the deployment's.
    async fn timeout_ms(&self) -> Option<i32> {
        self.sub.settings.timeout_ms.map(|t| count(t.into()))
    }
    /// Attempts before a delivery is dead; null: the deployment's.
    async fn max_attempts(&self) -> Option<i32> {
        self.sub.settings.max_attempts.map(|n| count(n.into()))
    }
    /// Extra request headers sent with every attempt.
    async fn headers(&self) -> Vec<WebhookHeader> {
        self.sub
            .settings
            .headers
            .iter()
            .map(|(name, value)| WebhookHeader {
                name: name.clone(),
                value: value.clone(),
            })
            .collect()
    }
    /// Requests per second the endpoint gets at most; null: no limit.
    async fn rate_limit(&self) -> Option<GqlRateLimit> {
        self.sub.settings.rate_limit.map(|r| GqlRateLimit {
            per_second: count(r.per_second.into()),
            burst: count(r.burst.into()),
        })
    }
    /// On `webhookUpdate`'s answer: how many of its deliveries the change
    /// paused, replayed or canceled. Null elsewhere.
    async fn status_change(&self) -> Option<WebhookStatusChange> {
        self.change.map(|c| WebhookStatusChange {
            paused: count(c.paused),
            replayed: count(c.replayed),
            canceled: count(c.canceled),
        })
    }
}

/// One delivery of one event to one webhook.
pub struct WebhookLog(DeliveryLogEntry);

#[Object]
impl WebhookLog {
    async fn id(&self) -> ID {
        ID(self.0.delivery.id.to_string())
    }
    async fn event_id(&self) -> &str {
        self.0.delivery.event_id.as_str()
    }
    async fn webhook_id(&self) -> ID {
        ID(self.0.delivery.subscription_id.to_string())
    }
    #[graphql(name = "type")]
    async fn event_type(&self) -> GqlEventType {
        self.0.delivery.event_type.into()
    }
    async fn url(&self) -> Option<&str> {
        self.0.url.as_deref()
    }
    async fn created_at(&self) -> String {
        self.0.delivery.created_at.to_rfc3339()
    }
    /// pending, retrying, succeeded, dead, canceled or paused.
    async fn status(&self) -> &str {
        self.0.delivery.status.as_str()
    }
    async fn response_status(&self) -> Option<i32> {
        self.0.delivery.last_response_status.map(i32::from)
    }
    /// Why a dead delivery died before its attempts ran out: `circuit_open`
    /// (held behind its webhook's open circuit until its schedule ended);
    /// null otherwise.
    async fn dead_reason(&self) -> Option<&str> {
        self.0.dead_reason.map(|r| r.as_str())
    }
    async fn attempts(&self) -> i32 {
        i32::try_from(self.0.delivery.attempts).unwrap_or(i32::MAX)
    }
    async fn last_attempt_at(&self) -> Option<String> {
        self.0.delivery.last_attempt_at.map(|t| t.to_rfc3339())
    }
}

/// An event as courier received it, with the deliveries it led to.
pub struct GqlEvent {
    record: EventRecord,
    deliveries: Vec<DeliveryLogEntry>,
}

#[Object(name = "Event")]
impl GqlEvent {
    async fn id(&self) -> &str {
        self.record.event.id.as_str()
    }
    #[graphql(name = "type")]
    async fn event_type(&self) -> GqlEventType {
        self.record.event.event_type.into()
    }
    async fn channel(&self) -> Option<&str> {
        self.record.event.channel.as_ref().map(|c| c.as_str())
    }
    async fn occurred_at(&self) -> String {
        self.record.event.occurred_at.to_rfc3339()
    }
    /// When courier recorded it.
    async fn received_at(&self) -> String {
        self.record.received_at.to_rfc3339()
    }
    /// The event's data: the JSON text as published.
    async fn data(&self) -> &str {
        self.record.event.data.as_str()
    }
    /// How many webhooks it matched; 0 when none did.
    async fn matched(&self) -> i32 {
        i32::try_from(self.deliveries.len()).unwrap_or(i32::MAX)
    }
    /// Its deliveries, oldest first.
    async fn deliveries(&self) -> Vec<WebhookLog> {
        self.deliveries.iter().cloned().map(WebhookLog).collect()
    }
}

#[derive(SimpleObject)]
pub struct WebhookLogEdge {
    node: WebhookLog,
    cursor: String,
}

#[derive(SimpleObject)]
pub struct PageInfo {
    has_next_page: bool,
    has_previous_page: bool,
    start_cursor: Option<String>,
    end_cursor: Option<String>,
}

#[derive(SimpleObject)]
pub struct WebhookLogConnection {
    edges: Vec<WebhookLogEdge>,
    page_info: PageInfo,
}

#[derive(InputObject)]
pub struct WebhookLogFilter {
    #[graphql(name = "type")]
    event_type: Option<GqlEventType>,
    /// pending, retrying, succeeded, dead, canceled or paused.
    status: Option<String>,
    webhook_id: Option<ID>,
}

/// How long the ledger keeps the workspace's finished deliveries: an
/// event goes, with its deliveries and their attempts, once every delivery
/// of it finished and is older than this since it did.
#[derive(SimpleObject)]
#[graphql(name = "Retention")]
pub struct GqlRetention {
    /// Days succeeded deliveries are kept (and events that matched no
    /// webhook), as applied.
    succeeded_days: i32,
    /// Days dead and canceled deliveries are kept, as applied.
    failed_days: i32,
    /// The workspace's own value; null: the deployment's.
    own_succeeded_days: Option<i32>,
    own_failed_days: Option<i32>,
    /// The deployment's (`retention.succeeded_days`, `retention.failed_days`).
    default_succeeded_days: i32,
    default_failed_days: i32,
    /// The most an override may ask for (`retention.max_days`).
    max_days: i32,
}

impl From<crate::retention::RetentionView> for GqlRetention {
    fn from(v: crate::retention::RetentionView) -> Self {
        let int = |d: u32| i32::try_from(d).unwrap_or(i32::MAX);
        Self {
            succeeded_days: int(v.effective.succeeded_days),
            failed_days: int(v.effective.failed_days),
            own_succeeded_days: v.own.succeeded_days.map(int),
            own_failed_days: v.own.failed_days.map(int),
            default_succeeded_days: int(v.defaults.succeeded_days),
            default_failed_days: int(v.defaults.failed_days),
            max_days: int(v.max_days),
        }
    }
}

/// The workspace's own retention, replacing what it had; a value left out
/// or null takes the deployment's.
#[derive(InputObject)]
#[graphql(name = "RetentionInput")]
pub struct GqlRetentionInput {
    /// 1 to `maxDays`.
    succeeded_days: Option<i32>,
    /// 1 to `maxDays`.
    failed_days: Option<i32>,
}

pub struct Query;

#[Object]
impl Query {
    /// Every webhook of the workspace, oldest first.
    async fn webhooks(&self, ctx: &Context<'_>) -> GqlResult<Vec<Webhook>> {
        let service = service(ctx);
        let mut all = Vec::new();
        let mut after = None;
        let mut more = true;
        while more {
            let page = service.webhooks(500, after).await.map_err(gql_error)?;
            more = page.len() == 500;
            after = page.last().map(|s| s.id);
            all.extend(page.into_iter().map(Webhook::of));
        }
        Ok(all)
    }

    async fn webhook(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Option<Webhook>> {
        let Ok(id) = SubscriptionId::parse(id.as_str()) else {
            return Ok(None);
        };
        Ok(service(ctx)
            .find_webhook(id)
            .await
            .map_err(gql_error)?
            .map(Webhook::of))
    }

    /// One event of the workspace: when courier received it and which
    /// webhooks it matched (none included). Null when courier has no record
    /// of it.
    async fn event(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Option<GqlEvent>> {
        Ok(service(ctx)
            .event(id.as_str())
            .await
            .map_err(gql_error)?
            .map(|(record, deliveries)| GqlEvent { record, deliveries }))
    }

    /// How long the ledger keeps the workspace's finished deliveries.
    async fn retention(&self, ctx: &Context<'_>) -> GqlResult<GqlRetention> {
        let key = ctx.data_unchecked::<WorkspaceKey>();
        let state = ctx.data_unchecked::<ApiState>();
        let view = crate::retention::get(state, &key.workspace)
            .await
            .map_err(gql_error)?;
        Ok(view.into())
    }

    /// The delivery log, newest first.
    async fn webhook_logs(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        filter: Option<WebhookLogFilter>,
    ) -> GqlResult<WebhookLogConnection> {
        let first = first.map(|f| u32::try_from(f).unwrap_or(0));
        let page = PageRequest::parse(first, after.as_deref()).map_err(gql_error)?;
        let mut store_filter = DeliveryFilter::default();
        if let Some(filter) = filter {
            store_filter.event_type = filter.event_type.map(Into::into);
            store_filter.status = filter
                .status
                .as_deref()
                .map(|s| status_filter("filter.status", s))
                .transpose()
                .map_err(gql_error)?;
            store_filter.subscription = filter
                .webhook_id
                .map(|id| webhook_filter("filter.webhookId", id.as_str()))
                .transpose()
                .map_err(gql_error)?;
        }
        let log = service(ctx)
            .delivery_log(&store_filter, page)
            .await
            .map_err(gql_error)?;
        let edges: Vec<WebhookLogEdge> = log
            .rows
            .into_iter()
            .map(|r| WebhookLogEdge {
                cursor: encode_delivery_cursor(r.cursor()),
                node: WebhookLog(r),
            })
            .collect();
        Ok(WebhookLogConnection {
            page_info: PageInfo {
                has_next_page: log.has_next_page,
                has_previous_page: page.after.is_some(),
                start_cursor: edges.first().map(|e| e.cursor.clone()),
                end_cursor: edges.last().map(|e| e.cursor.clone()),
            },
            edges,
        })
    }
}

#[derive(InputObject)]
pub struct WebhookCreateInput {
    url: String,
    #[graphql(name = "type")]
    event_type: GqlEventType,
    /// ENABLED when absent.
    status: Option<WebhookStatus>,
    /// A label; derived from the type when absent.
    name: Option<String>,
    /// Kept as given; a `whsec_` secret is generated when absent.
    secret: Option<String>,
    /// Order channels; absent or empty means all.
    channels: Option<Vec<String>>,
    /// Free text, at most 1000 characters, line breaks allowed.
    description: Option<String>,
    /// Request timeout in milliseconds, 100 to the deployment's
    /// `delivery.timeout_ms`.
    timeout_ms: Option<i32>,
    /// Attempts before a delivery is dead, 1-100.
    max_attempts: Option<i32>,
    /// Extra request headers (at most 20; not courier's own).
    headers: Option<Vec<WebhookHeaderInput>>,
    rate_limit: Option<GqlRateLimitInput>,
}

#[derive(InputObject)]
pub struct WebhookUpdateInput {
    id: ID,
    url: Option<String>,
    #[graphql(name = "type")]
    event_type: Option<GqlEventType>,
    /// DISABLED pauses its deliveries; ENABLED on a disabled webhook
    /// replays them (or cancels them, with `replayPaused: false`).
    status: Option<WebhookStatus>,
    /// With `status: ENABLED` on a disabled webhook: send the deliveries
    /// paused while it was off (true when absent) or cancel them.
    replay_paused: Option<bool>,
    name: Option<String>,
    channels: Option<Vec<String>>,
    /// Null clears it (as for every setting below).
    description: MaybeUndefined<String>,
    timeout_ms: MaybeUndefined<i32>,
    max_attempts: MaybeUndefined<i32>,
    headers: MaybeUndefined<Vec<WebhookHeaderInput>>,
    rate_limit: MaybeUndefined<GqlRateLimitInput>,
}

/// A GraphQL setting as a PATCH member: absent, null (clear) or a value.
fn setting<T, U>(value: MaybeUndefined<T>, map: impl FnOnce(T) -> U) -> Option<Option<U>> {
    match value {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(v) => Some(Some(map(v))),
    }
}

#[derive(InputObject)]
pub struct WebhookDeleteInput {
    id: ID,
}

pub struct Mutation;

#[Object]
impl Mutation {
    async fn webhook_create(
        &self,
        ctx: &Context<'_>,
        input: WebhookCreateInput,
    ) -> GqlResult<Webhook> {
        let ty = EventType::from(input.event_type);
        let new = NewWebhook {
            name: input
                .name
                .unwrap_or_else(|| format!("{} webhook", ty.as_str())),
            url: input.url,
            events: vec![ty.as_str().to_owned()],
            channels: input.channels.unwrap_or_default(),
            secret: input.secret,
            active: input.status.is_none_or(WebhookStatus::active),
            description: input.description,
            timeout_ms: input.timeout_ms.map(Into::into),
            max_attempts: input.max_attempts.map(Into::into),
            headers: input.headers.map(header_list),
            rate_limit: input.rate_limit.map(Into::into),
        };
        let sub = service(ctx).create_webhook(new).await.map_err(gql_error)?;
        Ok(Webhook::of(sub))
    }

    async fn webhook_update(
        &self,
        ctx: &Context<'_>,
        input: WebhookUpdateInput,
    ) -> GqlResult<Webhook> {
        let id = webhook_id(&input.id)?;
        let patch = WebhookPatch {
            name: input.name,
            url: input.url,
            events: input
                .event_type
                .map(|t| vec![EventType::from(t).as_str().to_owned()]),
            channels: input.channels,
            secret: None,
            active: input.status.map(WebhookStatus::active),
            replay_paused: input.replay_paused,
            description: setting(input.description, |d| d),
            timeout_ms: setting(input.timeout_ms, crate::webhooks::Whole::from),
            max_attempts: setting(input.max_attempts, crate::webhooks::Whole::from),
            headers: setting(input.headers, header_list),
            rate_limit: setting(input.rate_limit, Into::into),
        };
        let (sub, change) = service(ctx)
            .update_webhook(id, patch)
            .await
            .map_err(gql_error)?;
        Ok(Webhook {
            sub,
            change: Some(change),
        })
    }

    /// Sets the workspace's own retention; pruning uses it from its next
    /// round.
    async fn retention_update(
        &self,
        ctx: &Context<'_>,
        input: GqlRetentionInput,
    ) -> GqlResult<GqlRetention> {
        let key = ctx.data_unchecked::<WorkspaceKey>();
        let state = ctx.data_unchecked::<ApiState>();
        let view = crate::retention::set(
            state,
            &key.workspace,
            input.succeeded_days.map(i64::from),
            input.failed_days.map(i64::from),
        )
        .await
        .map_err(gql_error)?;
        Ok(view.into())
    }

    /// Deletes a webhook (by `id` or `input: {id}`) and returns it as it
    /// was. Its delivery history stays in `webhookLogs`.
    async fn webhook_delete(
        &self,
        ctx: &Context<'_>,
        id: Option<ID>,
        input: Option<WebhookDeleteInput>,
    ) -> GqlResult<Webhook> {
        let id = id.or(input.map(|i| i.id)).ok_or_else(|| {
            gql_error(ApiError::invalid(
                "id",
                "give the webhook id as id or input.id",
            ))
        })?;
        let id = webhook_id(&id)?;
        let service = service(ctx);
        let sub = service.webhook(id).await.map_err(gql_error)?;
        service.delete_webhook(id).await.map_err(gql_error)?;
        Ok(Webhook::of(sub))
    }
}

pub type CourierSchema = Schema<Query, Mutation, EmptySubscription>;

pub fn schema(state: ApiState) -> CourierSchema {
    Schema::build(Query, Mutation, EmptySubscription)
        .data(state)
        // Bounds what one request can make the server do. The depth leaves
        // room for the introspection query GraphQL tools send (15 levels
        // from graphql-js 16.11, which the explorer bundles: type
        // references unwrapped nine deep), twice what any use of the schema
        // itself needs.
        .limit_depth(16)
        .limit_complexity(2_000)
        .finish()
}

fn graphql_error(status: StatusCode, error: ApiError) -> Response {
    let body = error.body();
    (
        status,
        axum::Json(json!({
            "data": null,
            "errors": [{
                "message": body.message,
                "extensions": {"code": if status == StatusCode::UNAUTHORIZED { "UNAUTHENTICATED".to_owned() } else { body.code.to_uppercase() }}
            }]
        })),
    )
        .into_response()
}

async fn handle(schema: CourierSchema, state: ApiState, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let key = match bearer(&parts) {
        Ok(token) => WorkspaceKey::from_token(&state, token).await,
        Err(e) => Err(e),
    };
    let key = match key {
        Ok(key) => key,
        Err(e @ ApiError::Unauthorized(_)) => return graphql_error(StatusCode::UNAUTHORIZED, e),
        Err(e) => return e.into_response(),
    };
    let bytes = match read_body(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => return graphql_error(StatusCode::PAYLOAD_TOO_LARGE, e),
    };
    // One JSON object, as every other body: async-graphql's own reading
    // would take an array positionally.
    let gql_request: async_graphql::Request = match crate::extract::from_json(&bytes) {
        Ok(r) => r,
        Err(e) => return graphql_error(StatusCode::BAD_REQUEST, e),
    };
    let response = schema.execute(gql_request.data(key)).await;
    axum::Json(response).into_response()
}

pub fn router(state: ApiState) -> Router<ApiState> {
    let schema = schema(state.clone());
    let explorer_on = state.options().graphql_explorer;
    let endpoint = post(move |request: Request| handle(schema.clone(), state.clone(), request));
    if !explorer_on {
        return Router::new().route("/graphql", endpoint);
    }
    Router::new()
        .route("/graphql", endpoint.get(explorer::page))
        .route("/graphql/explorer/{file}", get(explorer::file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_values_are_the_model_graphql_names() {
        use async_graphql::resolver_utils::EnumType;
        for &ty in EventType::ALL {
            let gql = GqlEventType::from(ty);
            assert_eq!(EventType::from(gql), ty);
            let name = GqlEventType::items()
                .iter()
                .find(|i| i.value == gql)
                .unwrap()
                .name;
            assert_eq!(name, ty.graphql_name());
        }
    }
}
