//! Several worker replicas on one broker and one database: a webhook change
//! made through the API of one of them reaches every replica at once, with
//! no restart and no wait for the periodic reload.

use std::time::Duration;

use courier_model::{DeliveryStatus, Event, EventType};
use courier_tests::{Behavior, Db, Receiver, TestEnv, metric_value, wait_for};
use serde_json::json;

crate::on_both_databases!(webhook_changes_reach_every_replica);

async fn webhook_changes_reach_every_replica(db: Db) {
    // An hour between periodic reloads: only the change notice can explain
    // a reload during this test.
    let env = TestEnv::with(
        db,
        &[("COURIER__DELIVERY__SUBSCRIPTION_REFRESH_MS", "3600000")],
    )
    .await;
    let ws = env.workspace("acme").await;
    let receiver = Receiver::start(Behavior::Ok).await;
    let webhook = env
        .webhook(&ws, &receiver.url(), &["order.created"], &[])
        .await;
    let (key, _) = courier_api::keys::create_api_key(&env.store, &ws, Some("e2e"))
        .await
        .unwrap();

    let a = env.start_worker().await;
    let b = env.start_worker().await;
    // Both replicas are consuming (and so watching for notices) once ready.
    for replica in [&a, &b] {
        wait_for("replica ready", Duration::from_secs(30), || async {
            replica.get("/readyz").await.0 == 200
        })
        .await;
    }

    let response = reqwest::Client::new()
        .patch(format!(
            "http://{}/v1/workspaces/{ws}/webhooks/{}",
            a.http_addr, webhook.id
        ))
        .bearer_auth(&key)
        .json(&json!({"events": ["order.canceled"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    for replica in [&a, &b] {
        wait_for(
            "the change notice on every replica",
            Duration::from_secs(10),
            || async {
                metric_value(
                    &replica.get("/metrics").await.1,
                    r#"courier_subscription_reloads_total{trigger="notice"}"#,
                ) >= 1.0
            },
        )
        .await;
    }

    let (publisher, _connection) = env.publisher().await;
    let mut canceled = Vec::new();
    for n in 0..10 {
        let c = Event::new(
            ws.clone(),
            EventType::OrderCanceled,
            None,
            json!({ "n": n }),
        )
        .unwrap();
        let o = Event::new(ws.clone(), EventType::OrderCreated, None, json!({ "n": n })).unwrap();
        publisher.publish(&c).await.unwrap();
        publisher.publish(&o).await.unwrap();
        canceled.push(c.id);
    }
    wait_for(
        "the canceled orders to arrive",
        Duration::from_secs(30),
        || async {
            env.store.delivery_counts().await.unwrap() == [(DeliveryStatus::Succeeded, 10)]
        },
    )
    .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    // Stopped replicas handed everything back: nothing else is coming.
    assert_eq!(env.queue_len(&env.topology().fanout_queue()).await, 0);
    let got: Vec<_> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|t| t == "order.canceled"), "{got:?}");
}
