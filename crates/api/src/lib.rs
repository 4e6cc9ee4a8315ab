//! courier's management API: REST under `/v1` (described by the OpenAPI
//! document at `/openapi.json`, generated from the handlers), GraphQL at
//! `/graphql` for the operations existing webhook clients send, workspaces
//! and their API keys.
//!
//! [`router`] is the entry point; `courier serve` mounts it next to
//! `/metrics` and the health checks. This crate runs no server and no
//! worker: it reads and writes the ledger through `courier-store`, publishes
//! events and redeliveries through `courier-producer`'s confirmed channels,
//! and tells the workers about webhook changes through
//! [`SubscriptionChanges`].
//!
//! Tenancy: every workspace route takes a bearer API key scoped to one
//! workspace. No key or an unknown key is 401; a key used on another
//! workspace's path is 404, exactly as if that workspace did not exist, so
//! a key learns nothing about other tenants.

pub mod admin;
pub mod auth;
mod deliveries;
mod error;
mod events;
mod extract;
mod graphql;
mod groups;
mod ingest;
pub mod key_cache;
pub mod keys;
mod openapi;
pub mod portal;
pub mod retention;
pub mod samples;
pub mod service;
pub mod testsend;
pub mod views;
pub mod webhooks;
mod webhooks_rest;

use std::sync::Arc;

use axum::Router;
use courier_model::WorkspaceId;
use courier_producer::{ConfirmedChannel, Publisher};
use courier_store::Store;
use courier_webhook::WebhookClient;

pub use admin::MAX_WORKSPACE_NAME_LEN;
pub use error::ApiError;
pub use views::WebhookView;

/// Request bodies larger than this are refused with 413, except ingest.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Ingested events may be as large as the broker accepts them, plus room
/// for the JSON around `data`.
pub const MAX_INGEST_BODY_BYTES: usize = courier_model::MAX_EVENT_BYTES + 4 * 1024;
/// A batch of events: 1,000 events of 8 KiB, or fewer larger ones.
pub const MAX_BATCH_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Told after every successful webhook create, update, delete and secret
/// rotation, so that every worker replica reloads its matching index for
/// the workspace and the change applies to the next event.
pub trait SubscriptionChanges: Send + Sync + 'static {
    fn changed(&self, workspace: &WorkspaceId);

    /// Tells every API process that key `key_id` of `workspace` was
    /// revoked, so each forgets it from its cache of verified keys. Resolves
    /// once the broker confirmed the notice (`Ok`), or with why it could
    /// not be sent. Without a broker no process caches keys, so there is
    /// nobody to tell.
    fn key_revoked(&self, workspace: &WorkspaceId, key_id: &str) -> RevocationNotice {
        let _ = (workspace, key_id);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// What [`SubscriptionChanges::key_revoked`] resolves to.
pub type RevocationNotice =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// For deployments (and tests) where workers reload on their own schedule.
#[derive(Debug, Default)]
pub struct NoChanges;

impl SubscriptionChanges for NoChanges {
    fn changed(&self, _workspace: &WorkspaceId) {}
}

/// The broker side of the API: ingest publishes events with `publisher`,
/// manual redelivery publishes delivery messages on `deliveries` to the
/// deliveries exchange of the publisher's topology. Both are channels in
/// confirm mode: the API answers only after the broker confirmed.
#[derive(Clone, Debug)]
pub struct Broker {
    pub publisher: Publisher,
    pub deliveries: ConfirmedChannel,
}

/// Deployment policy the API enforces.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// `delivery.require_https`: refuse plain-http webhook URLs.
    pub require_https: bool,
    /// `api.admin_token`: opens the admin routes (workspaces, API keys).
    /// `None` keeps them closed.
    pub admin_token: Option<String>,
    /// How long the previous secret keeps signing after a rotation.
    pub rotation_grace: chrono::Duration,
    /// Where portal links point and how long they live.
    pub portal: portal::PortalOptions,
    /// `api.graphql_explorer`: serve GraphiQL at `GET /graphql` for people
    /// to try queries with their API key. Off, only POST is answered there.
    pub graphql_explorer: bool,
    /// `retention.*`: the deployment's retention, which a workspace's
    /// override replaces up to `max_days`.
    pub retention: courier_model::RetentionPolicy,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            require_https: true,
            admin_token: None,
            rotation_grace: chrono::Duration::hours(24),
            portal: portal::PortalOptions::default(),
            graphql_explorer: false,
            retention: courier_model::RetentionPolicy::default(),
        }
    }
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// `None` when the API runs without a broker, or while its connection
    /// is being re-established: ingest and redelivery then answer 503,
    /// everything else works. Swapped whole by [`ApiState::set_broker`].
    broker: groups::BrokerSlot,
    /// Ingest's grouping task, started by the first event.
    groups: std::sync::OnceLock<groups::Groups>,
    /// Test sends go through the same client as deliveries, so they obey the
    /// same private-network and timeout rules.
    client: WebhookClient,
    options: ApiOptions,
    changes: Arc<dyn SubscriptionChanges>,
    /// API keys verified lately; see [`key_cache`].
    keys: Arc<key_cache::KeyCache>,
}

impl ApiState {
    pub fn new(
        store: Store,
        broker: Option<Broker>,
        client: WebhookClient,
        options: ApiOptions,
        changes: Arc<dyn SubscriptionChanges>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                broker: Arc::new(std::sync::RwLock::new(broker.map(Arc::new))),
                groups: std::sync::OnceLock::new(),
                client,
                options,
                changes,
                keys: Arc::default(),
            }),
        }
    }

    /// The ledger, for the web console's own records (its sessions); reads
    /// and changes of webhooks and deliveries go through
    /// [`service::Service`].
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn broker(&self) -> Result<Arc<Broker>, ApiError> {
        self.inner
            .broker
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                ApiError::Unavailable("no broker connection right now; try again".into())
            })
    }

    /// Ingest's publisher of event groups (see [`groups`]).
    pub(crate) fn groups(&self) -> &groups::Groups {
        self.inner
            .groups
            .get_or_init(|| groups::Groups::start(Arc::clone(&self.inner.broker)))
    }

    /// Replaces the broker side, e.g. after reconnecting to RabbitMQ;
    /// `None` while disconnected.
    pub fn set_broker(&self, broker: Option<Broker>) {
        *self.inner.broker.write().unwrap_or_else(|e| e.into_inner()) = broker.map(Arc::new);
    }

    /// The verified-key cache, for the process's revocation listener to
    /// forget revoked keys in (and to switch it on).
    pub fn key_cache(&self) -> &Arc<key_cache::KeyCache> {
        &self.inner.keys
    }

    pub(crate) fn client(&self) -> &WebhookClient {
        &self.inner.client
    }

    pub fn options(&self) -> &ApiOptions {
        &self.inner.options
    }

    pub fn url_policy(&self) -> webhooks::WebhookPolicy {
        webhooks::WebhookPolicy {
            require_https: self.inner.options.require_https,
            // The client's timeout is `delivery.timeout_ms`: test sends
            // use the deliveries' client.
            max_timeout_ms: u32::try_from(self.inner.client.timeout().as_millis())
                .unwrap_or(u32::MAX),
        }
    }

    pub(crate) fn changes(&self) -> &dyn SubscriptionChanges {
        &*self.inner.changes
    }

    pub(crate) fn changed(&self, workspace: &WorkspaceId) {
        self.inner.changes.changed(workspace);
    }
}

/// `/v1/...`, `/graphql` and `/openapi.json`.
pub fn router(state: ApiState) -> Router {
    let (rest, mut doc) = openapi::rest_router().split_for_parts();
    openapi::deployment_limits(
        &mut doc,
        state.url_policy().max_timeout_ms,
        state.options().retention.max_days,
    );
    let doc = Arc::new(doc);
    rest.merge(graphql::router(state.clone()))
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = Arc::clone(&doc);
                async move { axum::Json(doc) }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .fallback(|| async { ApiError::NotFound("route") })
        .with_state(state)
}
