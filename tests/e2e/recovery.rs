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

/// Every event reached the receiver and the ledger says so.
async fn all_delivered(env: &TestEnv, receiver: &Receiver, events: usize) {
    wait_for(
        "every delivery after the failure",
        Duration::from_secs(90),
        || async { receiver.distinct() == events },
    )
    .await;
    wait_for(
        "the ledger to record them",
        Duration::from_secs(60),
        || async {
            env.store.delivery_counts().await.ok()
                == Some(vec![(DeliveryStatus::Succeeded, events as u64)])
        },
    )
    .await;
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

    all_delivered(&env, &receiver, EVENTS).await;
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
    all_delivered(&env, &receiver, EVENTS).await;
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
