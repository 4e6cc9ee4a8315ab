//! The OpenAPI document: it lists every route the router serves, is valid
//! OpenAPI (checked by an independent validator, openapi-spec-validator,
//! which tests/tools.sh installs), documents every status each route
//! answers with, and its patterns accept exactly what the model accepts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use courier_model::{
    Channel, DeliveryStatus, EventId, EventType, Subscription, WebhookSecret, WebhookUrl,
    WorkspaceId,
};
use courier_store::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{App, DEFAULT, run, served_routes};
use crate::on_both_backends;

on_both_backends!(
    openapi_lists_every_served_route => DEFAULT,
);

async fn openapi_lists_every_served_route(app: Arc<App>) {
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented: Vec<(String, String)> = operations(&doc)
        .map(|(method, path, _)| (method.to_owned(), path.to_owned()))
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

/// The document as the API serves it.
async fn document() -> Value {
    let (tx, rx) = tokio::sync::oneshot::channel();
    run(Backend::Sqlite, DEFAULT, |app| async move {
        let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
        assert_eq!(status, StatusCode::OK);
        tx.send(doc).unwrap();
    })
    .await;
    rx.await.unwrap()
}

/// (method, path, operation) of every operation.
fn operations(doc: &Value) -> impl Iterator<Item = (&str, &str, &Value)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .iter()
                .filter(|(m, _)| ["get", "post", "patch", "put", "delete"].contains(&m.as_str()))
                .map(move |(m, op)| (m.as_str(), path.as_str(), op))
        })
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// openapi-spec-validator, an implementation of the specification that owes
/// nothing to utoipa, reads the document without a complaint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_openapi() {
    let doc = document().await;
    let validator = repo_root().join("target/tools/venv/bin/openapi-spec-validator");
    assert!(
        validator.exists(),
        "{} is missing: run tests/tools.sh (make tools)",
        validator.display()
    );
    let file = std::env::temp_dir().join(format!("courier-openapi-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let output = Command::new(&validator).arg(&file).output().unwrap();
    std::fs::remove_file(&file).ok();
    assert!(
        output.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Each route documents the statuses its extractors and handler answer
/// with, each with a description and the error envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_a_route_answers_is_documented() {
    let doc = document().await;
    for (method, path, op) in operations(&doc) {
        let route = format!("{method} {path}");
        let responses = op["responses"].as_object().unwrap();
        let statuses: Vec<&str> = responses.keys().map(String::as_str).collect();
        for (status, response) in responses {
            assert!(
                response["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{route} {status}: no description"
            );
            if status.starts_with('4') || status.starts_with('5') {
                // A batch that was not wholly accepted also says which of
                // its events were: the same `error`, with `data` filled.
                let envelope =
                    if route == "post /v1/workspaces/{ws}/events/batch" && status == "503" {
                        "#/components/schemas/BatchEnvelope"
                    } else {
                        "#/components/schemas/ErrorEnvelope"
                    };
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"], envelope,
                    "{route} {status}"
                );
            }
        }
        let mut expected = Vec::new();
        if op.get("security").is_some() {
            expected.push("401");
        }
        if path.contains('{') {
            expected.push("404");
        }
        if op.get("requestBody").is_some() {
            // Not a JSON object of these fields; larger than the limit.
            expected.extend(["400", "413"]);
        }
        let query = op["parameters"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
        if query {
            // Unknown or mistyped parameters; values out of range.
            expected.extend(["400", "422"]);
        }
        // What publishes to the broker answers 503 without one.
        if (path.ends_with("/events") || path.ends_with("/events/batch")) && method == "post"
            || path.ends_with("/retry")
            || path.ends_with("/recover")
        {
            expected.push("503");
        }
        for status in expected {
            assert!(
                statuses.contains(&status),
                "{route} does not document {status}"
            );
        }
    }
}

/// The limits the handlers enforce are the document's, read from the
/// model's own constants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_states_the_limits() {
    let doc = document().await;
    let schemas = &doc["components"]["schemas"];
    let names = |values: &Value| -> Vec<String> {
        values
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let event_types: Vec<String> = EventType::ALL.iter().map(|t| t.as_str().into()).collect();
    assert_eq!(names(&schemas["EventType"]["enum"]), event_types);
    let statuses: Vec<String> = DeliveryStatus::ALL
        .iter()
        .map(|s| s.as_str().into())
        .collect();
    assert_eq!(names(&schemas["DeliveryStatus"]["enum"]), statuses);

    let webhook = &schemas["NewWebhook"]["properties"];
    assert_eq!(webhook["events"]["minItems"], 1);
    assert_eq!(
        webhook["events"]["items"]["$ref"],
        "#/components/schemas/EventType"
    );
    assert_eq!(webhook["url"]["maxLength"], WebhookUrl::MAX_LEN);
    assert_eq!(
        webhook["channels"]["items"]["maxLength"],
        Channel::MAX_LEN as u64
    );
    assert!(webhook["secret"]["pattern"].is_string());
    assert_eq!(
        schemas["NewWorkspace"]["properties"]["id"]["maxLength"],
        WorkspaceId::MAX_LEN
    );
    assert_eq!(
        schemas["NewEvent"]["properties"]["id"]["maxLength"],
        EventId::MAX_LEN
    );
    // Upstreams send every type but courier's own operational ones.
    assert_eq!(
        schemas["NewEvent"]["properties"]["type"]["$ref"],
        "#/components/schemas/IngestEventType"
    );
    let ingestible = schemas["IngestEventType"]["enum"].as_array().unwrap();
    assert!(ingestible.contains(&serde_json::json!("order.created")));
    assert!(!ingestible.contains(&serde_json::json!("webhook.failing")));
    assert_eq!(
        schemas["EventType"]["enum"].as_array().unwrap().len(),
        ingestible.len() + 3
    );
    for list in [
        "/v1/workspaces/{ws}/deliveries",
        "/v1/workspaces/{ws}/webhooks",
        "/v1/workspaces/{ws}/webhooks/{id}/events",
    ] {
        let first = doc["paths"][list]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "first")
            .unwrap_or_else(|| panic!("{list}: no `first`"));
        assert_eq!(first["schema"]["minimum"], 1, "{list}");
        assert_eq!(first["schema"]["maximum"], 100, "{list}");
    }
    // A body that may be left out is not required, and is never `null`.
    for (method, path, op) in operations(&doc) {
        if let Some(body) = op.get("requestBody") {
            let schema = &body["content"]["application/json"]["schema"];
            assert!(
                schema["$ref"].is_string(),
                "{method} {path}: the body is not a named object: {schema}"
            );
        }
    }
}

/// Every string pattern of the document says of sample values what the
/// model's own parsers say, as Python's `re` reads the pattern (what
/// schemathesis and Python validators use; a closing `$` read as the
/// string's end, as ECMA-262 does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_patterns_accept_what_the_model_accepts() {
    let doc = document().await;
    let schemas = &doc["components"]["schemas"];
    let pattern = |schema: &str, field: &str| -> String {
        schemas[schema]["properties"][field]["pattern"]
            .as_str()
            .unwrap_or_else(|| panic!("{schema}.{field} has no pattern"))
            .to_owned()
    };
    let mut cases: Vec<(String, String, bool)> = Vec::new();

    let secret = pattern("NewWebhook", "secret");
    for text in secret_samples() {
        let ok = WebhookSecret::parse(&text).is_ok();
        cases.push((secret.clone(), text, ok));
    }
    for (schema, max) in [
        ("NewWebhook", Subscription::MAX_NAME_LEN),
        ("NewWorkspace", courier_api::MAX_WORKSPACE_NAME_LEN),
    ] {
        let name = pattern(schema, "name");
        for text in name_samples(max) {
            let ok = courier_model::validate_name("name", &text, max).is_ok();
            cases.push((name.clone(), text, ok));
        }
    }
    let workspace_id = pattern("NewWorkspace", "id");
    let event_id = pattern("NewEvent", "id");
    let channel = pattern("NewEvent", "channel");
    for text in slug_samples() {
        cases.push((
            workspace_id.clone(),
            text.clone(),
            WorkspaceId::parse(text.clone()).is_ok(),
        ));
        cases.push((
            event_id.clone(),
            text.clone(),
            EventId::parse(text.clone()).is_ok(),
        ));
        cases.push((channel.clone(), text.clone(), Channel::parse(&text).is_ok()));
    }

    let script = r#"
import json, re, sys
wrong = []
for pattern, text, ok in json.load(sys.stdin):
    if pattern.endswith("$"):
        pattern = pattern[:-1] + r"\Z"
    if (re.search(pattern, text) is not None) != ok:
        wrong.append({"pattern": pattern, "text": text, "model accepts": ok})
json.dump(wrong, sys.stdout, indent=1)
sys.exit(1 if wrong else 0)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    serde_json::to_writer(child.stdin.take().unwrap(), &cases).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "patterns that disagree with the model ({} samples):\n{}",
        cases.len(),
        String::from_utf8_lossy(&output.stdout)
    );
}

/// Secrets of every decoded length around the bounds, padded or not, with
/// and without `whsec_`, with stray bits in their last character, and junk.
fn secret_samples() -> Vec<String> {
    let mut samples = Vec::new();
    for len in 0..=70usize {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        for encoded in [STANDARD.encode(&bytes), STANDARD_NO_PAD.encode(&bytes)] {
            let body = encoded.trim_end_matches('=');
            // The last character with data in it, changed to carry bits
            // that canonical base64 leaves zero.
            if let Some(last) = body.len().checked_sub(1) {
                for stray in ['B', 'R', 'h', 'x', '1'] {
                    let mut changed = encoded.clone();
                    changed.replace_range(last..=last, &stray.to_string());
                    samples.push(changed);
                }
            }
            samples.push(format!("whsec_{encoded}"));
            samples.push(encoded);
        }
    }
    samples.extend(
        [
            "",
            "whsec_",
            "whsec_whsec_AAAAAAAAAAAA",
            "AAAA AAAAAAAA",
            "AAAAAAAAAAA-",
            "AAAAAAAAAAA_",
            "AAAAAAAAAAAA\n",
            "WHSEC_AAAAAAAAAAAA",
            "AAAAAAAAAAAA===",
            "AAAAAAAAAA=A",
        ]
        .map(String::from),
    );
    samples
}

fn name_samples(max: usize) -> Vec<String> {
    let x = |n: usize| "x".repeat(n);
    let mut samples: Vec<String> = [
        "a",
        "",
        " ",
        "   ",
        " a ",
        "\u{a0}a\u{3000}",
        "\u{2028}a\u{2029}",
        "\u{feff}",
        "a\u{200b}",
        "\u{180e}",
        "a\u{7}b",
        "\ta",
        "a\n",
        "a\u{85}",
        "\u{85}a",
        "a\u{7f}",
        "a\u{9f}",
        "a\u{a0}b",
        "Acme Inc.",
        "ordres → ERP",
    ]
    .map(String::from)
    .to_vec();
    samples.extend([
        x(max),
        x(max + 1),
        x(max - 1),
        format!("  {}  ", x(max)),
        format!("\u{3000}{}\u{a0}", x(max)),
        format!(" {} ", x(max + 1)),
        format!("x{}x", " ".repeat(max - 2)),
        format!("x{}x", " ".repeat(max - 1)),
        "é".repeat(max),
        "é".repeat(max + 1),
        "😀".repeat(max),
        "😀".repeat(max + 1),
    ]);
    samples
}

fn slug_samples() -> Vec<String> {
    let a = |n: usize| "a".repeat(n);
    let mut samples: Vec<String> = [
        "a",
        "",
        "a b",
        "a/b",
        "é",
        "a:b.c_d-e",
        "A9",
        "a\n",
        "a+b",
        "a%20",
    ]
    .map(String::from)
    .to_vec();
    for n in [63, 64, 65, 127, 128, 129] {
        samples.push(a(n));
    }
    samples
}
