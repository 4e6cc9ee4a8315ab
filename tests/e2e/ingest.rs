//! HTTP ingest publishes the events of requests that arrive together as one
//! message (an event group on the fan-out queue): every event is delivered
//! once, a batch travels in a handful of messages, and concurrent single
//! requests are answered each with its own event's outcome.

use std::time::Duration;

use courier_tests::{Behavior, Db, Receiver, TestEnv, metric_value, wait_for};
use serde_json::{Value, json};

crate::on_both_databases!(ingested_events_travel_in_groups_and_each_is_delivered_once);

const BATCH: usize = 300;
const CLIENTS: usize = 16;
const REQUESTS_EACH: usize = 20;

async fn ingested_events_travel_in_groups_and_each_is_delivered_once(db: Db) {
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let (key, _) = courier_api::keys::create_api_key(&env.store, &ws, None)
        .await
        .unwrap();
    let receiver = Receiver::start(Behavior::Ok).await;
    env.webhook(&ws, &receiver.url(), &["order.created"], &[])
        .await;
    let worker = env.start_worker().await;
    wait_for("worker ready", Duration::from_secs(30), || async {
        worker.get("/readyz").await.0 == 200
    })
    .await;
    let http = reqwest::Client::new();
    let base = format!("http://{}/v1/workspaces/{ws}/events", worker.http_addr);
    let fanout_messages = || async {
        metric_value(
            &worker.get("/metrics").await.1,
            "courier_messages_acked_total{stage=\"fanout\"}",
        )
    };

    // One batch: a few messages, however many events.
    let events: Vec<Value> = (0..BATCH)
        .map(|n| json!({ "id": format!("batch-{n}"), "type": "order.created", "data": { "n": n } }))
        .collect();
    let response = http
        .post(format!("{base}/batch"))
        .bearer_auth(&key)
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["data"]["accepted"], BATCH);
    assert_eq!(answer["data"]["events"][7]["id"], "batch-7");
    wait_for("the batch delivered", Duration::from_secs(60), || async {
        receiver.distinct() == BATCH
    })
    .await;
    wait_for(
        "the batch's messages acked",
        Duration::from_secs(10),
        || async { fanout_messages().await > 0.0 },
    )
    .await;
    let batch_messages = fanout_messages().await;
    assert!(
        batch_messages <= (BATCH / 8) as f64,
        "{BATCH} events of one batch took {batch_messages} fan-out messages"
    );

    // Concurrent single requests: each answered with its own event's id.
    let clients = (0..CLIENTS).map(|client| {
        let http = http.clone();
        let (base, key) = (base.clone(), key.clone());
        tokio::spawn(async move {
            for n in 0..REQUESTS_EACH {
                let id = format!("single-{client}-{n}");
                let response = http
                    .post(&base)
                    .bearer_auth(&key)
                    .json(
                        &json!({ "id": id, "type": "order.created", "data": { "client": client } }),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202, "{id}");
                let answer: Value = response.json().await.unwrap();
                assert_eq!(answer["data"]["id"], id.as_str());
            }
        })
    });
    for client in clients.collect::<Vec<_>>() {
        client.await.unwrap();
    }
    let total = BATCH + CLIENTS * REQUESTS_EACH;
    crate::all_delivered(&env, &receiver, total).await;
    assert_eq!(receiver.count(), total, "each event delivered once");
    let mut ids: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total);
    assert!(ids.contains(&"single-15-19".to_owned()) && ids.contains(&"batch-0".to_owned()));
    worker.stop().await.unwrap();
}
