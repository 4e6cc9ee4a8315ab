//! Infrastructure failures during a run: the worker rides them out without a
//! restart, and every delivery still arrives.

use std::time::Duration;

use courier_model::{DeliveryStatus, Event, EventType};
use courier_tests::{Behavior, Db, PrivatePostgres, PrivateRabbit, Receiver, TestEnv, wait_for};
use serde_json::json;

/// One slow endpoint with two slots: about 100 deliveries/s, so work is
/// still in flight when the failure comes.
const SLOW: &[(&str, &str)] = &[("COURIER__DELIVERY__PER_ENDPOINT_IN_FLIGHT", "2")];
const SLOW_ANSWER: Duration = Duration::from_millis(20);

async fn publish_range(
    env: &TestEnv,
    ws: &courier_model::WorkspaceId,
    seqs: std::ops::Range<usize>,
) {
    let (publisher, connection) = env.publisher().await;
    for seq in seqs {
        let e = Event::new(
            ws.clone(),
            EventType::OrderCreated,
            None,
            json!({ "seq": seq }),
        )
        .unwrap();
        publisher.publish(&e).await.unwrap();
    }
    connection.close(200, "".into()).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_run_loses_nothing() {
    const EVENTS: usize = 600;
    // Declared first so it is dropped last, after the environment.
    let pg = PrivatePostgres::start();
    let env = TestEnv::on_postgres(pg.admin_url(), SLOW).await;
    let ws = env.workspace("acme").await;
    let receiver = Receiver::start(Behavior::Slow(SLOW_ANSWER)).await;
    env.webhook(&ws, &receiver.url(), &["order.created"], &[])
        .await;

    let worker = env.start_worker().await;
    publish_range(&env, &ws, 0..EVENTS / 2).await;
    wait_for("deliveries to flow", Duration::from_secs(60), || async {
        receiver.count() >= EVENTS / 20
    })
    .await;

    pg.down();
    let during = receiver.count();
    // Published while the database is down: their fan-out cannot commit
    // until it is back, so the outage is in the middle of the run.
    publish_range(&env, &ws, EVENTS / 2..EVENTS).await;
    wait_for(
        "readiness to drop with the database",
        Duration::from_secs(15),
        || async { worker.get("/readyz").await.0 == 503 },
    )
    .await;
    assert_eq!(
        worker.get("/healthz").await.0,
        200,
        "waiting for a database is not stuck"
    );
    assert!(
        receiver.distinct() < EVENTS,
        "nothing of the second half can arrive yet"
    );
    pg.up();

    crate::all_delivered(&env, &receiver, EVENTS).await;
    assert_eq!(worker.get("/readyz").await.0, 200);
    worker
        .stop()
        .await
        .expect("the same worker ran throughout and stops cleanly");
    println!(
        "postgres restart: {EVENTS} deliveries, {during} before the stop, {} duplicates",
        receiver.count() - receiver.distinct()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_mid_run_loses_nothing() {
    const EVENTS: usize = 600;
    courier_tests::log_if_asked();
    let rabbit = PrivateRabbit::start();
    let env = TestEnv::on_broker(rabbit.amqp_url(), Db::Sqlite, SLOW).await;
    let ws = env.workspace("acme").await;
    let receiver = Receiver::start(Behavior::Slow(SLOW_ANSWER)).await;
    env.webhook(&ws, &receiver.url(), &["order.created"], &[])
        .await;

    let worker = env.start_worker().await;
    publish_range(&env, &ws, 0..EVENTS / 2).await;
    wait_for("deliveries to flow", Duration::from_secs(60), || async {
        receiver.count() >= EVENTS / 20
    })
    .await;

    let before = receiver.count();
    assert!(before < EVENTS / 2, "the restart must land mid-run");
    rabbit.stop();
    wait_for(
        "readiness to drop without a broker",
        Duration::from_secs(15),
        || async { worker.get("/readyz").await.0 == 503 },
    )
    .await;
    assert_eq!(
        worker.get("/healthz").await.0,
        200,
        "reconnecting is not stuck"
    );
    rabbit.start_again();
    publish_range(&env, &ws, EVENTS / 2..EVENTS).await;
    crate::all_delivered(&env, &receiver, EVENTS).await;
    wait_for(
        "readiness after reconnecting",
        Duration::from_secs(30),
        || async { worker.get("/readyz").await.0 == 200 },
    )
    .await;
    worker
        .stop()
        .await
        .expect("the same worker ran throughout and stops cleanly");
    println!(
        "rabbitmq restart: {} deliveries, {before} before the restart, {} duplicates",
        EVENTS + 1,
        receiver.count() - receiver.distinct()
    );
}

/// A broker that crashes (SIGKILL, as an OOM kill would) and boots again
/// on its data is not a clean stop: nothing was flushed, quorum queues
/// recover from their logs. Healthy deliveries, and deliveries that fail
/// until they are dead, must all end where they should.
///
/// RabbitMQ 3.10 brings a quorum queue that had been declared but never
/// written to back from such a crash as a lone follower with an empty log,
/// which never elects itself leader: publishes to it wait a minute, then
/// are refused, for as long as it stays so. Here that is the dead queue,
/// which the failing endpoint's deliveries need. courier keeps every such
/// delivery held and tries again (nothing is lost, nothing is acknowledged
/// that is not durable); operators see CourierPublishesFailing and start an
/// election (docs/operations.md), which this test does as they would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_crash_mid_run_loses_nothing() {
    healthy_and_failing_through(Fault::Crash).await;
}

/// The same run with a clean stop of the broker, which needs no step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_stop_mid_run_settles_failing_deliveries() {
    healthy_and_failing_through(Fault::Stop).await;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Stop,
    Crash,
}

async fn healthy_and_failing_through(fault: Fault) {
    const EVENTS: usize = 400;
    courier_tests::log_if_asked();
    let rabbit = PrivateRabbit::start();
    let env = TestEnv::on_broker(
        rabbit.amqp_url(),
        Db::Sqlite,
        &[
            ("COURIER__DELIVERY__PER_ENDPOINT_IN_FLIGHT", "2"),
            ("COURIER__RETRY__MAX_ATTEMPTS", "3"),
            ("COURIER__RETRY__INITIAL_DELAY_MS", "300"),
            ("COURIER__RETRY__MULTIPLIER", "2.0"),
            ("COURIER__RETRY__MAX_DELAY_MS", "1200"),
        ],
    )
    .await;
    let ws = env.workspace("acme").await;
    let healthy = Receiver::start(Behavior::Slow(Duration::from_millis(50))).await;
    let failing = Receiver::start(Behavior::Status(500)).await;
    env.webhook(&ws, &healthy.url(), &["order.created"], &[])
        .await;
    env.webhook(&ws, &failing.url(), &["order.created"], &[])
        .await;

    // The first half waits in the fan-out queue before the worker starts,
    // and the healthy receiver takes at least EVENTS / 2 * 50 ms / 2 = 5 s
    // for it, so the fault lands mid-run however slowly this machine
    // publishes.
    publish_range(&env, &ws, 0..EVENTS / 2).await;
    let worker = env.start_worker().await;
    wait_for("deliveries to flow", Duration::from_secs(60), || async {
        healthy.count() >= EVENTS / 20
    })
    .await;
    let before = healthy.count();
    assert!(before < EVENTS / 2, "the fault must land mid-run");
    match fault {
        Fault::Crash => rabbit.crash(),
        Fault::Stop => rabbit.stop(),
    }
    wait_for(
        "readiness to drop without a broker",
        Duration::from_secs(15),
        || async { worker.get("/readyz").await.0 == 503 },
    )
    .await;
    match fault {
        Fault::Crash => rabbit.boot_again(),
        Fault::Stop => rabbit.start_again(),
    }
    let leaderless = match fault {
        Fault::Crash => rabbit.wake_leaderless(&env.topology().queues()),
        Fault::Stop => Vec::new(),
    };
    publish_range(&env, &ws, EVENTS / 2..EVENTS).await;
    wait_for(
        "every healthy delivery after the fault",
        Duration::from_secs(90),
        || async { healthy.distinct() == EVENTS },
    )
    .await;
    let settled = vec![
        (DeliveryStatus::Dead, EVENTS as u64),
        (DeliveryStatus::Succeeded, EVENTS as u64),
    ];
    wait_for(
        "the failing endpoint's deliveries to be dead, the others succeeded",
        Duration::from_secs(60),
        || async {
            let mut counts = env.store.delivery_counts().await.unwrap_or_default();
            counts.sort_by_key(|(status, _)| status.as_str());
            counts == settled
        },
    )
    .await;
    worker
        .stop()
        .await
        .expect("the same worker ran throughout and stops cleanly");
    println!(
        "rabbitmq {}: {EVENTS} events to a healthy and a failing endpoint, {before} healthy \
         deliveries before it, {} healthy duplicates, queues left without a leader: {leaderless:?}",
        if fault == Fault::Crash {
            "crash"
        } else {
            "stop"
        },
        healthy.count() - healthy.distinct()
    );
}

/// `courier-producer load` keeps publishing through a broker restart: a
/// publish whose connection broke connects again and is published again,
/// and the run ends with every event confirmed and in the fan-out queue
/// (some perhaps twice, under one id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_publishes_through_a_broker_restart() {
    const EVENTS: u32 = 2000;
    let rabbit = PrivateRabbit::start();
    let env = TestEnv::on_broker(rabbit.amqp_url(), Db::Sqlite, &[]).await;
    // The fan-out queue exists before the load starts, to be watched.
    let (_, connection) = env.publisher().await;
    connection.close(200, "".into()).await.ok();
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("courier-producer");
    let load = tokio::process::Command::new(&binary)
        .args(["--amqp-url", &rabbit.amqp_url(), "--prefix", &env.prefix])
        .args(["load", "--events", &EVENTS.to_string(), "--rate", "400"])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
    let fanout = env.topology().fanout_queue();
    wait_for(
        "publishing to be under way",
        Duration::from_secs(30),
        || async { env.queue_len(&fanout).await >= EVENTS / 10 },
    )
    .await;
    rabbit.stop();
    rabbit.start_again();
    let output = tokio::time::timeout(Duration::from_secs(90), load.wait_with_output())
        .await
        .expect("the load ends within 90 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "load failed: {stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["failed"], 0, "{summary}");
    let ids: std::collections::HashSet<String> = env
        .drain(&fanout)
        .await
        .iter()
        .filter_map(|(_, properties)| properties.message_id().as_ref().map(|id| id.to_string()))
        .collect();
    assert_eq!(
        ids.len(),
        EVENTS as usize,
        "every event is in the fan-out queue"
    );
    assert!(
        stderr.contains("connecting again"),
        "the restart landed mid-run: {stderr}"
    );
}
