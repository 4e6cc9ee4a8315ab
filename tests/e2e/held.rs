//! Deliveries held in the ledger: a failing endpoint's circuit opens and its
//! deliveries wait, with no message anywhere, until it answers again; a busy
//! endpoint's deliveries wait for its slots. Nothing is lost on the way, not
//! even when the worker holding them dies, and nothing arrives twice.

use std::time::Duration;

use courier_model::DeliveryStatus;
use courier_tests::{Behavior, Db, Receiver, TestEnv, metric_value, wait_for};

use crate::{held, publish_orders, subscribe_to_orders, wait_for_ledger};

crate::on_both_databases!(
    a_failing_endpoint_is_held_off_until_it_recovers,
    a_busy_endpoints_deliveries_wait_in_the_ledger,
    held_deliveries_outlive_their_worker,
    held_deliveries_past_their_schedule_are_dead_lettered,
    webhooks_posting_to_one_url_share_its_slots
);

const EVENTS: usize = 40;

/// A retry schedule of 10 attempts spanning 102 s (200 ms doubling): no
/// held delivery outlives it while a test waits for its endpoint.
const LONG_SCHEDULE: [(&str, &str); 3] = [
    ("COURIER__RETRY__MAX_ATTEMPTS", "10"),
    ("COURIER__RETRY__MAX_DELAY_MS", "60000"),
    ("COURIER__RETRY__INITIAL_DELAY_MS", "200"),
];

/// Attempts a failing endpoint can get before its circuit holds the rest:
/// five failures in a row open it, the second of its two slots may be
/// under way meanwhile, and while the test waits (under a minute) its
/// cool-downs of 1, 2, 4, 8, 16 and 32 s let at most six probes through.
const MOST_ATTEMPTS_WHILE_DOWN: usize = 5 + 1 + 6;

async fn a_failing_endpoint_is_held_off_until_it_recovers(db: Db) {
    let env = TestEnv::with(
        db,
        &[
            ("COURIER__DELIVERY__PER_ENDPOINT_IN_FLIGHT", "2"),
            LONG_SCHEDULE[0],
            LONG_SCHEDULE[1],
            LONG_SCHEDULE[2],
        ],
    )
    .await;
    let ws = env.workspace("acme").await;
    let down = Receiver::start(Behavior::Down { status: 503 }).await;
    let healthy = Receiver::start(Behavior::Ok).await;
    subscribe_to_orders(&env, &ws, &[&down, &healthy]).await;

    let worker = env.start_worker().await;
    publish_orders(&env, &ws, EVENTS).await;

    // The healthy endpoint gets every event; the failing one's circuit
    // opens and the ledger holds its deliveries, retries of the attempts
    // it did get included.
    wait_for(
        "the healthy endpoint served and the failing one's deliveries held",
        Duration::from_secs(60),
        || async { healthy.distinct() == EVENTS && held(&env).await == EVENTS },
    )
    .await;
    let attempts_while_down = down.count();
    assert!(
        attempts_while_down <= MOST_ATTEMPTS_WHILE_DOWN,
        "{attempts_while_down} attempts reached the failing endpoint"
    );
    let metrics = worker.get("/metrics").await.1;
    assert!(metric_value(&metrics, "courier_endpoint_circuit_opened_total") >= 1.0);
    assert!(metric_value(&metrics, "courier_deliveries_deferred_total") >= (EVENTS - 6) as f64);

    // Back up: a probe closes the circuit, and the held deliveries go out,
    // each once.
    down.recover();
    wait_for_ledger(
        &env,
        "every delivery to succeed",
        Duration::from_secs(90),
        &[(DeliveryStatus::Succeeded, 2 * EVENTS as u64)],
    )
    .await;
    assert_eq!(down.distinct(), EVENTS);
    let after = down.count() - attempts_while_down;
    assert!(
        after <= EVENTS,
        "{after} requests after the outage for {EVENTS} deliveries: a duplicate"
    );
    assert_eq!(healthy.count(), EVENTS, "once each");
    assert_eq!(held(&env).await, 0);
    worker.stop().await.unwrap();
}

/// One slot at an endpoint that takes 300 ms to answer: its deliveries wait
/// in the ledger, not in a worker slot or a queue, and go out one at a
/// time as the slot frees. With a single attempt allowed there is no retry
/// tier at all, which makes no difference to waiting in the ledger.
async fn a_busy_endpoints_deliveries_wait_in_the_ledger(db: Db) {
    const EVENTS: usize = 8;
    const ANSWER: Duration = Duration::from_millis(300);
    let env = TestEnv::with(
        db,
        &[
            ("COURIER__RETRY__MAX_ATTEMPTS", "1"),
            ("COURIER__DELIVERY__PER_ENDPOINT_IN_FLIGHT", "1"),
        ],
    )
    .await;
    assert!(env.topology().retry_tiers().is_empty());
    let ws = env.workspace("acme").await;
    let busy = Receiver::start(Behavior::Slow(ANSWER)).await;
    let healthy = Receiver::start(Behavior::Ok).await;
    subscribe_to_orders(&env, &ws, &[&busy, &healthy]).await;

    let worker = env.start_worker().await;
    publish_orders(&env, &ws, EVENTS).await;
    wait_for_ledger(
        &env,
        "every delivery to succeed",
        Duration::from_secs(30),
        &[(DeliveryStatus::Succeeded, 2 * EVENTS as u64)],
    )
    .await;
    assert_eq!((healthy.count(), busy.count()), (EVENTS, EVENTS));
    assert_eq!(busy.distinct(), EVENTS);
    assert_one_at_a_time(&busy, ANSWER);
    assert_eq!(held(&env).await, 0);
    worker.stop().await.unwrap();
}

/// The worker that held a failing endpoint's deliveries is killed; another
/// one delivers them all once the endpoint is back.
async fn held_deliveries_outlive_their_worker(db: Db) {
    let env = TestEnv::with(
        db,
        &[
            ("COURIER__DELIVERY__PER_ENDPOINT_IN_FLIGHT", "2"),
            LONG_SCHEDULE[0],
            LONG_SCHEDULE[1],
            LONG_SCHEDULE[2],
            // Bounds the claim on a delivery the killed worker was probing
            // the endpoint with (its timeout and 10 s).
            ("COURIER__DELIVERY__TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let ws = env.workspace("acme").await;
    let down = Receiver::start(Behavior::Down { status: 500 }).await;
    subscribe_to_orders(&env, &ws, &[&down]).await;

    let mut worker = env.spawn_worker_process();
    publish_orders(&env, &ws, EVENTS).await;
    wait_for(
        "the failing endpoint's deliveries to be held",
        Duration::from_secs(60),
        || async { held(&env).await == EVENTS },
    )
    .await;
    worker.kill();

    down.recover();
    let replacement = env.start_worker().await;
    wait_for_ledger(
        &env,
        "every delivery to succeed",
        Duration::from_secs(90),
        &[(DeliveryStatus::Succeeded, EVENTS as u64)],
    )
    .await;
    assert_eq!(down.distinct(), EVENTS);
    assert_eq!(held(&env).await, 0);
    replacement.stop().await.unwrap();
}

/// An endpoint that never comes back: its held deliveries are given up as
/// dead once the retry schedule (1.4 s in tests) has run out, each
/// dead-lettered once, though fewer than all their attempts were made.
async fn held_deliveries_past_their_schedule_are_dead_lettered(db: Db) {
    const EVENTS: usize = 20;
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let down = Receiver::start(Behavior::Status(503)).await;
    subscribe_to_orders(&env, &ws, &[&down]).await;

    let worker = env.start_worker().await;
    publish_orders(&env, &ws, EVENTS).await;
    wait_for_ledger(
        &env,
        "every delivery to be given up",
        Duration::from_secs(60),
        &[(DeliveryStatus::Dead, EVENTS as u64)],
    )
    .await;
    assert!(
        down.count() < 4 * EVENTS,
        "{} attempts: the circuit held some back",
        down.count()
    );
    let metrics = worker.get("/metrics").await.1;
    assert_eq!(
        metric_value(
            &metrics,
            r#"courier_dead_lettered_total{event_type="order.created"}"#
        ),
        EVENTS as f64
    );
    assert_eq!(env.drain(&env.topology().dead_queue()).await.len(), EVENTS);
    assert_eq!(held(&env).await, 0);
    worker.stop().await.unwrap();
}

/// Three webhooks post to one URL with one slot: the URL is the endpoint, so
/// its one slot is shared and the server behind it gets one request at a
/// time, not one per webhook.
async fn webhooks_posting_to_one_url_share_its_slots(db: Db) {
    const EVENTS: usize = 4;
    const ANSWER: Duration = Duration::from_millis(200);
    let env = TestEnv::with(db, &[("COURIER__DELIVERY__PER_ENDPOINT_IN_FLIGHT", "1")]).await;
    let ws = env.workspace("acme").await;
    let shared = Receiver::start(Behavior::Slow(ANSWER)).await;
    subscribe_to_orders(&env, &ws, &[&shared, &shared, &shared]).await;

    let worker = env.start_worker().await;
    publish_orders(&env, &ws, EVENTS).await;
    wait_for_ledger(
        &env,
        "every delivery to succeed",
        Duration::from_secs(30),
        &[(DeliveryStatus::Succeeded, 3 * EVENTS as u64)],
    )
    .await;
    assert_eq!(shared.distinct(), 3 * EVENTS);
    assert_one_at_a_time(&shared, ANSWER);
    worker.stop().await.unwrap();
}

/// Each request reached `receiver` after the one before was answered.
fn assert_one_at_a_time(receiver: &Receiver, answer: Duration) {
    let arrivals: Vec<_> = receiver.requests().iter().map(|r| r.at).collect();
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= answer,
            "two requests {gap:?} apart: more than one slot used"
        );
    }
}
