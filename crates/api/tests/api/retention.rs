//! A workspace's retention over REST and GraphQL: read and set with the
//! workspace's key or the admin token, checked against
//! `retention.max_days`, stored in the ledger, and invisible to other
//! tenants.

use std::sync::Arc;

use courier_model::{RetentionOverride, WorkspaceId};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{ADMIN, App, assert_error, run};
use crate::on_both_backends;

on_both_backends!(
    retention_round_trips_and_is_checked => DEFAULT,
    another_tenant_gets_404_for_retention => DEFAULT,
    graphql_reads_and_sets_retention => DEFAULT,
);

fn path(ws: &str) -> String {
    format!("/v1/workspaces/{ws}/retention")
}

async fn put(app: &App, ws: &str, token: &str, body: Value) -> (StatusCode, Value) {
    app.call(Method::PUT, &path(ws), Some(token), Some(body))
        .await
}

async fn retention_round_trips_and_is_checked(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let (status, body) = app.get(&path(&ws), &key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"],
        json!({
            "effective": {"succeededDays": 30, "failedDays": 90},
            "override": {"succeededDays": null, "failedDays": null},
            "defaults": {"succeededDays": 30, "failedDays": 90},
            "maxDays": 100,
        })
    );

    // Shorter successes, the failures' default kept; 7.0 is a whole number.
    let (status, body) = put(&app, &ws, &key, json!({"succeededDays": 7.0})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["effective"],
        json!({"succeededDays": 7, "failedDays": 90})
    );
    assert_eq!(body["data"]["override"]["failedDays"], Value::Null);
    let workspace = WorkspaceId::parse(ws.clone()).unwrap();
    assert_eq!(
        app.store.retention_override(&workspace).await.unwrap(),
        Some(RetentionOverride {
            succeeded: Some(7),
            failed: None
        })
    );
    let (_, read) = app.get(&path(&ws), &key).await;
    assert_eq!(read, body);

    // PUT replaces: the admin sets failures only, successes go back.
    let (status, body) = put(&app, &ws, ADMIN, json!({"failedDays": 100})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["effective"],
        json!({"succeededDays": 30, "failedDays": 100})
    );

    // Out of range, not a number, unknown fields: refused by name, and
    // nothing changes.
    for (input, want, field) in [
        (
            json!({"succeededDays": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "succeededDays",
        ),
        (
            json!({"failedDays": 101}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "failedDays",
        ),
        (
            json!({"failedDays": -3}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "failedDays",
        ),
        (
            json!({"succeededDays": 1.5}),
            StatusCode::BAD_REQUEST,
            "succeededDays",
        ),
        (
            json!({"succeededDays": "7"}),
            StatusCode::BAD_REQUEST,
            "succeededDays",
        ),
        (json!({"keepDays": 7}), StatusCode::BAD_REQUEST, "keepDays"),
    ] {
        let (status, body) = put(&app, &ws, &key, input.clone()).await;
        assert_error(status, &body, want, Some(field));
        if want == StatusCode::UNPROCESSABLE_ENTITY {
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("retention.max_days"), "{message}");
        }
    }
    let (_, read) = app.get(&path(&ws), &key).await;
    assert_eq!(read["data"]["effective"]["failedDays"], 100);

    // An empty body: the deployment's again, and no row left.
    let (status, body) = app.call(Method::PUT, &path(&ws), Some(&key), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["effective"],
        json!({"succeededDays": 30, "failedDays": 90})
    );
    assert_eq!(
        app.store.retention_override(&workspace).await.unwrap(),
        None
    );

    // The admin token on a workspace that does not exist: 404.
    for (method, body) in [(Method::GET, None), (Method::PUT, Some(json!({})))] {
        let (status, resp) = app
            .call(method, &path("no-such-workspace"), Some(ADMIN), body)
            .await;
        assert_error(status, &resp, StatusCode::NOT_FOUND, None);
    }
}

/// Another tenant's workspace id is answered 404 on both routes, as if it
/// did not exist, and its retention stays as it was.
async fn another_tenant_gets_404_for_retention(app: Arc<App>) {
    let (ws_a, key_a) = app.tenant().await;
    let (ws_b, key_b) = app.tenant().await;
    let (status, _) = put(&app, &ws_b, &key_b, json!({"succeededDays": 3})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.get(&path(&ws_b), &key_a).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, None);
    assert!(!body.to_string().contains("\"3\""), "{body}");
    let (status, body) = put(&app, &ws_b, &key_a, json!({"succeededDays": 99})).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, None);
    let (_, body) = app.get(&path(&ws_b), &key_b).await;
    assert_eq!(body["data"]["effective"]["succeededDays"], 3);
    // A's own is its own.
    let (_, body) = app.get(&path(&ws_a), &key_a).await;
    assert_eq!(body["data"]["effective"]["succeededDays"], 30);
}

async fn graphql_reads_and_sets_retention(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let (_, other_key) = app.tenant().await;
    let fields = "succeededDays failedDays ownSucceededDays ownFailedDays \
                  defaultSucceededDays defaultFailedDays maxDays";
    let (status, body) = app
        .gql(Some(&key), &format!("{{ retention {{ {fields} }} }}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["retention"],
        json!({"succeededDays": 30, "failedDays": 90, "ownSucceededDays": null,
               "ownFailedDays": null, "defaultSucceededDays": 30, "defaultFailedDays": 90,
               "maxDays": 100})
    );
    let (status, body) = app
        .gql(
            Some(&key),
            &format!("mutation {{ retentionUpdate(input: {{failedDays: 14}}) {{ {fields} }} }}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["retentionUpdate"]["failedDays"], 14);
    assert_eq!(body["data"]["retentionUpdate"]["ownFailedDays"], 14);
    let (_, rest) = app.get(&path(&ws), &key).await;
    assert_eq!(rest["data"]["override"]["failedDays"], 14);
    // Refused by name, with the REST API's code.
    let (_, body) = app
        .gql(
            Some(&key),
            "mutation { retentionUpdate(input: {succeededDays: 1000}) { succeededDays } }",
        )
        .await;
    let error = &body["errors"][0];
    assert_eq!(error["extensions"]["field"], "succeededDays", "{body}");
    assert_eq!(error["extensions"]["code"], "INVALID", "{body}");
    // Another key sees its own workspace's, untouched.
    let (_, body) = app
        .gql(
            Some(&other_key),
            "{ retention { failedDays ownFailedDays } }",
        )
        .await;
    assert_eq!(
        body["data"]["retention"],
        json!({"failedDays": 90, "ownFailedDays": null})
    );
}
