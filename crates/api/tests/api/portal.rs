//! Portal links: who may make one, for which workspace, how long it lives,
//! and that the token in its URL is what the ledger redeems, once.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use courier_api::portal::token_hash;
use courier_model::WorkspaceId;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{ADMIN, App, CONSOLE_URL, assert_error, run};
use crate::on_both_backends;

on_both_backends!(
    links_open_one_workspace_once => DEFAULT,
    who_may_make_links => DEFAULT,
    link_lifetimes_are_bounded => DEFAULT,
    no_links_without_a_console => Setup { console_url: None, ..DEFAULT },
);

fn path(ws: &str) -> String {
    format!("/v1/workspaces/{ws}/portal-links")
}

/// The token at the end of a link's URL.
fn token(link: &serde_json::Value) -> String {
    let url = link["url"].as_str().unwrap();
    let prefix = format!("{CONSOLE_URL}/console/portal/");
    assert!(url.starts_with(&prefix), "{url}");
    url[prefix.len()..].to_owned()
}

async fn links_open_one_workspace_once(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let before = Utc::now();
    let (status, body) = app.post(&path(&ws), &key, json!({"readOnly": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let link = &body["data"];
    assert_eq!(link["workspaceId"], ws.as_str());
    assert_eq!(link["readOnly"], true);
    let expires: DateTime<Utc> = link["expiresAt"].as_str().unwrap().parse().unwrap();
    // The default lifetime: ten minutes.
    assert!(
        expires >= before + Duration::minutes(10) && expires <= Utc::now() + Duration::minutes(10)
    );

    // The ledger keeps only the token's hash; the hash redeems once.
    let hash = token_hash(&token(link)).expect("a well-formed token");
    let redeemed = app
        .store
        .redeem_portal_link(&hash, Utc::now())
        .await
        .unwrap()
        .expect("a fresh link redeems");
    assert_eq!(
        redeemed.workspace_id,
        WorkspaceId::parse(ws.clone()).unwrap()
    );
    assert!(redeemed.read_only);
    assert!(
        app.store
            .redeem_portal_link(&hash, Utc::now())
            .await
            .unwrap()
            .is_none()
    );

    // Two links are two tokens; the default is not read-only.
    let (_, again) = app.post(&path(&ws), &key, json!({})).await;
    assert_ne!(token(&again["data"]), token(link));
    assert_eq!(again["data"]["readOnly"], false);
}

async fn who_may_make_links(app: Arc<App>) {
    let (a, a_key) = app.tenant().await;
    let (b, _) = app.tenant().await;
    // A key makes links for its own workspace only; another's is 404.
    let (status, body) = app.post(&path(&b), &a_key, json!({})).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, None);
    // The admin token makes links for any workspace that exists.
    let (status, body) = app.post(&path(&b), ADMIN, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["workspaceId"], b.as_str());
    let (status, body) = app.post(&path("nobody-here"), ADMIN, json!({})).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, None);
    // Nothing else does.
    for token in [
        "",
        "not-a-key",
        "ck_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let (status, body) = app.post(&path(&a), token, json!({})).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, None);
    }
    // Unknown fields are named.
    let (status, body) = app.post(&path(&a), &a_key, json!({"readonly": true})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, Some("readonly"));
}

async fn link_lifetimes_are_bounded(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let (status, body) = app.post(&path(&ws), &key, json!({"ttlSeconds": 30})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let expires: DateTime<Utc> = body["data"]["expiresAt"].as_str().unwrap().parse().unwrap();
    assert!(expires <= Utc::now() + Duration::seconds(30));
    for ttl in [0, 3601] {
        let (status, body) = app.post(&path(&ws), &key, json!({"ttlSeconds": ttl})).await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("ttlSeconds"),
        );
    }
    // An expired link does not redeem.
    let (_, body) = app.post(&path(&ws), &key, json!({"ttlSeconds": 1})).await;
    let hash = token_hash(&token(&body["data"])).unwrap();
    let later = Utc::now() + Duration::seconds(2);
    assert!(
        app.store
            .redeem_portal_link(&hash, later)
            .await
            .unwrap()
            .is_none()
    );
}

async fn no_links_without_a_console(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let (status, body) = app.post(&path(&ws), &key, json!({})).await;
    assert_error(status, &body, StatusCode::CONFLICT, None);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("console.enabled"),
        "{body}"
    );
}
