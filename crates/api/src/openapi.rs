//! The REST routes and their OpenAPI document, built together: each route is
//! registered through `routes!` from its handler's `#[utoipa::path]`, so
//! the document cannot list a route that is not served or miss one that is.
//!
//! The schemas below state the rules the handlers enforce (lengths,
//! alphabets, the closed sets of event types and statuses, the secret's
//! format) from the model's own constants, so that a client generated from
//! the document, or a fuzzer driven by it, knows what the API accepts.

use courier_model::{
    Channel, DeliveryStatus, ErrorKind, EventId, EventType, Subscription, WebhookUrl, WorkspaceId,
};
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::views::Page;
use crate::{
    ApiState, admin, deliveries, events, ingest, portal, retention, testsend, webhooks_rest,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "courier management API",
        description = "Webhooks, delivery logs and event ingest. Responses are \
            `{\"data\": ..., \"error\": null}`; errors are `{\"data\": null, \"error\": \
            {\"code\", \"message\", \"field\"?}}`. Workspace routes take `Authorization: \
            Bearer <api key>`; admin routes take the admin token. Request bodies are one \
            JSON object of at most 64 KiB (event ingest: 260 KiB); unknown fields are \
            refused with 400, values that break a rule with 422, both naming the field."
    ),
    components(schemas(
        EventTypeName, IngestEventTypeName, DeliveryStatusName, ErrorKindName, DeadReasonName,
        admin::EventTypeView, admin::WorkspaceView, admin::ApiKeyView,
        crate::views::WebhookView, crate::views::DeliveryView, crate::views::AttemptView,
        crate::views::WebhookEventView, crate::views::DeliveryDetail, crate::views::PageInfo,
        Page<crate::views::WebhookView>, Page<crate::views::DeliveryView>,
        Page<crate::views::WebhookEventView>,
        webhooks_rest::RotatedSecret, webhooks_rest::Recovered, testsend::TestReport,
        testsend::TestResult, deliveries::Redelivery, ingest::Accepted, events::EventView,
        portal::PortalLinkView, crate::error::ErrorBody, retention::RetentionView,
        retention::RetentionDaysView, retention::RetentionOverrideView,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "event-types", description = "the catalogue of event types"),
        (name = "admin", description = "workspaces and API keys (admin token)"),
        (name = "webhooks", description = "subscriptions of a workspace"),
        (name = "deliveries", description = "delivery log and redelivery"),
        (name = "events", description = "HTTP event ingest, and what became of an event"),
        (name = "portal", description = "single-use links to the web console of one workspace"),
        (name = "retention", description = "how long the ledger keeps a workspace's finished \
            deliveries"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A workspace's API key (`ck_...`) on workspace routes; the admin \
                         token (`api.admin_token`) on admin routes and portal links.",
                    ))
                    .build(),
            ),
        );
    }
}

pub fn rest_router() -> OpenApiRouter<ApiState> {
    let mut router = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(admin::event_types))
        .routes(routes!(admin::create_workspace))
        .routes(routes!(admin::create_api_key, admin::list_api_keys))
        .routes(routes!(admin::revoke_api_key))
        .routes(routes!(
            webhooks_rest::create_webhook,
            webhooks_rest::list_webhooks
        ))
        .routes(routes!(
            webhooks_rest::get_webhook,
            webhooks_rest::update_webhook,
            webhooks_rest::delete_webhook
        ))
        .routes(routes!(webhooks_rest::rotate_secret))
        .routes(routes!(webhooks_rest::recover))
        .routes(routes!(webhooks_rest::webhook_events))
        .routes(routes!(testsend::test_webhook))
        .routes(routes!(deliveries::list_deliveries))
        .routes(routes!(deliveries::get_delivery))
        .routes(routes!(deliveries::list_attempts))
        .routes(routes!(deliveries::retry_delivery))
        .routes(routes!(ingest::ingest))
        .routes(routes!(ingest::ingest_batch))
        .routes(routes!(events::get_event))
        .routes(routes!(portal::create_portal_link))
        .routes(routes!(retention::get_retention, retention::put_retention));
    refer_to_components(router.get_openapi_mut());
    router
}

/// utoipa writes a generic's type argument out in full wherever it is used
/// (`Envelope<WebhookView>` holds a copy of `WebhookView`), so a generated
/// client would get a class per copy. Every copy of a named schema becomes
/// a `$ref` to it here, outermost first.
fn refer_to_components(openapi: &mut utoipa::openapi::OpenApi) {
    use serde_json::Value;

    fn replace(node: &mut Value, named: &[(String, Value)], is_root: bool) {
        if !is_root
            && node.is_object()
            && let Some((name, _)) = named.iter().find(|(_, schema)| schema == node)
        {
            *node = serde_json::json!({ "$ref": format!("#/components/schemas/{name}") });
            return;
        }
        match node {
            Value::Object(map) => map
                .values_mut()
                .for_each(|child| replace(child, named, false)),
            Value::Array(items) => items
                .iter_mut()
                .for_each(|child| replace(child, named, false)),
            _ => {}
        }
    }

    let mut doc = serde_json::to_value(&*openapi).expect("the document serializes");
    // Only schemas with properties: small ones (a bare string) are not
    // worth a name, and may equal each other by chance.
    let named: Vec<(String, Value)> = doc["components"]["schemas"]
        .as_object()
        .map(|schemas| {
            schemas
                .iter()
                .filter(|(_, s)| s.get("properties").is_some() || s.get("allOf").is_some())
                .map(|(name, s)| (name.clone(), s.clone()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        schemas
            .values_mut()
            .for_each(|schema| replace(schema, &named, true));
    }
    replace(&mut doc["paths"], &named, true);
    absent_not_null(&mut doc["paths"]);
    *openapi = serde_json::from_value(doc).expect("the document reads back");
}

/// `request_body(content = Option<T>)` is how utoipa marks a body that may
/// be left out, but it also allows a JSON `null`, which the API refuses
/// (a body is one object, or nothing): keep only the object.
fn absent_not_null(paths: &mut serde_json::Value) {
    let Some(paths) = paths.as_object_mut() else {
        return;
    };
    let schemas = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.pointer_mut("/requestBody/content/application~1json/schema"));
    for schema in schemas {
        if let Some(one_of) = schema.get("oneOf").and_then(|o| o.as_array())
            && let [object, null] = one_of.as_slice()
            && null == &serde_json::json!({"type": "null"})
        {
            *schema = object.clone();
        }
    }
}

// --- closed sets, as named schemas (one enum type in generated clients) ----------

/// The event types, as `EventType` in the document: the dotted names of
/// [`EventType::ALL`].
pub struct EventTypeName;

impl PartialSchema for EventTypeName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(EventType::ALL.iter().map(|t| t.as_str())))
            .description(Some(
                "An event type. Requests also accept the GraphQL names (`ORDER_CREATED`) \
                 and `order.status` for `order.status_changed`; responses use these names.",
            ))
            .into()
    }
}

impl ToSchema for EventTypeName {
    fn name() -> std::borrow::Cow<'static, str> {
        "EventType".into()
    }
}

/// The event types an upstream may send (`IngestEventType` in the
/// document): all but courier's own operational ones.
pub struct IngestEventTypeName;

impl PartialSchema for IngestEventTypeName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(
                EventType::ALL
                    .iter()
                    .filter(|t| !t.is_operational())
                    .map(|t| t.as_str()),
            ))
            .description(Some(
                "An event type an upstream may publish: every `EventType` except \
                 `webhook.failing`, `webhook.disabled` and `webhook.recovered`, which \
                 courier publishes itself. The GraphQL names are accepted too.",
            ))
            .into()
    }
}

impl ToSchema for IngestEventTypeName {
    fn name() -> std::borrow::Cow<'static, str> {
        "IngestEventType".into()
    }
}

/// `DeliveryStatus` in the document.
pub struct DeliveryStatusName;

impl PartialSchema for DeliveryStatusName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(DeliveryStatus::ALL.iter().map(|s| s.as_str())))
            .description(Some(
                "Where a delivery stands: `pending` (no attempt yet), `retrying` (the next \
                 attempt is scheduled), `succeeded`, `dead` (attempts exhausted), \
                 `canceled` (its webhook was deleted, or re-enabled without replaying what \
                 it missed) or `paused` (its webhook is disabled: kept, not attempted, \
                 replayed when it is enabled again).",
            ))
            .into()
    }
}

impl ToSchema for DeliveryStatusName {
    fn name() -> std::borrow::Cow<'static, str> {
        "DeliveryStatus".into()
    }
}

/// `AttemptErrorKind` in the document.
pub struct ErrorKindName;

impl PartialSchema for ErrorKindName {
    fn schema() -> RefOr<Schema> {
        let kinds = [
            ErrorKind::Timeout,
            ErrorKind::Connect,
            ErrorKind::Blocked,
            ErrorKind::Other,
        ];
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(kinds.iter().map(|k| k.as_str())))
            .description(Some(
                "Why an attempt got no HTTP response: `timeout`, `connect` (DNS, TCP or \
                 TLS), `blocked` (a private address courier may not call) or `other`.",
            ))
            .into()
    }
}

impl ToSchema for ErrorKindName {
    fn name() -> std::borrow::Cow<'static, str> {
        "AttemptErrorKind".into()
    }
}

/// `DeadReason` in the document.
pub struct DeadReasonName;

impl PartialSchema for DeadReasonName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(
                courier_store::DeadReason::ALL.iter().map(|r| r.as_str()),
            ))
            .description(Some(
                "Why a delivery is dead with attempts to spare: `circuit_open` (it waited \
                 behind its webhook's open circuit, the endpoint failing every probe, until \
                 its retry schedule's time was used up).",
            ))
            .into()
    }
}

impl ToSchema for DeadReasonName {
    fn name() -> std::borrow::Cow<'static, str> {
        "DeadReason".into()
    }
}

// --- request values, inline: what each field accepts ------------------------------

/// A path's `{ws}`: anything else is answered 404, as a workspace the key
/// cannot see.
pub struct WorkspaceIdParam;

impl PartialSchema for WorkspaceIdParam {
    fn schema() -> RefOr<Schema> {
        workspace_id()
    }
}

impl ToSchema for WorkspaceIdParam {}

/// A path's event `{id}`: anything else is answered 404.
pub struct EventIdParam;

impl PartialSchema for EventIdParam {
    fn schema() -> RefOr<Schema> {
        event_id()
    }
}

impl ToSchema for EventIdParam {}

/// The ids upstreams choose (workspaces, events) and order channels: ASCII
/// letters, digits and `-_.:`, as `courier_model`'s slug check.
fn slug(max: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(format!("^[A-Za-z0-9._:-]{{1,{max}}}$")))
}

fn nullable(builder: ObjectBuilder) -> RefOr<Schema> {
    builder
        .schema_type(SchemaType::Array(vec![Type::String, Type::Null]))
        .into()
}

pub(crate) fn workspace_id() -> RefOr<Schema> {
    slug(WorkspaceId::MAX_LEN)
        .description(Some(
            "A workspace id: 1-64 letters, digits, `-`, `_`, `.` or `:`.",
        ))
        .into()
}

pub(crate) fn new_workspace_id() -> RefOr<Schema> {
    nullable(slug(WorkspaceId::MAX_LEN).description(Some(
        "1-64 letters, digits, `-`, `_`, `.` or `:`; generated (`ws_...`) when absent.",
    )))
}

pub(crate) fn event_id() -> RefOr<Schema> {
    slug(EventId::MAX_LEN)
        .description(Some(
            "An event id as published: 1-128 letters, digits, `-`, `_`, `.` or `:`.",
        ))
        .into()
}

pub(crate) fn new_event_id() -> RefOr<Schema> {
    nullable(slug(EventId::MAX_LEN).description(Some(
        "The upstream's id for the event, 1-128 letters, digits, `-`, `_`, `.` or `:`; \
         generated (`evt_...`) when absent. Publishing the same id again delivers nothing \
         twice.",
    )))
}

pub(crate) fn channel() -> RefOr<Schema> {
    nullable(slug(Channel::MAX_LEN).description(Some(
        "The order channel the event came from: 1-64 letters, digits, `-`, `_`, `.` or `:`.",
    )))
}

fn channel_list() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(slug(Channel::MAX_LEN))
        .description(Some(
            "Order channels (1-64 letters, digits, `-`, `_`, `.` or `:` each) to receive \
         events of; empty means every channel. Duplicates count once.",
        ))
}

pub(crate) fn channels() -> RefOr<Schema> {
    channel_list().into()
}

pub(crate) fn channels_or_null() -> RefOr<Schema> {
    channel_list()
        .schema_type(SchemaType::Array(vec![Type::Array, Type::Null]))
        .into()
}

fn event_type_list() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(Ref::from_schema_name(EventTypeName::name()))
        .min_items(Some(1))
        .description(Some(
            "The event types to receive, at least one. Duplicates count once.",
        ))
}

pub(crate) fn event_types() -> RefOr<Schema> {
    event_type_list().into()
}

pub(crate) fn event_types_or_null() -> RefOr<Schema> {
    event_type_list()
        .schema_type(SchemaType::Array(vec![Type::Array, Type::Null]))
        .into()
}

/// What `str::trim` removes (Unicode White_Space), some of it control
/// characters: a tab or line break may surround a name, not be inside it.
const SPACE: &str = r"\u0009-\u000d \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// Control characters (Unicode Cc), refused inside a name.
const CONTROL: &str = r"\u0000-\u001f\u007f-\u009f";

/// Most characters a name may take with its surrounding whitespace, in the
/// document: courier trims that whitespace whatever its length, but a
/// schema without a bound sends generators and fuzzers after strings the
/// size of the body limit (slow, and of no use to anyone).
const NAME_MAX_WITH_SPACE: usize = 1024;

/// Names people give things (`courier_model::validate_name`): 1 to `max`
/// characters once surrounding whitespace is trimmed, no control
/// character anywhere. Written as a pattern because `maxLength` counts the
/// whitespace the API trims.
fn name(max: usize, what: &str) -> ObjectBuilder {
    let visible = format!("[^{CONTROL}{SPACE}]");
    let pattern = format!(
        "^[{SPACE}]*{visible}(?:[^{CONTROL}]{{0,{}}}{visible})?[{SPACE}]*$",
        max - 2
    );
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(NAME_MAX_WITH_SPACE))
        .pattern(Some(pattern))
        .description(Some(format!(
            "{what}: 1-{max} characters, no control characters; surrounding whitespace \
             is trimmed (send at most {NAME_MAX_WITH_SPACE} characters with it)."
        )))
}

pub(crate) fn workspace_name() -> RefOr<Schema> {
    name(crate::MAX_WORKSPACE_NAME_LEN, "The workspace's name").into()
}

pub(crate) fn key_name() -> RefOr<Schema> {
    nullable(name(
        crate::keys::MAX_KEY_NAME_LEN,
        "What the key is for (`default` when absent)",
    ))
}

pub(crate) fn webhook_name() -> RefOr<Schema> {
    name(Subscription::MAX_NAME_LEN, "The webhook's name").into()
}

pub(crate) fn webhook_name_or_null() -> RefOr<Schema> {
    nullable(name(Subscription::MAX_NAME_LEN, "The webhook's name"))
}

fn url(nullable_: bool) -> RefOr<Schema> {
    let builder = ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::Custom("uri".into())))
        .max_length(Some(WebhookUrl::MAX_LEN))
        .pattern(Some("^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]"))
        .description(Some(
            "Where deliveries go: an absolute http(s) URL with a host and without a user \
             name or password, at most 2048 bytes. https only unless the deployment sets \
             `delivery.require_https=false`.",
        ));
    if nullable_ {
        nullable(builder)
    } else {
        builder.into()
    }
}

pub(crate) fn webhook_url() -> RefOr<Schema> {
    url(false)
}

pub(crate) fn webhook_url_or_null() -> RefOr<Schema> {
    url(true)
}

/// Fewest and most bytes a secret decodes to (`WebhookSecret::parse`).
const SECRET_MIN_BYTES: usize = 8;
const SECRET_MAX_BYTES: usize = 64;

/// Canonical, padded standard base64 of `SECRET_MIN_BYTES` to
/// `SECRET_MAX_BYTES` bytes, optionally after `whsec_`: full groups of four
/// characters, then nothing, `xx==` (one more byte) or `xxx=` (two more),
/// whose last character carries no stray bits (the base64 crate refuses
/// those).
fn secret_pattern() -> String {
    let b64 = "[A-Za-z0-9+/]";
    let groups = |extra: usize| {
        let least = (SECRET_MIN_BYTES.saturating_sub(extra)).div_ceil(3);
        let most = (SECRET_MAX_BYTES - extra) / 3;
        format!("(?:{b64}{{4}}){{{least},{most}}}")
    };
    format!(
        "^(?:whsec_)?(?:{full}|{one}{b64}[AQgw]==|{two}{b64}{{2}}[AEIMQUYcgkosw048]=)$",
        full = groups(0),
        one = groups(1),
        two = groups(2),
    )
}

fn secret(description: &str) -> RefOr<Schema> {
    nullable(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(secret_pattern()))
            .description(Some(format!(
                "{description} Standard Webhooks form: standard base64 (with padding) of \
                 8-64 bytes, `whsec_` prefix optional, kept exactly as given."
            ))),
    )
}

pub(crate) fn new_secret() -> RefOr<Schema> {
    secret("The signing secret; a `whsec_` secret is generated when absent.")
}

pub(crate) fn replacement_secret() -> RefOr<Schema> {
    secret(
        "Replaces the secret at once, without a grace period (use rotate-secret for a \
         gapless switch).",
    )
}

pub(crate) fn rotated_secret() -> RefOr<Schema> {
    secret("The new secret; generated when absent.")
}

/// A JSON object with any members. `additionalProperties` says so
/// explicitly: some generators read a bare `type: object` as an object
/// without members.
fn any_object(types: Vec<Type>, description: &str) -> RefOr<Schema> {
    let schema_type = match types.as_slice() {
        [one] => SchemaType::Type(one.clone()),
        _ => SchemaType::Array(types),
    };
    ObjectBuilder::new()
        .schema_type(schema_type)
        .additional_properties(Some(AdditionalProperties::FreeForm(true)))
        .description(Some(description))
        .into()
}

/// An event's data as sent: kept as its text.
pub(crate) fn event_data() -> RefOr<Schema> {
    any_object(
        vec![Type::Object],
        "The payload: a JSON object nesting arrays and objects at most 63 levels deep, \
         delivered byte for byte as sent. The whole event may take at most 256 KiB.",
    )
}

pub(crate) fn event_data_or_null() -> RefOr<Schema> {
    any_object(
        vec![Type::Object, Type::Null],
        "The event data to send instead of each type's sample: a JSON object nesting at \
         most 63 levels deep, sent byte for byte.",
    )
}

/// An event's data as courier keeps it.
pub(crate) fn published_data() -> RefOr<Schema> {
    any_object(vec![Type::Object], "The event's data, as published.")
}

/// `null`, for the half of the envelope that is always null.
pub(crate) fn null() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Null).into()
}

// --- webhook settings and lifecycle -----------------------------------------------

/// The integer schemas: `minimum`..`maximum`, or null (which clears the
/// setting on PATCH, and is the same as absent on create).
fn integer_or_null(min: u32, max: u32, description: String) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Array(vec![Type::Integer, Type::Null]))
        .minimum(Some(min))
        .maximum(Some(max))
        .description(Some(description))
        .into()
}

/// Starts the description of `timeoutMs`, the schema whose maximum
/// [`deployment_limits`] sets to the deployment's `delivery.timeout_ms`.
const TIMEOUT_DESCRIPTION: &str = "The webhook's request timeout in milliseconds, connect to \
    last byte, instead of the deployment's `delivery.timeout_ms`";

pub(crate) fn timeout_ms() -> RefOr<Schema> {
    integer_or_null(
        crate::webhooks::MIN_TIMEOUT_MS,
        crate::webhooks::MAX_TIMEOUT_MS,
        format!(
            "{TIMEOUT_DESCRIPTION}: at least {} and at most `delivery.timeout_ms` (it may \
             shorten requests, not lengthen them); null: the deployment's.",
            crate::webhooks::MIN_TIMEOUT_MS
        ),
    )
}

/// Starts the description of a retention override's days, the schema
/// whose maximum [`deployment_limits`] sets to `retention.max_days`.
const RETENTION_DESCRIPTION: &str = "Days the ledger keeps these deliveries after they \
    finished, instead of the deployment's";

pub(crate) fn retention_days() -> RefOr<Schema> {
    integer_or_null(
        1,
        courier_model::MAX_RETENTION_DAYS,
        format!(
            "{RETENTION_DESCRIPTION}: at least 1 and at most `retention.max_days`; null: the \
             deployment's."
        ),
    )
}

/// Puts this deployment's limits into the document as the most a field
/// takes: `delivery.timeout_ms` for `timeoutMs`, `retention.max_days` for
/// a retention override's days. What the document allows is then what
/// the API accepts.
pub(crate) fn deployment_limits(
    openapi: &mut utoipa::openapi::OpenApi,
    max_timeout_ms: u32,
    max_retention_days: u32,
) {
    fn visit(node: &mut serde_json::Value, limits: &[(&str, u32)]) {
        match node {
            serde_json::Value::Object(map) => {
                let description = map.get("description").and_then(|d| d.as_str());
                let limit = limits
                    .iter()
                    .find(|(prefix, _)| description.is_some_and(|d| d.starts_with(prefix)));
                if let Some((_, max)) = limit {
                    map.insert("maximum".into(), (*max).into());
                }
                map.values_mut().for_each(|child| visit(child, limits));
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|c| visit(c, limits)),
            _ => {}
        }
    }
    let limits = [
        (
            TIMEOUT_DESCRIPTION,
            max_timeout_ms.max(crate::webhooks::MIN_TIMEOUT_MS),
        ),
        (RETENTION_DESCRIPTION, max_retention_days.max(1)),
    ];
    let mut doc = serde_json::to_value(&*openapi).expect("the document serializes");
    visit(&mut doc, &limits);
    *openapi = serde_json::from_value(doc).expect("the document reads back");
}

pub(crate) fn max_attempts() -> RefOr<Schema> {
    integer_or_null(
        1,
        crate::webhooks::MAX_ATTEMPTS,
        "Attempts before a delivery is dead (the first included), instead of \
         `retry.max_attempts`, on the deployment's retry schedule; null: the deployment's."
            .into(),
    )
}

pub(crate) fn description() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Array(vec![Type::String, Type::Null]))
        .max_length(Some(crate::webhooks::MAX_DESCRIPTION_LEN))
        .pattern(Some(r"^[^\u0000-\u0009\u000b-\u001f\u007f-\u009f]*$"))
        .description(Some(format!(
            "Free text for the people who manage the webhook: at most {} characters, no \
             control characters but line breaks (`\\n`); surrounding whitespace is trimmed, \
             blank or null clears it.",
            crate::webhooks::MAX_DESCRIPTION_LEN
        )))
        .into()
}

/// `[Hh][Oo][Ss][Tt]`: `word` in any case, for patterns without flags.
fn any_case(word: &str) -> String {
    word.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A header name a webhook may set: token characters, none of courier's
/// own (`courier_webhook::is_reserved_header`, written out as a lookahead).
fn header_name_pattern() -> String {
    let any_of = |names: &[&str]| {
        names
            .iter()
            .map(|n| any_case(n))
            .collect::<Vec<_>>()
            .join("|")
    };
    let prefixes = any_of(courier_webhook::RESERVED_HEADER_PREFIXES);
    let names = any_of(courier_webhook::RESERVED_HEADERS);
    format!(
        "^(?!(?:{prefixes})|(?:{names})$)[!#$%&'*+.^_`|~0-9A-Za-z-]{{1,{}}}$",
        crate::webhooks::MAX_HEADER_NAME_LEN
    )
}

fn header_object(types: Vec<Type>, description: &str) -> ObjectBuilder {
    let max = crate::webhooks::MAX_HEADER_VALUE_LEN;
    ObjectBuilder::new()
        .schema_type(SchemaType::Array(types))
        .max_properties(Some(crate::webhooks::MAX_HEADERS))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(header_name_pattern())),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(max))
                .pattern(Some(format!("^[!-~](?:[ -~]{{0,{}}}[!-~])?$", max - 2))),
        ))
        .description(Some(description))
}

pub(crate) fn headers() -> RefOr<Schema> {
    header_object(
        vec![Type::Object, Type::Null],
        "Extra request headers sent with every attempt, name -> value, at most 20: names of \
         1-256 token characters, values of 1-1024 visible ASCII characters (spaces only \
         between them). Courier's own headers are refused: `webhook-*` (the signature), \
         `content-*` framing headers, `host`, `user-agent`, `connection` and the other \
         hop-by-hop and `proxy-*` headers; `authorization` is allowed. Replaces the whole \
         set; `{}` or null clears it.",
    )
    .into()
}

pub(crate) fn header_view() -> RefOr<Schema> {
    header_object(
        vec![Type::Object],
        "Extra request headers sent with every attempt, name -> value. Shown where the \
         secret is (create, get, update); absent from lists.",
    )
    .into()
}

pub(crate) fn rate_limit() -> RefOr<Schema> {
    let bound = |description: &str| {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(crate::webhooks::MAX_RATE))
            .description(Some(description))
    };
    ObjectBuilder::new()
        .schema_type(SchemaType::Array(vec![Type::Object, Type::Null]))
        .property(
            "perSecond",
            bound("Requests per second on average, across every worker."),
        )
        .required("perSecond")
        .property(
            "burst",
            bound("Requests sent at once after a quiet spell; `perSecond` when absent or null.")
                .schema_type(SchemaType::Array(vec![Type::Integer, Type::Null])),
        )
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .description(Some(
            "The most requests per second the endpoint gets, across every worker; null: no \
             limit.",
        ))
        .into()
}

pub(crate) fn webhook_status() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["enabled", "disabled"]))
        .into()
}

pub(crate) fn disabled_reason() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Array(vec![Type::String, Type::Null]))
        .enum_values(Some(
            courier_model::DisabledReason::ALL
                .iter()
                .map(|r| Some(r.as_str()))
                .chain([None]),
        ))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_pattern_spans_8_to_64_bytes() {
        let pattern = secret_pattern();
        // 8 bytes: two groups and `xxx=`; 64 bytes: 21 groups and `xx==`.
        assert!(pattern.contains("(?:[A-Za-z0-9+/]{4}){2,20}"), "{pattern}");
        assert!(pattern.contains("(?:[A-Za-z0-9+/]{4}){3,21}"), "{pattern}");
    }
}
