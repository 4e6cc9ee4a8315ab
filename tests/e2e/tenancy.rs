//! Event ids are the upstreams', so two workspaces may publish the same one
//! (`order-1001-created` is a natural choice for many of them). Each must
//! stay its own event: its own data, on the first attempt and on every
//! retry, signed with its own webhook's secret, and visible to its own
//! workspace only.

use std::time::Duration;

use courier_model::{DeliveryStatus, Event, EventData, EventId, EventType, WorkspaceId};
use courier_tests::{Behavior, Db, Receiver, TestEnv, verify_signature, wait_for};
use serde_json::Value;

crate::on_both_databases!(same_event_id_in_two_workspaces_inline);
crate::on_both_databases!(same_event_id_in_two_workspaces_queued);

async fn same_event_id_in_two_workspaces_inline(db: Db) {
    same_event_id_in_two_workspaces(db, true).await
}

async fn same_event_id_in_two_workspaces_queued(db: Db) {
    same_event_id_in_two_workspaces(db, false).await
}

fn order_event(ws: &WorkspaceId, data: &str) -> Event {
    Event {
        id: EventId::parse("order-1001-created").unwrap(),
        workspace_id: ws.clone(),
        event_type: EventType::OrderCreated,
        channel: None,
        occurred_at: chrono::Utc::now(),
        data: EventData::from_text(data.to_owned()).unwrap(),
    }
}

async fn same_event_id_in_two_workspaces(db: Db, inline: bool) {
    let env = TestEnv::with(
        db,
        &[(
            "COURIER__DELIVERY__INLINE_FIRST_ATTEMPT",
            if inline { "true" } else { "false" },
        )],
    )
    .await;
    let a = env.workspace("alpha").await;
    let b = env.workspace("beta").await;
    // Both fail first, so that retries (which read the event back from the
    // ledger) run for both.
    let a_receiver = Receiver::start(Behavior::FailFirst {
        failures: 2,
        status: 500,
    })
    .await;
    let b_receiver = Receiver::start(Behavior::FailFirst {
        failures: 1,
        status: 503,
    })
    .await;
    let a_hook = env
        .webhook(&a, &a_receiver.url(), &["order.created"], &[])
        .await;
    let b_hook = env
        .webhook(&b, &b_receiver.url(), &["order.created"], &[])
        .await;
    let (a_key, _) = courier_api::keys::create_api_key(&env.store, &a, Some("e2e"))
        .await
        .unwrap();
    let (b_key, _) = courier_api::keys::create_api_key(&env.store, &b, Some("e2e"))
        .await
        .unwrap();
    let worker = env.start_worker().await;

    let a_data = r#"{"order_id": "alpha-1001", "total": "12.50"}"#;
    let b_data = r#"{"order_id": "beta-1001", "forged": true}"#;
    let (publisher, _connection) = env.publisher().await;
    publisher.publish(&order_event(&a, a_data)).await.unwrap();
    publisher.publish(&order_event(&b, b_data)).await.unwrap();

    wait_for(
        "both deliveries to succeed after their retries",
        Duration::from_secs(30),
        || async { env.store.delivery_counts().await.unwrap() == [(DeliveryStatus::Succeeded, 2)] },
    )
    .await;

    for (receiver, hook, ws, data, attempts) in [
        (&a_receiver, &a_hook, &a, a_data, 3),
        (&b_receiver, &b_hook, &b, b_data, 2),
    ] {
        let requests = receiver.requests();
        assert_eq!(requests.len(), attempts, "attempts to {ws}'s webhook");
        for request in &requests {
            let body = request.json();
            assert_eq!(body["workspace_id"], ws.as_str(), "{body}");
            assert_eq!(body["id"], "order-1001-created");
            let text = String::from_utf8(request.body.clone()).unwrap();
            assert!(
                text.contains(&format!(r#""data":{data}"#)),
                "{ws}'s webhook got other data: {text}"
            );
            assert!(
                verify_signature(
                    hook.secret.expose(),
                    &request.webhook_id,
                    &request.timestamp,
                    &request.body,
                    &request.signature,
                ),
                "{ws}'s request is not signed with its webhook's secret"
            );
        }
    }

    // Each workspace's API shows its own event, and only its own delivery.
    let client = reqwest::Client::new();
    let get = |ws: &WorkspaceId, key: &str| {
        client
            .get(format!(
                "http://{}/v1/workspaces/{ws}/events/order-1001-created",
                worker.http_addr
            ))
            .bearer_auth(key)
            .send()
    };
    for (ws, key, data, hook) in [(&a, &a_key, a_data, &a_hook), (&b, &b_key, b_data, &b_hook)] {
        let response = get(ws, key).await.unwrap();
        assert_eq!(response.status(), 200);
        let view: Value = response.json().await.unwrap();
        let event = &view["data"];
        assert_eq!(event["workspaceId"], ws.as_str());
        assert_eq!(event["data"], serde_json::from_str::<Value>(data).unwrap());
        let deliveries = event["deliveries"].as_array().unwrap();
        assert_eq!(deliveries.len(), 1, "{event}");
        assert_eq!(deliveries[0]["webhookId"], hook.id.to_string());
        assert_eq!(deliveries[0]["status"], "succeeded");
    }
    // A key of one workspace learns nothing of the other's event.
    let response = get(&b, &a_key).await.unwrap();
    assert_eq!(response.status(), 404);
    let body = response.text().await.unwrap();
    assert!(!body.contains("beta-1001"), "{body}");
    worker.stop().await.unwrap();
}
