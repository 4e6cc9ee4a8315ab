//! Matching and signing: the right events reach exactly the right receivers,
//! signed so that a receiver's own verification accepts them.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use courier_model::{Channel, DeliveryStatus, Event, EventType, WorkspaceId};
use courier_tests::{Behavior, Db, Receiver, TestEnv, verify_signature, wait_for};
use serde_json::json;

crate::on_both_databases!(matching_reaches_exactly_the_right_receivers);

fn event(ws: &WorkspaceId, ty: EventType, channel: Option<&str>, tag: &str) -> Event {
    Event::new(
        ws.clone(),
        ty,
        channel.map(|c| Channel::parse(c).unwrap()),
        json!({ "tag": tag, "order_id": format!("order-{tag}") }),
    )
    .unwrap()
}

async fn matching_reaches_exactly_the_right_receivers(db: Db) {
    let env = TestEnv::new(db).await;
    let acme = env.workspace("acme").await;
    let globex = env.workspace("globex").await;

    let all_channels = Receiver::start(Behavior::Ok).await;
    let amazon_only = Receiver::start(Behavior::Ok).await;
    let disabled = Receiver::start(Behavior::Ok).await;
    let other_workspace = Receiver::start(Behavior::Ok).await;
    let shipments = Receiver::start(Behavior::Ok).await;

    let mut secrets = HashMap::new();
    for (receiver, ws, events, channels) in [
        (
            &all_channels,
            &acme,
            &["order.created", "order.canceled"][..],
            &[][..],
        ),
        (&amazon_only, &acme, &["order.created"][..], &["amazon"][..]),
        (&disabled, &acme, &["order.created"][..], &[][..]),
        (&other_workspace, &globex, &["order.created"][..], &[][..]),
        (
            &shipments,
            &acme,
            &["shipment.created"][..],
            &["amazon", "ebay"][..],
        ),
    ] {
        let sub = env.webhook(ws, &receiver.url(), events, channels).await;
        secrets.insert(receiver.url(), sub.secret.expose().to_owned());
        if std::ptr::eq(receiver, &disabled) {
            courier_api::webhooks::update(
                &env.store,
                ws,
                sub.id,
                courier_api::webhooks::WebhookPatch {
                    active: Some(false),
                    ..Default::default()
                },
                courier_api::webhooks::UrlPolicy {
                    require_https: false,
                },
            )
            .await
            .unwrap();
        }
    }

    let nowhere = WorkspaceId::parse("nobody").unwrap();
    let events = [
        event(&acme, EventType::OrderCreated, Some("amazon"), "e1"),
        event(&acme, EventType::OrderCreated, Some("ebay"), "e2"),
        event(&acme, EventType::OrderCreated, None, "e3"),
        event(&acme, EventType::OrderCanceled, Some("amazon"), "e4"),
        event(&globex, EventType::OrderCreated, Some("amazon"), "e5"),
        event(&acme, EventType::ShipmentCreated, Some("ebay"), "e6"),
        event(&acme, EventType::ShipmentCreated, Some("shopify"), "e7"),
        event(&acme, EventType::RefundRequested, None, "e8"),
        event(&nowhere, EventType::OrderCreated, None, "e9"),
    ];
    let worker = env.start_worker().await;
    let (publisher, _connection) = env.publisher().await;
    for e in &events {
        publisher.publish(e).await.expect("publish confirmed");
    }

    let expected: [(&Receiver, &[&str]); 5] = [
        (&all_channels, &["e1", "e2", "e3", "e4"]),
        (&amazon_only, &["e1"]),
        (&disabled, &[]),
        (&other_workspace, &["e5"]),
        (&shipments, &["e6"]),
    ];
    let total: usize = expected.iter().map(|(_, tags)| tags.len()).sum();
    // The disabled webhook's matches (e1, e2, e3) are kept, paused.
    wait_for(
        "every expected delivery to succeed",
        Duration::from_secs(30),
        || async {
            env.store.delivery_counts().await.unwrap()
                == [
                    (DeliveryStatus::Paused, 3),
                    (DeliveryStatus::Succeeded, total as u64),
                ]
        },
    )
    .await;
    // Stopping hands back anything unacked; empty queues then prove every
    // event, matching or not, was processed and nothing more is coming.
    worker.stop().await.expect("worker stops cleanly");
    let topology = env.topology();
    assert_eq!(env.queue_len(&topology.fanout_queue()).await, 0);
    assert_eq!(env.queue_len(&topology.deliveries_queue()).await, 0);

    for (receiver, tags) in expected {
        let requests = receiver.requests();
        let got: BTreeSet<String> = requests
            .iter()
            .map(|r| r.json()["data"]["tag"].as_str().unwrap().to_owned())
            .collect();
        let want: BTreeSet<String> = tags.iter().map(|t| t.to_string()).collect();
        assert_eq!(got, want, "receiver {}", receiver.url());
        assert_eq!(requests.len(), tags.len(), "no duplicates without crashes");

        // Signatures verify with the receiver's own implementation, and the
        // headers are what Standard Webhooks receivers expect.
        let secret = &secrets[&receiver.url()];
        for r in &requests {
            assert!(
                verify_signature(secret, &r.webhook_id, &r.timestamp, &r.body, &r.signature),
                "signature of {} does not verify",
                r.webhook_id
            );
            assert!(!verify_signature(
                secret,
                &r.webhook_id,
                &r.timestamp,
                b"{}",
                &r.signature
            ));
            let ts: i64 = r.timestamp.parse().unwrap();
            assert!((chrono::Utc::now().timestamp() - ts).abs() < 300);
            let body = r.json();
            let event = events
                .iter()
                .find(|e| e.id.as_str() == body["id"])
                .expect("body carries the event id");
            assert_eq!(body["type"], event.event_type.as_str());
            assert_eq!(body["workspace_id"], event.workspace_id.as_str());
            let deliveries = env
                .store
                .deliveries_of_event(&event.workspace_id, &event.id)
                .await
                .unwrap();
            assert!(
                deliveries.iter().any(|d| d.id.to_string() == r.webhook_id),
                "webhook-id is the delivery id"
            );
        }
    }
}
