//! A webhook's circuit is shared by every replica: one replica opening it
//! stops the others' attempts, and the receiver gets one probe per
//! cool-down in all. A failing endpoint's deliveries settle on their
//! schedule however many there are, the early ones with their reason.

use std::time::{Duration, Instant};

use courier_model::DeliveryStatus;
use courier_store::{DeadReason, DeliveryFilter};
use courier_tests::{Behavior, Db, Receiver, TestEnv, metric_value, wait_for};

use crate::{held, publish_orders, subscribe_to_orders, wait_for_ledger};

crate::on_both_databases!(
    a_circuit_one_replica_opened_holds_every_replica,
    a_failing_endpoints_deliveries_settle_on_their_schedule,
    a_webhooks_own_max_attempts_sets_when_its_held_deliveries_die
);

/// How long requests to the failing endpoint are counted once both
/// replicas know its circuit is open.
const WINDOW: Duration = Duration::from_secs(8);

/// Most requests any `WINDOW` after the circuit opened may bring: the
/// cool-downs double from 1 s (probes 1, 3, 7, 15 s after it opened), so
/// an 8 s window holds at most three probes; one more for a window edge
/// landing on a probe. A circuit per replica lets each replica probe on
/// its own schedule, and first makes the replica that did not open it fail
/// five attempts of its own.
const MOST_REQUESTS_IN_WINDOW: usize = 4;

async fn a_circuit_one_replica_opened_holds_every_replica(db: Db) {
    const FIRST: usize = 10;
    const THEN: usize = 40;
    let env = TestEnv::with(
        db,
        &[
            // No delivery outlives the test: 10 attempts over about 100 s.
            ("COURIER__RETRY__MAX_ATTEMPTS", "10"),
            ("COURIER__RETRY__MAX_DELAY_MS", "60000"),
        ],
    )
    .await;
    let ws = env.workspace("acme").await;
    let down = Receiver::start(Behavior::Status(503)).await;
    subscribe_to_orders(&env, &ws, &[&down]).await;

    // One replica fails five attempts in a row: the circuit opens, in the
    // ledger.
    let a = env.start_worker().await;
    publish_orders(&env, &ws, FIRST).await;
    wait_for(
        "the first replica to open the webhook's circuit",
        Duration::from_secs(30),
        || async { env.store.open_circuits().await.unwrap().len() == 1 },
    )
    .await;

    // A second replica, started after, has failed nothing itself.
    let b = env.start_worker().await;
    wait_for(
        "the second replica ready and knowing the open circuit",
        Duration::from_secs(30),
        || async {
            b.get("/readyz").await.0 == 200
                && metric_value(&b.get("/metrics").await.1, "courier_webhook_circuits_open") == 1.0
        },
    )
    .await;

    // Events for both replicas: neither attempts them, each holds what it
    // gets, and the receiver sees only the probes.
    let before = down.count();
    let started = Instant::now();
    publish_orders(&env, &ws, THEN).await;
    wait_for("every delivery held", WINDOW, || async {
        held(&env).await == FIRST + THEN
    })
    .await;
    tokio::time::sleep(WINDOW.saturating_sub(started.elapsed())).await;
    let in_window = down.count() - before;
    eprintln!("{in_window} requests to the failing endpoint in {WINDOW:?} with two replicas");
    assert!(
        in_window <= MOST_REQUESTS_IN_WINDOW,
        "{in_window} requests in {WINDOW:?} while the circuit was open: more than one probe \
         per cool-down"
    );
    let held_by_b = metric_value(
        &b.get("/metrics").await.1,
        "courier_deliveries_deferred_total",
    );
    assert!(
        held_by_b >= 1.0,
        "the second replica got none of the deliveries: the test proves nothing"
    );
    assert_eq!(
        metric_value(
            &b.get("/metrics").await.1,
            "courier_endpoint_circuit_opened_total"
        ),
        0.0,
        "the second replica never failed five in a row"
    );
    assert_eq!(env.store.open_circuits().await.unwrap().len(), 1);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// 1,500 deliveries to an endpoint that always fails on the test schedule
/// (4 attempts over 1.4 s) among 4,500 healthy ones: each failing one is
/// dead within a few seconds of its schedule's end, those given up behind
/// the open circuit say so, and every healthy one arrives.
async fn a_failing_endpoints_deliveries_settle_on_their_schedule(db: Db) {
    const EVENTS: usize = 1500;
    /// After the end of a delivery's schedule (1.4 s from its creation),
    /// how long it may stay open: the give-up pass comes every second.
    const LATE_AT_MOST: Duration = Duration::from_secs(4);
    let env = TestEnv::new(db).await;
    let span = env.settings.worker_config().retry.span();
    assert_eq!(span, Duration::from_millis(1400));
    let ws = env.workspace("acme").await;
    let down = Receiver::start(Behavior::Status(503)).await;
    let healthy = [
        Receiver::start(Behavior::Ok).await,
        Receiver::start(Behavior::Ok).await,
        Receiver::start(Behavior::Ok).await,
    ];
    let failing = env.webhook(&ws, &down.url(), &["order.created"], &[]).await;
    subscribe_to_orders(&env, &ws, &[&healthy[0], &healthy[1], &healthy[2]]).await;
    let (key, _) = courier_api::keys::create_api_key(&env.store, &ws, Some("e2e"))
        .await
        .unwrap();

    let worker = env.start_worker().await;
    let started = Instant::now();
    publish_orders(&env, &ws, EVENTS).await;
    wait_for_ledger(
        &env,
        "every failing delivery dead and every healthy one succeeded",
        Duration::from_secs(60),
        &[
            (DeliveryStatus::Dead, EVENTS as u64),
            (DeliveryStatus::Succeeded, 3 * EVENTS as u64),
        ],
    )
    .await;
    let settled = started.elapsed();
    for receiver in &healthy {
        assert_eq!(receiver.distinct(), EVENTS);
    }

    let dead = env
        .store
        .list_deliveries(
            &ws,
            &DeliveryFilter {
                subscription: Some(failing.id),
                ..DeliveryFilter::default()
            },
            2 * EVENTS as u32,
            None,
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), EVENTS);
    let span = chrono::Duration::from_std(span).unwrap();
    let mut latest = chrono::Duration::zero();
    let mut given_up = None;
    for entry in &dead {
        let d = &entry.delivery;
        assert_eq!(d.status, DeliveryStatus::Dead);
        let late = d.updated_at - (d.created_at + span);
        latest = latest.max(late);
        // Fewer attempts than the schedule's four: given up, and why.
        let expected = (d.attempts < 4).then_some(DeadReason::CircuitOpen);
        assert_eq!(entry.dead_reason, expected, "{d:?}");
        if expected.is_some() {
            given_up = Some(d.id);
        }
    }
    assert!(
        latest <= chrono::Duration::from_std(LATE_AT_MOST).unwrap(),
        "a failing delivery stayed open {latest} past its schedule's end \
         (all settled {settled:?} after publishing began)"
    );
    assert_eq!(held(&env).await, 0);

    // The API says why, too.
    let given_up = given_up.expect("the circuit held most of them back");
    let response = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/workspaces/{ws}/deliveries/{given_up}",
            worker.http_addr
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["data"]["status"], "dead", "{body}");
    assert_eq!(body["data"]["deadReason"], "circuit_open", "{body}");
    // And GraphQL's delivery log (paged until the given-up one shows).
    let mut after = String::new();
    let node = loop {
        let logs: serde_json::Value = reqwest::Client::new()
            .post(format!("http://{}/graphql", worker.http_addr))
            .bearer_auth(&key)
            .json(&serde_json::json!({
                "query": format!(
                    "query {{ webhookLogs(first: 100{after}, filter: {{status: \"dead\"}}) \
                     {{ edges {{ node {{ id deadReason }} }} pageInfo {{ hasNextPage endCursor }} }} }}"
                )
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = &logs["data"]["webhookLogs"];
        let edges = page["edges"].as_array().unwrap_or_else(|| panic!("{logs}"));
        if let Some(edge) = edges
            .iter()
            .find(|e| e["node"]["id"] == given_up.to_string())
        {
            break edge["node"].clone();
        }
        assert_eq!(
            page["pageInfo"]["hasNextPage"], true,
            "not in the log: {logs}"
        );
        after = format!(", after: {}", page["pageInfo"]["endCursor"]);
    };
    assert_eq!(node["deadReason"], "circuit_open", "{node}");
    // As the OpenAPI document says a delivery's deadReason is.
    let document: serde_json::Value =
        reqwest::get(format!("http://{}/openapi.json", worker.http_addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let schemas = &document["components"]["schemas"];
    let property = &schemas["DeliveryView"]["properties"]["deadReason"];
    assert!(
        property
            .to_string()
            .contains("#/components/schemas/DeadReason"),
        "{property}"
    );
    assert_eq!(
        schemas["DeadReason"]["enum"],
        serde_json::json!(["circuit_open"])
    );
    assert!(
        down.count() < 2 * EVENTS,
        "{} requests reached the failing endpoint: the circuit held few back",
        down.count()
    );
    eprintln!(
        "{EVENTS} failing and {} healthy deliveries settled {settled:?} after publishing began; \
         the latest dead {latest} after its schedule's end; {} requests to the failing endpoint",
        3 * EVENTS,
        down.count()
    );
    worker.stop().await.unwrap();
}

/// A webhook with max attempts of its own (6: 3 s on the test schedule,
/// where the deployment's 4 take 1.4 s): its deliveries held behind its
/// open circuit are given up when its own schedule ran out, not the
/// deployment's.
async fn a_webhooks_own_max_attempts_sets_when_its_held_deliveries_die(db: Db) {
    const EVENTS: usize = 200;
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let down = Receiver::start(Behavior::Status(503)).await;
    let mut failing = env.webhook(&ws, &down.url(), &["order.created"], &[]).await;
    failing.settings.max_attempts = Some(6);
    assert!(env.store.update_subscription(&failing).await.unwrap());
    let span = env
        .settings
        .worker_config()
        .retry
        .with_max_attempts(Some(6))
        .span();
    assert_eq!(span, Duration::from_millis(3000));

    let worker = env.start_worker().await;
    publish_orders(&env, &ws, EVENTS).await;
    wait_for_ledger(
        &env,
        "every delivery dead",
        Duration::from_secs(30),
        &[(DeliveryStatus::Dead, EVENTS as u64)],
    )
    .await;
    let dead = env
        .store
        .list_deliveries(&ws, &DeliveryFilter::default(), 2 * EVENTS as u32, None)
        .await
        .unwrap();
    let span = chrono::Duration::from_std(span).unwrap();
    let mut given_up = 0;
    for entry in &dead {
        let d = &entry.delivery;
        if entry.dead_reason == Some(DeadReason::CircuitOpen) {
            given_up += 1;
            let lived = d.updated_at - d.created_at;
            assert!(
                lived >= span && lived <= span + chrono::Duration::seconds(4),
                "given up {lived} after its creation; its schedule spans {span}"
            );
        }
    }
    assert!(
        given_up > EVENTS / 2,
        "{given_up} given up behind the circuit"
    );
    worker.stop().await.unwrap();
}
