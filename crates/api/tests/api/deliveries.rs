//! The delivery log and redelivery: pages, filters, details, history of
//! deleted webhooks, redelivery and recovery through RabbitMQ, ingest.

use std::sync::Arc;

use chrono::Utc;
use courier_model::{DeliveryMessage, DeliveryStatus, Event, EventId, EventType};
use courier_producer::Topology;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{self, App, amqp_url, assert_error, attempt, run, seed};
use crate::on_both_backends;

on_both_backends!(
    delivery_log_pages_filters_and_details => DEFAULT,
    deleted_webhook_keeps_its_history => DEFAULT,
    redelivery_recover_and_ingest => Setup { broker: true, ..DEFAULT },
    broker_routes_answer_503_without_broker => DEFAULT,
);

async fn delivery_log_pages_filters_and_details(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let h1 = app.webhook(&ws, &key, json!({"name": "1", "url": "http://127.0.0.1:9/hook", "events": ["order.created", "shipment.created"]})).await;
    let h2 = app
        .webhook(
            &ws,
            &key,
            json!({"name": "2", "url": "http://127.0.0.1:9/other", "events": ["order.created"]}),
        )
        .await;
    let (h1, h2) = (h1["id"].as_str().unwrap(), h2["id"].as_str().unwrap());
    let mut original = seed(&app.store, &ws, h1, EventType::OrderCreated, 4).await;
    original.extend(seed(&app.store, &ws, h1, EventType::ShipmentCreated, 3).await);
    original.extend(seed(&app.store, &ws, h2, EventType::OrderCreated, 3).await);
    attempt(&app.store, original[0], 1, 500, DeliveryStatus::Dead).await;
    attempt(&app.store, original[4], 1, 200, DeliveryStatus::Succeeded).await;

    // Page through with first=3 while new deliveries keep arriving: every
    // original row shows up exactly once, newest first.
    let path = format!("/v1/workspaces/{ws}/deliveries");
    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &after {
            Some(a) => format!("?first=3&after={a}"),
            None => "?first=3".into(),
        };
        let (status, body) = app.get(&format!("{path}{query}"), &key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let items = body["data"]["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
        pages += 1;
        seed(&app.store, &ws, h2, EventType::OrderCreated, 2).await;
        if body["data"]["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = Some(
            body["data"]["pageInfo"]["endCursor"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(pages, 4);
    let mut expected: Vec<String> = original.iter().map(|d| d.to_string()).collect();
    expected.reverse();
    assert_eq!(seen, expected);

    // One row, in full.
    let (_, body) = app
        .get(&format!("{path}?first=100&type=shipment.created"), &key)
        .await;
    let items = body["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|i| i["type"] == "shipment.created"));
    let (_, body) = app.get(&format!("{path}?status=dead"), &key).await;
    let dead = &body["data"]["items"].as_array().unwrap()[..];
    assert_eq!(dead.len(), 1);
    let row = &dead[0];
    assert_eq!(row["id"], original[0].to_string());
    assert_eq!(row["responseStatus"], 500);
    assert_eq!(row["attempts"], 1);
    assert_eq!(row["url"], "http://127.0.0.1:9/hook");
    assert_eq!(row["webhookId"], h1);
    assert!(row["eventId"].as_str().unwrap().starts_with("evt_"));
    assert!(row["lastAttemptAt"].is_string() && row["createdAt"].is_string());
    let (_, body) = app
        .get(
            &format!("{path}?first=100&webhook={h2}&type=order.created"),
            &key,
        )
        .await;
    assert_eq!(
        body["data"]["items"].as_array().unwrap().len(),
        3 + 2 * pages
    );
    let (_, body) = app
        .get(
            &format!("{path}?first=100&status=pending&webhook={h1}"),
            &key,
        )
        .await;
    assert_eq!(body["data"]["items"].as_array().unwrap().len(), 5);
    for (query, field) in [
        ("type=order.nope", "type"),
        ("status=lost", "status"),
        ("webhook=x", "webhook"),
    ] {
        let (status, body) = app.get(&format!("{path}?{query}"), &key).await;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
    }

    let one = format!("{path}/{}", original[0]);
    let (status, body) = app.get(&one, &key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "dead");
    assert_eq!(body["data"]["attemptLog"][0]["responseStatus"], 500);
    assert_eq!(body["data"]["attemptLog"][0]["durationMs"], 12);
    assert_eq!(
        body["data"]["attemptLog"][0]["responseExcerpt"],
        "upstream said no"
    );
    let (status, body) = app.get(&format!("{one}/attempts"), &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["attempt"], 1);
    let (status, body) = app
        .get(&format!("{path}/{}", uuid::Uuid::new_v4()), &key)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, None);

    // Per-webhook event view.
    let (status, body) = app
        .get(
            &format!("/v1/workspaces/{ws}/webhooks/{h1}/events?first=100"),
            &key,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = body["data"]["items"].as_array().unwrap();
    assert_eq!(events.len(), 7);
    let succeeded = events
        .iter()
        .find(|e| e["deliveryId"] == original[4].to_string())
        .unwrap();
    assert_eq!(succeeded["status"], "succeeded");
    assert_eq!(succeeded["responseStatus"], 200);
    assert_eq!(succeeded["attempts"], 1);
    assert_eq!(succeeded["type"], "shipment.created");
}

async fn deleted_webhook_keeps_its_history(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let hook = app
        .webhook(
            &ws,
            &key,
            json!({"name": "1", "url": "http://127.0.0.1:9/hook", "events": ["order.created"]}),
        )
        .await;
    let id = hook["id"].as_str().unwrap();
    let ids = seed(&app.store, &ws, id, EventType::OrderCreated, 2).await;
    attempt(&app.store, ids[0], 1, 200, DeliveryStatus::Succeeded).await;
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/workspaces/{ws}/webhooks/{id}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // The history stays readable, by webhook id too.
    let (_, body) = app
        .get(
            &format!("/v1/workspaces/{ws}/deliveries?webhook={id}"),
            &key,
        )
        .await;
    let items = body["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let done = items
        .iter()
        .find(|i| i["id"] == ids[0].to_string())
        .unwrap();
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["url"], "http://127.0.0.1:9/hook");
    // The pending one is what the worker will cancel: its context has no
    // subscription any more.
    let context = app.store.delivery_context(ids[1]).await.unwrap().unwrap();
    assert!(context.subscription.is_none());
    // Redelivering it is refused: it would only be canceled.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/workspaces/{ws}/deliveries/{}/retry", ids[1]),
            Some(&key),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, None);
}

async fn get_message(topology: &Topology, queue: &str) -> Option<Vec<u8>> {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = topology;
    let got = if q.message_count() == 0 {
        None
    } else {
        let m = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
            .unwrap();
        m.acker.ack(BasicAckOptions::default()).await.unwrap();
        Some(m.delivery.data.clone())
    };
    connection.close(200, "".into()).await.ok();
    got
}

async fn redelivery_recover_and_ingest(app: Arc<App>) {
    let topology = app.topology.clone().unwrap();
    let (ws, key) = app.tenant().await;
    let hook = app
        .webhook(
            &ws,
            &key,
            json!({"name": "1", "url": "http://127.0.0.1:9/hook", "events": ["order.created"]}),
        )
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    let ids = seed(&app.store, &ws, hook_id, EventType::OrderCreated, 3).await;
    for (i, id) in ids.iter().enumerate() {
        for n in 1..=2 {
            let status = if n == 2 && i < 2 {
                DeliveryStatus::Dead
            } else {
                DeliveryStatus::Retrying
            };
            attempt(&app.store, *id, n, 503, status).await;
        }
    }
    attempt(&app.store, ids[2], 3, 200, DeliveryStatus::Succeeded).await;

    // Manual redelivery of a dead delivery: retrying, attempts kept, and a
    // message for attempt 3 in the deliveries queue.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/workspaces/{ws}/deliveries/{}/retry", ids[0]),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["attempt"], 3);
    let record = app.store.get_delivery(ids[0]).await.unwrap().unwrap();
    assert_eq!(record.status, DeliveryStatus::Retrying);
    assert_eq!(record.attempts, 2);
    let msg = DeliveryMessage::from_slice(
        &get_message(&topology, &topology.deliveries_queue())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(msg.delivery_id, ids[0]);
    assert_eq!(msg.attempt, 3);
    assert_eq!(msg.subscription_id.to_string(), hook_id);

    // Bulk recover: only dead/canceled ones since the time given.
    let (status, body) = app
        .post(
            &format!("/v1/workspaces/{ws}/webhooks/{hook_id}/recover"),
            &key,
            json!({"since": (Utc::now() - chrono::Duration::hours(1)).to_rfc3339()}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["deliveryIds"], json!([ids[1].to_string()]));
    assert_eq!(body["data"]["hasMore"], false);
    let msg = DeliveryMessage::from_slice(
        &get_message(&topology, &topology.deliveries_queue())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!((msg.delivery_id, msg.attempt), (ids[1], 3));
    assert!(
        get_message(&topology, &topology.deliveries_queue())
            .await
            .is_none()
    );
    let (_, body) = app
        .post(
            &format!("/v1/workspaces/{ws}/webhooks/{hook_id}/recover"),
            &key,
            json!({"since": Utc::now().to_rfc3339()}),
        )
        .await;
    assert_eq!(body["data"]["deliveryIds"], json!([]));

    // Ingest: validated, published with confirms, 202 with the id.
    let path = format!("/v1/workspaces/{ws}/events");
    let (status, body) = app
        .post(
            &path,
            &key,
            json!({"type": "order.status", "channel": "amazon", "data": {"order_id": "o-9"}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_owned();
    let event = Event::from_slice(&common::only_event(
        &get_message(&topology, &topology.fanout_queue())
            .await
            .unwrap(),
    ))
    .unwrap();
    assert_eq!(event.id, EventId::parse(id).unwrap());
    assert_eq!(event.event_type, EventType::OrderStatusChanged);
    assert_eq!(event.workspace_id.as_str(), ws);
    assert_eq!(event.data.to_value(), json!({"order_id": "o-9"}));
    let (status, body) = app
        .post(
            &path,
            &key,
            json!({"type": "order.created", "id": "evt_mine", "data": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["data"]["id"], "evt_mine");
    assert!(
        get_message(&topology, &topology.fanout_queue())
            .await
            .is_some()
    );
    for (body, want, field) in [
        (
            json!({"type": "nope", "data": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("type"),
        ),
        (
            json!({"type": "order.created", "data": [1]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("data"),
        ),
        (
            json!({"type": "order.created", "data": {}, "extra": 1}),
            StatusCode::BAD_REQUEST,
            Some("extra"),
        ),
        (
            json!({"type": "order.created", "data": {"big": "x".repeat(300 * 1024)}}),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
    ] {
        let (status, resp) = app.post(&path, &key, body).await;
        assert_error(status, &resp, want, field);
    }
    // Nothing from the refused ones reached the broker.
    assert!(
        get_message(&topology, &topology.fanout_queue())
            .await
            .is_none()
    );
    // Ingest takes bodies above the 64 KiB of other routes.
    let (status, _) = app
        .post(
            &path,
            &key,
            json!({"type": "order.created", "data": {"big": "x".repeat(100 * 1024)}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

async fn broker_routes_answer_503_without_broker(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let hook = app
        .webhook(
            &ws,
            &key,
            json!({"name": "1", "url": "http://127.0.0.1:9/hook", "events": ["order.created"]}),
        )
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    let ids = seed(&app.store, &ws, hook_id, EventType::OrderCreated, 1).await;
    attempt(&app.store, ids[0], 1, 500, DeliveryStatus::Dead).await;
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/workspaces/{ws}/deliveries/{}/retry", ids[0]),
            Some(&key),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE, None);
    // Nothing was reopened.
    assert_eq!(
        app.store
            .get_delivery(ids[0])
            .await
            .unwrap()
            .unwrap()
            .status,
        DeliveryStatus::Dead
    );
    let (status, body) = app
        .post(
            &format!("/v1/workspaces/{ws}/events"),
            &key,
            json!({"type": "order.created", "data": {}}),
        )
        .await;
    assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE, None);
}
