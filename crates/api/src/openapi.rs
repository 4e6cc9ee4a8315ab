//! The REST routes and their OpenAPI document, built together: each route is
//! registered through `routes!` from its handler's `#[utoipa::path]`, so
//! the document cannot list a route that is not served or miss one that is.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{ApiState, admin, deliveries, events, ingest, portal, testsend, webhooks_rest};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "courier management API",
        description = "Webhooks, delivery logs and event ingest. Responses are \
            `{\"data\": ..., \"error\": null}`; errors are `{\"data\": null, \"error\": \
            {\"code\", \"message\", \"field\"?}}`. Workspace routes take `Authorization: \
            Bearer <api key>`; admin routes take the admin token."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "event-types", description = "the catalogue of event types"),
        (name = "admin", description = "workspaces and API keys (admin token)"),
        (name = "webhooks", description = "subscriptions of a workspace"),
        (name = "deliveries", description = "delivery log and redelivery"),
        (name = "events", description = "HTTP event ingest, and what became of an event"),
        (name = "portal", description = "single-use links to the web console of one workspace"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn rest_router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(admin::event_types))
        .routes(routes!(admin::create_workspace))
        .routes(routes!(admin::create_api_key))
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
        .routes(routes!(events::get_event))
        .routes(routes!(portal::create_portal_link))
}
