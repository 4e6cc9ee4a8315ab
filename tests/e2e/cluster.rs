//! A three-node RabbitMQ cluster that loses a node mid-run: courier is
//! given every node's address, its quorum queues replicate across the
//! nodes, and when the node leading the fan-out queue stops, the workers on
//! it reconnect to another node and every event is delivered at least
//! once. Duplicates are allowed (a delivery in flight when its connection
//! died is redelivered) and printed.

use std::time::Duration;

use courier_model::{Event, EventType, WorkspaceId};
use courier_producer::Publisher;
use courier_tests::{Behavior, Db, InProcessWorker, PrivateCluster, Receiver, TestEnv, wait_for};
use lapin::Connection;
use serde_json::json;

/// One slow endpoint with two slots: about 100 deliveries/s, so work is
/// still in flight when the node goes.
const SLOW: &[(&str, &str)] = &[("COURIER__DELIVERY__PER_ENDPOINT_IN_FLIGHT", "2")];
const SLOW_ANSWER: Duration = Duration::from_millis(20);

/// Publishes events `seqs` as an upstream facing a cluster would: when a
/// publish fails (its node went away), it connects again, to a node that
/// answers, and publishes the event again. Returns how many it published
/// again.
async fn publish_through_losses(
    env: &TestEnv,
    ws: &WorkspaceId,
    seqs: std::ops::Range<usize>,
) -> usize {
    let mut connected: Option<(Publisher, Connection)> = None;
    let mut again = 0;
    for seq in seqs {
        let event = Event::new(
            ws.clone(),
            EventType::OrderCreated,
            None,
            json!({ "seq": seq }),
        )
        .unwrap();
        loop {
            let (publisher, _) = match &connected {
                Some(connected) => connected,
                None => connected.insert(env.publisher().await),
            };
            match publisher.publish(&event).await {
                Ok(()) => break,
                Err(error) => {
                    println!("publish of event {seq} failed ({error}); connecting again");
                    connected = None;
                    again += 1;
                }
            }
        }
    }
    if let Some((_, connection)) = connected {
        connection.close(200, "".into()).await.ok();
    }
    again
}

/// A private three-node cluster, courier's environment on it (PostgreSQL,
/// two slots per endpoint), a workspace, and a receiver answering after
/// `answer`, subscribed to order.created.
async fn cluster_and_receiver(
    answer: Duration,
) -> (PrivateCluster, TestEnv, WorkspaceId, Receiver) {
    courier_tests::log_if_asked();
    let cluster = PrivateCluster::start(3);
    let env = TestEnv::on_broker(cluster.amqp_urls(), Db::Postgres, SLOW).await;
    let ws = env.workspace("acme").await;
    let receiver = Receiver::start(Behavior::Slow(answer)).await;
    env.webhook(&ws, &receiver.url(), &["order.created"], &[])
        .await;
    (cluster, env, ws, receiver)
}

/// Two in-process workers, one of them connected to the node leading
/// quorum queue `queue`, so that losing that node takes a queue's failover
/// and a worker's reconnection both. Workers pick a node at random when
/// they start: this starts them again until one is on the leader. Returns
/// them, the leader, and how many times they were started again.
async fn workers_with_one_on_the_leader(
    cluster: &PrivateCluster,
    env: &TestEnv,
    queue: &str,
) -> ([InProcessWorker; 2], String, usize) {
    let mut restarts = 0;
    loop {
        let workers = [env.start_worker().await, env.start_worker().await];
        for worker in &workers {
            wait_for("worker ready", Duration::from_secs(30), || async {
                worker.get("/readyz").await.0 == 200
            })
            .await;
        }
        let (leader, members) = cluster.quorum_members(0, queue);
        assert_eq!(
            members.len(),
            3,
            "the fan-out queue has a replica on every node: {members:?}"
        );
        if cluster
            .connection_nodes(0, "courier worker")
            .contains(&leader)
        {
            return (workers, leader, restarts);
        }
        for worker in workers {
            worker.stop().await.expect("a worker stops cleanly");
        }
        restarts += 1;
        assert!(restarts < 30, "no worker ever connected to {leader}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_fanout_leader_mid_run_loses_nothing() {
    const EVENTS: usize = 1000;
    let began = std::time::Instant::now();
    let (cluster, env, ws, receiver) = cluster_and_receiver(SLOW_ANSWER).await;

    let fanout = env.topology().fanout_queue();
    let (workers, leader, restarts) = workers_with_one_on_the_leader(&cluster, &env, &fanout).await;
    let mut republished = publish_through_losses(&env, &ws, 0..EVENTS / 2).await;
    wait_for("deliveries to flow", Duration::from_secs(60), || async {
        receiver.count() >= EVENTS / 20
    })
    .await;
    let before = receiver.count();
    assert!(before < EVENTS / 2, "the node must go mid-run");
    let lost = cluster.index_of(&leader);
    cluster.node(lost).stop();
    println!("{leader} stopped after {:.0?}", began.elapsed());
    republished += publish_through_losses(&env, &ws, EVENTS / 2..EVENTS).await;

    crate::all_delivered(&env, &receiver, EVENTS).await;
    let asking = (lost + 1) % 3;
    let (new_leader, _) = cluster.quorum_members(asking, &fanout);
    assert_ne!(new_leader, leader, "another node leads the fan-out queue");
    for worker in workers {
        worker
            .stop()
            .await
            .expect("each worker ran throughout and stops cleanly");
    }
    println!(
        "cluster node loss: {EVENTS} events, {before} delivered before {leader} stopped \
         (workers started again {restarts} times to have one on it), {republished} published \
         again by the upstream, {} duplicate deliveries",
        receiver.count() - receiver.distinct()
    );
}

/// Mid-run, one node is stopped and started again (a rolling restart's
/// step), then the node leading the fan-out queue crashes (SIGKILL) and
/// boots again on its data: every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_node_then_crashing_the_fanout_leader_loses_nothing() {
    const EVENTS: usize = 1000;
    let began = std::time::Instant::now();
    // EVENTS / 2 * 50 ms / 2 slots: the first half takes at least 12 s.
    let (cluster, env, ws, receiver) = cluster_and_receiver(Duration::from_millis(50)).await;
    let fanout = env.topology().fanout_queue();
    let (workers, leader, restarts) = workers_with_one_on_the_leader(&cluster, &env, &fanout).await;
    let mut republished = publish_through_losses(&env, &ws, 0..EVENTS / 2).await;
    wait_for("deliveries to flow", Duration::from_secs(60), || async {
        receiver.count() >= EVENTS / 20
    })
    .await;
    let before = receiver.count();
    assert!(before < EVENTS / 2, "the node must go mid-run");
    let crashed = cluster.index_of(&leader);
    let restarted = (crashed + 1) % 3;
    cluster.node(restarted).stop();
    cluster.node(restarted).start_again();
    println!(
        "{} stopped and started again after {:.0?}",
        cluster.node(restarted).node(),
        began.elapsed()
    );
    cluster.node(crashed).crash();
    println!("{leader} crashed after {:.0?}", began.elapsed());
    republished += publish_through_losses(&env, &ws, EVENTS / 2..EVENTS).await;
    cluster.node(crashed).boot_again();
    println!("{leader} booted again after {:.0?}", began.elapsed());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while receiver.distinct() < EVENTS {
        if std::time::Instant::now() > deadline {
            panic!(
                "{} of {EVENTS} delivered; ledger {:?}\n{}",
                receiver.distinct(),
                env.store.delivery_counts().await,
                cluster.describe()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    crate::all_delivered(&env, &receiver, EVENTS).await;
    for worker in workers {
        worker
            .stop()
            .await
            .expect("each worker ran throughout and stops cleanly");
    }
    println!(
        "cluster node crash: {EVENTS} events, {before} delivered before {leader} crashed \
         (workers started again {restarts} times to have one on it), {republished} published \
         again by the upstream, {} duplicate deliveries",
        receiver.count() - receiver.distinct()
    );
}
