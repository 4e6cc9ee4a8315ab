//! "Why did my webhook not fire?": every event a worker consumed can be
//! looked up by id, with when it was received and which webhooks it
//! matched, none included.

use std::time::Duration;

use courier_model::{Channel, Event, EventType};
use courier_tests::{Behavior, Db, Receiver, TestEnv, metric_value, wait_for};
use serde_json::{Value, json};

crate::on_both_databases!(every_event_can_be_traced);

async fn every_event_can_be_traced(db: Db) {
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let receiver = Receiver::start(Behavior::Ok).await;
    let webhook = env
        .webhook(&ws, &receiver.url(), &["order.created"], &["amazon"])
        .await;
    let (key, _) = courier_api::keys::create_api_key(&env.store, &ws, Some("e2e"))
        .await
        .unwrap();
    let worker = env.start_worker().await;

    let event = |event_type, channel: &str| {
        Event::new(
            ws.clone(),
            event_type,
            Some(Channel::parse(channel).unwrap()),
            json!({"order_id": "o-1"}),
        )
        .unwrap()
    };
    let matched = event(EventType::OrderCreated, "amazon");
    let other_channel = event(EventType::OrderCreated, "ebay");
    let other_type = event(EventType::OrderCanceled, "amazon");
    let (publisher, _connection) = env.publisher().await;
    for e in [&matched, &other_channel, &other_type] {
        publisher.publish(e).await.unwrap();
    }

    let client = reqwest::Client::new();
    let rest = |id: String| {
        client
            .get(format!(
                "http://{}/v1/workspaces/{ws}/events/{id}",
                worker.http_addr
            ))
            .bearer_auth(&key)
            .send()
    };
    for e in [&matched, &other_channel, &other_type] {
        wait_for(
            "the event to be recorded",
            Duration::from_secs(30),
            || async { rest(e.id.to_string()).await.unwrap().status() == 200 },
        )
        .await;
    }
    wait_for("the delivery", Duration::from_secs(30), || async {
        receiver.count() == 1
    })
    .await;

    let view: Value = rest(matched.id.to_string())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let view = &view["data"];
    assert_eq!(view["type"], "order.created");
    assert_eq!(view["channel"], "amazon");
    assert_eq!(view["matched"], 1);
    assert_eq!(view["data"], json!({"order_id": "o-1"}));
    assert!(view["receivedAt"].is_string());
    assert_eq!(view["deliveries"][0]["webhookId"], webhook.id.to_string());
    assert_eq!(view["deliveries"][0]["status"], "succeeded");

    for e in [&other_channel, &other_type] {
        let view: Value = rest(e.id.to_string()).await.unwrap().json().await.unwrap();
        assert_eq!(view["data"]["matched"], 0, "{view}");
        assert_eq!(view["data"]["deliveries"], json!([]));
    }
    let never = rest("order-9999-created".into()).await.unwrap();
    assert_eq!(never.status(), 404);
    assert_eq!(
        never.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );

    // The same answers through GraphQL.
    let graphql = |id: String| {
        client
            .post(format!("http://{}/graphql", worker.http_addr))
            .bearer_auth(&key)
            .json(&json!({
                "query": "query($id: ID!) { event(id: $id) { id type channel matched \
                          receivedAt data deliveries { webhookId status } } }",
                "variables": {"id": id},
            }))
            .send()
    };
    let answer: Value = graphql(matched.id.to_string())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let event = &answer["data"]["event"];
    assert_eq!(event["type"], "ORDER_CREATED", "{answer}");
    assert_eq!(event["matched"], 1);
    assert_eq!(
        serde_json::from_str::<Value>(event["data"].as_str().unwrap()).unwrap(),
        json!({"order_id": "o-1"})
    );
    assert_eq!(event["deliveries"][0]["webhookId"], webhook.id.to_string());
    let answer: Value = graphql(other_type.id.to_string())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["data"]["event"]["matched"], 0, "{answer}");
    let answer: Value = graphql("order-9999-created".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["data"]["event"], Value::Null, "{answer}");

    let metrics = worker.get("/metrics").await.1;
    for event_type in ["order.created", "order.canceled"] {
        assert_eq!(
            metric_value(
                &metrics,
                &format!(r#"courier_events_unmatched_total{{event_type="{event_type}"}}"#)
            ),
            1.0,
            "{event_type}"
        );
    }
    worker.stop().await.unwrap();
}
