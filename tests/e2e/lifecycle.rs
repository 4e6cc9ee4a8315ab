//! The endpoint lifecycle end to end: an endpoint that answers 410 Gone
//! disables its webhook at once; one that keeps failing is reported to the
//! workspace's operational webhook and disabled; a disabled webhook's
//! deliveries are paused, never attempted, and replayed exactly once when
//! it is enabled again; a reported endpoint that delivers again is reported
//! recovered.

use std::collections::HashSet;
use std::time::Duration;

use courier_api::webhooks::{StatusChange, UrlPolicy, WebhookPatch, update_reporting};
use courier_model::{
    DeliveryStatus, DisabledReason, Event, EventType, Subscription, SubscriptionStatus, WorkspaceId,
};
use courier_producer::Publisher;
use courier_tests::{Behavior, Db, Receiver, TestEnv, verify_signature, wait_for};
use serde_json::json;

crate::on_both_databases!(
    gone_disables_at_once_and_pauses_until_enabled_again,
    a_failing_endpoint_is_reported_disabled_and_replayed_once,
    a_reported_endpoint_that_delivers_again_is_reported_recovered,
);

async fn publish(publisher: &Publisher, ws: &WorkspaceId, n: u32) -> Event {
    let event = Event::new(ws.clone(), EventType::OrderCreated, None, json!({"n": n})).unwrap();
    publisher.publish(&event).await.unwrap();
    event
}

async fn webhook_now(env: &TestEnv, sub: &Subscription) -> Subscription {
    env.store
        .get_subscription(&sub.workspace_id, sub.id)
        .await
        .unwrap()
        .expect("the webhook is there")
}

/// The webhook's delivery of the event, once the ledger has it (an attempt
/// made by the fan-out, and what it caused, may come before the fan-out's
/// commit does).
async fn status_of(
    env: &TestEnv,
    event: &Event,
    sub: &Subscription,
) -> Option<(DeliveryStatus, u32)> {
    let deliveries = env
        .store
        .deliveries_of_event(&event.workspace_id, &event.id)
        .await
        .unwrap();
    deliveries
        .iter()
        .find(|d| d.subscription_id == sub.id)
        .map(|d| (d.status, d.attempts))
}

async fn enable(env: &TestEnv, sub: &Subscription, replay: bool) -> StatusChange {
    let patch = WebhookPatch {
        active: Some(true),
        replay_paused: Some(replay),
        ..WebhookPatch::default()
    };
    let policy = UrlPolicy {
        require_https: false,
    };
    update_reporting(&env.store, &sub.workspace_id, sub.id, patch, policy)
        .await
        .unwrap()
        .1
}

/// The operational events the receiver got, as (type, data), each checked
/// against the operational webhook's signature.
fn notices(receiver: &Receiver, ops: &Subscription) -> Vec<(String, serde_json::Value)> {
    receiver
        .requests()
        .iter()
        .map(|r| {
            assert!(
                verify_signature(
                    ops.secret.expose(),
                    &r.webhook_id,
                    &r.timestamp,
                    &r.body,
                    &r.signature
                ),
                "an operational event is signed like any delivery"
            );
            let body = r.json();
            (
                body["type"].as_str().unwrap().to_owned(),
                body["data"].clone(),
            )
        })
        .collect()
}

async fn gone_disables_at_once_and_pauses_until_enabled_again(db: Db) {
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let gone = Receiver::start(Behavior::Down { status: 410 }).await;
    let healthy = Receiver::start(Behavior::Ok).await;
    let sub = env.webhook(&ws, &gone.url(), &["order.created"], &[]).await;
    env.webhook(&ws, &healthy.url(), &["order.created"], &[])
        .await;
    let worker = env.start_worker().await;
    let (publisher, _connection) = env.publisher().await;

    let first = publish(&publisher, &ws, 1).await;
    wait_for("the webhook disabled", Duration::from_secs(30), || async {
        webhook_now(&env, &sub).await.status == SubscriptionStatus::Disabled
    })
    .await;
    let disabled = webhook_now(&env, &sub).await.disabled.expect("a reason");
    assert_eq!(disabled.reason, DisabledReason::Gone);
    wait_for(
        "the 410's attempt recorded",
        Duration::from_secs(10),
        || async { status_of(&env, &first, &sub).await == Some((DeliveryStatus::Paused, 1)) },
    )
    .await;
    assert_eq!(gone.count(), 1, "no attempt after the 410");

    // Events after it: recorded paused, not attempted; the other webhook
    // gets them.
    let later = [
        publish(&publisher, &ws, 2).await,
        publish(&publisher, &ws, 3).await,
    ];
    wait_for(
        "the healthy webhook's deliveries",
        Duration::from_secs(30),
        || async { healthy.distinct() == 3 },
    )
    .await;
    // The healthy webhook may get its attempt before the fan-out commits
    // (first attempts go out before the commit): wait for the ledger.
    for event in &later {
        wait_for(
            "the later deliveries paused",
            Duration::from_secs(30),
            || async { status_of(&env, event, &sub).await == Some((DeliveryStatus::Paused, 0)) },
        )
        .await;
    }
    assert_eq!(gone.count(), 1, "paused deliveries are not attempted");
    assert_eq!(env.store.count_paused(&ws, sub.id).await.unwrap(), 3);

    // Enabled again: all three go out, once each.
    gone.recover();
    let change = enable(&env, &sub, true).await;
    assert_eq!(change.replayed, 3);
    for event in std::iter::once(&first).chain(&later) {
        wait_for(
            "the replayed delivery to succeed",
            Duration::from_secs(30),
            || async {
                status_of(&env, event, &sub).await.map(|s| s.0) == Some(DeliveryStatus::Succeeded)
            },
        )
        .await;
    }
    assert_eq!(
        status_of(&env, &first, &sub).await,
        Some((DeliveryStatus::Succeeded, 2))
    );
    let ids: HashSet<String> = gone.requests().into_iter().map(|r| r.webhook_id).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        gone.count(),
        4,
        "the 410, then each paused delivery exactly once"
    );
    assert!(webhook_now(&env, &sub).await.disabled.is_none());
    worker.stop().await.unwrap();
}

async fn a_failing_endpoint_is_reported_disabled_and_replayed_once(db: Db) {
    let env = TestEnv::with(
        db,
        &[
            ("COURIER__ENDPOINTS__DISABLE_AFTER_SECONDS", "2"),
            ("COURIER__ENDPOINTS__FAILING_AFTER_ATTEMPTS", "3"),
        ],
    )
    .await;
    let ws = env.workspace("acme").await;
    let failing = Receiver::start(Behavior::Down { status: 503 }).await;
    let control = Receiver::start(Behavior::Ok).await;
    let operations = Receiver::start(Behavior::Ok).await;
    let sub = env
        .webhook(&ws, &failing.url(), &["order.created"], &[])
        .await;
    env.webhook(&ws, &control.url(), &["order.created"], &[])
        .await;
    let ops = env
        .webhook(
            &ws,
            &operations.url(),
            &["webhook.failing", "webhook.disabled", "webhook.recovered"],
            &[],
        )
        .await;
    let worker = env.start_worker().await;
    let (publisher, _connection) = env.publisher().await;

    // A steady trickle until the webhook is disabled (bounded: 150 events,
    // 30 s): attempts keep failing past `disable_after`.
    let mut published = 0;
    while webhook_now(&env, &sub).await.status == SubscriptionStatus::Enabled {
        assert!(published < 150, "not disabled after {published} events");
        publish(&publisher, &ws, published).await;
        published += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let disabled = webhook_now(&env, &sub).await.disabled.expect("a reason");
    assert_eq!(disabled.reason, DisabledReason::Failing);

    wait_for(
        "webhook.disabled at the operational webhook",
        Duration::from_secs(30),
        || async {
            notices(&operations, &ops)
                .iter()
                .any(|(ty, _)| ty == "webhook.disabled")
        },
    )
    .await;
    // Events while disabled are paused: the control webhook gets them, the
    // failing endpoint is not asked again.
    let before = failing.count();
    let during = [
        publish(&publisher, &ws, 1000).await,
        publish(&publisher, &ws, 1001).await,
        publish(&publisher, &ws, 1002).await,
    ];
    wait_for(
        "the control webhook's deliveries",
        Duration::from_secs(30),
        || async { control.distinct() == published as usize + during.len() },
    )
    .await;
    // A first attempt goes out before its fan-out commits: the control's
    // arrivals do not mean the paused rows are in the ledger yet.
    for event in &during {
        wait_for(
            "the paused delivery in the ledger",
            Duration::from_secs(30),
            || async { status_of(&env, event, &sub).await == Some((DeliveryStatus::Paused, 0)) },
        )
        .await;
    }
    assert_eq!(
        failing.count(),
        before,
        "a disabled webhook gets no attempt"
    );

    let seen = notices(&operations, &ops);
    let of = |ty: &str| seen.iter().filter(|(t, _)| t == ty).collect::<Vec<_>>();
    assert_eq!(of("webhook.failing").len(), 1, "{seen:?}");
    assert_eq!(of("webhook.disabled").len(), 1, "{seen:?}");
    assert!(of("webhook.recovered").is_empty(), "{seen:?}");
    let failing_data = &of("webhook.failing")[0].1;
    assert_eq!(failing_data["webhook_id"], sub.id.to_string());
    assert!(failing_data["consecutive_failures"].as_u64().unwrap() >= 3);
    assert_eq!(failing_data["last_failure"]["response_status"], 503);
    let disabled_data = &of("webhook.disabled")[0].1;
    assert_eq!(disabled_data["reason"], "failing");
    assert_eq!(
        disabled_data["failing_since"],
        failing_data["failing_since"]
    );

    // Enabled again with the endpoint back: every paused delivery is sent
    // once more, and nothing else.
    let paused = env.store.count_paused(&ws, sub.id).await.unwrap();
    assert!(paused >= during.len() as u64);
    // A delivery may still be waiting for an attempt, not paused, when the
    // webhook is enabled again: retrying, or pending, such as one whose
    // event's fan-out matched the webhook just before it was disabled and
    // recorded the delivery held (the circuit was open) just after. It is
    // attempted once. Only the failing webhook's deliveries wait here; the
    // others' pending rows, if any, only widen the bound.
    let waiting: usize = env
        .store
        .delivery_counts()
        .await
        .unwrap()
        .into_iter()
        .filter(|(status, _)| matches!(status, DeliveryStatus::Retrying | DeliveryStatus::Pending))
        .map(|(_, n)| n as usize)
        .sum();
    failing.recover();
    let change = enable(&env, &sub, true).await;
    assert_eq!(change.replayed, paused);
    for event in &during {
        wait_for(
            "a replayed delivery to succeed",
            Duration::from_secs(10),
            || async { status_of(&env, event, &sub).await == Some((DeliveryStatus::Succeeded, 1)) },
        )
        .await;
    }
    assert_eq!(env.store.count_paused(&ws, sub.id).await.unwrap(), 0);
    wait_for(
        "every replayed delivery",
        Duration::from_secs(30),
        || async { failing.count() >= before + paused as usize },
    )
    .await;
    let replayed: Vec<String> = failing.requests()[before..]
        .iter()
        .map(|r| r.webhook_id.clone())
        .collect();
    let distinct: HashSet<&String> = replayed.iter().collect();
    assert_eq!(distinct.len(), replayed.len(), "each replayed once");
    let sent = failing.count() - before;
    assert!(
        (paused as usize..=paused as usize + waiting).contains(&sent),
        "one request per replayed delivery, and at most one per delivery that was \
         waiting for an attempt: {sent} for {paused} paused and {waiting} waiting"
    );
    worker.stop().await.unwrap();
}

async fn a_reported_endpoint_that_delivers_again_is_reported_recovered(db: Db) {
    let env = TestEnv::with(
        db,
        &[
            ("COURIER__ENDPOINTS__DISABLE_AFTER_SECONDS", "3600"),
            ("COURIER__ENDPOINTS__FAILING_AFTER_ATTEMPTS", "2"),
            // Room to recover before the schedule ends: about 5 s.
            ("COURIER__RETRY__MAX_ATTEMPTS", "8"),
        ],
    )
    .await;
    let ws = env.workspace("acme").await;
    let flaky = Receiver::start(Behavior::Down { status: 500 }).await;
    let operations = Receiver::start(Behavior::Ok).await;
    let sub = env
        .webhook(&ws, &flaky.url(), &["order.created"], &[])
        .await;
    let ops = env
        .webhook(
            &ws,
            &operations.url(),
            &["webhook.failing", "webhook.recovered"],
            &[],
        )
        .await;
    let worker = env.start_worker().await;
    let (publisher, _connection) = env.publisher().await;
    let event = publish(&publisher, &ws, 1).await;

    wait_for("webhook.failing", Duration::from_secs(30), || async {
        !notices(&operations, &ops).is_empty()
    })
    .await;
    flaky.recover();
    wait_for(
        "the delivery to succeed on a retry",
        Duration::from_secs(30),
        || async {
            status_of(&env, &event, &sub).await.map(|s| s.0) == Some(DeliveryStatus::Succeeded)
        },
    )
    .await;
    wait_for("webhook.recovered", Duration::from_secs(30), || async {
        notices(&operations, &ops)
            .iter()
            .any(|(ty, _)| ty == "webhook.recovered")
    })
    .await;
    let seen = notices(&operations, &ops);
    let types: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["webhook.failing", "webhook.recovered"]);
    assert_eq!(seen[1].1["failing_since"], seen[0].1["failing_since"]);
    assert_eq!(seen[1].1["webhook_id"], sub.id.to_string());
    assert_eq!(
        webhook_now(&env, &sub).await.status,
        SubscriptionStatus::Enabled
    );
    worker.stop().await.unwrap();
}
