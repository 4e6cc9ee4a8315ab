//! Webhooks over REST: create, read, update, delete, paging and validation.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{App, assert_error, run};
use crate::on_both_backends;

on_both_backends!(
    webhook_crud_and_the_legacy_body => DEFAULT,
    webhook_list_pages_under_concurrent_inserts => DEFAULT,
    validation_names_the_field_and_writes_nothing => Setup { require_https: true, ..DEFAULT },
);

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
