//! What operators rely on: exact metrics, health endpoints, a real
//! Prometheus scraping courier, and SIGTERM under load losing nothing.

use std::collections::HashMap;
use std::time::Duration;

use courier_model::{DeliveryStatus, Event, EventType};
use courier_tests::{Behavior, Db, Receiver, TestEnv, metric_value, wait_for};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::json;

crate::on_both_databases!(metrics_count_exactly, sigterm_under_load_loses_nothing);

async fn metrics_count_exactly(db: Db) {
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let ok = Receiver::start(Behavior::Ok).await;
    let flaky = Receiver::start(Behavior::FailFirst {
        failures: 1,
        status: 503,
    })
    .await;
    let failing = Receiver::start(Behavior::Status(500)).await;
    env.webhook(&ws, &ok.url(), &["order.created"], &[]).await;
    env.webhook(&ws, &flaky.url(), &["order.canceled"], &[])
        .await;
    env.webhook(&ws, &failing.url(), &["shipment.created"], &[])
        .await;

    let worker = env.start_worker().await;
    let (publisher, connection) = env.publisher().await;
    for ty in [
        EventType::OrderCreated,
        EventType::OrderCreated,
        EventType::OrderCanceled,
        EventType::ShipmentCreated,
        EventType::RefundRequested, // matches nothing
    ] {
        let e = Event::new(ws.clone(), ty, None, json!({})).unwrap();
        publisher.publish(&e).await.unwrap();
    }
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            env.topology().events_exchange().as_str().into(),
            "order.created".into(),
            BasicPublishOptions::default(),
            b"not an event",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    wait_for(
        "every delivery to finish",
        Duration::from_secs(30),
        || async {
            let counts: HashMap<_, _> = env
                .store
                .delivery_counts()
                .await
                .unwrap()
                .into_iter()
                .collect();
            counts.get(&DeliveryStatus::Succeeded) == Some(&3)
                && counts.get(&DeliveryStatus::Dead) == Some(&1)
        },
    )
    .await;
    let poison_queue = env.topology().poison_queue();
    wait_for("the poison message", Duration::from_secs(10), || async {
        env.queue_len(&poison_queue).await == 1
    })
    .await;

    let (status, text) = worker.get("/metrics").await;
    assert_eq!(status, 200);
    let expected = [
        (
            r#"courier_events_consumed_total{event_type="order.created"}"#,
            2.0,
        ),
        (
            r#"courier_events_consumed_total{event_type="order.canceled"}"#,
            1.0,
        ),
        (
            r#"courier_events_consumed_total{event_type="shipment.created"}"#,
            1.0,
        ),
        (
            r#"courier_events_consumed_total{event_type="refund.requested"}"#,
            1.0,
        ),
        (
            r#"courier_deliveries_created_total{event_type="order.created"}"#,
            2.0,
        ),
        (
            r#"courier_deliveries_created_total{event_type="order.canceled"}"#,
            1.0,
        ),
        (
            r#"courier_deliveries_created_total{event_type="shipment.created"}"#,
            1.0,
        ),
        (
            r#"courier_deliveries_created_total{event_type="refund.requested"}"#,
            0.0,
        ),
        (
            r#"courier_attempts_total{class="2xx",event_type="order.created",outcome="success"}"#,
            2.0,
        ),
        (
            r#"courier_attempts_total{class="5xx",event_type="order.canceled",outcome="retry"}"#,
            1.0,
        ),
        (
            r#"courier_attempts_total{class="2xx",event_type="order.canceled",outcome="success"}"#,
            1.0,
        ),
        (
            r#"courier_attempts_total{class="5xx",event_type="shipment.created",outcome="retry"}"#,
            3.0,
        ),
        (
            r#"courier_attempts_total{class="5xx",event_type="shipment.created",outcome="dead"}"#,
            1.0,
        ),
        (
            r#"courier_dead_lettered_total{event_type="shipment.created"}"#,
            1.0,
        ),
        (r#"courier_poison_messages_total{stage="fanout"}"#, 1.0),
        (
            r#"courier_attempt_duration_seconds_count{class="2xx"}"#,
            3.0,
        ),
        (
            r#"courier_attempt_duration_seconds_count{class="5xx"}"#,
            5.0,
        ),
        ("courier_delivery_latency_seconds_count", 3.0),
        ("courier_deliveries_in_flight", 0.0),
        ("courier_subscriptions_cached", 3.0),
    ];
    for (series, value) in expected {
        assert_eq!(metric_value(&text, series), value, "{series}\n{text}");
    }
    // Every attempt is counted once, as in the ledger: 2 + 2 + 4.
    let attempts: f64 = text
        .lines()
        .filter(|l| l.starts_with("courier_attempts_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(attempts, 8.0);
    assert!(metric_value(&text, "courier_ledger_batch_size_count") >= 1.0);
    // Every first attempt was made by the fan-out stage (the endpoints are
    // fresh and quick), so courier published exactly the 4 retries, the
    // dead letter and the poison message, and put nothing off.
    assert_eq!(
        metric_value(&text, r#"courier_publish_confirms_total{outcome="ack"}"#),
        6.0,
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "courier_deliveries_deferred_total"),
        0.0
    );

    assert_eq!(worker.get("/healthz").await.0, 200);
    assert_eq!(worker.get("/readyz").await.0, 200);
    // The broker's view reaches the gauges within a poll or two.
    wait_for("queue gauges", Duration::from_secs(15), || async {
        let text = worker.get("/metrics").await.1;
        metric_value(&text, r#"courier_queue_consumers{queue="fanout"}"#) == 1.0
            && metric_value(&text, r#"courier_queue_messages{queue="dead"}"#) == 1.0
    })
    .await;
    worker.stop().await.unwrap();
}

async fn sigterm_under_load_loses_nothing(db: Db) {
    const EVENTS: usize = 600;
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let a = Receiver::start(Behavior::Ok).await;
    let b = Receiver::start(Behavior::Ok).await;
    env.webhook(&ws, &a.url(), &["order.created"], &[]).await;
    env.webhook(&ws, &b.url(), &["order.created"], &[]).await;
    let expected = 2 * EVENTS;

    let mut worker = env.spawn_worker_process();
    let (publisher, _connection) = env.publisher().await;
    for seq in 0..EVENTS {
        let e = Event::new(
            ws.clone(),
            EventType::OrderCreated,
            None,
            json!({"seq": seq}),
        )
        .unwrap();
        publisher.publish(&e).await.unwrap();
    }
    wait_for("deliveries to flow", Duration::from_secs(60), || async {
        a.count() + b.count() >= expected / 4
    })
    .await;
    let status = worker.terminate();
    assert!(status.success(), "courier exits 0 on SIGTERM, got {status}");
    let at_stop = a.count() + b.count();

    let _again = env.spawn_worker_process();
    wait_for("every delivery", Duration::from_secs(60), || async {
        a.distinct() + b.distinct() == expected
    })
    .await;
    wait_for("the ledger to agree", Duration::from_secs(30), || async {
        env.store.delivery_counts().await.unwrap() == [(DeliveryStatus::Succeeded, expected as u64)]
    })
    .await;
    // A graceful stop finishes or hands back its work: nothing twice.
    assert_eq!(
        a.count() + b.count(),
        expected,
        "duplicates after SIGTERM (stopped at {at_stop})"
    );
}

/// A real Prometheus server scrapes a running courier, and a PromQL query
/// over its HTTP API returns the attempt counts of the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_attempt_counts() {
    let env = TestEnv::new(Db::Sqlite).await;
    let ws = env.workspace("acme").await;
    let ok = Receiver::start(Behavior::Ok).await;
    let failing = Receiver::start(Behavior::Status(500)).await;
    env.webhook(&ws, &ok.url(), &["order.created"], &[]).await;
    env.webhook(&ws, &failing.url(), &["order.canceled"], &[])
        .await;
    let worker = env.start_worker().await;
    let (publisher, _connection) = env.publisher().await;
    for event_type in [
        EventType::OrderCreated,
        EventType::OrderCreated,
        EventType::OrderCreated,
        EventType::OrderCanceled,
    ] {
        let e = Event::new(ws.clone(), event_type, None, json!({})).unwrap();
        publisher.publish(&e).await.unwrap();
    }
    // 3 successes; 1 delivery x 4 attempts against the failing receiver
    // (too few failures in a row to open its circuit).
    wait_for(
        "all deliveries to finish",
        Duration::from_secs(30),
        || async {
            let counts: HashMap<_, _> = env
                .store
                .delivery_counts()
                .await
                .unwrap()
                .into_iter()
                .collect();
            counts.get(&DeliveryStatus::Succeeded) == Some(&3)
                && counts.get(&DeliveryStatus::Dead) == Some(&1)
        },
    )
    .await;

    let prometheus = courier_tests::Prometheus::start(worker.http_addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let query = |q: &'static str| {
        let url = prometheus.query_url(q);
        let client = client.clone();
        async move {
            let body: serde_json::Value = match client.get(&url).send().await {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => return None,
            };
            body["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
        }
    };
    wait_for(
        "Prometheus to scrape the attempt counts",
        Duration::from_secs(60),
        || async {
            query(r#"sum(courier_attempts_total{outcome="success"})"#).await == Some(3.0)
                && query(r#"sum(courier_attempts_total{outcome="retry"})"#).await == Some(3.0)
                && query(r#"sum(courier_attempts_total{outcome="dead"})"#).await == Some(1.0)
        },
    )
    .await;
    assert_eq!(query("sum(courier_dead_lettered_total)").await, Some(1.0));
    worker.stop().await.unwrap();
}
