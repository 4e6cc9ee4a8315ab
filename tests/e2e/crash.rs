//! Crash safety: SIGKILL the worker process with thousands of deliveries in
//! flight, start it again, and count every (event, subscription) pair at the
//! receivers. Duplicates are allowed and reported; losses are not.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use courier_model::{DeliveryStatus, Event, EventType};
use courier_tests::{Behavior, Db, Receiver, TestEnv, wait_for};
use futures_util::stream::{self, StreamExt};
use serde_json::json;

crate::on_both_databases!(sigkill_mid_load_loses_nothing);

const EVENTS: usize = 1500;
const RECEIVERS: usize = 3;

async fn sigkill_mid_load_loses_nothing(db: Db) {
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let mut receivers = Vec::new();
    for _ in 0..RECEIVERS {
        let r = Receiver::start(Behavior::Ok).await;
        env.webhook(&ws, &r.url(), &["order.created"], &[]).await;
        receivers.push(r);
    }
    let expected = EVENTS * RECEIVERS;

    let mut worker = env.spawn_worker_process();
    let (publisher, _connection) = env.publisher().await;
    let events: Vec<Event> = (0..EVENTS)
        .map(|seq| {
            Event::new(
                ws.clone(),
                EventType::OrderCreated,
                None,
                json!({"seq": seq}),
            )
            .unwrap()
        })
        .collect();
    let publishing = {
        let publisher = publisher.clone();
        let events = events.clone();
        tokio::spawn(async move {
            stream::iter(events)
                .map(|e| {
                    let publisher = publisher.clone();
                    async move { publisher.publish(&e).await }
                })
                .buffer_unordered(64)
                .for_each(|r| async move { r.expect("publish confirmed") })
                .await
        })
    };

    // Kill it once deliveries are flowing but far from done.
    let received = || receivers.iter().map(|r| r.count()).sum::<usize>();
    wait_for(
        "deliveries to start flowing",
        Duration::from_secs(60),
        || async { received() >= expected / 5 },
    )
    .await;
    worker.kill();
    let at_kill = received();
    assert!(
        at_kill < expected,
        "the kill must land mid-load ({at_kill} of {expected} already in)"
    );

    publishing.await.unwrap();
    let _restarted = env.spawn_worker_process();
    wait_for(
        "every delivery to arrive",
        Duration::from_secs(120),
        || async { receivers.iter().map(|r| r.distinct()).sum::<usize>() == expected },
    )
    .await;
    wait_for(
        "the ledger to record every success",
        Duration::from_secs(60),
        || async {
            env.store.delivery_counts().await.unwrap()
                == [(DeliveryStatus::Succeeded, expected as u64)]
        },
    )
    .await;

    // Every (event, subscription) pair arrived at least once.
    let mut duplicates = 0;
    for r in &receivers {
        let mut per_seq: HashMap<u64, usize> = HashMap::new();
        for req in r.requests() {
            *per_seq
                .entry(req.json()["data"]["seq"].as_u64().unwrap())
                .or_default() += 1;
        }
        let seen: HashSet<u64> = per_seq.keys().copied().collect();
        assert_eq!(
            seen,
            (0..EVENTS as u64).collect::<HashSet<_>>(),
            "{} lost events",
            r.url()
        );
        duplicates += per_seq.values().map(|n| n - 1).sum::<usize>();
    }
    println!(
        "crash test ({db:?}): {expected} deliveries, killed after {at_kill} receipts, {duplicates} duplicates, 0 lost"
    );
}
