//! The fan-out stage's own first attempts: a slow endpoint holds up no other
//! endpoint, and an event redelivered after its worker died gets every
//! message that worker owed.

use std::time::Duration;

use chrono::Utc;
use courier_model::{DeliveryId, DeliveryStatus, ErrorKind, Event, EventType};
use courier_store::{AttemptWrite, WriteOp};
use courier_tests::{Behavior, Db, Receiver, TestEnv, metric_value, wait_for};

use crate::{held, publish_orders, subscribe_to_orders, wait_for_ledger};
use lapin::options::BasicGetOptions;
use serde_json::json;
use sqlx::Connection;

crate::on_both_databases!(
    a_slow_endpoint_does_not_hold_up_the_others,
    a_first_attempt_that_outlived_its_ack_is_made_again_after_its_worker_dies,
    a_redelivered_event_gets_what_its_dead_worker_owed
);

/// A ledger that stops committing for a while (here a lock on the events
/// table) holds up acks, not deliveries: first attempts go on for as many
/// events as the prefetch holds, nothing is acked before it is recorded,
/// and every event is recorded once the ledger moves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_ledger_holds_up_acks_not_deliveries() {
    // More than the prefetch of 256 courier had, fewer than its 512 now.
    const EVENTS: usize = 400;
    let env = TestEnv::new(Db::Postgres).await;
    let ws = env.workspace("acme").await;
    let receiver = Receiver::start(Behavior::Ok).await;
    subscribe_to_orders(&env, &ws, &[&receiver]).await;
    let worker = env.start_worker().await;

    let mut db = sqlx::PgConnection::connect(&env.settings.database.url)
        .await
        .unwrap();
    let mut stall = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *stall)
        .await
        .unwrap();

    publish_orders(&env, &ws, EVENTS).await;
    wait_for(
        "every event delivered while the ledger is stalled",
        Duration::from_secs(60),
        || async { receiver.count() >= EVENTS },
    )
    .await;
    // The fan-outs' commits wait behind the lock: nothing is recorded, so
    // nothing was acked, and every event is still the broker's to redeliver.
    assert_eq!(env.store.delivery_counts().await.unwrap(), []);
    let metrics = worker.get("/metrics").await.1;
    assert_eq!(
        metric_value(&metrics, r#"courier_messages_acked_total{stage="fanout"}"#),
        0.0
    );

    stall.rollback().await.unwrap();
    wait_for_ledger(
        &env,
        "every delivery recorded",
        Duration::from_secs(60),
        &[(DeliveryStatus::Succeeded, EVENTS as u64)],
    )
    .await;
    assert_eq!(receiver.count(), EVENTS, "once each");
    worker.stop().await.unwrap();
}

/// `delivery.quick_ms` is what an operator calls quick. An endpoint that
/// takes 400 ms is slow by the default 250 ms: events that find its first
/// slots taken go through the deliveries queue or wait in the ledger. With
/// a quick time of 3 s it is quick: every first attempt is made by the
/// fan-out stage itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_time_decides_which_endpoints_get_first_attempts_at_once() {
    // Well over the 8 slots (a quarter of 32) a new endpoint starts with:
    // by default the rest wait 250 ms for a slot that frees after 400, or
    // find the endpoint slow once its answers are in.
    const EVENTS: usize = 40;
    for (quick_ms, quick) in [(None, false), (Some("3000"), true)] {
        let overrides: Vec<(&str, &str)> = quick_ms
            .map(|ms| ("COURIER__DELIVERY__QUICK_MS", ms))
            .into_iter()
            .collect();
        let env = TestEnv::with(Db::Sqlite, &overrides).await;
        let ws = env.workspace("acme").await;
        let receiver = Receiver::start(Behavior::Slow(Duration::from_millis(400))).await;
        subscribe_to_orders(&env, &ws, &[&receiver]).await;
        let worker = env.start_worker().await;
        publish_orders(&env, &ws, EVENTS).await;
        wait_for_ledger(
            &env,
            "every delivery made",
            Duration::from_secs(60),
            &[(DeliveryStatus::Succeeded, EVENTS as u64)],
        )
        .await;
        assert_eq!(receiver.count(), EVENTS, "once each");
        let metrics = worker.get("/metrics").await.1;
        let put_off = metric_value(&metrics, "courier_deliveries_deferred_total")
            + metric_value(
                &metrics,
                r#"courier_messages_acked_total{stage="delivery"}"#,
            );
        if quick {
            assert_eq!(put_off, 0.0, "quick_ms {quick_ms:?}:\n{metrics}");
        } else {
            assert!(put_off > 0.0, "quick_ms {quick_ms:?}:\n{metrics}");
        }
        worker.stop().await.unwrap();
    }
}

async fn a_slow_endpoint_does_not_hold_up_the_others(db: Db) {
    const EVENTS: usize = 60;
    let env = TestEnv::with(
        db,
        &[
            ("COURIER__DELIVERY__PER_ENDPOINT_IN_FLIGHT", "2"),
            // The stuck endpoint never times out while the test runs.
            ("COURIER__DELIVERY__TIMEOUT_MS", "60000"),
            ("COURIER__DELIVERY__SHUTDOWN_GRACE_MS", "200"),
        ],
    )
    .await;
    let ws = env.workspace("acme").await;
    let stuck = Receiver::start(Behavior::Hang(Duration::from_secs(120))).await;
    let healthy = Receiver::start(Behavior::Ok).await;
    subscribe_to_orders(&env, &ws, &[&stuck, &healthy]).await;

    let worker = env.start_worker().await;
    publish_orders(&env, &ws, EVENTS).await;

    wait_for(
        "every event at the healthy endpoint",
        Duration::from_secs(60),
        || async {
            env.store
                .delivery_counts()
                .await
                .unwrap()
                .contains(&(DeliveryStatus::Succeeded, EVENTS as u64))
        },
    )
    .await;
    assert_eq!(healthy.count(), EVENTS, "once each");
    // The stuck endpoint never answered, so it never got more than the
    // quarter of its slots a new endpoint starts with (one of two), and its
    // other deliveries were put off without counting as attempts.
    assert!(stuck.count() <= 1, "{} requests at once", stuck.count());
    assert_eq!(
        env.store.delivery_counts().await.unwrap(),
        [
            (DeliveryStatus::Pending, EVENTS as u64),
            (DeliveryStatus::Succeeded, EVENTS as u64)
        ]
    );
    // The deliveries that found its slot taken are put off, held in the
    // ledger rather than by the worker or in a queue.
    wait_for(
        "the stuck endpoint's other deliveries to be held",
        Duration::from_secs(30),
        || async {
            let metrics = worker.get("/metrics").await.1;
            metric_value(&metrics, "courier_deliveries_deferred_total") >= (EVENTS - 1) as f64
                && held(&env).await >= EVENTS - 1
        },
    )
    .await;
    assert!(stuck.count() <= 1, "{} requests at once", stuck.count());
    // The event whose attempt is still hanging was acked all the same: its
    // delivery is claimed in the ledger, so it holds up no ack behind it.
    let metrics = worker.get("/metrics").await.1;
    assert_eq!(
        metric_value(&metrics, r#"courier_messages_acked_total{stage="fanout"}"#),
        EVENTS as f64
    );
    worker.stop().await.unwrap();
}

/// A worker's first attempt to an endpoint that stalls outlives the quick
/// time (`delivery.quick_ms`, 250 ms by default): the event is acked with
/// the delivery claimed in the ledger. The worker dies before the attempt
/// ends; once the claim runs out, another worker makes it. Nothing is
/// redelivered by the broker, nothing is lost.
async fn a_first_attempt_that_outlived_its_ack_is_made_again_after_its_worker_dies(db: Db) {
    const EVENTS: usize = 10;
    let env = TestEnv::with(
        db,
        &[
            ("COURIER__DELIVERY__PER_ENDPOINT_IN_FLIGHT", "2"),
            // Long enough that every event is acked well before the stalled
            // request could time out; the claim lasts the timeout and 10 s.
            ("COURIER__DELIVERY__TIMEOUT_MS", "5000"),
        ],
    )
    .await;
    let ws = env.workspace("acme").await;
    let stalled = Receiver::start(Behavior::Stall).await;
    let healthy = Receiver::start(Behavior::Ok).await;
    subscribe_to_orders(&env, &ws, &[&stalled, &healthy]).await;

    let mut worker = env.spawn_worker_process();
    publish_orders(&env, &ws, EVENTS).await;
    // Every event acked while the stalled endpoint's first request (the
    // only one its slots allow) still hangs: had its event waited for the
    // attempt, the attempt would have timed out and been recorded first.
    wait_for(
        "every event acked, each one's healthy delivery made",
        Duration::from_secs(30),
        || async {
            let acked = worker.metrics().await.map_or(0.0, |m| {
                metric_value(&m, r#"courier_messages_acked_total{stage="fanout"}"#)
            });
            acked == EVENTS as f64 && healthy.count() == EVENTS
        },
    )
    .await;
    assert_eq!(
        env.store.delivery_counts().await.unwrap(),
        [
            (DeliveryStatus::Pending, EVENTS as u64),
            (DeliveryStatus::Succeeded, EVENTS as u64),
        ]
    );
    assert_eq!(stalled.count(), 1, "one request, still hanging");
    worker.kill();
    let attempted_before = stalled.count();

    stalled.recover();
    let replacement = env.start_worker().await;
    wait_for_ledger(
        &env,
        "every delivery to succeed",
        Duration::from_secs(60),
        &[(DeliveryStatus::Succeeded, 2 * EVENTS as u64)],
    )
    .await;
    assert_eq!(stalled.distinct(), EVENTS);
    assert_eq!(healthy.count(), EVENTS, "once each");
    // The claimed delivery was attempted again: the request the dead worker
    // left hanging, then the replacement's.
    assert!(stalled.count() > attempted_before);
    // Every event was acked before the worker died: none came back.
    let metrics = replacement.get("/metrics").await.1;
    assert_eq!(
        metric_value(
            &metrics,
            r#"courier_events_consumed_total{event_type="order.created"}"#
        ),
        0.0
    );
    assert_eq!(held(&env).await, 0);
    replacement.stop().await.unwrap();
}

/// A worker made the first attempt of one delivery (it failed), recorded it
/// with the event, and died before publishing the retry or the other
/// delivery's message. The broker hands the event to the next worker marked
/// redelivered, which must send both.
async fn a_redelivered_event_gets_what_its_dead_worker_owed(db: Db) {
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let attempted = Receiver::start(Behavior::Ok).await;
    let untouched = Receiver::start(Behavior::Ok).await;
    let first = env
        .webhook(&ws, &attempted.url(), &["order.created"], &[])
        .await;
    let second = env
        .webhook(&ws, &untouched.url(), &["order.created"], &[])
        .await;

    let event = Event::new(ws.clone(), EventType::OrderCreated, None, json!({"n": 1})).unwrap();
    let (d1, d2) = (
        DeliveryId::derive(&event.id, first.id),
        DeliveryId::derive(&event.id, second.id),
    );
    let started_at = Utc::now();
    env.store
        .apply(&[
            WriteOp::FanOut {
                event: std::sync::Arc::new(event.clone()),
                deliveries: vec![(d1, first.id), (d2, second.id)],
                paused: Vec::new(),
            },
            WriteOp::Attempt(AttemptWrite {
                delivery_id: d1,
                attempt: 1,
                url: attempted.url(),
                started_at,
                duration_ms: 3,
                response_status: None,
                error_kind: Some(ErrorKind::Connect),
                error: Some("connection refused".into()),
                response_excerpt: None,
                retry_after: None,
                new_status: DeliveryStatus::Retrying,
                next_attempt_at: Some(started_at + chrono::Duration::milliseconds(200)),
                held_until: None,
            }),
        ])
        .await
        .unwrap();

    // The event, taken by a consumer that goes away without acking it.
    let (publisher, _publisher_connection) = env.publisher().await;
    publisher.publish(&event).await.unwrap();
    let connection = env.amqp().await;
    let channel = connection.create_channel().await.unwrap();
    let taken = channel
        .basic_get(
            env.topology().fanout_queue().as_str().into(),
            BasicGetOptions::default(),
        )
        .await
        .unwrap();
    assert!(taken.is_some(), "a confirmed event is in the fan-out queue");
    channel.close(200, "worker died".into()).await.unwrap();
    connection.close(200, "".into()).await.ok();

    let worker = env.start_worker().await;
    wait_for(
        "both deliveries to succeed",
        Duration::from_secs(30),
        || async { env.store.delivery_counts().await.unwrap() == [(DeliveryStatus::Succeeded, 2)] },
    )
    .await;
    worker.stop().await.unwrap();

    // The retry of the attempted delivery came as attempt 2; the untouched
    // one got its first attempt. Nothing else was sent.
    assert_eq!((attempted.count(), untouched.count()), (1, 1));
    let attempts: Vec<_> = env.store.list_attempts(d1).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[1].response_status, Some(200));
    assert_eq!(env.store.list_attempts(d2).await.unwrap().len(), 1);
}
