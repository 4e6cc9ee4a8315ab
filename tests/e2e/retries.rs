//! Failing receivers are retried on the configured schedule and end dead,
//! with every attempt in the ledger; a receiver that recovers ends succeeded.

use std::time::Duration;

use courier_model::{DeliveryMessage, DeliveryStatus, ErrorKind, Event, EventType};
use courier_tests::{Behavior, Db, Receiver, RetryAfter, TestEnv, wait_for};
use serde_json::json;

crate::on_both_databases!(
    failures_are_retried_then_dead_lettered,
    recovers_after_two_failures,
    retry_after_is_honoured_within_bounds
);

/// Schedule of the test environment: 4 attempts, waits of 200, 400, 800 ms.
const WAITS_MS: [i64; 3] = [200, 400, 800];

async fn failures_are_retried_then_dead_lettered(db: Db) {
    let env = TestEnv::with(db, &[("COURIER__DELIVERY__TIMEOUT_MS", "300")]).await;
    let ws = env.workspace("acme").await;
    let failing = Receiver::start(Behavior::Status(500)).await;
    let hanging = Receiver::start(Behavior::Hang(Duration::from_secs(3))).await;
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("http://127.0.0.1:{port}/hook")
    };
    let s500 = env
        .webhook(&ws, &failing.url(), &["order.created"], &[])
        .await;
    let stimeout = env
        .webhook(&ws, &hanging.url(), &["order.created"], &[])
        .await;
    let srefused = env
        .webhook(&ws, &closed_port, &["order.created"], &[])
        .await;

    let worker = env.start_worker().await;
    let (publisher, _connection) = env.publisher().await;
    let event = Event::new(ws.clone(), EventType::OrderCreated, None, json!({"n": 1})).unwrap();
    publisher.publish(&event).await.unwrap();

    wait_for(
        "all three deliveries to die",
        Duration::from_secs(60),
        || async {
            let deliveries = env
                .store
                .deliveries_of_event(&event.workspace_id, &event.id)
                .await
                .unwrap();
            deliveries.len() == 3 && deliveries.iter().all(|d| d.status == DeliveryStatus::Dead)
        },
    )
    .await;
    // Dead-lettering is confirmed before the last ack; wait for the queue.
    let dead_queue = env.topology().dead_queue();
    wait_for("three dead messages", Duration::from_secs(10), || async {
        env.queue_len(&dead_queue).await == 3
    })
    .await;
    worker.stop().await.unwrap();

    let deliveries = env
        .store
        .deliveries_of_event(&event.workspace_id, &event.id)
        .await
        .unwrap();
    for (sub, expect_status, expect_kind) in [
        (&s500, Some(500), None),
        (&stimeout, None, Some(ErrorKind::Timeout)),
        (&srefused, None, Some(ErrorKind::Connect)),
    ] {
        let delivery = deliveries
            .iter()
            .find(|d| d.subscription_id == sub.id)
            .unwrap();
        assert_eq!(delivery.attempts, 4);
        assert_eq!(delivery.last_response_status, expect_status);
        assert_eq!(delivery.next_attempt_at, None);
        let attempts = env.store.list_attempts(delivery.id).await.unwrap();
        assert_eq!(
            attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        for a in &attempts {
            assert_eq!(a.response_status, expect_status, "{a:?}");
            assert_eq!(a.error_kind, expect_kind, "{a:?}");
            assert_eq!(a.url, sub.url.as_str());
            if expect_kind.is_some() {
                assert!(a.error.as_deref().is_some_and(|e| !e.is_empty()));
            }
        }
        // Each wait is at least the schedule's (TTL queues never fire
        // early) and the chain never stalls.
        for (pair, wait) in attempts.windows(2).zip(WAITS_MS) {
            let gap = pair[1].started_at - pair[0].started_at;
            let minimum = chrono::Duration::milliseconds(wait);
            assert!(gap >= minimum, "gap {gap} shorter than {minimum}");
            assert!(gap < minimum + chrono::Duration::seconds(10), "gap {gap}");
        }
    }
    assert_eq!(failing.count(), 4);
    assert_eq!(hanging.count(), 4);

    let mut dead: Vec<_> = env
        .drain(&dead_queue)
        .await
        .into_iter()
        .map(|(body, _)| DeliveryMessage::from_slice(&body).unwrap())
        .collect();
    dead.sort_by_key(|m| m.delivery_id);
    let mut expected: Vec<_> = deliveries.iter().map(|d| d.id).collect();
    expected.sort();
    assert_eq!(
        dead.iter().map(|m| m.delivery_id).collect::<Vec<_>>(),
        expected
    );
    assert!(
        dead.iter()
            .all(|m| m.attempt == 4 && m.event_id == event.id)
    );
}

async fn recovers_after_two_failures(db: Db) {
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let flaky = Receiver::start(Behavior::FailFirst {
        failures: 2,
        status: 503,
    })
    .await;
    env.webhook(&ws, &flaky.url(), &["order.status_changed"], &[])
        .await;
    let worker = env.start_worker().await;
    let (publisher, _connection) = env.publisher().await;
    let event = Event::new(
        ws.clone(),
        EventType::OrderStatusChanged,
        Some(courier_model::Channel::parse("shopify").unwrap()),
        json!({"order_id": "o-7", "status": "FULFILLED"}),
    )
    .unwrap();
    publisher.publish(&event).await.unwrap();

    wait_for(
        "the delivery to succeed",
        Duration::from_secs(30),
        || async {
            env.store
                .deliveries_of_event(&event.workspace_id, &event.id)
                .await
                .unwrap()
                .first()
                .is_some_and(|d| d.status == DeliveryStatus::Succeeded)
        },
    )
    .await;
    worker.stop().await.unwrap();

    let delivery = env
        .store
        .deliveries_of_event(&event.workspace_id, &event.id)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(delivery.attempts, 3);
    assert_eq!(delivery.last_response_status, Some(200));
    let attempts = env.store.list_attempts(delivery.id).await.unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|a| a.response_status)
            .collect::<Vec<_>>(),
        [Some(503), Some(503), Some(200)]
    );
    assert_eq!(attempts[0].response_excerpt.as_deref(), Some("not yet"));
    // Same webhook-id on every attempt, so receivers can deduplicate.
    let requests = flaky.requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests
            .iter()
            .all(|r| r.webhook_id == delivery.id.to_string())
    );
    assert_eq!(env.queue_len(&env.topology().dead_queue()).await, 0);
}

/// A 429 or 503 with `Retry-After` (seconds or an HTTP date) is retried
/// after the wait it asks for, within retry.retry_after_min_ms and
/// retry.retry_after_max_ms, instead of the schedule's 200 ms; the ledger
/// records the header with the attempt and the wait as the next attempt's
/// time. The attempt counts.
async fn retry_after_is_honoured_within_bounds(db: Db) {
    let env = TestEnv::with(
        db,
        &[
            ("COURIER__RETRY__RETRY_AFTER_MIN_MS", "1000"),
            ("COURIER__RETRY__RETRY_AFTER_MAX_MS", "2500"),
        ],
    )
    .await;
    let ws = env.workspace("acme").await;
    let ask = |status, wait| Behavior::AskToWait {
        status,
        wait,
        times: 1,
    };
    // (receiver, the wait the ledger must record, the header it keeps)
    let cases = [
        (ask(429, RetryAfter::Text("2")), 2_000, Some("2")),
        (ask(503, RetryAfter::Text("100000")), 2_500, Some("100000")),
        (ask(429, RetryAfter::Text("0")), 1_000, Some("0")),
        // Not a wait courier understands: the schedule's.
        (ask(503, RetryAfter::Text("soon")), 200, Some("soon")),
        // A 500 asks nothing, whatever it says.
        (ask(500, RetryAfter::Text("2")), 200, Some("2")),
    ];
    let mut hooks = Vec::new();
    for (behavior, wait_ms, header) in cases {
        let receiver = Receiver::start(behavior).await;
        let sub = env
            .webhook(&ws, &receiver.url(), &["order.created"], &[])
            .await;
        hooks.push((receiver, sub, wait_ms, header));
    }
    // An HTTP date about two seconds ahead: between one and two seconds
    // after the attempt, depending on where in its second the answer fell.
    let dated = Receiver::start(ask(503, RetryAfter::DateIn(Duration::from_secs(2)))).await;
    let dated_sub = env
        .webhook(&ws, &dated.url(), &["order.created"], &[])
        .await;

    let worker = env.start_worker().await;
    let (publisher, _connection) = env.publisher().await;
    let event = Event::new(ws.clone(), EventType::OrderCreated, None, json!({"n": 1})).unwrap();
    publisher.publish(&event).await.unwrap();
    wait_for(
        "every delivery to succeed",
        Duration::from_secs(60),
        || async {
            let deliveries = env
                .store
                .deliveries_of_event(&event.workspace_id, &event.id)
                .await
                .unwrap();
            deliveries.len() == 6
                && deliveries
                    .iter()
                    .all(|d| d.status == DeliveryStatus::Succeeded)
        },
    )
    .await;
    worker.stop().await.unwrap();

    let deliveries = env
        .store
        .deliveries_of_event(&event.workspace_id, &event.id)
        .await
        .unwrap();
    let attempts_of = |sub: courier_model::SubscriptionId| {
        let delivery = deliveries
            .iter()
            .find(|d| d.subscription_id == sub)
            .unwrap();
        assert_eq!(delivery.attempts, 2, "the asking attempt counts");
        env.store.list_attempts(delivery.id)
    };
    for (receiver, sub, wait_ms, header) in &hooks {
        let attempts = attempts_of(sub.id).await.unwrap();
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0].retry_after.as_deref(), *header);
        assert_eq!(attempts[1].retry_after, None);
        let gap = (attempts[1].started_at - attempts[0].started_at).num_milliseconds();
        if *wait_ms > 200 {
            // Never before the wait asked (clamped); released by the held
            // loop a few hundred milliseconds after it at most, on an idle
            // machine, so allow for a loaded one.
            assert!(
                gap >= *wait_ms && gap < *wait_ms + 5_000,
                "{header:?}: second attempt {gap} ms after the first, asked {wait_ms} ms"
            );
        } else {
            assert!(
                gap < 1_000,
                "{header:?}: the schedule's 200 ms, not a receiver's wait: {gap} ms"
            );
        }
        assert_eq!(receiver.count(), 2);
    }
    let attempts = attempts_of(dated_sub.id).await.unwrap();
    let gap = (attempts[1].started_at - attempts[0].started_at).num_milliseconds();
    assert!((1_000..7_000).contains(&gap), "dated Retry-After: {gap} ms");
    assert!(
        attempts[0]
            .retry_after
            .as_deref()
            .is_some_and(|h| h.ends_with(" GMT")),
        "{:?}",
        attempts[0].retry_after
    );
}
