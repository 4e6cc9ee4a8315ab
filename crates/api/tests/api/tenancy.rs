//! Tenancy: no route shows or changes another workspace's data.

use std::sync::Arc;

use courier_model::EventType;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{App, assert_error, run, seed, served_routes};
use crate::on_both_backends;

on_both_backends!(
    every_route_hides_other_workspaces => DEFAULT,
);

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
            Method::POST,
            format!("/v1/workspaces/{ws_b}/events/batch"),
            Some(json!({"events": [{"type": "order.created", "data": {}}]})),
        ),
        (
            Method::GET,
            format!("/v1/workspaces/{ws_b}/events/{event}"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/workspaces/{ws_b}/portal-links"),
            Some(json!({})),
        ),
        (
            Method::GET,
            format!("/v1/workspaces/{ws_b}/retention"),
            None,
        ),
        (
            Method::PUT,
            format!("/v1/workspaces/{ws_b}/retention"),
            Some(json!({"succeededDays": 1})),
        ),
    ];
    // The admin routes take no workspace key: event types, workspaces, and
    // creating, listing and revoking keys.
    assert_eq!(routes.len() + 5, served_routes().len());
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
        } else if own.ends_with("/retention") {
            // A's own retention, nothing of B's.
            assert_eq!(status, StatusCode::OK, "{resp}");
        } else if own.ends_with("/portal-links") {
            // A link to A's own console, nothing of B's.
            assert_eq!(status, StatusCode::CREATED, "{resp}");
            assert_eq!(resp["data"]["workspaceId"], ws_a.as_str());
        } else if (own.ends_with("/events") || own.ends_with("/events/batch"))
            && !own.contains("/webhooks/")
        {
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
    // B's retention is untouched, though A set its own.
    let (status, resp) = app
        .get(&format!("/v1/workspaces/{ws_b}/retention"), &key_b)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resp["data"]["override"]["succeededDays"], Value::Null);
    assert_eq!(resp["data"]["effective"]["succeededDays"], 30);
}
