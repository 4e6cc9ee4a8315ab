//! Test sends and signing: a test send reaches live and failing receivers,
//! and after a rotation deliveries are signed with both secrets, checked
//! by a verifier that does not share courier's signer.

use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::{App, assert_error, run};
use crate::on_both_backends;

on_both_backends!(
    test_send_to_live_and_failing_receivers => DEFAULT,
    rotation_signs_with_both_secrets => DEFAULT,
);

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
