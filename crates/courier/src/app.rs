//! Wiring: open the ledger, serve the HTTP endpoints, connect to the broker
//! and keep the worker running (reconnecting with backoff) until told to
//! stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use backoff::ExponentialBackoff;
use courier_producer::{ConfirmedChannel, Publisher, redact_url as redact};
use courier_store::{Ledger, LedgerOptions, Store, StoreOptions};
use courier_worker::{Health, Metrics, Worker};
use lapin::{Connection, ConnectionProperties};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Settings;

/// Which parts of courier this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// The fan-out and delivery stages.
    pub worker: bool,
    /// The management API (the HTTP server with /metrics and health runs
    /// either way).
    pub api: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        worker: true,
        api: true,
    };
}

/// Connects to the configured database and applies its migrations.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let url = &settings.database.url;
    let store = Store::connect(
        url,
        &StoreOptions {
            max_connections: settings.database.max_connections,
            sqlite_sync: courier_store::SqliteSync::parse(&settings.database.sqlite_synchronous)
                .unwrap_or_default(),
        },
    )
    .await
    .map_err(|error| {
        let hint = error
            .connect_hint()
            .map(|hint| format!("; {hint}"))
            .unwrap_or_default();
        anyhow::anyhow!(
            "could not open the ledger at database.url={}: {}{hint}",
            redact(url),
            courier_model::error_chain(&error)
        )
    })?;
    store
        .migrate()
        .await
        .context("could not apply the ledger migrations")?;
    Ok(store)
}

/// Connects to RabbitMQ, retrying with backoff for up to `patience` (the
/// broker may still be starting next to us; `None` waits for ever), then
/// fails with a message that says how to start one locally.
pub async fn connect_amqp(
    url: &str,
    name: &str,
    patience: Option<Duration>,
) -> anyhow::Result<Connection> {
    let policy = ExponentialBackoff {
        initial_interval: Duration::from_millis(200),
        max_interval: Duration::from_secs(5),
        max_elapsed_time: patience,
        ..ExponentialBackoff::default()
    };
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    backoff::future::retry(policy, || async {
        Connection::connect(url, properties.clone())
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "RabbitMQ not reachable yet");
                backoff::Error::transient(e)
            })
    })
    .await
    .with_context(|| {
        format!(
            "could not reach RabbitMQ at amqp.url={} (start it locally with `rabbitmq-server -detached`)",
            redact(url)
        )
    })
}

/// Runs every role until `shutdown` is cancelled.
pub async fn serve(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    App::build(settings, Roles::ALL)
        .await?
        .run_until_stopped(shutdown)
        .await
}

/// A courier process, built and bound but not yet running.
pub struct App {
    settings: Settings,
    roles: Roles,
    store: Store,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    listener: TcpListener,
}

impl App {
    /// Opens and migrates the ledger and binds `http.listen` (port 0 picks
    /// a free port; see [`App::http_addr`]).
    pub async fn build(settings: Settings, roles: Roles) -> anyhow::Result<Self> {
        let store = open_store(&settings).await?;
        let listener = TcpListener::bind(settings.http.listen)
            .await
            .with_context(|| format!("could not listen on http.listen={}", settings.http.listen))?;
        Ok(Self {
            settings,
            roles,
            store,
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::default()),
            listener,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let metrics = Arc::clone(&self.metrics);
        let ledger = Ledger::start(
            self.store.clone(),
            LedgerOptions {
                on_batch: Some(Arc::new(move |ops| {
                    metrics.ledger_batch_size.observe(ops as f64)
                })),
                ..LedgerOptions::default()
            },
        );

        // The API publishes (ingest, redelivery, change notices) on a
        // connection of its own, so worker reconnects do not disturb it.
        let api = if self.roles.api {
            Some(self.api(shutdown.clone()).await?)
        } else {
            None
        };
        let http_addr = self.http_addr();
        let http = {
            let mut router = self.router();
            if let Some((state, _)) = &api {
                router = router.merge(courier_api::router(state.clone()));
            }
            let stop = shutdown.clone();
            let listener = self.listener;
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            })
        };
        if self.roles.api {
            tracing::info!(
                listen = %http_addr,
                "serving the management API at http://{http_addr}/v1 (GraphQL at /graphql, \
                 its OpenAPI document at /openapi.json), and /metrics, /healthz, /readyz"
            );
        } else {
            tracing::info!(listen = %http_addr, "serving /metrics, /healthz, /readyz");
        }

        let result = if self.roles.worker {
            run_worker(
                &self.settings,
                &self.store,
                &ledger,
                &self.metrics,
                &self.health,
                &shutdown,
            )
            .await
        } else {
            shutdown.cancelled().await;
            Ok(())
        };
        // Whatever was handed to the ledger is committed before we exit.
        ledger.shutdown().await;
        shutdown.cancel();
        match http.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = %error, "HTTP server failed"),
            Err(error) => tracing::warn!(error = %error, "HTTP server task failed"),
        }
        if let Some((_, supervisor)) = api
            && let Err(error) = supervisor.await
        {
            tracing::warn!(error = %error, "the API's broker supervisor failed");
        }
        self.store.close().await;
        result
    }

    /// The API's state, and the task that keeps its broker connection up.
    async fn api(
        &self,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(courier_api::ApiState, tokio::task::JoinHandle<()>)> {
        let settings = &self.settings;
        let worker = settings.worker_config();
        let topology = worker.topology();
        let connection = connect_amqp(
            &settings.amqp.url,
            "courier api",
            Some(Duration::from_secs(10)),
        )
        .await?;
        let changes = Arc::new(BrokerChanges {
            channel: std::sync::RwLock::new(None),
            topology: topology.clone(),
        });
        let broker = api_broker(&connection, &topology, &changes).await?;
        let client = courier_webhook::WebhookClient::new(&worker.http)
            .context("could not build the HTTP client for test sends")?;
        let state = courier_api::ApiState::new(
            self.store.clone(),
            Some(broker),
            client,
            courier_api::ApiOptions {
                require_https: settings.delivery.require_https,
                admin_token: settings.api.admin_token.clone(),
                ..courier_api::ApiOptions::default()
            },
            Arc::clone(&changes) as Arc<dyn courier_api::SubscriptionChanges>,
        );
        let supervisor = tokio::spawn(supervise_api_broker(
            connection,
            state.clone(),
            changes,
            settings.amqp.url.clone(),
            topology,
            shutdown,
        ));
        Ok((state, supervisor))
    }

    fn router(&self) -> Router {
        let state = Probe {
            store: self.store.clone(),
            metrics: Arc::clone(&self.metrics),
            health: Arc::clone(&self.health),
            worker: self.roles.worker,
        };
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(state)
    }
}

/// The API's publishing side on `connection`.
async fn api_broker(
    connection: &Connection,
    topology: &courier_producer::Topology,
    changes: &BrokerChanges,
) -> anyhow::Result<courier_api::Broker> {
    let publisher = Publisher::on_connection(connection, topology.clone())
        .await
        .context("could not prepare publishing for the API")?;
    let deliveries = ConfirmedChannel::open(connection).await?;
    changes.set_channel(Some(ConfirmedChannel::open(connection).await?));
    Ok(courier_api::Broker {
        publisher,
        deliveries,
    })
}

/// Watches the API's broker connection and, when it breaks, reconnects
/// with backoff and swaps the new channels in. Meanwhile ingest and
/// redelivery answer 503; the rest of the API keeps working.
async fn supervise_api_broker(
    mut connection: Connection,
    state: courier_api::ApiState,
    changes: Arc<BrokerChanges>,
    url: String,
    topology: courier_producer::Topology,
    shutdown: CancellationToken,
) {
    loop {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let close = connection.close(200, "courier stopping".into());
                    courier_producer::bounded("connection.close", close).await;
                    return;
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if !connection.status().connected() {
                break;
            }
        }
        tracing::warn!("the API lost its RabbitMQ connection; reconnecting");
        state.set_broker(None);
        changes.set_channel(None);
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = connect_amqp(&url, "courier api", None) => c,
            };
            let broker = match attempt {
                Ok(c) => match api_broker(&c, &topology, &changes).await {
                    Ok(broker) => Some((c, broker)),
                    Err(error) => {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "preparing the API's channels"
                        );
                        None
                    }
                },
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "reconnecting the API");
                    None
                }
            };
            if let Some((c, broker)) = broker {
                connection = c;
                state.set_broker(Some(broker));
                tracing::info!("the API is connected to RabbitMQ again");
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Keeps the worker running: connect, run, and when the broker connection
/// breaks, connect again with backoff. Returns when `shutdown` is cancelled.
async fn run_worker(
    settings: &Settings,
    store: &Store,
    ledger: &Ledger,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // The first connection fails fast with a helpful message (an operator
    // is watching); later ones wait as long as it takes.
    let mut patience = Some(Duration::from_secs(10));
    let mut pause = Duration::from_millis(250);
    loop {
        let connection = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = connect_amqp(&settings.amqp.url, "courier worker", patience) => c,
        };
        let connection = match connection {
            Ok(c) => Arc::new(c),
            Err(error) if patience.is_some() => return Err(error),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "reconnecting to RabbitMQ");
                continue;
            }
        };
        patience = None;
        let worker = Worker::build(
            settings.worker_config(),
            Arc::clone(&connection),
            store.clone(),
            ledger.clone(),
            Arc::clone(metrics),
            Arc::clone(health),
        )
        .await;
        let outcome = match worker {
            Ok(worker) => {
                health.set_connected(true);
                pause = Duration::from_millis(250);
                worker.run_until_stopped(shutdown.clone()).await
            }
            Err(error) => Err(error),
        };
        health.set_connected(false);
        let close = connection.close(200, "courier stopping".into());
        if let Some(Err(error)) = courier_producer::bounded("connection.close", close).await {
            tracing::debug!(error = %error, "closing the RabbitMQ connection");
        }
        match outcome {
            Ok(()) if shutdown.is_cancelled() => return Ok(()),
            Ok(()) => {}
            Err(error) => {
                tracing::warn!(
                    error = %courier_model::error_chain(&error),
                    "worker lost its broker connection; reconnecting"
                );
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// Tells every worker replica that webhooks changed, through the control
/// exchange, so each reloads its matching index ahead of the next event.
/// Best effort: a fan-out checks the ledger's webhooks version itself
/// before matching, so a lost notice delays nothing but that reload.
struct BrokerChanges {
    /// `None` while the API is reconnecting.
    channel: std::sync::RwLock<Option<ConfirmedChannel>>,
    topology: courier_producer::Topology,
}

impl BrokerChanges {
    fn set_channel(&self, channel: Option<ConfirmedChannel>) {
        *self.channel.write().unwrap_or_else(|e| e.into_inner()) = channel;
    }
}

impl courier_api::SubscriptionChanges for BrokerChanges {
    fn changed(&self, workspace: &courier_model::WorkspaceId) {
        let Some(channel) = self
            .channel
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            tracing::debug!("no broker connection: workers reload at their next check");
            return;
        };
        let notice = self
            .topology
            .webhooks_changed(&courier_model::WebhooksChanged::new(workspace.clone()));
        tokio::spawn(async move {
            match channel.send(&notice).await {
                Ok(()) => {}
                // No worker is bound to the control exchange right now.
                Err(courier_producer::PublishError::Unroutable { .. }) => {
                    tracing::debug!("no worker listens for webhook changes");
                }
                Err(error) => {
                    tracing::warn!(error = %courier_model::error_chain(&error), "could not announce a webhook change");
                }
            }
        });
    }
}

#[derive(Clone)]
struct Probe {
    store: Store,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    worker: bool,
}

async fn metrics(State(probe): State<Probe>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        probe.metrics.encode(),
    )
}

/// Alive: the process answers and no consume loop is stuck.
async fn healthz(State(probe): State<Probe>) -> (StatusCode, &'static str) {
    if !probe.worker || probe.health.is_alive() {
        (StatusCode::OK, "alive\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "a consume loop is stuck\n")
    }
}

/// Ready: the database answers and, for a worker, the consumers are
/// attached to the broker.
async fn readyz(State(probe): State<Probe>) -> (StatusCode, String) {
    let database = tokio::time::timeout(Duration::from_secs(2), probe.store.ping()).await;
    if !matches!(database, Ok(Ok(()))) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "database unreachable\n".into(),
        );
    }
    if probe.worker && !probe.health.consumers_attached() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not consuming from RabbitMQ\n".into(),
        );
    }
    (StatusCode::OK, "ready\n".into())
}
