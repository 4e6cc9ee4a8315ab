//! A webhook's rate limit holds across replicas: two workers drain a
//! backlog to a webhook limited to 50 requests a second (burst 5), and its
//! receiver never sees more than the limit allows, while an unlimited
//! webhook on the same events gets them all long before.

use std::time::Duration;

use courier_model::{Event, EventType, RateLimit};
use courier_tests::{Behavior, Db, Receiver, TestEnv, metric_value, wait_for};
use futures_util::future::try_join_all;
use serde_json::json;

crate::on_both_databases!(a_rate_limit_holds_across_two_replicas);

const EVENTS: usize = 2_000;
const PER_SECOND: u32 = 50;
const BURST: u32 = 5;

async fn a_rate_limit_holds_across_two_replicas(db: Db) {
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let limited = Receiver::start(Behavior::Ok).await;
    let unlimited = Receiver::start(Behavior::Ok).await;
    let mut sub = env
        .webhook(&ws, &limited.url(), &["order.created"], &[])
        .await;
    sub.settings.rate_limit = Some(RateLimit {
        per_second: PER_SECOND,
        burst: BURST,
    });
    assert!(env.store.update_subscription(&sub).await.unwrap());
    env.webhook(&ws, &unlimited.url(), &["order.created"], &[])
        .await;

    // Two replicas, each knowing the other is there (one consumer of the
    // deliveries queue each) before the backlog arrives.
    let a = env.start_worker().await;
    let b = env.start_worker().await;
    for replica in [&a, &b] {
        wait_for(
            "both replicas seen by each",
            Duration::from_secs(30),
            || async {
                metric_value(
                    &replica.get("/metrics").await.1,
                    r#"courier_queue_consumers{queue="deliveries"}"#,
                ) == 2.0
            },
        )
        .await;
    }
    let (publisher, _connection) = env.publisher().await;
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(100) {
        try_join_all(chunk.iter().map(|n| {
            let event =
                Event::new(ws.clone(), EventType::OrderCreated, None, json!({"n": n})).unwrap();
            let publisher = &publisher;
            async move { publisher.publish(&event).await }
        }))
        .await
        .unwrap();
    }

    // The unlimited webhook is not held up by the limited one's backlog.
    wait_for(
        "every event at the unlimited webhook",
        Duration::from_secs(60),
        || async { unlimited.distinct() == EVENTS },
    )
    .await;
    let limited_so_far = limited.distinct();
    assert!(
        limited_so_far < EVENTS / 2,
        "the limited webhook had {limited_so_far} of {EVENTS} when the unlimited one had all"
    );

    // 2,000 at 50 a second: about 40 s.
    wait_for(
        "every event at the limited webhook",
        Duration::from_secs(120),
        || async { limited.distinct() == EVENTS },
    )
    .await;
    let requests = limited.requests();
    let start = requests.iter().map(|r| r.at).min().unwrap();
    let mut per_second = vec![0u32; 200];
    for r in &requests {
        per_second[(r.at - start).as_secs() as usize] += 1;
    }
    // A token bucket lets through at most rate x span + burst in any span,
    // counted when it grants; the receiver counts arrivals, which a request
    // granted just before a second's end may make just after it. So: the
    // bucket's bound plus a tenth of a second's worth for that, over one
    // second and over any five.
    let seen = &per_second[..per_second.iter().rposition(|&n| n > 0).unwrap() + 1];
    let slack = PER_SECOND / 10;
    let busiest = *seen.iter().max().unwrap();
    assert!(
        busiest <= PER_SECOND + BURST + slack,
        "{busiest} requests in one second; per second: {seen:?}"
    );
    let busiest_five: u32 = seen.windows(5).map(|w| w.iter().sum()).max().unwrap_or(0);
    assert!(
        busiest_five <= 5 * PER_SECOND + BURST + slack,
        "{busiest_five} requests in five seconds; per second: {seen:?}"
    );
    assert_eq!(requests.len(), EVENTS, "each once");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
