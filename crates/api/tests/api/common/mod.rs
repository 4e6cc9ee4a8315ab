//! The harness every area shares: the API served over real HTTP on
//! 127.0.0.1 against its own database (a [`ScratchDb`]: a temp file, or
//! `courier_api_<hex>` on the local PostgreSQL) and, when it needs the
//! broker, its own `atest-<hex>` prefix; both removed at the end even on
//! panic. [`on_both_backends!`] runs each scenario on both ledgers.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use courier_api::portal::PortalOptions;
use courier_api::{ApiOptions, ApiState, Broker, SubscriptionChanges};
use courier_model::{DeliveryId, DeliveryStatus, Event, EventType, SubscriptionId, WorkspaceId};
use courier_producer::{ConfirmedChannel, Publisher, Topology};
use courier_store::scratch::{ScratchDb, pg_admin_url, unique_name};
use courier_store::{AttemptWrite, Backend, Store, WriteOp};
use courier_webhook::{HttpOptions, WebhookClient};
use lapin::{Connection, ConnectionProperties};
use rand::RngExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const ADMIN: &str = "test-admin-token";

// --- harness ------------------------------------------------------------------

pub fn amqp_url() -> String {
    std::env::var("COURIER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Counts change notifications, so tests can see that workers would reload.
#[derive(Default)]
pub struct Changes(pub Mutex<Vec<String>>);

impl SubscriptionChanges for Changes {
    fn changed(&self, workspace: &WorkspaceId) {
        self.0.lock().unwrap().push(workspace.to_string());
    }
}

pub struct App {
    pub base: String,
    pub http: reqwest::Client,
    pub store: Store,
    pub changes: Arc<Changes>,
    pub topology: Option<Topology>,
    _amqp: Option<Connection>,
}

pub struct Setup {
    pub require_https: bool,
    pub admin_token: Option<&'static str>,
    pub broker: bool,
    /// Where portal links point; `None`: the console is off.
    pub console_url: Option<&'static str>,
    /// Serve the GraphQL explorer at `GET /graphql`.
    pub graphql_explorer: bool,
}

pub const DEFAULT: Setup = Setup {
    require_https: false,
    admin_token: Some(ADMIN),
    broker: false,
    console_url: Some(CONSOLE_URL),
    graphql_explorer: false,
};

pub const CONSOLE_URL: &str = "https://hooks.example.com";

/// The deployment's retention in these tests: overrides up to 100 days.
pub const RETENTION: courier_model::RetentionPolicy = courier_model::RetentionPolicy {
    defaults: courier_model::RetentionDays {
        succeeded: 30,
        failed: 90,
    },
    max_days: 100,
};

/// A migrated database of the test's own: `COURIER_TEST_PG_URL` (default:
/// the local server) creates the PostgreSQL ones.
async fn open_db(backend: Backend) -> (Store, ScratchDb) {
    let admin = pg_admin_url("COURIER_TEST_PG_URL");
    let db = ScratchDb::create(backend, &unique_name("api"), &admin)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let store = db.migrated().await.unwrap();
    (store, db)
}

async fn remove(store: Store, db: ScratchDb, topology: Option<Topology>) {
    store.close().await;
    db.remove().await.unwrap();
    if let Some(topology) = topology
        && let Ok(connection) =
            Connection::connect(&amqp_url(), ConnectionProperties::default()).await
        && let Ok(channel) = connection.create_channel().await
    {
        topology.delete_all(&channel).await;
        connection.close(200, "".into()).await.ok();
    }
}

async fn start(store: Store, setup: &Setup) -> App {
    let (broker, topology, amqp) = if setup.broker {
        let prefix = format!("atest-{:016x}", rand::rng().random::<u64>());
        let topology = Topology::new(prefix, vec![Duration::from_secs(60)]);
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672");
        let channel = connection.create_channel().await.unwrap();
        topology.declare_all(&channel).await.unwrap();
        let publisher = Publisher::on_connection(&connection, topology.clone())
            .await
            .unwrap();
        let deliveries = ConfirmedChannel::open(&connection).await.unwrap();
        (
            Some(Broker {
                publisher,
                deliveries,
            }),
            Some(topology),
            Some(connection),
        )
    } else {
        (None, None, None)
    };
    let client = WebhookClient::new(&HttpOptions {
        timeout: Duration::from_secs(5),
        allow_private_networks: true,
        max_in_flight: 8,
    })
    .unwrap();
    let changes = Arc::new(Changes::default());
    let state = ApiState::new(
        store.clone(),
        broker,
        client,
        ApiOptions {
            require_https: setup.require_https,
            admin_token: setup.admin_token.map(str::to_owned),
            rotation_grace: chrono::Duration::hours(1),
            portal: PortalOptions {
                base_url: setup.console_url.map(str::to_owned),
                default_ttl: chrono::Duration::minutes(10),
                max_ttl: chrono::Duration::hours(1),
            },
            graphql_explorer: setup.graphql_explorer,
            retention: RETENTION,
        },
        changes.clone() as Arc<dyn SubscriptionChanges>,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, courier_api::router(state))
            .await
            .unwrap()
    });
    App {
        base,
        http: reqwest::Client::new(),
        store,
        changes,
        topology,
        _amqp: amqp,
    }
}

/// Runs `test` on its own task so the database (and broker prefix) is
/// removed even when the test panics; the panic is then passed on.
pub async fn run<F, Fut>(backend: Backend, setup: Setup, test: F)
where
    F: FnOnce(Arc<App>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (store, db) = open_db(backend).await;
    let app = Arc::new(start(store.clone(), &setup).await);
    let topology = app.topology.clone();
    let outcome = tokio::spawn(test(app)).await;
    remove(store, db, topology).await;
    if let Err(err) = outcome {
        std::panic::resume_unwind(err.into_panic());
    }
}

/// `sqlite::<name>` and `postgres::<name>` tests from each
/// `async fn name(app: Arc<App>)` of the module it is invoked in, run with
/// `setup`, through the `run` in that module's scope.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident => $setup:expr),* $(,)?) => {
        mod sqlite {
            #[allow(unused_imports)]
            use $crate::common::{DEFAULT, Setup};
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::run(courier_store::Backend::Sqlite, $setup, super::$name).await;
                }
            )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use $crate::common::{DEFAULT, Setup};
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::run(courier_store::Backend::Postgres, $setup, super::$name).await;
                }
            )*
        }
    };
}

// --- client helpers ---------------------------------------------------------------

impl App {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(key), None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(key), Some(body)).await
    }

    /// A workspace and a key for it, through the admin routes.
    pub async fn tenant(&self) -> (String, String) {
        let (status, body) = self
            .post("/v1/workspaces", ADMIN, json!({"name": "Acme"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let ws = body["data"]["id"].as_str().unwrap().to_owned();
        let (status, body) = self
            .post(
                &format!("/v1/workspaces/{ws}/api-keys"),
                ADMIN,
                json!({"name": "tests"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (ws, body["data"]["key"].as_str().unwrap().to_owned())
    }

    pub async fn webhook(&self, ws: &str, key: &str, body: Value) -> Value {
        let (status, body) = self
            .post(&format!("/v1/workspaces/{ws}/webhooks"), key, body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["data"].clone()
    }

    pub async fn gql(&self, key: Option<&str>, query: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/graphql",
            key,
            Some(json!({ "query": query })),
        )
        .await
    }
}

pub fn assert_error(status: StatusCode, body: &Value, want: StatusCode, field: Option<&str>) {
    assert_eq!(status, want, "{body}");
    assert!(body["data"].is_null(), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    if let Some(field) = field {
        assert_eq!(body["error"]["field"], field, "{body}");
    }
}

/// Seeds `n` events of `ty` in `ws`, each delivered (pending) to `sub`.
pub async fn seed(store: &Store, ws: &str, sub: &str, ty: EventType, n: usize) -> Vec<DeliveryId> {
    let ws = WorkspaceId::parse(ws).unwrap();
    let sub = SubscriptionId::parse(sub).unwrap();
    let mut ids = Vec::new();
    for _ in 0..n {
        let event = Event::new(ws.clone(), ty, None, json!({"order_id": "o-1"})).unwrap();
        let id = DeliveryId::derive(&event.id, sub);
        store
            .apply(&[WriteOp::FanOut {
                event: Arc::new(event),
                deliveries: vec![(id, sub)],
                paused: Vec::new(),
            }])
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

/// Records attempt `attempt` of `id` with `status` and the delivery state.
pub async fn attempt(
    store: &Store,
    id: DeliveryId,
    attempt: u32,
    status: u16,
    new: DeliveryStatus,
) {
    store
        .apply(&[WriteOp::Attempt(AttemptWrite {
            delivery_id: id,
            attempt,
            url: "http://127.0.0.1:9/hook".into(),
            started_at: Utc::now().trunc_subsecs(6),
            duration_ms: 12,
            response_status: Some(status),
            error_kind: None,
            error: None,
            response_excerpt: Some("upstream said no".into()),
            retry_after: None,
            new_status: new,
            next_attempt_at: None,
            held_until: None,
        })])
        .await
        .unwrap();
}

/// Every (method, path template) the REST router serves.
pub fn served_routes() -> Vec<(&'static str, &'static str)> {
    vec![
        ("get", "/v1/event-types"),
        ("post", "/v1/workspaces"),
        ("post", "/v1/workspaces/{ws}/api-keys"),
        ("get", "/v1/workspaces/{ws}/api-keys"),
        ("delete", "/v1/workspaces/{ws}/api-keys/{id}"),
        ("get", "/v1/workspaces/{ws}/webhooks"),
        ("post", "/v1/workspaces/{ws}/webhooks"),
        ("get", "/v1/workspaces/{ws}/webhooks/{id}"),
        ("patch", "/v1/workspaces/{ws}/webhooks/{id}"),
        ("delete", "/v1/workspaces/{ws}/webhooks/{id}"),
        ("post", "/v1/workspaces/{ws}/webhooks/{id}/test"),
        ("post", "/v1/workspaces/{ws}/webhooks/{id}/rotate-secret"),
        ("post", "/v1/workspaces/{ws}/webhooks/{id}/recover"),
        ("get", "/v1/workspaces/{ws}/webhooks/{id}/events"),
        ("get", "/v1/workspaces/{ws}/deliveries"),
        ("get", "/v1/workspaces/{ws}/deliveries/{id}"),
        ("get", "/v1/workspaces/{ws}/deliveries/{id}/attempts"),
        ("post", "/v1/workspaces/{ws}/deliveries/{id}/retry"),
        ("post", "/v1/workspaces/{ws}/events"),
        ("post", "/v1/workspaces/{ws}/events/batch"),
        ("get", "/v1/workspaces/{ws}/events/{id}"),
        ("post", "/v1/workspaces/{ws}/portal-links"),
        ("get", "/v1/workspaces/{ws}/retention"),
        ("put", "/v1/workspaces/{ws}/retention"),
    ]
}

/// The one event of a message ingest published: ingest sends event groups
/// (`courier_model::EventGroup`), and a lone request's group holds its
/// event alone.
pub fn only_event(message: &[u8]) -> Vec<u8> {
    let events = courier_model::EventGroup::decode(message).expect("ingest publishes event groups");
    assert_eq!(
        events.len(),
        1,
        "one event in {}",
        String::from_utf8_lossy(message)
    );
    events[0].to_vec()
}
