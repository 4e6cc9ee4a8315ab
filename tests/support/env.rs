//! One isolated courier environment per test: a RabbitMQ prefix nobody else
//! uses (`ctest-<hex>`) and a database of its own (a `ScratchDb` named
//! `courier_e2e_<hex>`), both removed when the test ends (also when it
//! panics).

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use courier::Settings;
use courier_model::{Subscription, WorkspaceId};
use courier_producer::{Publisher, Topology};
use courier_store::scratch::ScratchDb;
use courier_store::{Backend, Store, Workspace};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rand::RngExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub fn amqp_url() -> String {
    std::env::var("COURIER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn pg_admin_url() -> String {
    courier_store::scratch::pg_admin_url("COURIER_TEST_PG_URL")
}

pub struct TestEnv {
    pub prefix: String,
    /// The broker this environment uses (the shared one, or a private node).
    amqp_url: String,
    pub db: Db,
    pub settings: Settings,
    pub store: Store,
    vars: Vec<(String, String)>,
    /// The database, removed at the end (`None` once it is).
    scratch: Option<ScratchDb>,
}

/// Settings every e2e test wants: receivers live on 127.0.0.1 over plain
/// http, and the retry schedule is short enough to watch.
const BASE: &[(&str, &str)] = &[
    ("COURIER__DELIVERY__REQUIRE_HTTPS", "false"),
    ("COURIER__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true"),
    ("COURIER__DELIVERY__TIMEOUT_MS", "2000"),
    ("COURIER__DELIVERY__SHUTDOWN_GRACE_MS", "3000"),
    ("COURIER__RETRY__INITIAL_DELAY_MS", "200"),
    ("COURIER__RETRY__MULTIPLIER", "2"),
    ("COURIER__RETRY__MAX_DELAY_MS", "800"),
    ("COURIER__RETRY__MAX_ATTEMPTS", "4"),
    ("COURIER__RETRY__JITTER", "0"),
    ("COURIER__LOG__LEVEL", "warn"),
    // Many tests run at once: each server takes a free port.
    ("COURIER__HTTP__LISTEN", "127.0.0.1:0"),
];

impl TestEnv {
    pub async fn new(db: Db) -> Self {
        Self::with(db, &[]).await
    }

    /// `overrides` are `COURIER__...` variables on top of the test defaults.
    pub async fn with(db: Db, overrides: &[(&str, &str)]) -> Self {
        Self::build(db, overrides, pg_admin_url(), amqp_url()).await
    }

    /// An environment on the broker at `amqp` (a private node, for tests
    /// that restart it).
    pub async fn on_broker(amqp: String, db: Db, overrides: &[(&str, &str)]) -> Self {
        Self::build(db, overrides, pg_admin_url(), amqp).await
    }

    /// A PostgreSQL environment on the server behind `pg_admin` (a private
    /// one, for tests that restart it).
    pub async fn on_postgres(pg_admin: String, overrides: &[(&str, &str)]) -> Self {
        Self::build(Db::Postgres, overrides, pg_admin, amqp_url()).await
    }

    /// A PostgreSQL environment on the broker at `amqp` and the server
    /// behind `pg_admin` (private ones, for runs that restart both).
    pub async fn on(amqp: String, pg_admin: String, overrides: &[(&str, &str)]) -> Self {
        Self::build(Db::Postgres, overrides, pg_admin, amqp).await
    }

    async fn build(db: Db, overrides: &[(&str, &str)], pg_admin: String, amqp: String) -> Self {
        let token: String = format!("{:016x}", rand::rng().random::<u64>());
        let prefix = format!("ctest-{token}");
        let backend = match db {
            Db::Sqlite => Backend::Sqlite,
            Db::Postgres => Backend::Postgres,
        };
        let scratch = ScratchDb::create(backend, &format!("courier_e2e_{token}"), &pg_admin)
            .await
            .expect("create test database (is PostgreSQL running on 127.0.0.1:5432?)");
        let database_url = scratch.url().to_owned();
        let mut vars: Vec<(String, String)> = BASE
            .iter()
            .chain(overrides)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        vars.push(("COURIER__DATABASE__URL".into(), database_url));
        vars.push(("COURIER__AMQP__URL".into(), amqp.clone()));
        vars.push(("COURIER__AMQP__PREFIX".into(), prefix.clone()));
        let settings = Settings::load_from(None, vars.clone()).expect("test settings are valid");
        let store = courier::open_store(&settings)
            .await
            .expect("open test ledger");
        Self {
            prefix,
            amqp_url: amqp,
            db,
            settings,
            store,
            vars,
            scratch: Some(scratch),
        }
    }

    pub fn topology(&self) -> Topology {
        self.settings.worker_config().topology()
    }

    /// A connection to the broker: to the first node that answers when
    /// the environment runs on a cluster.
    pub async fn amqp(&self) -> Connection {
        let nodes = courier_producer::BrokerNodes::parse(&self.amqp_url).expect("a valid amqp url");
        let mut failure = None;
        for (_, url) in nodes.in_turn() {
            // A node that is booting may take the connection and not answer.
            let connect = Connection::connect(url, ConnectionProperties::default());
            match tokio::time::timeout(Duration::from_secs(10), connect).await {
                Ok(Ok(connection)) => return connection,
                Ok(Err(error)) => failure = Some(error.to_string()),
                Err(_) => failure = Some(format!("{url}: no AMQP handshake within 10 s")),
            }
        }
        panic!("connect to RabbitMQ (is it running on 127.0.0.1:5672?): {failure:?}")
    }

    /// A publisher on its own connection; keep the connection alive.
    pub async fn publisher(&self) -> (Publisher, Connection) {
        let connection = self.amqp().await;
        let publisher = Publisher::on_connection(&connection, self.topology())
            .await
            .expect("publisher");
        (publisher, connection)
    }

    pub async fn workspace(&self, id: &str) -> WorkspaceId {
        let id = WorkspaceId::parse(id).unwrap();
        self.store
            .create_workspace(&Workspace {
                id: id.clone(),
                name: format!("workspace {id}"),
                created_at: chrono::Utc::now(),
            })
            .await
            .expect("create workspace");
        id
    }

    pub async fn webhook(
        &self,
        workspace: &WorkspaceId,
        url: &str,
        events: &[&str],
        channels: &[&str],
    ) -> Subscription {
        courier_api::webhooks::create(
            &self.store,
            workspace,
            courier_api::webhooks::NewWebhook {
                name: "e2e".into(),
                url: url.into(),
                events: events.iter().map(|s| s.to_string()).collect(),
                channels: channels.iter().map(|s| s.to_string()).collect(),
                secret: None,
                active: true,
                ..Default::default()
            },
            courier_api::webhooks::UrlPolicy {
                require_https: false,
            },
        )
        .await
        .expect("create webhook")
    }

    /// Runs `courier serve` (worker, /metrics, health) in this process.
    pub async fn start_worker(&self) -> InProcessWorker {
        let app = courier::App::build(self.settings.clone(), courier::Roles::ALL)
            .await
            .expect("build courier");
        let http_addr = app.http_addr();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
        InProcessWorker {
            stop,
            handle,
            http_addr,
        }
    }

    /// Runs `courier ARGS...` (a one-off command) on this environment's
    /// settings and returns its output.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let binary = courier_binary();
        Command::new(&binary)
            .args(args)
            .envs(self.vars.iter().cloned())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", binary.display()))
    }

    /// Runs `courier serve` as a child process (to be killed).
    pub fn spawn_worker_process(&self) -> WorkerProcess {
        let binary = courier_binary();
        // A port of its own, so that its /metrics can be read.
        let http_addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let child = Command::new(&binary)
            .arg("serve")
            .envs(self.vars.iter().cloned())
            .env("COURIER__HTTP__LISTEN", http_addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        WorkerProcess { child, http_addr }
    }

    /// Messages ready in `queue`.
    pub async fn queue_len(&self, queue: &str) -> u32 {
        let connection = self.amqp().await;
        let channel = connection.create_channel().await.unwrap();
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("queue {queue}: {e}"));
        connection.close(200, "".into()).await.ok();
        q.message_count()
    }

    /// Takes every message out of `queue`.
    pub async fn drain(&self, queue: &str) -> Vec<(Vec<u8>, BasicProperties)> {
        let connection = self.amqp().await;
        let channel = connection.create_channel().await.unwrap();
        let mut messages = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            message.acker.ack(BasicAckOptions::default()).await.unwrap();
            messages.push((
                message.delivery.data.clone(),
                message.delivery.properties.clone(),
            ));
        }
        connection.close(200, "".into()).await.ok();
        messages
    }

    async fn cleanup(amqp: String, topology: Topology, store: Store, scratch: Option<ScratchDb>) {
        store.close().await;
        // On a cluster, any node will do (they share the topology).
        let first = amqp.split(',').next().unwrap_or_default().trim();
        if let Ok(connection) = Connection::connect(first, ConnectionProperties::default()).await
            && let Ok(channel) = connection.create_channel().await
        {
            topology.delete_all(&channel).await;
            connection.close(200, "".into()).await.ok();
        }
        if let Some(scratch) = scratch {
            scratch.remove().await.ok();
        }
    }
}

impl Drop for TestEnv {
    /// Runs on a thread of its own so it works inside or outside a runtime,
    /// and after a panic.
    fn drop(&mut self) {
        let topology = self.topology();
        let amqp = self.amqp_url.clone();
        let store = self.store.clone();
        let scratch = self.scratch.take();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(Self::cleanup(amqp, topology, store, scratch));
        })
        .join()
        .ok();
    }
}

pub struct InProcessWorker {
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
    /// Where its /metrics, /healthz and /readyz answer.
    pub http_addr: std::net::SocketAddr,
}

impl InProcessWorker {
    /// GETs `path` from the worker's HTTP server: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client")
            .get(format!("http://{}{path}", self.http_addr))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Stops the worker as SIGTERM would and returns how it ended.
    /// Shuts the worker down as SIGTERM would and waits for it to finish;
    /// panics when it does not within a minute (its shutdown is bounded:
    /// a grace period, then bounded broker calls).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(60), self.handle).await {
            Ok(result) => result.expect("worker task panicked"),
            Err(_) => panic!("the worker did not stop within 60 s of its shutdown"),
        }
    }
}

pub struct WorkerProcess {
    child: Child,
    http_addr: std::net::SocketAddr,
}

impl WorkerProcess {
    /// Its /metrics, or None while it does not answer (starting up).
    pub async fn metrics(&self) -> Option<String> {
        let response = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client")
            .get(format!("http://{}/metrics", self.http_addr))
            .send()
            .await
            .ok()?;
        response.text().await.ok()
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for the process to exit and returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        self.child.wait().expect("wait for courier")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `courier` binary of this binary's profile (target/<profile>/courier):
/// tests live in target/<profile>/deps, tools such as courier-soak in
/// target/<profile>.
fn courier_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().expect("a binary lives in a directory");
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>/deps has a parent")
    } else {
        dir
    };
    let binary = profile_dir.join(format!("courier{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: build it first with `cargo build -p courier` (make test does)",
        binary.display()
    );
    binary
}

/// Waits until `condition` holds, checking every 25 ms, and panics with
/// `what` when `timeout` passes first, even if a check itself hangs.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(true) = tokio::time::timeout(left, condition()).await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
