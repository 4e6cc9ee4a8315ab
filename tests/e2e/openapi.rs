//! The OpenAPI document against a running courier (real RabbitMQ, a SQLite
//! ledger, a receiver on 127.0.0.1):
//!
//! - schemathesis, driven by the document alone, finds no status a route
//!   answers that the document does not list, no response that breaks its
//!   schema, no server error, no invalid request accepted and no valid one
//!   refused (clients/fuzz/ has its configuration);
//! - the Python and TypeScript clients generated from the document
//!   (clients/generate.sh) create a webhook, ingest an event and read the
//!   delivery log until the delivery succeeded (clients/python/example.py,
//!   clients/typescript/example.ts).
//!
//! The tools come from tests/tools.sh (pinned in clients/). Each run is
//! bounded: a fixed seed and example count, and a deadline on every child.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use courier_tests::{Behavior, Db, Receiver, TestEnv, wait_for};
use rand::RngExt;
use serde_json::{Value, json};

const ADMIN: &str = "openapi-e2e-admin-token";

/// Examples per operation and phase, and the seed: about 1400 requests in
/// all, some 15 s on two cores.
const MAX_EXAMPLES: &str = "40";
const SEED: &str = "20261202";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_owned()
}

fn tool(relative: &str) -> PathBuf {
    let path = root().join("target/tools").join(relative);
    assert!(
        path.exists(),
        "{} is missing: run tests/tools.sh (make tools)",
        path.display()
    );
    path
}

/// A courier with the admin routes open, and a workspace with an API key
/// made through them.
struct Courier {
    env: TestEnv,
    worker: courier_tests::env::InProcessWorker,
    http: reqwest::Client,
    workspace: String,
    key: String,
}

impl Courier {
    async fn start() -> Self {
        let env = TestEnv::with(Db::Sqlite, &[("COURIER__API__ADMIN_TOKEN", ADMIN)]).await;
        let worker = env.start_worker().await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let mut courier = Self {
            env,
            worker,
            http,
            workspace: String::new(),
            key: String::new(),
        };
        let (_, ws) = courier
            .call("POST", "/v1/workspaces", ADMIN, json!({"name": "OpenAPI"}))
            .await;
        courier.workspace = ws["data"]["id"].as_str().unwrap().to_owned();
        let (_, key) = courier
            .call(
                "POST",
                &format!("/v1/workspaces/{}/api-keys", courier.workspace),
                ADMIN,
                json!({}),
            )
            .await;
        courier.key = key["data"]["key"].as_str().unwrap().to_owned();
        courier
    }

    fn url(&self) -> String {
        format!("http://{}", self.worker.http_addr)
    }

    /// A call that must succeed: (status, body).
    async fn call(&self, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url()))
            .bearer_auth(token);
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!((200..300).contains(&status), "{path}: {status} {body}");
        (status, body)
    }

    async fn webhook(&self, name: &str, url: &str) -> String {
        let (_, body) = self
            .call(
                "POST",
                &format!("/v1/workspaces/{}/webhooks", self.workspace),
                &self.key,
                json!({"name": name, "url": url, "events": ["order.created"]}),
            )
            .await;
        body["data"]["id"].as_str().unwrap().to_owned()
    }

    async fn document(&self, dir: &Path) -> PathBuf {
        let response = self
            .http
            .get(format!("{}/openapi.json", self.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let path = dir.join("openapi.json");
        std::fs::write(&path, response.bytes().await.unwrap()).unwrap();
        path
    }
}

/// A directory of this test's own under target/tmp, removed when the test
/// passes (kept to look at when it fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{:08x}", rand::rng().random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }
}

/// Runs `command` to its end within `limit` (killed past it) and returns
/// its output, stdout and stderr together; panics naming `what` when it
/// fails.
async fn run(what: &str, mut command: tokio::process::Command, limit: Duration) -> String {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_the_document_does_not_say() {
    let schemathesis = tool("venv/bin/schemathesis");
    let courier = Courier::start().await;
    let receiver = Receiver::start(Behavior::Ok).await;
    let webhook = courier.webhook("fuzzed", &receiver.url()).await;
    let doomed = courier
        .webhook("deleted by the fuzzer", &receiver.url())
        .await;
    // One event delivered, so that the delivery and event routes have one
    // to show.
    let (_, accepted) = courier
        .call(
            "POST",
            &format!("/v1/workspaces/{}/events", courier.workspace),
            &courier.key,
            json!({"type": "order.created", "data": {"order_id": "fuzz-1"}}),
        )
        .await;
    let event = accepted["data"]["id"].as_str().unwrap().to_owned();
    let log = format!(
        "/v1/workspaces/{}/deliveries?webhook={webhook}",
        courier.workspace
    );
    wait_for("the event's delivery", Duration::from_secs(20), || async {
        let (_, page) = courier.call("GET", &log, &courier.key, Value::Null).await;
        page["data"]["items"][0]["status"] == "succeeded"
    })
    .await;
    let (_, page) = courier.call("GET", &log, &courier.key, Value::Null).await;
    let delivery = page["data"]["items"][0]["id"].as_str().unwrap().to_owned();

    let scratch = Scratch::new("schemathesis");
    let config = root().join("clients/fuzz/schemathesis.toml");
    let mut command = tokio::process::Command::new(&schemathesis);
    command
        .current_dir(&scratch.0)
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{}/openapi.json", courier.url())])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
        .args(["--no-color", "--output-truncate", "true"])
        .env("COURIER_API_KEY", &courier.key)
        .env("COURIER_ADMIN_TOKEN", ADMIN)
        .env("COURIER_WORKSPACE", &courier.workspace)
        .env("COURIER_WEBHOOK_ID", &webhook)
        .env("COURIER_DOOMED_WEBHOOK_ID", &doomed)
        .env("COURIER_DELIVERY_ID", &delivery)
        .env("COURIER_EVENT_ID", &event)
        .env("COURIER_RECEIVER_URL", receiver.url())
        .env("COURIER_FUZZ_HOOKS", root().join("clients/fuzz/hooks.py"));
    let output = run("schemathesis", command, Duration::from_secs(300)).await;
    println!("{output}");

    // The hooks kept every webhook on the receiver: nothing was sent
    // anywhere else.
    for workspace in courier.env.store.list_workspaces().await.unwrap() {
        let webhooks = courier
            .env
            .store
            .list_subscriptions(&workspace.id, 10_000, None)
            .await
            .unwrap();
        for sub in webhooks {
            let url = sub.url.as_url();
            assert_eq!(
                url.host_str(),
                Some("127.0.0.1"),
                "a webhook points away from this machine: {url}"
            );
        }
    }
    courier.worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_clients_create_a_webhook_and_read_the_delivery_log() {
    let python = tool("venv/bin/python");
    tool("node/node_modules/.bin/openapi-typescript");
    let courier = Courier::start().await;
    let receiver = Receiver::start(Behavior::Ok).await;
    let scratch = Scratch::new("clients");

    // The clients of the document this courier serves.
    let document = courier.document(&scratch.0).await;
    let out = scratch.0.join("clients");
    let mut generate = tokio::process::Command::new("bash");
    generate
        .arg(root().join("clients/generate.sh"))
        .arg(&document)
        .arg(&out);
    run("clients/generate.sh", generate, Duration::from_secs(180)).await;

    let example_env = [
        ("COURIER_URL", courier.url()),
        ("COURIER_WORKSPACE", courier.workspace.clone()),
        ("COURIER_API_KEY", courier.key.clone()),
        ("RECEIVER_URL", receiver.url()),
    ];
    let mut py = tokio::process::Command::new(&python);
    py.arg(root().join("clients/python/example.py"))
        .env("PYTHONPATH", out.join("python"))
        .envs(example_env.clone());
    let output = run("the Python client's example", py, Duration::from_secs(60)).await;
    assert!(output.contains("python: ok"), "{output}");

    let mut node = tokio::process::Command::new("node");
    node.arg(out.join("typescript/dist/example.js"))
        .envs(example_env);
    let output = run(
        "the TypeScript client's example",
        node,
        Duration::from_secs(60),
    )
    .await;
    assert!(output.contains("typescript: ok"), "{output}");

    // Each example's event reached the receiver once (each deletes its
    // webhook when done, so the second example's event has one to go to).
    let ids: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids[0].starts_with("evt_py_"), "{ids:?}");
    assert!(ids[1].starts_with("evt_ts_"), "{ids:?}");
    courier.worker.stop().await.unwrap();
}
