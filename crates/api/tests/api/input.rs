//! What the management API accepts: event data kept byte for byte, data
//! nested too deep refused, names without control characters, and JSON
//! bodies that are one object and nothing else.
//!
//! Bodies are sent as text, not built with `serde_json`: a `Value` would
//! normalise exactly what these tests look at. So this module's [`App`]
//! wraps the shared one with helpers that send text.

use std::future::Future;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use courier_model::{Event, MAX_DATA_DEPTH};
use courier_store::Backend;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common::{self, ADMIN, Setup, amqp_url};
use crate::on_both_backends;

/// Data a `serde_json::Value` would change: digits beyond f64 and u64, keys
/// out of order, escapes (`\u00e9`, `\n`, `\"`) a writer re-encodes,
/// characters beyond ASCII, spacing of its own.
const EXACT_DATA: &str = r#"{"order_id": "o-1", "total": 12.50000000000000000001, "big": 123456789012345678901234567890, "note":"caf\u00e9 ✓\n \"quoted\"",  "a": {"z": 1, "b": []}}"#;

on_both_backends!(
    ingest_keeps_data_byte_for_byte => Setup { broker: true, ..DEFAULT },
    ingest_refuses_data_nested_too_deep => Setup { broker: true, ..DEFAULT },
    ingest_refuses_courier_s_own_event_types => Setup { broker: true, ..DEFAULT },
    batch_ingest_is_all_or_nothing => Setup { broker: true, ..DEFAULT },
    test_send_sends_caller_data_as_given => DEFAULT,
    names_refuse_control_characters => DEFAULT,
    json_bodies_are_one_object_and_nothing_else => DEFAULT,
);

/// The shared app, with this module's text-sending helpers in front of its
/// own.
struct App(Arc<common::App>);

impl Deref for App {
    type Target = common::App;

    fn deref(&self) -> &common::App {
        &self.0
    }
}

async fn run<F, Fut>(backend: Backend, setup: Setup, test: F)
where
    F: FnOnce(Arc<App>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    common::run(backend, setup, |app| test(Arc::new(App(app)))).await;
}

// --- client helpers ---------------------------------------------------------------

impl App {
    /// Sends `body` as it is, labelled JSON.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        (status, value)
    }

    async fn post(&self, path: &str, token: &str, body: &str) -> (StatusCode, Value) {
        self.send(Method::POST, path, token, body).await
    }

    /// A workspace and a key for it, through the admin routes.
    async fn tenant(&self) -> (String, String) {
        let (status, body) = self
            .post("/v1/workspaces", ADMIN, r#"{"name": "Acme"}"#)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let ws = body["data"]["id"].as_str().unwrap().to_owned();
        let path = format!("/v1/workspaces/{ws}/api-keys");
        let (status, body) = self.post(&path, ADMIN, r#"{"name": "tests"}"#).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (ws, body["data"]["key"].as_str().unwrap().to_owned())
    }

    async fn webhook(&self, ws: &str, key: &str, url: &str) -> String {
        let body = format!(r#"{{"name": "n", "url": "{url}", "events": ["order.created"]}}"#);
        let (status, body) = self
            .post(&format!("/v1/workspaces/{ws}/webhooks"), key, &body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["data"]["id"].as_str().unwrap().to_owned()
    }

    async fn webhook_count(&self, ws: &str, key: &str) -> usize {
        let (status, body) = self
            .send(
                Method::GET,
                &format!("/v1/workspaces/{ws}/webhooks"),
                key,
                "",
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"]["items"].as_array().map_or(0, Vec::len)
    }

    /// Takes one message from `queue`, if there is one.
    async fn take_message(&self, queue: &str) -> Option<Vec<u8>> {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let message = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .map(|m| m.delivery.data.clone());
        connection.close(200, "".into()).await.ok();
        message
    }

    async fn queue_len(&self, queue: &str) -> u32 {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let len = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .unwrap()
            .message_count();
        connection.close(200, "".into()).await.ok();
        len
    }
}

#[track_caller]
fn assert_error(status: StatusCode, body: &Value, want: StatusCode, field: Option<&str>) -> String {
    assert_eq!(status, want, "{body}");
    assert!(body["data"].is_null(), "{body}");
    assert_eq!(body["error"]["field"].as_str(), field, "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// `text` ends with `"data":<data>}`: the data, byte for byte, as the last
/// member of the event or webhook body.
#[track_caller]
fn assert_data_exact(text: &[u8], data: &str) {
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(
        text.ends_with(&format!(r#""data":{data}}}"#)),
        "data changed on the way:\n sent {data}\n got {text}"
    );
}

/// Data nesting `levels` objects, each under key "a".
fn nested(levels: usize) -> String {
    format!(
        "{}{}",
        r#"{"a":"#.repeat(levels - 1) + "{}",
        "}".repeat(levels - 1)
    )
}

/// A receiver on 127.0.0.1 answering 204 and recording every body.
async fn receiver() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(body.to_vec());
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

// --- scenarios -------------------------------------------------------------------------

async fn ingest_keeps_data_byte_for_byte(app: Arc<App>) {
    let topology = app.topology.clone().unwrap();
    let (ws, key) = app.tenant().await;
    let path = format!("/v1/workspaces/{ws}/events");
    // `data` first, and spaced, so nothing depends on where it sits.
    let body =
        format!("{{\"data\":  {EXACT_DATA} , \"type\": \"order.created\", \"id\": \"evt_exact\"}}");
    let (status, resp) = app.post(&path, &key, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");

    let published = common::only_event(&app.take_message(&topology.fanout_queue()).await.unwrap());
    assert_data_exact(&published, EXACT_DATA);
    // What the worker makes of it, and what a receiver then gets.
    let event = Event::from_slice(&published).unwrap();
    assert_eq!(event.id.as_str(), "evt_exact");
    assert_eq!(event.data.as_str(), EXACT_DATA);
    assert_data_exact(&event.webhook_body(), EXACT_DATA);
}

async fn ingest_refuses_courier_s_own_event_types(app: Arc<App>) {
    let topology = app.topology.clone().unwrap();
    let (ws, key) = app.tenant().await;
    let path = format!("/v1/workspaces/{ws}/events");
    for ty in ["webhook.failing", "webhook.disabled", "WEBHOOK_RECOVERED"] {
        let body = format!(r#"{{"type": "{ty}", "data": {{}}}}"#);
        let (status, resp) = app.post(&path, &key, &body).await;
        let message = assert_error(
            status,
            &resp,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("type"),
        );
        assert!(message.contains("published by courier itself"), "{message}");
    }
    assert_eq!(app.queue_len(&topology.fanout_queue()).await, 0);
}

async fn batch_ingest_is_all_or_nothing(app: Arc<App>) {
    let topology = app.topology.clone().unwrap();
    let (ws, key) = app.tenant().await;
    let path = format!("/v1/workspaces/{ws}/events/batch");
    let fanout = topology.fanout_queue();

    // One bad event refuses the batch, naming it; nothing is published.
    let refused = [
        (
            r#"{"events": [{"type": "order.created", "data": {}}, {"type": "order.nope", "data": {}}]}"#.to_owned(),
            "events[1].type",
        ),
        (
            r#"{"events": [{"type": "webhook.failing", "data": {}}]}"#.to_owned(),
            "events[0].type",
        ),
        (
            r#"{"events": [{"type": "order.created", "data": {}, "id": "bad id"}]}"#.to_owned(),
            "events[0].id",
        ),
        (r#"{"events": []}"#.to_owned(), "events"),
        (
            format!(
                r#"{{"events": [{}]}}"#,
                vec![r#"{"type": "order.created", "data": {}}"#; 1001].join(",")
            ),
            "events",
        ),
    ];
    for (body, field) in &refused {
        let (status, resp) = app.post(&path, &key, body).await;
        assert_error(status, &resp, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
    }
    assert_eq!(app.queue_len(&fanout).await, 0);

    // Accepted: every event confirmed, results in the order sent, data as
    // it was sent.
    let body = format!(
        r#"{{"events": [{{"type": "order.created", "id": "evt_b1", "data": {EXACT_DATA}}},
            {{"type": "shipment.created", "channel": "web", "data": {{}}}},
            {{"type": "order.canceled", "id": "evt_b3", "data": {{"n": 3}}}}]}}"#
    );
    let (status, resp) = app.post(&path, &key, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert!(resp["error"].is_null(), "{resp}");
    assert_eq!(resp["data"]["accepted"], 3, "{resp}");
    assert_eq!(resp["data"]["failed"], 0, "{resp}");
    let results = resp["data"]["events"].as_array().unwrap();
    assert_eq!(results[0]["id"], "evt_b1");
    assert_eq!(results[2]["id"], "evt_b3");
    assert!(results.iter().all(|r| r["accepted"] == true), "{resp}");
    let generated = results[1]["id"].as_str().unwrap();
    assert!(generated.starts_with("evt_"), "{generated}");

    let mut published = Vec::new();
    while let Some(message) = app.take_message(&fanout).await {
        for event in courier_model::EventGroup::decode(&message).unwrap() {
            published.push(Event::from_slice(event).unwrap());
        }
    }
    let mut ids: Vec<&str> = published.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec!["evt_b1", generated, "evt_b3"];
    want.sort_unstable();
    assert_eq!(ids, want);
    let first = published
        .iter()
        .find(|e| e.id.as_str() == "evt_b1")
        .unwrap();
    assert_eq!(first.data.as_str(), EXACT_DATA);
    assert!(published.iter().all(|e| e.workspace_id.as_str() == ws));
}

async fn ingest_refuses_data_nested_too_deep(app: Arc<App>) {
    let topology = app.topology.clone().unwrap();
    let (ws, key) = app.tenant().await;
    let path = format!("/v1/workspaces/{ws}/events");
    let event = |data: &str| format!(r#"{{"type": "order.created", "data": {data}}}"#);

    // One level past the limit, and far past it (which serde_json alone
    // accepts: it skips raw data without its recursion limit).
    let far = format!(r#"{{"a": {}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    for data in [nested(MAX_DATA_DEPTH + 1), far] {
        let (status, resp) = app.post(&path, &key, &event(&data)).await;
        let message = assert_error(
            status,
            &resp,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("data"),
        );
        assert!(
            message.contains("`data` nests arrays and objects more than 63 levels deep"),
            "{message}"
        );
    }
    assert_eq!(app.queue_len(&topology.fanout_queue()).await, 0);

    // At the limit: accepted, as it was sent.
    let deepest = nested(MAX_DATA_DEPTH);
    let (status, resp) = app.post(&path, &key, &event(&deepest)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    let published = common::only_event(&app.take_message(&topology.fanout_queue()).await.unwrap());
    assert_data_exact(&published, &deepest);
}

async fn test_send_sends_caller_data_as_given(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let (url, seen) = receiver().await;
    let hook = app.webhook(&ws, &key, &url).await;
    let path = format!("/v1/workspaces/{ws}/webhooks/{hook}/test");

    let body = format!(r#"{{"event": "order.created", "data": {EXACT_DATA}}}"#);
    let (status, resp) = app.post(&path, &key, &body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(resp["data"]["testsSucceeded"], 1, "{resp}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_data_exact(&seen[0], EXACT_DATA);
    }

    // Data is checked like an event's, and nothing is sent when it fails.
    for (data, want) in [
        ("[1, 2]", "must be a JSON object"),
        (
            nested(MAX_DATA_DEPTH + 1).as_str(),
            "more than 63 levels deep",
        ),
    ] {
        let body = format!(r#"{{"event": "order.created", "data": {data}}}"#);
        let (status, resp) = app.post(&path, &key, &body).await;
        let message = assert_error(
            status,
            &resp,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("data"),
        );
        assert!(message.contains(want), "{message}");
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
}

async fn names_refuse_control_characters(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let hooks = format!("/v1/workspaces/{ws}/webhooks");
    // JSON escapes, so the body itself is plain text.
    for (name, found) in [
        (r"a\u0000b", "U+0000 at character 2"),
        (r"two\nlines", "U+000A at character 4"),
        (r"\u001b[31mred", "U+001B at character 1"),
    ] {
        let body = format!(
            r#"{{"name": "{name}", "url": "http://127.0.0.1:9/h", "events": ["order.created"]}}"#
        );
        let (status, resp) = app.post(&hooks, &key, &body).await;
        let message = assert_error(
            status,
            &resp,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("name"),
        );
        assert_eq!(
            message,
            format!("must not contain control characters; found {found}")
        );
    }

    // Renaming is held to the same rule.
    let hook = app.webhook(&ws, &key, "http://127.0.0.1:9/h").await;
    let (status, resp) = app
        .send(
            Method::PATCH,
            &format!("{hooks}/{hook}"),
            &key,
            r#"{"name": "x\u0000"}"#,
        )
        .await;
    assert_error(
        status,
        &resp,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("name"),
    );

    // And GraphQL, which creates webhooks through the same code.
    let query = r#"{"query": "mutation($name: String) { webhookCreate(input: {url: \"http://127.0.0.1:9/g\", type: ORDER_CREATED, name: $name}) { id } }", "variables": {"name": "a\u0000b"}}"#;
    let (status, resp) = app.post("/graphql", &key, query).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(resp["errors"][0]["extensions"]["field"], "name", "{resp}");
    assert_eq!(resp["errors"][0]["extensions"]["code"], "INVALID", "{resp}");

    // Only the one valid webhook was stored, its name untouched.
    let workspace = courier_model::WorkspaceId::parse(ws.as_str()).unwrap();
    let stored = app
        .store
        .list_subscriptions(&workspace, 10, None)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].name, "n");

    // Workspaces and API keys are named under the same rule.
    let (status, resp) = app
        .post("/v1/workspaces", ADMIN, r#"{"name": "Ac\u0000me"}"#)
        .await;
    let message = assert_error(
        status,
        &resp,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("name"),
    );
    assert_eq!(
        message,
        "must not contain control characters; found U+0000 at character 3"
    );
    let (status, resp) = app
        .post(
            &format!("/v1/workspaces/{ws}/api-keys"),
            ADMIN,
            r#"{"name": "ci\nkey"}"#,
        )
        .await;
    assert_error(
        status,
        &resp,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("name"),
    );
    assert_eq!(app.store.list_workspaces().await.unwrap().len(), 1);
}

async fn json_bodies_are_one_object_and_nothing_else(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let hook = app.webhook(&ws, &key, "http://127.0.0.1:9/h").await;
    let hooks = format!("/v1/workspaces/{ws}/webhooks");
    let one = format!("{hooks}/{hook}");
    let since = chrono::Utc::now().to_rfc3339();
    // Per route reading a body: a body it accepts, and the same fields as
    // an array, which serde would read positionally into the struct.
    let routes: Vec<(Method, String, &str, String, String)> = vec![
        (
            Method::POST,
            "/v1/workspaces".into(),
            ADMIN,
            r#"{"name": "B"}"#.into(),
            r#"[null, "B"]"#.into(),
        ),
        (
            Method::POST,
            format!("/v1/workspaces/{ws}/api-keys"),
            ADMIN,
            r#"{"name": "k"}"#.into(),
            r#"["k"]"#.into(),
        ),
        (
            Method::POST,
            hooks.clone(),
            &key,
            r#"{"name": "m", "url": "http://127.0.0.1:9/m", "events": ["order.created"]}"#.into(),
            r#"["m", "http://127.0.0.1:9/m", ["order.created"]]"#.into(),
        ),
        (
            Method::PATCH,
            one.clone(),
            &key,
            r#"{"name": "renamed"}"#.into(),
            r#"["renamed", null, null, null, null, null]"#.into(),
        ),
        (
            Method::POST,
            format!("{one}/rotate-secret"),
            &key,
            "{}".into(),
            "[null]".into(),
        ),
        (
            Method::POST,
            format!("{one}/recover"),
            &key,
            format!(r#"{{"since": "{since}"}}"#),
            format!(r#"["{since}"]"#),
        ),
        (
            Method::POST,
            format!("{one}/test"),
            &key,
            r#"{"event": "order.created"}"#.into(),
            r#"["order.created"]"#.into(),
        ),
        (
            Method::POST,
            format!("/v1/workspaces/{ws}/events"),
            &key,
            r#"{"type": "order.created", "data": {}}"#.into(),
            r#"[null, "order.created", null, null, {}]"#.into(),
        ),
    ];
    for (method, path, token, object, array) in &routes {
        let (status, resp) = app.send(method.clone(), path, token, array).await;
        let message = assert_error(status, &resp, StatusCode::BAD_REQUEST, None);
        assert!(
            message.contains("must be a JSON object ({...}), not an array"),
            "{method} {path}: {message}"
        );

        let trailing = format!("{object}xx");
        let (status, resp) = app.send(method.clone(), path, token, &trailing).await;
        let message = assert_error(status, &resp, StatusCode::BAD_REQUEST, None);
        assert!(
            message.contains("must be one JSON object with nothing after it")
                && message.contains(&format!("column {}", object.len() + 1)),
            "{method} {path}: {message}"
        );
        let (status, resp) = app
            .send(method.clone(), path, token, &format!("{object} {object}"))
            .await;
        assert_error(status, &resp, StatusCode::BAD_REQUEST, None);
    }
    // GraphQL reads its body the same way.
    let query = r#"{"query": "{ webhooks { id } }"}"#;
    let (status, resp) = app.post("/graphql", &key, query).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    for body in [format!("[{query}]"), format!("{query}xx")] {
        let (status, resp) = app.post("/graphql", &key, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {resp}");
        let message = resp["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("not an array") || message.contains("nothing after it"),
            "{message}"
        );
    }
    // Nothing was created or changed by the refused bodies.
    let (_, resp) = app.send(Method::GET, &one, &key, "").await;
    assert_eq!(resp["data"]["name"], "n", "{resp}");
    assert_eq!(app.webhook_count(&ws, &key).await, 1);
    assert_eq!(app.store.list_workspaces().await.unwrap().len(), 1);
}
