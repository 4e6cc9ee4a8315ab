//! Read-your-writes: once a webhook change has returned, every event
//! published after it is matched against the changed set, on every
//! replica. The changes here go straight to the ledger, as the admin CLI
//! makes them, with no change notice, and the periodic reload is an hour
//! away: only the fan-out's own check can make these pass.

use std::time::Duration;

use courier_model::{Channel, DeliveryStatus, Event, EventType, SubscriptionId, WorkspaceId};
use courier_tests::{Behavior, Db, Receiver, TestEnv, wait_for};
use serde_json::json;

crate::on_both_databases!(changes_apply_to_the_next_event);

const ROUNDS: usize = 100;

fn order(ws: &WorkspaceId, round: usize) -> Event {
    Event::new(
        ws.clone(),
        EventType::OrderCreated,
        Some(Channel::parse(&format!("shop-{round}")).unwrap()),
        json!({ "round": round }),
    )
    .unwrap()
}

/// Enables or disables a webhook the way the admin CLI does: straight in
/// the ledger, announcing nothing.
async fn set_active(env: &TestEnv, ws: &WorkspaceId, id: SubscriptionId, active: bool) {
    courier_api::webhooks::update(
        &env.store,
        ws,
        id,
        courier_api::webhooks::WebhookPatch {
            active: Some(active),
            ..Default::default()
        },
        courier_api::webhooks::UrlPolicy {
            require_https: false,
        },
    )
    .await
    .unwrap();
}

async fn changes_apply_to_the_next_event(db: Db) {
    let env = TestEnv::with(
        db,
        &[("COURIER__DELIVERY__SUBSCRIPTION_REFRESH_MS", "3600000")],
    )
    .await;
    let ws = env.workspace("acme").await;
    let receiver = Receiver::start(Behavior::Ok).await;
    let replicas = [env.start_worker().await, env.start_worker().await];
    for replica in &replicas {
        wait_for("replica ready", Duration::from_secs(30), || async {
            replica.get("/readyz").await.0 == 200
        })
        .await;
    }
    let (publisher, _connection) = env.publisher().await;

    // Create, then publish at once: each event matches only the webhook
    // created just before it (one channel each).
    let mut webhooks = Vec::new();
    for round in 0..ROUNDS {
        let webhook = env
            .webhook(
                &ws,
                &receiver.url(),
                &["order.created"],
                &[&format!("shop-{round}")],
            )
            .await;
        webhooks.push(webhook);
        publisher.publish(&order(&ws, round)).await.unwrap();
    }
    wait_for(
        "every event published after its webhook was created",
        Duration::from_secs(60),
        || async { receiver.distinct() == ROUNDS },
    )
    .await;

    // Disable, then publish at once: nothing may be delivered; each event
    // is kept for its webhook, paused.
    let mut after_disable = Vec::new();
    for (round, webhook) in webhooks.iter().enumerate() {
        set_active(&env, &ws, webhook.id, false).await;
        let event = order(&ws, round);
        publisher.publish(&event).await.unwrap();
        after_disable.push(event.id);
    }
    // Every event is recorded when fanned out, matched or not.
    for id in &after_disable {
        wait_for(
            "the events published after the disables to be fanned out",
            Duration::from_secs(60),
            || async { env.store.get_event(&ws, id).await.unwrap().is_some() },
        )
        .await;
        let deliveries = env.store.deliveries_of_event(&ws, id).await.unwrap();
        assert!(
            deliveries.len() == 1
                && deliveries[0].status == DeliveryStatus::Paused
                && deliveries[0].attempts == 0,
            "an event published after its webhook was disabled got {deliveries:?}"
        );
    }

    // Enable (which replays the paused ones), then publish at once:
    // delivered again.
    for (round, webhook) in webhooks.iter().enumerate() {
        set_active(&env, &ws, webhook.id, true).await;
        publisher.publish(&order(&ws, round)).await.unwrap();
    }
    wait_for(
        "every event published after its webhook was enabled again",
        Duration::from_secs(60),
        || async { receiver.distinct() == 3 * ROUNDS },
    )
    .await;
    for replica in replicas {
        replica.stop().await.unwrap();
    }
    assert_eq!(receiver.distinct(), 3 * ROUNDS);
}
