//! Messages that can never be processed end in the poison queue, with the
//! reason, and the worker keeps delivering.

use std::time::Duration;

use courier_model::{Event, EventType};
use courier_tests::{Behavior, Db, Receiver, TestEnv, wait_for};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::AMQPValue;
use serde_json::json;

crate::on_both_databases!(poison_messages_are_set_aside);

async fn poison_messages_are_set_aside(db: Db) {
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let receiver = Receiver::start(Behavior::Ok).await;
    env.webhook(&ws, &receiver.url(), &["order.created"], &[])
        .await;
    let worker = env.start_worker().await;
    let (publisher, connection) = env.publisher().await;
    let topology = env.topology();

    // Straight onto the broker, past the producer's validation.
    let channel = connection.create_channel().await.unwrap();
    // The worker may still be declaring the deliveries exchange; declaring
    // the same topology here is idempotent and removes the race.
    topology.declare_all(&channel).await.unwrap();
    let bad_events: [&[u8]; 3] = [
        b"{not json",
        br#"{"id":"e1","workspace_id":"acme","type":"order.exploded","occurred_at":"2026-01-01T00:00:00Z","data":{}}"#,
        br#"{"id":"e2","workspace_id":"acme","type":"order.created","occurred_at":"2026-01-01T00:00:00Z","data":"not an object"}"#,
    ];
    for body in bad_events {
        channel
            .basic_publish(
                topology.events_exchange().as_str().into(),
                "order.created".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    channel
        .basic_publish(
            topology.deliveries_exchange().as_str().into(),
            "delivery".into(),
            BasicPublishOptions::default(),
            br#"{"v":1,"delivery_id":"nope"}"#,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    // A good event after the bad ones still arrives.
    let good = Event::new(
        ws.clone(),
        EventType::OrderCreated,
        None,
        json!({"ok": true}),
    )
    .unwrap();
    publisher.publish(&good).await.unwrap();
    wait_for("the good event", Duration::from_secs(30), || async {
        receiver.count() == 1
    })
    .await;
    let poison_queue = topology.poison_queue();
    wait_for("four poison messages", Duration::from_secs(30), || async {
        env.queue_len(&poison_queue).await == 4
    })
    .await;
    worker.stop().await.unwrap();

    let poisoned = env.drain(&poison_queue).await;
    let mut reasons = Vec::new();
    for (body, properties) in &poisoned {
        let headers = properties
            .headers()
            .as_ref()
            .expect("poison carries headers");
        let reason = match headers.inner().get("x-courier-error") {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("no reason header: {other:?}"),
        };
        reasons.push((String::from_utf8_lossy(body).into_owned(), reason));
    }
    let reason_of = |needle: &str| {
        reasons
            .iter()
            .find(|(body, _)| body.contains(needle))
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no poison message containing {needle}"))
    };
    assert!(reason_of("{not json").contains("not valid JSON"));
    assert!(reason_of("order.exploded").contains("unknown event type"));
    assert!(reason_of("not an object").contains("must be a JSON object"));
    assert!(reason_of("nope").contains("delivery message"));
    assert_eq!(receiver.requests()[0].json()["data"]["ok"], true);
}
