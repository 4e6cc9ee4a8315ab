//! Workspaces, API keys and the event catalogue: the admin routes, their
//! token, and how keys are kept.

use std::sync::Arc;

use chrono::Utc;
use courier_api::NoChanges;
use courier_model::{EventType, WorkspaceId};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{ADMIN, App, assert_error, run};
use crate::on_both_backends;

on_both_backends!(
    event_type_catalogue => DEFAULT,
    admin_routes_and_authentication => DEFAULT,
    keys_are_listed_and_revoked_per_workspace => DEFAULT,
    admin_routes_closed_without_token => Setup { admin_token: None, ..DEFAULT },
);

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

#[test]
fn keys_are_hashed_with_sha256() {
    assert_eq!(courier_api::keys::hash_key("").len(), 64);
    let _ = NoChanges;
}

async fn keys_are_listed_and_revoked_per_workspace(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let (other, other_key) = app.tenant().await;
    let path = format!("/v1/workspaces/{ws}/api-keys");
    let (status, body) = app.post(&path, ADMIN, json!({"name": "second"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let second = body["data"]["key"].as_str().unwrap().to_owned();

    let (status, body) = app.get(&path, ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = body["data"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{body}");
    assert_eq!(listed[1]["name"], "second");
    assert_eq!(listed[1]["keyPrefix"], second[..9]);
    let text = body.to_string();
    assert!(
        !text.contains(&key) && !text.contains(&second),
        "a list shows no key"
    );
    let first_id = listed[0]["id"].as_str().unwrap().to_owned();

    // Admin only; another workspace's key id on this path is not found and
    // stays valid.
    let (status, body) = app.get(&path, &key).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, None);
    let (_, body) = app
        .get(&format!("/v1/workspaces/{other}/api-keys"), ADMIN)
        .await;
    let other_id = body["data"][0]["id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .call(
            Method::DELETE,
            &format!("{path}/{other_id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, None);
    let (status, _) = app
        .get(&format!("/v1/workspaces/{other}/webhooks"), &other_key)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .call(
            Method::DELETE,
            &format!("{path}/{first_id}"),
            Some(&key),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, None);
    let (status, body) = app.get("/v1/workspaces/nope/api-keys", ADMIN).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, None);

    // Revoked: refused from then on, the other key unaffected.
    let (status, body) = app
        .call(
            Method::DELETE,
            &format!("{path}/{first_id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["id"], first_id.as_str());
    let webhooks = format!("/v1/workspaces/{ws}/webhooks");
    let (status, body) = app.get(&webhooks, &key).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, None);
    let (status, _) = app.get(&webhooks, &second).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .call(
            Method::DELETE,
            &format!("{path}/{first_id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, None);
}
