//! Per-webhook settings (description, timeout, attempts, headers, rate
//! limit) and the lifecycle (disabled with a reason, paused deliveries
//! replayed or canceled on re-enabling), over REST and GraphQL.

use std::sync::Arc;

use courier_api::webhooks::{self, HeaderList, NewWebhook, RateLimitInput, WebhookPolicy, Whole};
use courier_model::EventType;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{App, assert_error, run, seed};
use crate::on_both_backends;

on_both_backends!(
    settings_round_trip_and_stay_in_their_workspace => DEFAULT,
    settings_validation_names_the_field => DEFAULT,
    re_enabling_replays_or_cancels_paused_deliveries => DEFAULT,
    graphql_sets_settings_and_reports_the_replay => DEFAULT,
);

fn settings() -> Value {
    json!({
        "name": "erp",
        "url": "https://erp.example.com/hooks",
        "events": ["order.created"],
        "description": "  Orders to the ERP.\nOwner: ops  ",
        "timeoutMs": 2500,
        "maxAttempts": 3,
        "headers": {"X-Api-Key": "k-1", "Authorization": "Bearer t"},
        "rateLimit": {"perSecond": 50},
    })
}

async fn settings_round_trip_and_stay_in_their_workspace(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let created = app.webhook(&ws, &key, settings()).await;
    assert_eq!(created["description"], "Orders to the ERP.\nOwner: ops");
    assert_eq!(created["timeoutMs"], 2500);
    assert_eq!(created["maxAttempts"], 3);
    assert_eq!(
        created["headers"],
        json!({"X-Api-Key": "k-1", "Authorization": "Bearer t"})
    );
    assert_eq!(created["rateLimit"], json!({"perSecond": 50, "burst": 50}));
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["disabledReason"], Value::Null);
    assert_eq!(created["disabledAt"], Value::Null);
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/workspaces/{ws}/webhooks/{id}");

    // As the ledger has them.
    let (status, body) = app.get(&path, &key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for field in [
        "description",
        "timeoutMs",
        "maxAttempts",
        "headers",
        "rateLimit",
    ] {
        assert_eq!(body["data"][field], created[field], "{field}");
    }
    // Kept in the order sent (serde_json's Value would sort them: raw text).
    let resp = app
        .http
        .patch(format!("{}{path}", app.base))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(r#"{"headers": {"X-B": "2", "X-A": "1", "x-b": "3"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let stored = app
        .store
        .get_subscription(&ws.parse().unwrap(), id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let pairs: Vec<(&str, &str)> = stored
        .settings
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(pairs, [("X-B", "2"), ("X-A", "1"), ("x-b", "3")]);
    // Lists leave the headers out, as the secret.
    let (_, list) = app
        .get(&format!("/v1/workspaces/{ws}/webhooks"), &key)
        .await;
    let item = &list["data"]["items"][0];
    assert!(item.get("headers").is_none(), "{item}");
    assert_eq!(item["timeoutMs"], 2500);

    // PATCH: null clears, absent keeps, a value replaces.
    let (status, body) = app
        .call(
            Method::PATCH,
            &path,
            Some(&key),
            Some(json!({
                "timeoutMs": null,
                "headers": {"X-Other": "v"},
                "rateLimit": {"perSecond": 10, "burst": 30},
                "description": null,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let data = &body["data"];
    assert_eq!(data["timeoutMs"], Value::Null);
    assert_eq!(data["description"], Value::Null);
    assert_eq!(data["maxAttempts"], 3);
    assert_eq!(data["headers"], json!({"X-Other": "v"}));
    assert_eq!(data["rateLimit"], json!({"perSecond": 10, "burst": 30}));
    assert_eq!(
        data["statusChange"],
        json!({"paused": 0, "replayed": 0, "canceled": 0})
    );
    let (_, body) = app
        .call(
            Method::PATCH,
            &path,
            Some(&key),
            Some(json!({"headers": null, "rateLimit": null, "maxAttempts": null})),
        )
        .await;
    let stored = app
        .store
        .get_subscription(&ws.parse().unwrap(), id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.settings, Default::default(), "{body}");

    // Another workspace's key: 404, and nothing changes.
    let (_, other_key) = app.tenant().await;
    let (status, body) = app.get(&path, &other_key).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, None);
    let (other_ws, other_key) = app.tenant().await;
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("/v1/workspaces/{other_ws}/webhooks/{id}"),
            Some(&other_key),
            Some(json!({"timeoutMs": 1000})),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, None);
    let (_, body) = app.get(&path, &key).await;
    assert_eq!(body["data"]["timeoutMs"], Value::Null);
}

async fn settings_validation_names_the_field(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let path = format!("/v1/workspaces/{ws}/webhooks");
    let with = |k: &str, v: Value| {
        let mut body = settings();
        body[k] = v;
        body
    };
    let many: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("x-h{i}"), json!("v"))).collect();
    let invalid = StatusCode::UNPROCESSABLE_ENTITY;
    let cases = [
        (
            with("description", json!("x".repeat(1001))),
            invalid,
            "description",
        ),
        (
            with("description", json!("tab\there")),
            invalid,
            "description",
        ),
        (
            with("description", json!("cr\r\nlf")),
            invalid,
            "description",
        ),
        // The harness's client times out after 5 s: delivery.timeout_ms.
        (with("timeoutMs", json!(5001)), invalid, "timeoutMs"),
        (with("timeoutMs", json!(99)), invalid, "timeoutMs"),
        (with("timeoutMs", json!(-1)), invalid, "timeoutMs"),
        (
            with("timeoutMs", json!("fast")),
            StatusCode::BAD_REQUEST,
            "timeoutMs",
        ),
        (with("maxAttempts", json!(0)), invalid, "maxAttempts"),
        (with("maxAttempts", json!(101)), invalid, "maxAttempts"),
        (
            with("headers", json!({"Webhook-Signature": "v1,x"})),
            invalid,
            "headers",
        ),
        (
            with("headers", json!({"content-type": "text/plain"})),
            invalid,
            "headers",
        ),
        (
            with("headers", json!({"Host": "evil.example"})),
            invalid,
            "headers",
        ),
        (
            with("headers", json!({"User-Agent": "x"})),
            invalid,
            "headers",
        ),
        (
            with("headers", json!({"bad name": "x"})),
            invalid,
            "headers",
        ),
        (with("headers", json!({"x-a": ""})), invalid, "headers"),
        (
            with("headers", json!({"x-a": " padded"})),
            invalid,
            "headers",
        ),
        (with("headers", json!({"x-a": "é"})), invalid, "headers"),
        (
            with("headers", json!({"x-a": "v".repeat(1025)})),
            invalid,
            "headers",
        ),
        (with("headers", Value::Object(many)), invalid, "headers"),
        (
            with("headers", json!({"x-a": 1})),
            StatusCode::BAD_REQUEST,
            "headers.x-a",
        ),
        (
            with("rateLimit", json!({"perSecond": 0})),
            invalid,
            "rateLimit.perSecond",
        ),
        (
            with("rateLimit", json!({"perSecond": 10001})),
            invalid,
            "rateLimit.perSecond",
        ),
        (
            with("rateLimit", json!({"perSecond": 5, "burst": 0})),
            invalid,
            "rateLimit.burst",
        ),
        (
            with("rateLimit", json!({"burst": 5})),
            StatusCode::BAD_REQUEST,
            "rateLimit.perSecond",
        ),
    ];
    for (body, want, field) in cases {
        let (status, resp) = app.post(&path, &key, body.clone()).await;
        assert_error(status, &resp, want, Some(field));
        // The same on a PATCH of an existing webhook.
    }
    // Nothing was written.
    let (_, list) = app.get(&path, &key).await;
    assert_eq!(list["data"]["items"], json!([]));

    // PATCH answers the first problem too, and changes nothing.
    let hook = app.webhook(&ws, &key, settings()).await;
    let hook_path = format!("{path}/{}", hook["id"].as_str().unwrap());
    let (status, body) = app
        .call(
            Method::PATCH,
            &hook_path,
            Some(&key),
            Some(json!({"name": "renamed", "maxAttempts": 1000, "headers": {"webhook-id": "x"}})),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("maxAttempts"),
    );
    let (_, body) = app.get(&hook_path, &key).await;
    assert_eq!(body["data"]["name"], "erp");

    // The console's check: one problem per field, in form order.
    let input = NewWebhook {
        name: "n".into(),
        url: "https://example.com/h".into(),
        events: vec!["order.created".into()],
        active: true,
        description: Some("\u{1b}[31m".into()),
        timeout_ms: Some(Whole(10)),
        max_attempts: Some(Whole(0)),
        headers: Some(HeaderList(vec![("host".into(), "x".into())])),
        rate_limit: Some(RateLimitInput {
            per_second: Whole(0),
            burst: Some(Whole(0)),
        }),
        ..NewWebhook::default()
    };
    let policy = WebhookPolicy {
        require_https: true,
        max_timeout_ms: 10_000,
    };
    let fields: Vec<&str> = webhooks::check_new(&input, policy)
        .iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(
        fields,
        [
            "description",
            "timeoutMs",
            "maxAttempts",
            "headers",
            "rateLimit.perSecond",
            "rateLimit.burst"
        ]
    );
}

async fn re_enabling_replays_or_cancels_paused_deliveries(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let hook = app.webhook(&ws, &key, settings()).await;
    let id = hook["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/workspaces/{ws}/webhooks/{id}");
    seed(&app.store, &ws, &id, EventType::OrderCreated, 3).await;
    let patch = |body: Value| {
        let app = Arc::clone(&app);
        let path = path.clone();
        let key = key.clone();
        async move {
            let (status, body) = app.call(Method::PATCH, &path, Some(&key), Some(body)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["data"].clone()
        }
    };

    // Off: its outstanding deliveries are paused, and it says why.
    let off = patch(json!({"active": false})).await;
    assert_eq!(off["status"], "disabled");
    assert_eq!(off["active"], false);
    assert_eq!(off["disabledReason"], "manual");
    assert!(off["disabledAt"].is_string(), "{off}");
    assert_eq!(
        off["statusChange"],
        json!({"paused": 3, "replayed": 0, "canceled": 0})
    );
    let (status, body) = app
        .get(
            &format!("/v1/workspaces/{ws}/deliveries?status=paused&webhook={id}"),
            &key,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["items"].as_array().unwrap().len(), 3, "{body}");
    assert!(
        body["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "paused")
    );
    // Switching off again changes nothing more.
    let again = patch(json!({"active": false})).await;
    assert_eq!(
        again["statusChange"],
        json!({"paused": 0, "replayed": 0, "canceled": 0})
    );
    assert_eq!(again["disabledAt"], off["disabledAt"]);

    // On: replayed by default.
    let on = patch(json!({"active": true})).await;
    assert_eq!(on["status"], "enabled");
    assert_eq!(on["disabledReason"], Value::Null);
    assert_eq!(
        on["statusChange"],
        json!({"paused": 0, "replayed": 3, "canceled": 0})
    );
    let (_, body) = app
        .get(
            &format!("/v1/workspaces/{ws}/deliveries?status=paused&webhook={id}"),
            &key,
        )
        .await;
    assert_eq!(body["data"]["items"], json!([]));

    // Off and on with replayPaused: false: canceled instead.
    patch(json!({"active": false})).await;
    let on = patch(json!({"active": true, "replayPaused": false})).await;
    assert_eq!(
        on["statusChange"],
        json!({"paused": 0, "replayed": 0, "canceled": 3})
    );
    let (_, body) = app
        .get(
            &format!("/v1/workspaces/{ws}/deliveries?status=canceled&webhook={id}"),
            &key,
        )
        .await;
    assert_eq!(body["data"]["items"].as_array().unwrap().len(), 3, "{body}");
}

async fn graphql_sets_settings_and_reports_the_replay(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let (status, body) = app
        .gql(
            Some(&key),
            r#"mutation { webhookCreate(input: {url: "https://erp.example.com/h", type: ORDER_CREATED,
                description: "ERP", timeoutMs: 1500, maxAttempts: 4,
                headers: [{name: "X-Api-Key", value: "k"}], rateLimit: {perSecond: 20}})
              { id description timeoutMs maxAttempts headers { name value } rateLimit { perSecond burst }
                status disabledReason disabledAt statusChange { replayed } } }"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let created = &body["data"]["webhookCreate"];
    assert_eq!(
        created,
        &json!({
            "id": created["id"], "description": "ERP", "timeoutMs": 1500, "maxAttempts": 4,
            "headers": [{"name": "X-Api-Key", "value": "k"}],
            "rateLimit": {"perSecond": 20, "burst": 20},
            "status": "ENABLED", "disabledReason": null, "disabledAt": null, "statusChange": null,
        }),
        "{body}"
    );
    let id = created["id"].as_str().unwrap().to_owned();

    // Validation names the field.
    let (_, body) = app
        .gql(
            Some(&key),
            &format!(
                r#"mutation {{ webhookUpdate(input: {{id: "{id}", maxAttempts: 0}}) {{ id }} }}"#
            ),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["field"], "maxAttempts",
        "{body}"
    );

    seed(&app.store, &ws, &id, EventType::OrderCreated, 2).await;
    let (_, body) = app
        .gql(
            Some(&key),
            &format!(
                r#"mutation {{ webhookUpdate(input: {{id: "{id}", status: DISABLED, timeoutMs: null}})
                  {{ status disabledReason timeoutMs statusChange {{ paused replayed canceled }} }} }}"#
            ),
        )
        .await;
    let off = &body["data"]["webhookUpdate"];
    assert_eq!(off["status"], "DISABLED", "{body}");
    assert_eq!(off["disabledReason"], "MANUAL");
    assert_eq!(off["timeoutMs"], Value::Null);
    assert_eq!(
        off["statusChange"],
        json!({"paused": 2, "replayed": 0, "canceled": 0})
    );
    let (_, body) = app
        .gql(
            Some(&key),
            &format!(
                r#"{{ webhookLogs(filter: {{status: "paused", webhookId: "{id}"}}) {{ edges {{ node {{ status }} }} }} }}"#
            ),
        )
        .await;
    assert_eq!(
        body["data"]["webhookLogs"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "{body}"
    );
    let (_, body) = app
        .gql(
            Some(&key),
            &format!(
                r#"mutation {{ webhookUpdate(input: {{id: "{id}", status: ENABLED, replayPaused: true}})
                  {{ status statusChange {{ paused replayed canceled }} }} }}"#
            ),
        )
        .await;
    assert_eq!(
        body["data"]["webhookUpdate"],
        json!({"status": "ENABLED", "statusChange": {"paused": 0, "replayed": 2, "canceled": 0}}),
        "{body}"
    );
}
