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
use courier_producer::{BrokerNodes, ConfirmedChannel, Publisher, redact_url as redact};
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
    /// The web console, beside the API (and only with it), unless
    /// `console.enabled` is false.
    pub console: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        worker: true,
        api: true,
        console: true,
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

/// How long one connection attempt (TCP and the AMQP handshake) may take.
/// lapin waits for a handshake without limit, so something that accepts the
/// connection but does not speak AMQP would otherwise hold us for ever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a fresh connection may take to be made ready (channels opened,
/// queues declared, webhooks read) before it is given up and another
/// attempt is made: long, as declaring a quorum queue waits for its leader,
/// and RabbitMQ itself may take a minute to answer for a queue that lost
/// one (giving up sooner would start that wait again), but not for ever. A
/// shutdown does not wait for it at all.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `prepare` (making a fresh connection ready) until it finishes,
/// [`PREPARE_TIMEOUT`] passes, or `shutdown` is cancelled (`None`).
async fn prepare<T, E>(
    what: &str,
    shutdown: &CancellationToken,
    prepare: impl std::future::Future<Output = Result<T, E>>,
) -> Option<anyhow::Result<T>>
where
    E: Into<anyhow::Error>,
{
    tokio::select! {
        _ = shutdown.cancelled() => None,
        done = tokio::time::timeout(PREPARE_TIMEOUT, prepare) => Some(match done {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(anyhow::anyhow!(
                "{what} took longer than {} s; RabbitMQ did not answer",
                PREPARE_TIMEOUT.as_secs()
            )),
        }),
    }
}

/// Waits for `task`, one of the parts a stopping process waits on, and
/// says so every 10 s while it has not finished, naming it: a shutdown
/// that hangs shows where.
async fn stopping<F: std::future::Future>(what: &str, task: F) -> F::Output {
    let mut task = std::pin::pin!(task);
    let began = tokio::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), &mut task).await {
            Ok(output) => return output,
            Err(_) => tracing::warn!(
                waiting_s = began.elapsed().as_secs(),
                "still stopping: waiting for {what}"
            ),
        }
    }
}

/// Why an attempt to reach RabbitMQ failed, in the terms an operator acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnectFailure {
    Refused,
    Authentication,
    TimedOut,
    NotAmqp,
    Other,
}

impl ConnectFailure {
    fn of(error: &lapin::Error) -> Self {
        use lapin::ErrorKind;
        match error.kind() {
            ErrorKind::IOError(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                Self::Refused
            }
            // 403 ACCESS_REFUSED: the broker refused the user or password.
            ErrorKind::ProtocolError(amqp) if amqp.get_id() == 403 => Self::Authentication,
            ErrorKind::AuthProviderError(_) => Self::Authentication,
            ErrorKind::ParsingError(_) | ErrorKind::InvalidProtocolVersion(_) => Self::NotAmqp,
            _ => Self::Other,
        }
    }

    fn cause(self) -> &'static str {
        match self {
            Self::Refused => "connection refused",
            Self::Authentication => "authentication failed",
            Self::TimedOut => "timed out",
            Self::NotAmqp => "not an AMQP server",
            Self::Other => "connection failed",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Self::Refused => {
                "nothing listens there: start RabbitMQ (locally `rabbitmq-server -detached`) or fix the host and port"
            }
            Self::Authentication => {
                "check the user and password in amqp.url (and that the user may use its vhost)"
            }
            Self::TimedOut => {
                "check that the host is reachable and no firewall drops the connection"
            }
            Self::NotAmqp => {
                "something else listens on that port: point amqp.url at RabbitMQ's AMQP port (5672 by default)"
            }
            Self::Other => "see the error for details",
        }
    }
}

/// The cause last reported, shared by the roles of a process (the worker
/// and the API connect separately) so one cause is logged once, not per role.
static REPORTED: std::sync::Mutex<Option<ConnectFailure>> = std::sync::Mutex::new(None);

/// Logs a failed attempt: at warn level the first time its cause is seen
/// (naming `amqp.url`, the cause and what to do), at debug level after.
fn report(name: &str, nodes: &BrokerNodes, failure: ConnectFailure, error: &str) {
    let new = REPORTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(failure)
        != Some(failure);
    if new {
        tracing::warn!(
            role = name,
            amqp.url = %nodes.redacted(),
            cause = failure.cause(),
            error = %error,
            "cannot reach RabbitMQ at amqp.url: {}; {}; retrying",
            failure.cause(),
            failure.hint(),
        );
    } else {
        tracing::debug!(role = name, error = %error, "RabbitMQ still not reachable");
    }
}

/// One bounded attempt to connect to each node in turn, until one answers.
/// When none does, the error names each node's failure, and the cause is
/// that of the last node tried.
async fn connect_once(
    nodes: &BrokerNodes,
    name: &str,
) -> Result<Connection, (ConnectFailure, String)> {
    let mut failures = Vec::with_capacity(nodes.len());
    let mut cause = ConnectFailure::Other;
    for (n, url) in nodes.in_turn() {
        match connect_node(url, name).await {
            Ok(connection) => {
                nodes.connected(n);
                if nodes.len() > 1 {
                    tracing::info!(role = name, node = %nodes.redacted_node(n), "connected to RabbitMQ");
                }
                return Ok(connection);
            }
            Err((failure, error)) if nodes.len() > 1 => {
                tracing::debug!(role = name, node = %nodes.redacted_node(n), %error, "RabbitMQ node did not answer");
                failures.push(format!("{}: {error}", nodes.redacted_node(n)));
                cause = failure;
            }
            Err(failure) => return Err(failure),
        }
    }
    Err((cause, failures.join("; ")))
}

/// One bounded attempt to connect to one node.
async fn connect_node(url: &str, name: &str) -> Result<Connection, (ConnectFailure, String)> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err((ConnectFailure::of(&error), error.to_string())),
        Err(_) => {
            // Did the TCP connection open? Then whatever answered there is
            // not RabbitMQ (or is stuck): say so rather than "timed out".
            let listening = match url::Url::parse(url) {
                Ok(parsed) => {
                    let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
                    let port = parsed.port().unwrap_or(5672);
                    matches!(
                        tokio::time::timeout(
                            CONNECT_TIMEOUT,
                            tokio::net::TcpStream::connect((host.as_str(), port))
                        )
                        .await,
                        Ok(Ok(_))
                    )
                }
                Err(_) => false,
            };
            let failure = if listening {
                ConnectFailure::NotAmqp
            } else {
                ConnectFailure::TimedOut
            };
            let what = if listening {
                "no AMQP handshake"
            } else {
                "no TCP connection"
            };
            Err((
                failure,
                format!("{what} within {}s", CONNECT_TIMEOUT.as_secs()),
            ))
        }
    }
}

/// Connects to RabbitMQ, retrying with backoff (each attempt bounded by
/// [`CONNECT_TIMEOUT`]) until it succeeds; `None` once `shutdown` is
/// cancelled, which it notices at any point. A failure is logged once per
/// cause, naming `amqp.url`, the cause and what to do; repeats of the same
/// cause are logged at debug level.
pub async fn connect_amqp(
    nodes: &BrokerNodes,
    name: &str,
    shutdown: &CancellationToken,
) -> Option<Connection> {
    let mut policy = ExponentialBackoff {
        initial_interval: Duration::from_millis(200),
        max_interval: Duration::from_secs(5),
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    };
    let mut failed = false;
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return None,
            attempt = connect_once(nodes, name) => attempt,
        };
        let (failure, error) = match attempt {
            Ok(connection) => {
                if failed {
                    *REPORTED.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    tracing::info!(role = name, "connected to RabbitMQ");
                }
                return Some(connection);
            }
            Err(failure) => failure,
        };
        failed = true;
        report(name, nodes, failure, &error);
        let pause =
            backoff::backoff::Backoff::next_backoff(&mut policy).unwrap_or(Duration::from_secs(5));
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(pause) => {}
        }
    }
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
                sqlite_commit_interval: Duration::from_millis(
                    self.settings.database.sqlite_commit_interval_ms,
                ),
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
        let console_url = self.console_on().then(|| self.console_url());
        let http = {
            let mut router = self.router();
            if let Some((state, _)) = &api {
                router = router.merge(courier_api::router(state.clone()));
                if self.console_on() {
                    router = router.merge(courier_console::router(
                        state.clone(),
                        self.console_options(),
                    ));
                }
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
            if let Some(url) = console_url {
                tracing::info!("web console: open {url}/console in a browser");
            }
            tracing::info!(
                listen = %http_addr,
                "serving the management API at http://{http_addr}/v1 (GraphQL at /graphql, \
                 its OpenAPI document at /openapi.json), and /metrics, /healthz, /readyz"
            );
        } else {
            tracing::info!(listen = %http_addr, "serving /metrics, /healthz, /readyz");
        }

        // Pruning runs where the worker does; of several replicas the one
        // holding the ledger's pruning lock prunes each round.
        let pruner = (self.roles.worker && self.settings.retention.enabled).then(|| {
            let r = &self.settings.retention;
            let pruner = courier_worker::Pruner::new(
                self.store.clone(),
                courier_worker::RetentionConfig {
                    policy: r.policy(),
                    interval: Duration::from_secs(r.interval_secs),
                    batch_rows: r.batch_rows,
                    duty_percent: r.duty_percent,
                },
                Arc::clone(&self.metrics),
            );
            tokio::spawn(pruner.run_until_stopped(shutdown.clone()))
        });

        let result = if self.roles.worker {
            let mut worker = std::pin::pin!(run_worker(
                &self.settings,
                &self.store,
                &ledger,
                &self.metrics,
                &self.health,
                &shutdown,
            ));
            tokio::select! {
                result = &mut worker => result,
                _ = shutdown.cancelled() => {
                    stopping("the worker (in-flight work gets delivery.shutdown_grace)", worker).await
                }
            }
        } else {
            shutdown.cancelled().await;
            Ok(())
        };
        // Whatever was handed to the ledger is committed before we exit.
        stopping("the ledger's writes", ledger.shutdown()).await;
        shutdown.cancel();
        // Stops after the batch under way.
        if let Some(pruner) = pruner
            && let Err(error) = stopping("pruning", pruner).await
        {
            tracing::warn!(error = %error, "the pruning task failed");
        }
        match stopping("the HTTP server's open requests", http).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = %error, "HTTP server failed"),
            Err(error) => tracing::warn!(error = %error, "HTTP server task failed"),
        }
        if let Some((_, supervisor)) = api
            && let Err(error) = stopping("the API's broker connection", supervisor).await
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
        // One bounded attempt here, so a healthy broker is in place before
        // the API answers; otherwise the API starts without it (ingest and
        // redelivery answer 503) and the supervisor keeps trying.
        let changes = BrokerChanges::new(topology.clone());
        let nodes = settings.amqp_nodes();
        let mut broker = None;
        let mut connection = None;
        let first = tokio::select! {
            _ = shutdown.cancelled() => None,
            attempt = connect_once(&nodes, "courier api") => Some(attempt),
        };
        match first {
            Some(Ok(c)) => {
                let c = Arc::new(c);
                let ready = api_broker(&c, &topology, &changes);
                match prepare("preparing the API's channels", &shutdown, ready).await {
                    Some(Ok(b)) => {
                        broker = Some(b);
                        connection = Some(c);
                    }
                    Some(Err(error)) => tracing::warn!(
                        error = format!("{error:#}"),
                        "preparing the API's channels; retrying"
                    ),
                    None => {}
                }
            }
            Some(Err((failure, error))) => report("courier api", &nodes, failure, &error),
            None => {}
        }
        let client = courier_webhook::WebhookClient::new(&worker.http)
            .context("could not build the HTTP client for test sends")?;
        let state = courier_api::ApiState::new(
            self.store.clone(),
            broker,
            client,
            courier_api::ApiOptions {
                require_https: settings.delivery.require_https,
                admin_token: settings.api.admin_token.clone(),
                graphql_explorer: settings.api.graphql_explorer,
                retention: settings.retention.policy(),
                portal: courier_api::portal::PortalOptions {
                    base_url: self.console_on().then(|| self.console_url()),
                    default_ttl: chrono::Duration::seconds(i64::from(
                        settings.console.portal_link_ttl_seconds,
                    )),
                    max_ttl: chrono::Duration::seconds(i64::from(
                        settings.console.portal_link_max_ttl_seconds,
                    )),
                },
                ..courier_api::ApiOptions::default()
            },
            Arc::new(changes.clone()) as Arc<dyn courier_api::SubscriptionChanges>,
        );
        let supervisor = tokio::spawn(supervise_api_broker(
            connection,
            state.clone(),
            changes,
            nodes,
            topology,
            Arc::clone(&self.metrics),
            shutdown,
        ));
        Ok((state, supervisor))
    }

    fn console_on(&self) -> bool {
        self.roles.api && self.roles.console && self.settings.console.enabled
    }

    /// Where browsers reach the console: `console.public_url`, or this
    /// process's own address.
    fn console_url(&self) -> String {
        match &self.settings.console.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let addr = self.http_addr();
                let host = if addr.ip().is_unspecified() {
                    // Listening everywhere; this machine at least reaches it here.
                    std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
                } else {
                    addr
                };
                format!("http://{host}")
            }
        }
    }

    fn console_options(&self) -> courier_console::ConsoleOptions {
        let console = &self.settings.console;
        courier_console::ConsoleOptions {
            frame_ancestors: console.frame_ancestors(),
            session_ttl: chrono::Duration::minutes(i64::from(console.session_ttl_minutes)),
            secure_cookies: self.console_url().starts_with("https://"),
        }
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

/// The API's publishing side on `connection`, after declaring everything
/// the API publishes to (a publish to a missing exchange would close the
/// channel).
async fn api_broker(
    connection: &Arc<Connection>,
    topology: &courier_producer::Topology,
    changes: &BrokerChanges,
) -> anyhow::Result<courier_api::Broker> {
    let deliveries = ConfirmedChannel::open(connection).await?;
    topology
        .declare_api(deliveries.channel())
        .await
        .context("could not declare the exchanges the API publishes to")?;
    let publisher = Publisher::on_connection(connection, topology.clone())
        .await
        .context("could not prepare publishing for the API")?;
    changes.set_connection(Some(Arc::clone(connection)));
    Ok(courier_api::Broker {
        publisher,
        deliveries,
    })
}

/// Keeps the API's broker connection up: when there is none or it breaks,
/// reconnects with backoff and swaps the new channels in. Meanwhile ingest
/// and redelivery answer 503; the rest of the API keeps working.
async fn supervise_api_broker(
    mut connection: Option<Arc<Connection>>,
    state: courier_api::ApiState,
    changes: BrokerChanges,
    nodes: BrokerNodes,
    topology: courier_producer::Topology,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        if let Some(current) = &connection {
            tokio::spawn(watch_key_revocations(
                Arc::clone(current),
                topology.clone(),
                Arc::clone(state.key_cache()),
                Arc::clone(&metrics),
            ));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let close = current.close(200, "courier stopping".into());
                        courier_producer::bounded("connection.close", close).await;
                        return;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                if !current.status().connected() {
                    break;
                }
            }
            tracing::warn!("the API lost its RabbitMQ connection; reconnecting");
            state.set_broker(None);
            changes.set_connection(None);
        }
        loop {
            let Some(c) = connect_amqp(&nodes, "courier api", &shutdown).await else {
                return;
            };
            let c = Arc::new(c);
            let ready = api_broker(&c, &topology, &changes);
            let Some(ready) = prepare("preparing the API's channels", &shutdown, ready).await
            else {
                courier_producer::bounded(
                    "connection.close",
                    c.close(200, "courier stopping".into()),
                )
                .await;
                return;
            };
            match ready {
                Ok(broker) => {
                    state.set_broker(Some(broker));
                    connection = Some(c);
                    tracing::info!("the API is connected to RabbitMQ");
                    break;
                }
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "preparing the API's channels; retrying"
                    );
                    let close = c.close(200, "retrying".into());
                    courier_producer::bounded("connection.close", close).await;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Notices from a one-off command (`courier api-key revoke`): a connection
/// of its own for each notice. Webhook changes made from the command line
/// are not announced; workers find them at their next ledger check.
pub struct CommandNotices {
    nodes: BrokerNodes,
    topology: courier_producer::Topology,
}

impl CommandNotices {
    pub fn new(settings: &Settings) -> Self {
        Self {
            nodes: settings.amqp_nodes(),
            topology: settings.worker_config().topology(),
        }
    }
}

impl courier_api::SubscriptionChanges for CommandNotices {
    fn changed(&self, _workspace: &courier_model::WorkspaceId) {}

    fn key_revoked(
        &self,
        workspace: &courier_model::WorkspaceId,
        key_id: &str,
    ) -> courier_api::RevocationNotice {
        let (nodes, topology) = (self.nodes.clone(), self.topology.clone());
        let notice = courier_model::WebhooksChanged::key_revoked(workspace.clone(), key_id.into());
        Box::pin(async move {
            let connection =
                connect_once(&nodes, "courier command")
                    .await
                    .map_err(|(failure, error)| {
                        format!(
                            "cannot reach RabbitMQ at {}: {error} ({})",
                            nodes.redacted(),
                            failure.hint()
                        )
                    })?;
            let connection = Arc::new(connection);
            let changes = BrokerChanges::new(topology);
            changes.set_connection(Some(Arc::clone(&connection)));
            let told = changes.announce_revocation(notice).await;
            courier_producer::bounded("connection.close", connection.close(200, "done".into()))
                .await;
            told
        })
    }
}

/// Hears API key revocations on the control exchange for as long as
/// `connection` lives, and meanwhile lets the API cache verified keys (see
/// `courier_api::key_cache`): a process that cannot hear revocations
/// caches nothing.
async fn watch_key_revocations(
    connection: Arc<Connection>,
    topology: courier_producer::Topology,
    cache: Arc<courier_api::key_cache::KeyCache>,
    metrics: Arc<Metrics>,
) {
    use futures_util::StreamExt;
    use lapin::options::BasicConsumeOptions;
    use lapin::types::FieldTable;

    let setup = async {
        let channel = connection.create_channel().await?;
        let queue = topology.declare_change_watch(&channel).await?;
        let options = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let consumer = channel
            .basic_consume(queue.into(), "".into(), options, FieldTable::default())
            .await?;
        Ok::<_, lapin::Error>((channel, consumer))
    };
    let (_channel, mut consumer) = match setup.await {
        Ok(pair) => pair,
        Err(error) => {
            tracing::warn!(error = %error, "cannot hear API key revocations; every request reads its key from the ledger");
            return;
        }
    };
    let listening = cache.listening();
    metrics.api_key_cache_active.set(1);
    while let Some(Ok(delivery)) = consumer.next().await {
        let Ok(notice) = courier_model::WebhooksChanged::from_slice(&delivery.data) else {
            continue;
        };
        if notice.changed == courier_model::WebhooksChangedKind::ApiKeys
            && let Some(key_id) = notice.key_id
        {
            tracing::debug!(workspace_id = %notice.workspace_id, key_id, "API key revoked");
            cache.revoked(&key_id);
        }
    }
    drop(listening);
    metrics.api_key_cache_active.set(i64::from(cache.in_use()));
    tracing::debug!("stopped hearing API key revocations; keys are read from the ledger");
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
    let mut pause = Duration::from_millis(250);
    let nodes = settings.amqp_nodes();
    loop {
        let Some(connection) = connect_amqp(&nodes, "courier worker", shutdown).await else {
            return Ok(());
        };
        let connection = Arc::new(connection);
        let worker = Worker::build(
            settings.worker_config(),
            Arc::clone(&connection),
            store.clone(),
            ledger.clone(),
            Arc::clone(metrics),
            Arc::clone(health),
        );
        let outcome = match prepare("preparing the worker", shutdown, worker).await {
            Some(Ok(worker)) => {
                health.set_connected(true);
                pause = Duration::from_millis(250);
                worker
                    .run_until_stopped(shutdown.clone())
                    .await
                    .map_err(anyhow::Error::from)
            }
            Some(Err(error)) => Err(error),
            // Stopping while preparing: nothing was taken yet.
            None => Ok(()),
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
                    error = format!("{error:#}"),
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
#[derive(Clone)]
struct BrokerChanges {
    /// The API's current connection; `None` while it reconnects.
    connection: Arc<std::sync::RwLock<Option<Arc<Connection>>>>,
    /// Opened on first use and again whenever the broker closed it (a
    /// channel error closes a channel for good).
    channel: Arc<tokio::sync::Mutex<Option<ConfirmedChannel>>>,
    topology: courier_producer::Topology,
}

impl BrokerChanges {
    fn new(topology: courier_producer::Topology) -> Self {
        Self {
            connection: Arc::default(),
            channel: Arc::default(),
            topology,
        }
    }

    fn set_connection(&self, connection: Option<Arc<Connection>>) {
        *self.connection.write().unwrap_or_else(|e| e.into_inner()) = connection;
    }

    /// An open channel on the current connection, reopened when needed.
    async fn channel(&self) -> Option<ConfirmedChannel> {
        let mut slot = self.channel.lock().await;
        if let Some(channel) = slot.as_ref()
            && channel.channel().status().connected()
        {
            return Some(channel.clone());
        }
        *slot = None;
        let connection = self
            .connection
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        // Declared again with each channel: it may have been deleted since,
        // and a publish to a missing exchange would close this one too.
        let opened = match ConfirmedChannel::open(&connection).await {
            Ok(channel) => self
                .topology
                .declare_control(channel.channel())
                .await
                .map(|()| channel)
                .map_err(courier_producer::PublishError::from),
            Err(error) => Err(error),
        };
        match opened {
            Ok(channel) => {
                *slot = Some(channel.clone());
                Some(channel)
            }
            Err(error) => {
                tracing::debug!(error = %courier_model::error_chain(&error), "could not open a channel for change notices");
                None
            }
        }
    }

    /// Tells every API process that a key was revoked; `Ok` once the
    /// broker confirmed it (or no process listens, so none caches keys).
    async fn announce_revocation(
        &self,
        notice: courier_model::WebhooksChanged,
    ) -> Result<(), String> {
        let channel = self
            .channel()
            .await
            .ok_or("no broker connection to announce it on")?;
        match channel.send(&self.topology.webhooks_changed(&notice)).await {
            Ok(()) | Err(courier_producer::PublishError::Unroutable { .. }) => Ok(()),
            Err(error) => Err(courier_model::error_chain(&error).to_string()),
        }
    }

    async fn announce(&self, workspace: courier_model::WorkspaceId) {
        let Some(channel) = self.channel().await else {
            tracing::debug!("no broker connection: workers reload at their next check");
            return;
        };
        let notice = self
            .topology
            .webhooks_changed(&courier_model::WebhooksChanged::new(workspace));
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
    }
}

impl courier_api::SubscriptionChanges for BrokerChanges {
    fn changed(&self, workspace: &courier_model::WorkspaceId) {
        let this = self.clone();
        let workspace = workspace.clone();
        tokio::spawn(async move { this.announce(workspace).await });
    }

    fn key_revoked(
        &self,
        workspace: &courier_model::WorkspaceId,
        key_id: &str,
    ) -> courier_api::RevocationNotice {
        let this = self.clone();
        let notice = courier_model::WebhooksChanged::key_revoked(workspace.clone(), key_id.into());
        Box::pin(async move { this.announce_revocation(notice).await })
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
