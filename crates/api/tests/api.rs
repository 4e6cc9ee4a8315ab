//! The management API over real HTTP on 127.0.0.1, against SQLite and
//! PostgreSQL (every scenario runs on both), real receivers for test sends,
//! and RabbitMQ for ingest and redelivery.
//!
//! Each test gets its own database (a temp file, or `courier_api_<hex>` on
//! the local PostgreSQL, dropped afterwards even on panic) and, when it
//! needs the broker, its own `atest-<hex>` prefix whose queues and
//! exchanges are deleted at the end. Nothing sleeps: every wait is on a
//! response or a condition.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{SubsecRound, Utc};
use courier_api::{ApiOptions, ApiState, Broker, NoChanges, SubscriptionChanges};
use courier_model::{
    DeliveryId, DeliveryMessage, DeliveryStatus, Event, EventId, EventType, SubscriptionId,
    WorkspaceId,
};
use courier_producer::{ConfirmedChannel, Publisher, Topology};
use courier_store::{AttemptWrite, Store, StoreOptions, WriteOp};
use courier_worker::{HttpOptions, WebhookClient};
use hmac::{Hmac, KeyInit, Mac};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rand::RngExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::Connection as _;

const ADMIN: &str = "test-admin-token";

// --- harness ------------------------------------------------------------------

fn pg_admin_url() -> String {
    std::env::var("COURIER_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn amqp_url() -> String {
    std::env::var("COURIER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

#[derive(Clone, Copy, Debug)]
enum Db {
    Sqlite,
    Postgres,
}

enum Cleanup {
    File(PathBuf),
    Database(String),
}

/// Counts change notifications, so tests can see that workers would reload.
#[derive(Default)]
struct Changes(Mutex<Vec<String>>);

impl SubscriptionChanges for Changes {
    fn changed(&self, workspace: &WorkspaceId) {
        self.0.lock().unwrap().push(workspace.to_string());
    }
}

struct App {
    base: String,
    http: reqwest::Client,
    store: Store,
    changes: Arc<Changes>,
    topology: Option<Topology>,
    _amqp: Option<Connection>,
}

struct Setup {
    require_https: bool,
    admin_token: Option<&'static str>,
    broker: bool,
}

const DEFAULT: Setup = Setup {
    require_https: false,
    admin_token: Some(ADMIN),
    broker: false,
};

async fn open_db(db: Db) -> (Store, Cleanup) {
    let token = format!("{:016x}", rand::rng().random::<u64>());
    let (url, cleanup) = match db {
        Db::Sqlite => {
            let path = std::env::temp_dir().join(format!("courier-api-{token}.db"));
            (format!("sqlite://{}", path.display()), Cleanup::File(path))
        }
        Db::Postgres => {
            let name = format!("courier_api_{token}");
            let mut admin = sqlx::PgConnection::connect(&pg_admin_url())
                .await
                .expect("PostgreSQL on 127.0.0.1:5432");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .unwrap();
            let admin_url = pg_admin_url();
            let (base, _) = admin_url.rsplit_once('/').unwrap();
            (format!("{base}/{name}"), Cleanup::Database(name))
        }
    };
    let store = Store::connect(
        &url,
        &StoreOptions {
            max_connections: 4,
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    (store, cleanup)
}

async fn remove(store: Store, cleanup: Cleanup, topology: Option<Topology>) {
    store.close().await;
    match cleanup {
        Cleanup::File(path) => {
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.clone().into_os_string();
                file.push(suffix);
                let _ = std::fs::remove_file(file);
            }
        }
        Cleanup::Database(name) => {
            let mut admin = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await
            .unwrap();
        }
    }
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
async fn run<F, Fut>(db: Db, setup: Setup, test: F)
where
    F: FnOnce(Arc<App>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (store, cleanup) = open_db(db).await;
    let app = Arc::new(start(store.clone(), &setup).await);
    let topology = app.topology.clone();
    let outcome = tokio::spawn(test(app)).await;
    remove(store, cleanup, topology).await;
    if let Err(err) = outcome {
        std::panic::resume_unwind(err.into_panic());
    }
}

macro_rules! on_both_backends {
    ($($name:ident => $setup:expr),* $(,)?) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::{DEFAULT, Setup};
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::run(super::Db::Sqlite, $setup, super::$name).await;
                }
            )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use super::{DEFAULT, Setup};
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::run(super::Db::Postgres, $setup, super::$name).await;
                }
            )*
        }
    };
}

on_both_backends!(
    event_type_catalogue => DEFAULT,
    admin_routes_and_authentication => DEFAULT,
    admin_routes_closed_without_token => Setup { admin_token: None, ..DEFAULT },
    webhook_crud_and_the_legacy_body => DEFAULT,
    webhook_list_pages_under_concurrent_inserts => DEFAULT,
    validation_names_the_field_and_writes_nothing => Setup { require_https: true, ..DEFAULT },
    every_route_hides_other_workspaces => DEFAULT,
    delivery_log_pages_filters_and_details => DEFAULT,
    deleted_webhook_keeps_its_history => DEFAULT,
    test_send_to_live_and_failing_receivers => DEFAULT,
    rotation_signs_with_both_secrets => DEFAULT,
    redelivery_recover_and_ingest => Setup { broker: true, ..DEFAULT },
    broker_routes_answer_503_without_broker => DEFAULT,
    graphql_operations_as_clients_send_them => DEFAULT,
    openapi_lists_every_served_route => DEFAULT,
);

// --- client helpers ---------------------------------------------------------------

impl App {
    async fn call(
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

    async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(key), None).await
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(key), Some(body)).await
    }

    /// A workspace and a key for it, through the admin routes.
    async fn tenant(&self) -> (String, String) {
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

    async fn webhook(&self, ws: &str, key: &str, body: Value) -> Value {
        let (status, body) = self
            .post(&format!("/v1/workspaces/{ws}/webhooks"), key, body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["data"].clone()
    }

    async fn gql(&self, key: Option<&str>, query: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/graphql",
            key,
            Some(json!({ "query": query })),
        )
        .await
    }
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, field: Option<&str>) {
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
async fn seed(store: &Store, ws: &str, sub: &str, ty: EventType, n: usize) -> Vec<DeliveryId> {
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
            }])
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

/// Records attempt `attempt` of `id` with `status` and the delivery state.
async fn attempt(store: &Store, id: DeliveryId, attempt: u32, status: u16, new: DeliveryStatus) {
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
            new_status: new,
            next_attempt_at: None,
            held_until: None,
        })])
        .await
        .unwrap();
}

/// Standard Webhooks verification from the specification, not sharing
/// courier's signer: what a receiver's library does with its secret.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .unwrap();
    let h = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_owned();
    let signed = format!("{}.{}.", h("webhook-id"), h("webhook-timestamp"));
    h("webhook-signature").split(' ').any(|entry| {
        let Some(("v1", sig)) = entry.split_once(',') else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(signed.as_bytes());
        mac.update(body);
        mac.verify_slice(&STANDARD.decode(sig).unwrap()).is_ok()
    })
}

/// Requests a receiver got: headers and body.
type Seen = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A receiver on 127.0.0.1 answering `status` and recording every request.
struct Receiver {
    url: String,
    seen: Seen,
}

async fn receiver(status: u16) -> Receiver {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push((headers, body.to_vec()));
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { url, seen }
}

// --- scenarios -------------------------------------------------------------------------

async fn event_type_catalogue(app: Arc<App>) {
    let (status, body) = app.call(Method::GET, "/v1/event-types", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["error"].is_null());
    let types = body["data"].as_array().unwrap();
    assert_eq!(types.len(), EventType::ALL.len());
    let status_changed = types
        .iter()
        .find(|t| t["name"] == "order.status_changed")
        .unwrap();
    assert_eq!(status_changed["graphqlName"], "ORDER_STATUS_CHANGED");
    assert!(!status_changed["description"].as_str().unwrap().is_empty());
    assert!(types.iter().any(|t| t["name"] == "webhook.test"));
}

async fn admin_routes_and_authentication(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    assert!(key.starts_with("ck_") && key.len() == 46, "{key}");
    // Explicit ids are kept; taken ids conflict.
    let (status, body) = app
        .post(
            "/v1/workspaces",
            ADMIN,
            json!({"id": "acme-eu", "name": "Acme EU"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["id"], "acme-eu");
    let (status, body) = app
        .post(
            "/v1/workspaces",
            ADMIN,
            json!({"id": "acme-eu", "name": "again"}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, None);
    // Keys are not admin tokens, and wrong tokens are refused.
    let (status, body) = app.post("/v1/workspaces", &key, json!({"name": "x"})).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, None);
    let (status, body) = app
        .post("/v1/workspaces/nope/api-keys", ADMIN, json!({}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, None);

    let path = format!("/v1/workspaces/{ws}/webhooks");
    let (status, body) = app.call(Method::GET, &path, None, None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, None);
    let wrong = format!("ck_{}", "A".repeat(43));
    let (status, body) = app.get(&path, &wrong).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, None);
    let (status, body) = app.get(&path, "garbage").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, None);
    let (status, body) = app.get(&path, &key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["items"], json!([]));
    // Only the hash is stored.
    let hash = courier_api::keys::hash_key(&key);
    let record = app.store.find_api_key(&hash).await.unwrap().unwrap();
    assert_eq!(record.workspace_id.as_str(), ws);
    assert_eq!(record.key_prefix, key[..9]);
}

async fn admin_routes_closed_without_token(app: Arc<App>) {
    let (status, body) = app
        .post("/v1/workspaces", "anything", json!({"name": "x"}))
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, None);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api.admin_token")
    );
    // The CLI path still works: keys made directly authenticate.
    let ws = WorkspaceId::parse("cli-ws").unwrap();
    app.store
        .create_workspace(&courier_store::Workspace {
            id: ws.clone(),
            name: "cli".into(),
            created_at: Utc::now(),
        })
        .await
        .unwrap();
    let (key, _) = courier_api::keys::create_api_key(&app.store, &ws, None)
        .await
        .unwrap();
    let (status, _) = app.get("/v1/workspaces/cli-ws/webhooks", &key).await;
    assert_eq!(status, StatusCode::OK);
}

async fn webhook_crud_and_the_legacy_body(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    // The body existing integrations send, verbatim.
    let legacy: Value = serde_json::from_str(
        r#"{"events": ["order.status"], "name": "My alert for order statuses", "url": "https://my.sample.endpoint.com/", "secret": "QWZTFnMEXhqZKNmu", "active": true}"#,
    )
    .unwrap();
    let created = app.webhook(&ws, &key, legacy).await;
    assert_eq!(created["events"], json!(["order.status_changed"]));
    assert_eq!(created["secret"], "QWZTFnMEXhqZKNmu");
    assert_eq!(created["active"], true);
    assert_eq!(created["channels"], json!([]));
    assert_eq!(app.changes.0.lock().unwrap().len(), 1);
    let id = created["id"].as_str().unwrap();

    // Defaults: generated whsec_ secret, active.
    let generated = app
        .webhook(
            &ws,
            &key,
            json!({"name": "n", "url": "http://127.0.0.1:9/h", "events": ["order.created"], "channels": ["amazon"]}),
        )
        .await;
    assert!(generated["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(generated["active"], true);
    assert_eq!(generated["channels"], json!(["amazon"]));

    let path = format!("/v1/workspaces/{ws}/webhooks/{id}");
    let (status, body) = app.get(&path, &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["name"], "My alert for order statuses");
    assert_eq!(body["data"]["url"], "https://my.sample.endpoint.com/");

    let (status, body) = app
        .call(
            Method::PATCH,
            &path,
            Some(&key),
            Some(json!({"active": false, "events": ["order.created", "shipment.created"], "channels": ["ebay"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["active"], false);
    assert_eq!(
        body["data"]["events"],
        json!(["order.created", "shipment.created"])
    );
    assert_eq!(body["data"]["name"], "My alert for order statuses");
    // The worker's index source sees the change at once.
    let enabled = app.store.load_enabled_subscriptions().await.unwrap();
    assert!(enabled.iter().all(|s| s.id.to_string() != id));
    assert_eq!(app.changes.0.lock().unwrap().len(), 3);

    let resp = app
        .http
        .delete(format!("{}{path}", app.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.bytes().await.unwrap().is_empty());
    let (status, body) = app.get(&path, &key).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, None);
    let (status, _) = app.call(Method::DELETE, &path, Some(&key), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.changes.0.lock().unwrap().as_slice(),
        [ws.clone(), ws.clone(), ws.clone(), ws]
    );
}

async fn webhook_list_pages_under_concurrent_inserts(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let mut created = Vec::new();
    for i in 0..5 {
        let hook = app
            .webhook(
                &ws,
                &key,
                json!({"name": format!("h{i}"), "url": "https://example.com/h", "events": ["order.created"]}),
            )
            .await;
        created.push(hook["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = match &after {
            Some(a) => format!("?first=2&after={a}"),
            None => "?first=2".to_owned(),
        };
        let (status, body) = app
            .get(&format!("/v1/workspaces/{ws}/webhooks{query}"), &key)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for item in body["data"]["items"].as_array().unwrap() {
            assert!(item.get("secret").is_none(), "lists hide secrets");
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        // Another client creates a webhook between our pages: it sorts last
        // (ids are time ordered), so it shows up at the end, never twice.
        if seen.len() == 2 {
            let extra = app
                .webhook(&ws, &key, json!({"name": "late", "url": "https://example.com/l", "events": ["order.created"]}))
                .await;
            created.push(extra["id"].as_str().unwrap().to_owned());
        }
        if body["data"]["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = Some(
            body["data"]["pageInfo"]["endCursor"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(seen, created);
    let (status, body) = app
        .get(&format!("/v1/workspaces/{ws}/webhooks?first=0"), &key)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("first"),
    );
    let (status, body) = app
        .get(&format!("/v1/workspaces/{ws}/webhooks?after=zzz"), &key)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("after"),
    );
    let (status, body) = app
        .get(&format!("/v1/workspaces/{ws}/webhooks?limit=3"), &key)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, Some("limit"));
}

async fn validation_names_the_field_and_writes_nothing(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let path = format!("/v1/workspaces/{ws}/webhooks");
    let ok = json!({"name": "n", "url": "https://example.com/h", "events": ["order.created"]});
    let with = |k: &str, v: Value| {
        let mut body = ok.clone();
        body[k] = v;
        body
    };
    let cases = [
        (
            with("url", json!("/relative")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "url",
        ),
        (
            with("url", json!("ftp://example.com/")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "url",
        ),
        // require_https is on for this server.
        (
            with("url", json!("http://example.com/")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "url",
        ),
        (
            with("events", json!(["order.exploded"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "events",
        ),
        (
            with("events", json!([])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "events",
        ),
        (
            with("name", json!("x".repeat(201))),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            with("name", json!("  ")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            with("channels", json!(["a b"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "channels",
        ),
        (
            with("secret", json!("not base64!")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "secret",
        ),
        (
            with("secret", json!("whsec_AAAA")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "secret",
        ),
        (
            with("colour", json!("red")),
            StatusCode::BAD_REQUEST,
            "colour",
        ),
        (
            with("active", json!("yes")),
            StatusCode::BAD_REQUEST,
            "active",
        ),
        (
            json!({"url": "https://example.com/h", "events": ["order.created"]}),
            StatusCode::BAD_REQUEST,
            "name",
        ),
    ];
    for (body, want, field) in cases {
        let (status, resp) = app.post(&path, &key, body.clone()).await;
        assert_error(status, &resp, want, Some(field));
    }
    let message = app
        .post(&path, &key, with("events", json!(["order.exploded"])))
        .await
        .1["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("order.exploded") && message.contains("order.created"),
        "{message}"
    );

    // Too large: 413, in the envelope.
    let (status, resp) = app
        .post(&path, &key, with("name", json!("x".repeat(70 * 1024))))
        .await;
    assert_error(status, &resp, StatusCode::PAYLOAD_TOO_LARGE, None);
    // Not JSON at all.
    let resp = app
        .http
        .post(format!("{}{path}", app.base))
        .bearer_auth(&key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // An update that fails part-way changes nothing.
    let hook = app.webhook(&ws, &key, ok.clone()).await;
    let one = format!("{path}/{}", hook["id"].as_str().unwrap());
    let (status, resp) = app
        .call(
            Method::PATCH,
            &one,
            Some(&key),
            Some(json!({"name": "renamed", "url": "http://plain.example.com/"})),
        )
        .await;
    assert_error(status, &resp, StatusCode::UNPROCESSABLE_ENTITY, Some("url"));
    let (_, now) = app.get(&one, &key).await;
    assert_eq!(now["data"]["name"], "n");

    // Nothing but the one valid webhook was written.
    let (_, list) = app.get(&path, &key).await;
    assert_eq!(list["data"]["items"].as_array().unwrap().len(), 1);
}

async fn every_route_hides_other_workspaces(app: Arc<App>) {
    let (ws_a, key_a) = app.tenant().await;
    let (ws_b, key_b) = app.tenant().await;
    let hook_b = app
        .webhook(
            &ws_b,
            &key_b,
            json!({"name": "b", "url": "http://127.0.0.1:9/h", "events": ["order.created"]}),
        )
        .await;
    let hook = hook_b["id"].as_str().unwrap();
    let delivery = seed(&app.store, &ws_b, hook, EventType::OrderCreated, 1).await[0];
    let event = app
        .store
        .get_delivery(delivery)
        .await
        .unwrap()
        .unwrap()
        .event_id;
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/workspaces/{ws_b}/webhooks"), None),
        (
            Method::POST,
            format!("/v1/workspaces/{ws_b}/webhooks"),
            Some(json!({"name": "x", "url": "http://127.0.0.1:9/h", "events": ["order.created"]})),
        ),
        (
            Method::GET,
            format!("/v1/workspaces/{ws_b}/webhooks/{hook}"),
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/workspaces/{ws_b}/webhooks/{hook}"),
            Some(json!({"name": "stolen"})),
        ),
        (
            Method::DELETE,
            format!("/v1/workspaces/{ws_b}/webhooks/{hook}"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/workspaces/{ws_b}/webhooks/{hook}/test"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/workspaces/{ws_b}/webhooks/{hook}/rotate-secret"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/workspaces/{ws_b}/webhooks/{hook}/recover"),
            Some(json!({"since": "2020-01-01T00:00:00Z"})),
        ),
        (
            Method::GET,
            format!("/v1/workspaces/{ws_b}/webhooks/{hook}/events"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/workspaces/{ws_b}/deliveries"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/workspaces/{ws_b}/deliveries/{delivery}"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/workspaces/{ws_b}/deliveries/{delivery}/attempts"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/workspaces/{ws_b}/deliveries/{delivery}/retry"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/workspaces/{ws_b}/events"),
            Some(json!({"type": "order.created", "data": {}})),
        ),
        (
            Method::GET,
            format!("/v1/workspaces/{ws_b}/events/{event}"),
            None,
        ),
    ];
    assert_eq!(routes.len() + 3, served_routes().len());
    for (method, path, body) in &routes {
        // Another tenant's key: 404, as if the workspace did not exist.
        let (status, resp) = app
            .call(method.clone(), path, Some(&key_a), body.clone())
            .await;
        assert_error(status, &resp, StatusCode::NOT_FOUND, None);
        // No key, wrong key: 401.
        let (status, resp) = app.call(method.clone(), path, None, body.clone()).await;
        assert_error(status, &resp, StatusCode::UNAUTHORIZED, None);
        let (status, resp) = app
            .call(
                method.clone(),
                path,
                Some("ck_wrongwrongwrongwrongwrongwrongwrongwrongwro"),
                body.clone(),
            )
            .await;
        assert_error(status, &resp, StatusCode::UNAUTHORIZED, None);
        // A's key on A's path with B's ids: not found either.
        let own = path.replace(&ws_b, &ws_a);
        let (status, resp) = app
            .call(method.clone(), &own, Some(&key_a), body.clone())
            .await;
        if own.ends_with("/webhooks") || own.ends_with("/deliveries") {
            assert!(status.is_success(), "{own}: {resp}");
            assert!(!resp.to_string().contains(hook), "{own} leaked {resp}");
        } else if own.ends_with("/events") && !own.contains("/webhooks/") {
            // Ingest into A works without a broker only as far as 503.
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{resp}");
        } else {
            assert_error(status, &resp, StatusCode::NOT_FOUND, None);
        }
    }
    // B's webhook is untouched.
    let (status, resp) = app
        .get(&format!("/v1/workspaces/{ws_b}/webhooks/{hook}"), &key_b)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resp["data"]["name"], "b");
    assert_eq!(resp["data"]["secret"], hook_b["secret"]);
}

async fn delivery_log_pages_filters_and_details(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let h1 = app.webhook(&ws, &key, json!({"name": "1", "url": "http://127.0.0.1:9/hook", "events": ["order.created", "shipment.created"]})).await;
    let h2 = app
        .webhook(
            &ws,
            &key,
            json!({"name": "2", "url": "http://127.0.0.1:9/other", "events": ["order.created"]}),
        )
        .await;
    let (h1, h2) = (h1["id"].as_str().unwrap(), h2["id"].as_str().unwrap());
    let mut original = seed(&app.store, &ws, h1, EventType::OrderCreated, 4).await;
    original.extend(seed(&app.store, &ws, h1, EventType::ShipmentCreated, 3).await);
    original.extend(seed(&app.store, &ws, h2, EventType::OrderCreated, 3).await);
    attempt(&app.store, original[0], 1, 500, DeliveryStatus::Dead).await;
    attempt(&app.store, original[4], 1, 200, DeliveryStatus::Succeeded).await;

    // Page through with first=3 while new deliveries keep arriving: every
    // original row shows up exactly once, newest first.
    let path = format!("/v1/workspaces/{ws}/deliveries");
    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &after {
            Some(a) => format!("?first=3&after={a}"),
            None => "?first=3".into(),
        };
        let (status, body) = app.get(&format!("{path}{query}"), &key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let items = body["data"]["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
        pages += 1;
        seed(&app.store, &ws, h2, EventType::OrderCreated, 2).await;
        if body["data"]["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = Some(
            body["data"]["pageInfo"]["endCursor"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(pages, 4);
    let mut expected: Vec<String> = original.iter().map(|d| d.to_string()).collect();
    expected.reverse();
    assert_eq!(seen, expected);

    // One row, in full.
    let (_, body) = app
        .get(&format!("{path}?first=100&type=shipment.created"), &key)
        .await;
    let items = body["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|i| i["type"] == "shipment.created"));
    let (_, body) = app.get(&format!("{path}?status=dead"), &key).await;
    let dead = &body["data"]["items"].as_array().unwrap()[..];
    assert_eq!(dead.len(), 1);
    let row = &dead[0];
    assert_eq!(row["id"], original[0].to_string());
    assert_eq!(row["responseStatus"], 500);
    assert_eq!(row["attempts"], 1);
    assert_eq!(row["url"], "http://127.0.0.1:9/hook");
    assert_eq!(row["webhookId"], h1);
    assert!(row["eventId"].as_str().unwrap().starts_with("evt_"));
    assert!(row["lastAttemptAt"].is_string() && row["createdAt"].is_string());
    let (_, body) = app
        .get(
            &format!("{path}?first=100&webhook={h2}&type=order.created"),
            &key,
        )
        .await;
    assert_eq!(
        body["data"]["items"].as_array().unwrap().len(),
        3 + 2 * pages
    );
    let (_, body) = app
        .get(
            &format!("{path}?first=100&status=pending&webhook={h1}"),
            &key,
        )
        .await;
    assert_eq!(body["data"]["items"].as_array().unwrap().len(), 5);
    for (query, field) in [
        ("type=order.nope", "type"),
        ("status=lost", "status"),
        ("webhook=x", "webhook"),
    ] {
        let (status, body) = app.get(&format!("{path}?{query}"), &key).await;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
    }

    let one = format!("{path}/{}", original[0]);
    let (status, body) = app.get(&one, &key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "dead");
    assert_eq!(body["data"]["attemptLog"][0]["responseStatus"], 500);
    assert_eq!(body["data"]["attemptLog"][0]["durationMs"], 12);
    assert_eq!(
        body["data"]["attemptLog"][0]["responseExcerpt"],
        "upstream said no"
    );
    let (status, body) = app.get(&format!("{one}/attempts"), &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["attempt"], 1);
    let (status, body) = app
        .get(&format!("{path}/{}", uuid::Uuid::new_v4()), &key)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, None);

    // Per-webhook event view.
    let (status, body) = app
        .get(
            &format!("/v1/workspaces/{ws}/webhooks/{h1}/events?first=100"),
            &key,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = body["data"]["items"].as_array().unwrap();
    assert_eq!(events.len(), 7);
    let succeeded = events
        .iter()
        .find(|e| e["deliveryId"] == original[4].to_string())
        .unwrap();
    assert_eq!(succeeded["status"], "succeeded");
    assert_eq!(succeeded["responseStatus"], 200);
    assert_eq!(succeeded["attempts"], 1);
    assert_eq!(succeeded["type"], "shipment.created");
}

async fn deleted_webhook_keeps_its_history(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let hook = app
        .webhook(
            &ws,
            &key,
            json!({"name": "1", "url": "http://127.0.0.1:9/hook", "events": ["order.created"]}),
        )
        .await;
    let id = hook["id"].as_str().unwrap();
    let ids = seed(&app.store, &ws, id, EventType::OrderCreated, 2).await;
    attempt(&app.store, ids[0], 1, 200, DeliveryStatus::Succeeded).await;
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/workspaces/{ws}/webhooks/{id}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // The history stays readable, by webhook id too.
    let (_, body) = app
        .get(
            &format!("/v1/workspaces/{ws}/deliveries?webhook={id}"),
            &key,
        )
        .await;
    let items = body["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let done = items
        .iter()
        .find(|i| i["id"] == ids[0].to_string())
        .unwrap();
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["url"], "http://127.0.0.1:9/hook");
    // The pending one is what the worker will cancel: its context has no
    // subscription any more.
    let context = app.store.delivery_context(ids[1]).await.unwrap().unwrap();
    assert!(context.subscription.is_none());
    // Redelivering it is refused: it would only be canceled.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/workspaces/{ws}/deliveries/{}/retry", ids[1]),
            Some(&key),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, None);
}

async fn test_send_to_live_and_failing_receivers(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let live = receiver(204).await;
    let hook = app
        .webhook(&ws, &key, json!({"name": "live", "url": live.url, "events": ["order.status", "shipment.created"], "secret": "QWZTFnMEXhqZKNmu"}))
        .await;
    let test = format!(
        "/v1/workspaces/{ws}/webhooks/{}/test",
        hook["id"].as_str().unwrap()
    );
    // No event: one test per subscribed type.
    let (status, body) = app.call(Method::POST, &test, Some(&key), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let report = &body["data"];
    assert_eq!(report["testsRun"], 2);
    assert_eq!(report["testsSucceeded"], 2);
    assert_eq!(report["testsFailed"], 0);
    assert!(report["startedAt"].is_string());
    let tests = report["tests"].as_array().unwrap();
    assert_eq!(tests[0]["event"], "order.status_changed");
    assert_eq!(tests[1]["event"], "shipment.created");
    assert_eq!(tests[0]["url"], live.url.as_str());
    assert_eq!(tests[0]["responseStatus"], 204);
    assert!(tests[0]["error"].is_null());
    assert!(tests[0]["durationMs"].is_u64());
    {
        let seen = live.seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        for (headers, body) in seen.iter() {
            // Verified with exactly the secret string registered.
            assert!(verify("QWZTFnMEXhqZKNmu", headers, body));
            assert!(!verify(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                headers,
                body
            ));
        }
        let payload: Value = serde_json::from_slice(&seen[1].1).unwrap();
        assert_eq!(payload["type"], "shipment.created");
        assert_eq!(payload["workspace_id"], ws.as_str());
        assert!(payload["data"]["parcels"].is_array());
    }
    // A chosen event type.
    let (_, body) = app
        .post(&test, &key, json!({"event": "webhook.test"}))
        .await;
    assert_eq!(body["data"]["testsRun"], 1);
    assert_eq!(body["data"]["tests"][0]["event"], "webhook.test");
    assert_eq!(live.seen.lock().unwrap().len(), 3);
    let (status, body) = app.post(&test, &key, json!({"event": "nope"})).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("event"),
    );

    // A failing receiver, and one that is not there at all.
    let failing = receiver(500).await;
    let bad = app
        .webhook(
            &ws,
            &key,
            json!({"name": "bad", "url": failing.url, "events": ["order.created"]}),
        )
        .await;
    let (_, body) = app
        .post(
            &format!(
                "/v1/workspaces/{ws}/webhooks/{}/test",
                bad["id"].as_str().unwrap()
            ),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(body["data"]["testsFailed"], 1);
    assert_eq!(body["data"]["tests"][0]["responseStatus"], 500);
    assert!(
        body["data"]["tests"][0]["error"]
            .as_str()
            .unwrap()
            .contains("500")
    );
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gone = app
        .webhook(&ws, &key, json!({"name": "gone", "url": format!("http://127.0.0.1:{closed}/hook"), "events": ["order.created"]}))
        .await;
    let (_, body) = app
        .post(
            &format!(
                "/v1/workspaces/{ws}/webhooks/{}/test",
                gone["id"].as_str().unwrap()
            ),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(body["data"]["testsFailed"], 1);
    assert!(body["data"]["tests"][0]["responseStatus"].is_null());
    assert!(
        !body["data"]["tests"][0]["error"]
            .as_str()
            .unwrap()
            .is_empty()
    );
}

async fn rotation_signs_with_both_secrets(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let live = receiver(200).await;
    let hook = app
        .webhook(
            &ws,
            &key,
            json!({"name": "r", "url": live.url, "events": ["order.created"]}),
        )
        .await;
    let old = hook["secret"].as_str().unwrap().to_owned();
    let base = format!(
        "/v1/workspaces/{ws}/webhooks/{}",
        hook["id"].as_str().unwrap()
    );
    let (status, body) = app
        .post(&format!("{base}/rotate-secret"), &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["data"]["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    let until = chrono::DateTime::parse_from_rfc3339(
        body["data"]["previousSecretExpiresAt"].as_str().unwrap(),
    )
    .unwrap();
    assert!(until > Utc::now() + chrono::Duration::minutes(59));
    let (_, got) = app.get(&base, &key).await;
    assert_eq!(got["data"]["secret"], new.as_str());

    let (_, body) = app.post(&format!("{base}/test"), &key, json!({})).await;
    assert_eq!(body["data"]["testsSucceeded"], 1);
    {
        let seen = live.seen.lock().unwrap();
        let (headers, body) = &seen[0];
        // A receiver holding either secret verifies.
        assert!(verify(&old, headers, body));
        assert!(verify(&new, headers, body));
        assert_eq!(
            headers["webhook-signature"]
                .to_str()
                .unwrap()
                .split(' ')
                .count(),
            2
        );
    }
    // A chosen secret in the legacy form is kept as given; bad ones refused.
    let (_, body) = app
        .post(
            &format!("{base}/rotate-secret"),
            &key,
            json!({"secret": "QWZTFnMEXhqZKNmu"}),
        )
        .await;
    assert_eq!(body["data"]["secret"], "QWZTFnMEXhqZKNmu");
    let (status, body) = app
        .post(
            &format!("{base}/rotate-secret"),
            &key,
            json!({"secret": "short"}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("secret"),
    );
}

async fn get_message(topology: &Topology, queue: &str) -> Option<Vec<u8>> {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
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
        .unwrap();
    let _ = topology;
    let got = if q.message_count() == 0 {
        None
    } else {
        let m = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
            .unwrap();
        m.acker.ack(BasicAckOptions::default()).await.unwrap();
        Some(m.delivery.data.clone())
    };
    connection.close(200, "".into()).await.ok();
    got
}

async fn redelivery_recover_and_ingest(app: Arc<App>) {
    let topology = app.topology.clone().unwrap();
    let (ws, key) = app.tenant().await;
    let hook = app
        .webhook(
            &ws,
            &key,
            json!({"name": "1", "url": "http://127.0.0.1:9/hook", "events": ["order.created"]}),
        )
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    let ids = seed(&app.store, &ws, hook_id, EventType::OrderCreated, 3).await;
    for (i, id) in ids.iter().enumerate() {
        for n in 1..=2 {
            let status = if n == 2 && i < 2 {
                DeliveryStatus::Dead
            } else {
                DeliveryStatus::Retrying
            };
            attempt(&app.store, *id, n, 503, status).await;
        }
    }
    attempt(&app.store, ids[2], 3, 200, DeliveryStatus::Succeeded).await;

    // Manual redelivery of a dead delivery: retrying, attempts kept, and a
    // message for attempt 3 in the deliveries queue.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/workspaces/{ws}/deliveries/{}/retry", ids[0]),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["attempt"], 3);
    let record = app.store.get_delivery(ids[0]).await.unwrap().unwrap();
    assert_eq!(record.status, DeliveryStatus::Retrying);
    assert_eq!(record.attempts, 2);
    let msg = DeliveryMessage::from_slice(
        &get_message(&topology, &topology.deliveries_queue())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(msg.delivery_id, ids[0]);
    assert_eq!(msg.attempt, 3);
    assert_eq!(msg.subscription_id.to_string(), hook_id);

    // Bulk recover: only dead/canceled ones since the time given.
    let (status, body) = app
        .post(
            &format!("/v1/workspaces/{ws}/webhooks/{hook_id}/recover"),
            &key,
            json!({"since": (Utc::now() - chrono::Duration::hours(1)).to_rfc3339()}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["deliveryIds"], json!([ids[1].to_string()]));
    assert_eq!(body["data"]["hasMore"], false);
    let msg = DeliveryMessage::from_slice(
        &get_message(&topology, &topology.deliveries_queue())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!((msg.delivery_id, msg.attempt), (ids[1], 3));
    assert!(
        get_message(&topology, &topology.deliveries_queue())
            .await
            .is_none()
    );
    let (_, body) = app
        .post(
            &format!("/v1/workspaces/{ws}/webhooks/{hook_id}/recover"),
            &key,
            json!({"since": Utc::now().to_rfc3339()}),
        )
        .await;
    assert_eq!(body["data"]["deliveryIds"], json!([]));

    // Ingest: validated, published with confirms, 202 with the id.
    let path = format!("/v1/workspaces/{ws}/events");
    let (status, body) = app
        .post(
            &path,
            &key,
            json!({"type": "order.status", "channel": "amazon", "data": {"order_id": "o-9"}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_owned();
    let event = Event::from_slice(
        &get_message(&topology, &topology.fanout_queue())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(event.id, EventId::parse(id).unwrap());
    assert_eq!(event.event_type, EventType::OrderStatusChanged);
    assert_eq!(event.workspace_id.as_str(), ws);
    assert_eq!(event.data.to_value(), json!({"order_id": "o-9"}));
    let (status, body) = app
        .post(
            &path,
            &key,
            json!({"type": "order.created", "id": "evt_mine", "data": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["data"]["id"], "evt_mine");
    assert!(
        get_message(&topology, &topology.fanout_queue())
            .await
            .is_some()
    );
    for (body, want, field) in [
        (
            json!({"type": "nope", "data": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("type"),
        ),
        (
            json!({"type": "order.created", "data": [1]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("data"),
        ),
        (
            json!({"type": "order.created", "data": {}, "extra": 1}),
            StatusCode::BAD_REQUEST,
            Some("extra"),
        ),
        (
            json!({"type": "order.created", "data": {"big": "x".repeat(300 * 1024)}}),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
    ] {
        let (status, resp) = app.post(&path, &key, body).await;
        assert_error(status, &resp, want, field);
    }
    // Nothing from the refused ones reached the broker.
    assert!(
        get_message(&topology, &topology.fanout_queue())
            .await
            .is_none()
    );
    // Ingest takes bodies above the 64 KiB of other routes.
    let (status, _) = app
        .post(
            &path,
            &key,
            json!({"type": "order.created", "data": {"big": "x".repeat(100 * 1024)}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

async fn broker_routes_answer_503_without_broker(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let hook = app
        .webhook(
            &ws,
            &key,
            json!({"name": "1", "url": "http://127.0.0.1:9/hook", "events": ["order.created"]}),
        )
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    let ids = seed(&app.store, &ws, hook_id, EventType::OrderCreated, 1).await;
    attempt(&app.store, ids[0], 1, 500, DeliveryStatus::Dead).await;
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/workspaces/{ws}/deliveries/{}/retry", ids[0]),
            Some(&key),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE, None);
    // Nothing was reopened.
    assert_eq!(
        app.store
            .get_delivery(ids[0])
            .await
            .unwrap()
            .unwrap()
            .status,
        DeliveryStatus::Dead
    );
    let (status, body) = app
        .post(
            &format!("/v1/workspaces/{ws}/events"),
            &key,
            json!({"type": "order.created", "data": {}}),
        )
        .await;
    assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE, None);
}

async fn graphql_operations_as_clients_send_them(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let (_, other_key) = app.tenant().await;
    let (status, body) = app
        .gql(Some(&key), r#"mutation { webhookCreate(input: {url: "http://127.0.0.1:9/hook", type: ORDER_CREATED, status: ENABLED}) { id url type status } }"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["errors"].is_null(), "{body}");
    let created = &body["data"]["webhookCreate"];
    assert_eq!(created["url"], "http://127.0.0.1:9/hook");
    assert_eq!(created["type"], "ORDER_CREATED");
    assert_eq!(created["status"], "ENABLED");
    let id = created["id"].as_str().unwrap().to_owned();
    // Same webhook over REST.
    let (_, rest) = app
        .get(&format!("/v1/workspaces/{ws}/webhooks/{id}"), &key)
        .await;
    assert_eq!(rest["data"]["events"], json!(["order.created"]));

    let update = format!(
        r#"mutation {{ webhookUpdate(input: {{id: "{id}", url: "http://127.0.0.1:9/new", type: ORDER_STATUS_CHANGED, status: DISABLED}}) {{ id url type status }} }}"#
    );
    let (_, body) = app.gql(Some(&key), &update).await;
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(
        body["data"]["webhookUpdate"]["type"],
        "ORDER_STATUS_CHANGED"
    );
    assert_eq!(body["data"]["webhookUpdate"]["status"], "DISABLED");
    assert_eq!(
        body["data"]["webhookUpdate"]["url"],
        "http://127.0.0.1:9/new"
    );

    let (_, body) = app
        .gql(Some(&key), "query { webhooks { id url type status } }")
        .await;
    assert_eq!(body["data"]["webhooks"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"]["webhooks"][0]["id"], id.as_str());

    // Another workspace sees nothing and can change nothing.
    let (_, body) = app.gql(Some(&other_key), "query { webhooks { id } }").await;
    assert_eq!(body["data"]["webhooks"], json!([]));
    let (_, body) = app.gql(Some(&other_key), &update).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{body}"
    );
    // No key, wrong key: 401.
    let (status, body) = app.gql(None, "query { webhooks { id } }").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    let (status, _) = app.gql(Some("ck_nope"), "query { webhooks { id } }").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Validation errors name the field.
    let (_, body) = app
        .gql(Some(&key), r#"mutation { webhookCreate(input: {url: "not a url", type: ORDER_CREATED, status: ENABLED}) { id } }"#)
        .await;
    assert_eq!(body["errors"][0]["extensions"]["field"], "url", "{body}");

    // webhookLogs, paged with the cursor, filtered by type.
    let hook = app.webhook(&ws, &key, json!({"name": "l", "url": "http://127.0.0.1:9/logs", "events": ["order.created", "order.canceled"]})).await;
    let hook_id = hook["id"].as_str().unwrap();
    let created_ids = seed(&app.store, &ws, hook_id, EventType::OrderCreated, 3).await;
    seed(&app.store, &ws, hook_id, EventType::OrderCanceled, 2).await;
    attempt(
        &app.store,
        created_ids[2],
        1,
        200,
        DeliveryStatus::Succeeded,
    )
    .await;
    let (_, body) = app
        .gql(Some(&key), "query { webhookLogs(first: 2, filter: {type: ORDER_CREATED}) { edges { node { id type url createdAt responseStatus } } pageInfo { hasNextPage endCursor } } }")
        .await;
    assert!(body["errors"].is_null(), "{body}");
    let logs = &body["data"]["webhookLogs"];
    let edges = logs["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2);
    assert_eq!(edges[0]["node"]["id"], created_ids[2].to_string());
    assert_eq!(edges[0]["node"]["type"], "ORDER_CREATED");
    assert_eq!(edges[0]["node"]["responseStatus"], 200);
    assert_eq!(edges[1]["node"]["url"], "http://127.0.0.1:9/logs");
    assert_eq!(logs["pageInfo"]["hasNextPage"], true);
    let after = logs["pageInfo"]["endCursor"].as_str().unwrap();
    let (_, body) = app
        .gql(Some(&key), &format!(r#"query {{ webhookLogs(first: 20, after: "{after}", filter: {{type: ORDER_CREATED}}) {{ edges {{ node {{ id type url createdAt responseStatus }} }} pageInfo {{ hasNextPage endCursor }} }} }}"#))
        .await;
    let edges = body["data"]["webhookLogs"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 1);
    assert_eq!(edges[0]["node"]["id"], created_ids[0].to_string());
    assert_eq!(
        body["data"]["webhookLogs"]["pageInfo"]["hasNextPage"],
        false
    );
    let (_, body) = app
        .gql(
            Some(&other_key),
            "query { webhookLogs(first: 20) { edges { node { id } } } }",
        )
        .await;
    assert_eq!(body["data"]["webhookLogs"]["edges"], json!([]));

    let (_, body) = app
        .gql(
            Some(&key),
            &format!(r#"mutation {{ webhookDelete(id: "{id}") {{ id }} }}"#),
        )
        .await;
    assert_eq!(body["data"]["webhookDelete"]["id"], id.as_str(), "{body}");
    let (_, body) = app
        .gql(
            Some(&key),
            &format!(r#"mutation {{ webhookDelete(input: {{id: "{hook_id}"}}) {{ id }} }}"#),
        )
        .await;
    assert_eq!(body["data"]["webhookDelete"]["id"], hook_id, "{body}");
    let (_, body) = app.gql(Some(&key), "query { webhooks { id } }").await;
    assert_eq!(body["data"]["webhooks"], json!([]));
}

/// Every (method, path template) the REST router serves.
fn served_routes() -> Vec<(&'static str, &'static str)> {
    vec![
        ("get", "/v1/event-types"),
        ("post", "/v1/workspaces"),
        ("post", "/v1/workspaces/{ws}/api-keys"),
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
        ("get", "/v1/workspaces/{ws}/events/{id}"),
    ]
}

async fn openapi_lists_every_served_route(app: Arc<App>) {
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "patch", "put", "delete"].contains(&k.as_str()))
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    documented.sort();
    let mut served: Vec<(String, String)> = served_routes()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    served.sort();
    assert_eq!(documented, served);
    // And every one of them is really served: none falls through to the
    // router's "route not found".
    for (method, path) in served_routes() {
        let concrete = path
            .replace("{ws}", "w")
            .replace("{id}", &uuid::Uuid::new_v4().to_string());
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (status, body) = app.call(method, &concrete, None, Some(json!({}))).await;
        assert_ne!(body["error"]["message"], "route not found", "{path}");
        assert!(
            status == StatusCode::UNAUTHORIZED || status.is_success(),
            "{path}: {status}"
        );
    }
    let (_, body) = app.call(Method::GET, "/v1/nothing-here", None, None).await;
    assert_eq!(body["error"]["message"], "route not found");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[test]
fn keys_are_hashed_with_sha256() {
    assert_eq!(courier_api::keys::hash_key("").len(), 64);
    let _ = NoChanges;
}
