//! API keys across replicas: each courier process remembers the keys it
//! verified (so ingest does not read the ledger per request), and a
//! revocation, through the REST API of one replica or the command line,
//! reaches every replica's cache through the control exchange.

use std::time::Duration;

use courier_api::SubscriptionChanges;
use courier_model::WorkspaceId;
use courier_tests::{Db, TestEnv, metric_value, wait_for};
use serde_json::Value;

crate::on_both_databases!(a_revoked_key_is_refused_on_every_replica);

const ADMIN: &str = "e2e-admin-token-of-some-length";

/// The status a key gets from `replica` on its workspace's webhook list.
async fn status(http: &reqwest::Client, replica: &str, ws: &WorkspaceId, key: &str) -> u16 {
    http.get(format!("http://{replica}/v1/workspaces/{ws}/webhooks"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits until both replicas refuse `key` with 401. Well under the cache's
/// 60 s bound on an entry, so only the revocation notice explains it.
async fn refused_everywhere(
    http: &reqwest::Client,
    replicas: &[String],
    ws: &WorkspaceId,
    key: &str,
) {
    for replica in replicas {
        wait_for(
            "the revoked key refused",
            Duration::from_secs(10),
            || async { status(http, replica, ws, key).await == 401 },
        )
        .await;
    }
}

async fn a_revoked_key_is_refused_on_every_replica(db: Db) {
    let env = TestEnv::with(db, &[("COURIER__API__ADMIN_TOKEN", ADMIN)]).await;
    let ws = env.workspace("acme").await;
    let other = env.workspace("other").await;
    let mut keys = Vec::new();
    for name in ["direct", "rest", "cli"] {
        keys.push(
            courier_api::keys::create_api_key(&env.store, &ws, Some(name))
                .await
                .unwrap(),
        );
    }
    let (other_key, other_record) = courier_api::keys::create_api_key(&env.store, &other, None)
        .await
        .unwrap();

    let a = env.start_worker().await;
    let b = env.start_worker().await;
    let replicas = [a.http_addr.to_string(), b.http_addr.to_string()];
    let http = reqwest::Client::new();
    // Each replica hears revocations, so it caches the keys it verifies.
    for replica in [&a, &b] {
        wait_for("the key cache in use", Duration::from_secs(30), || async {
            metric_value(
                &replica.get("/metrics").await.1,
                "courier_api_key_cache_active",
            ) == 1.0
        })
        .await;
    }
    // Each key verified once on each replica: from now on, from its cache.
    for (key, _) in &keys {
        for replica in &replicas {
            wait_for("the key accepted", Duration::from_secs(10), || async {
                status(&http, replica, &ws, key).await == 200
            })
            .await;
        }
    }

    // The caches are in use: a key deleted from the ledger behind their
    // back (no notice) is still accepted...
    let (direct, record) = &keys[0];
    assert!(env.store.delete_api_key(&ws, &record.id).await.unwrap());
    for replica in &replicas {
        assert_eq!(
            status(&http, replica, &ws, direct).await,
            200,
            "cached on {replica}"
        );
    }
    // ...until the notice a revocation sends arrives.
    courier::CommandNotices::new(&env.settings)
        .key_revoked(&ws, &record.id)
        .await
        .unwrap();
    refused_everywhere(&http, &replicas, &ws, direct).await;

    // Through one replica's REST API: every replica refuses it.
    let (rest, record) = &keys[1];
    let revoked: Value = http
        .delete(format!(
            "http://{}/v1/workspaces/{ws}/api-keys/{}",
            replicas[0], record.id
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(revoked["data"]["id"], record.id.as_str(), "{revoked}");
    assert_eq!(revoked["data"]["announced"], true, "{revoked}");
    assert_eq!(
        status(&http, &replicas[0], &ws, rest).await,
        401,
        "the revoking replica"
    );
    refused_everywhere(&http, &replicas, &ws, rest).await;

    // Another workspace's key id on this workspace's path: 404, and that
    // key keeps working.
    let response = http
        .delete(format!(
            "http://{}/v1/workspaces/{ws}/api-keys/{}",
            replicas[1], other_record.id
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(status(&http, &replicas[1], &other, &other_key).await, 200);

    // From the command line: told to every replica as well.
    let (cli, record) = &keys[2];
    let listed = env.cli(&["api-key", "list", "-w", "acme"]);
    assert!(listed.status.success(), "{listed:?}");
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [record.id.as_str()],
        "only the cli key is left in acme"
    );
    assert!(
        !String::from_utf8_lossy(&serde_json::to_vec(&listed).unwrap()).contains(cli.as_str()),
        "a listing never shows a key"
    );
    let output = env.cli(&["api-key", "revoke", "-w", "acme", &record.id]);
    assert!(output.status.success(), "{output:?}");
    let said: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(said["announced"], true, "{said}");
    refused_everywhere(&http, &replicas, &ws, cli).await;
    // Revoking it again names what is wrong.
    let again = env.cli(&["api-key", "revoke", "-w", "acme", &record.id]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("has no API key"),
        "{again:?}"
    );

    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
