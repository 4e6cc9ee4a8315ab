//! Messages that can never be processed end in the poison queue, with the
//! reason, and the worker keeps delivering.

use std::time::Duration;

use courier_model::{Event, EventType, WorkspaceId};
use courier_producer::{Publisher, Topology};
use courier_tests::env::InProcessWorker;
use courier_tests::{Behavior, Db, Receiver, TestEnv, wait_for};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::AMQPValue;
use serde_json::json;
use sqlx::Connection;

crate::on_both_databases!(poison_messages_are_set_aside);

async fn poison_messages_are_set_aside(db: Db) {
    let Setup {
        env,
        ws,
        receiver,
        worker,
        publisher,
        channel,
        topology,
        _connection,
    } = set_up(db).await;
    let bad_events: [&[u8]; 3] = [
        b"{not json",
        br#"{"id":"e1","workspace_id":"acme","type":"order.exploded","occurred_at":"2026-01-01T00:00:00Z","data":{}}"#,
        br#"{"id":"e2","workspace_id":"acme","type":"order.created","occurred_at":"2026-01-01T00:00:00Z","data":"not an object"}"#,
    ];
    for body in bad_events {
        publish_raw_event(&channel, &topology, body).await;
    }
    channel
        .basic_publish(
            topology.deliveries_exchange().as_str().into(),
            "delivery".into(),
            BasicPublishOptions::default(),
            br#"{"v":1,"delivery_id":"nope"}"#,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    // A good event after the bad ones still arrives.
    let good = Event::new(
        ws.clone(),
        EventType::OrderCreated,
        None,
        json!({"ok": true}),
    )
    .unwrap();
    publisher.publish(&good).await.unwrap();
    wait_for("the good event", Duration::from_secs(30), || async {
        receiver.count() == 1
    })
    .await;
    let poison_queue = topology.poison_queue();
    wait_for("four poison messages", Duration::from_secs(30), || async {
        env.queue_len(&poison_queue).await == 4
    })
    .await;
    worker.stop().await.unwrap();

    let reasons = poison_reasons(&env, &poison_queue).await;
    let reason_of = |needle: &str| {
        reasons
            .iter()
            .find(|(body, _)| body.contains(needle))
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no poison message containing {needle}"))
    };
    assert!(reason_of("{not json").contains("not valid JSON"));
    assert!(reason_of("order.exploded").contains("unknown event type"));
    assert!(reason_of("not an object").contains("must be a JSON object"));
    assert!(reason_of("nope").contains("delivery message"));
    assert_eq!(receiver.requests()[0].json()["data"]["ok"], true);
}

crate::on_both_databases!(data_beyond_jsonb_is_delivered_as_published);

/// Data that PostgreSQL's `jsonb` could not hold (a number beyond
/// `numeric`, an escaped NUL) is recorded and delivered byte for byte on
/// both ledgers.
async fn data_beyond_jsonb_is_delivered_as_published(db: Db) {
    let Setup {
        env,
        receiver,
        worker,
        channel,
        topology,
        _connection,
        ..
    } = set_up(db).await;
    let data = [
        r#"{"total":1e200000, "n":10}"#,
        r#"{ "note" : "a\u0000b","n":11 }"#,
    ];
    for (i, data) in data.iter().enumerate() {
        let body = format!(
            r#"{{"id":"beyond-{i}","workspace_id":"acme","type":"order.created","occurred_at":"2026-01-01T00:00:00Z","data":{data}}}"#
        );
        publish_raw_event(&channel, &topology, body.as_bytes()).await;
    }
    wait_for("both events", Duration::from_secs(30), || async {
        receiver.count() == 2
    })
    .await;
    worker.stop().await.unwrap();

    let bodies: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| String::from_utf8(r.body.clone()).unwrap())
        .collect();
    for data in data {
        let field = format!(r#""data":{data}"#);
        assert!(
            bodies.iter().any(|body| body.contains(&field)),
            "no body carries {field}: {bodies:?}"
        );
    }
    assert_eq!(env.queue_len(&topology.poison_queue()).await, 0);
}

/// An event the database refuses (here a trigger refuses events marked
/// so, with a "data exception" as PostgreSQL raises for a value it cannot
/// take) is set aside at once with the database's reason, and the events
/// around it are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_postgres_ledger_refuses_is_set_aside() {
    let Setup {
        env,
        ws,
        receiver,
        worker,
        publisher,
        _connection,
        ..
    } = set_up(Db::Postgres).await;
    let mut db = sqlx::PgConnection::connect(&env.settings.database.url)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
             IF NEW.data::text LIKE '%\"refuse\":true%' THEN \
                 RAISE EXCEPTION 'event % is marked to be refused', NEW.id \
                     USING ERRCODE = '22023'; \
             END IF; \
             RETURN NEW; \
         END $$; \
         CREATE TRIGGER refuse_marked BEFORE INSERT ON events \
             FOR EACH ROW EXECUTE FUNCTION refuse_marked();",
    )
    .execute(&mut db)
    .await
    .unwrap();

    for data in [json!({"n": 1}), json!({"refuse": true}), json!({"n": 2})] {
        let event = Event::new(ws.clone(), EventType::OrderCreated, None, data).unwrap();
        publisher.publish(&event).await.unwrap();
    }

    let poison_queue = env.topology().poison_queue();
    wait_for("a poison message", Duration::from_secs(30), || async {
        env.queue_len(&poison_queue).await == 1
    })
    .await;
    // The refused event's first attempt may have been made before the
    // ledger refused it (the attempt and the event are recorded together);
    // what matters is that the good ones arrive.
    let good_numbers = || {
        let mut n: Vec<i64> = receiver
            .requests()
            .iter()
            .filter_map(|r| r.json()["data"]["n"].as_i64())
            .collect();
        n.sort();
        n
    };
    wait_for("the good events", Duration::from_secs(30), || async {
        good_numbers() == [1, 2]
    })
    .await;
    worker.stop().await.unwrap();

    let reasons = poison_reasons(&env, &poison_queue).await;
    assert_eq!(reasons.len(), 1);
    let (body, reason) = &reasons[0];
    assert!(body.contains(r#""refuse":true"#), "{body}");
    // Set aside by the worker with the database's reason, not by the
    // queue's delivery limit after redeliveries.
    assert!(
        reason.contains("the ledger refused the event")
            && reason.contains("is marked to be refused"),
        "{reason}"
    );
    assert!(receiver.count() <= 3, "{} requests", receiver.count());
}

crate::on_both_databases!(a_bad_event_in_a_group_is_set_aside_alone);

/// A group message (as HTTP ingest sends) holding a malformed event between
/// two good ones: the good ones are delivered, the bad one alone goes to
/// the poison queue with its reason; a group that is not one goes whole.
async fn a_bad_event_in_a_group_is_set_aside_alone(db: Db) {
    let Setup {
        env,
        receiver,
        worker,
        channel,
        topology,
        _connection,
        ..
    } = set_up(db).await;
    let event = |id: &str| {
        format!(
            r#"{{"id":"{id}","workspace_id":"acme","type":"order.created","occurred_at":"2026-01-01T00:00:00Z","data":{{"id":"{id}"}}}}"#
        )
    };
    let bad = r#"{"id":"g-bad","workspace_id":"acme","type":"order.created","occurred_at":"2026-01-01T00:00:00Z","data":[1]}"#;
    let (first, last) = (event("g-1"), event("g-2"));
    let group =
        courier_model::EventGroup::encode([first.as_bytes(), bad.as_bytes(), last.as_bytes()]);
    publish_raw_group(&channel, &topology, &group).await;
    publish_raw_group(&channel, &topology, br#"{"v":1,"events":"#).await;

    wait_for("the good events", Duration::from_secs(30), || async {
        receiver.count() == 2
    })
    .await;
    let poison_queue = topology.poison_queue();
    wait_for("two poison messages", Duration::from_secs(30), || async {
        env.queue_len(&poison_queue).await == 2
    })
    .await;
    worker.stop().await.unwrap();

    let mut delivered: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    delivered.sort();
    assert_eq!(delivered, ["g-1", "g-2"]);
    let reasons = poison_reasons(&env, &poison_queue).await;
    let (body, reason) = reasons
        .iter()
        .find(|(body, _)| body.contains("g-bad"))
        .expect("the bad event set aside");
    assert_eq!(body, bad, "the bad event alone, as it was in its group");
    assert!(reason.contains("must be a JSON object"), "{reason}");
    let (_, reason) = reasons
        .iter()
        .find(|(body, _)| body.as_str() == r#"{"v":1,"events":"#)
        .expect("the broken group set aside whole");
    assert!(reason.contains("not valid JSON"), "{reason}");
}

/// Publishes `body` as an event group straight to the fan-out queue, as
/// HTTP ingest does (the header says it is one), and waits for the broker.
async fn publish_raw_group(channel: &lapin::Channel, topology: &Topology, body: &[u8]) {
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        courier_model::EVENT_GROUP_HEADER.into(),
        AMQPValue::LongLongInt(3),
    );
    channel
        .basic_publish(
            "".into(),
            topology.fanout_queue().as_str().into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Publishes `body` to the events exchange as it is, past the producer's
/// validation, and waits for the broker to take it.
async fn publish_raw_event(channel: &lapin::Channel, topology: &Topology, body: &[u8]) {
    channel
        .basic_publish(
            topology.events_exchange().as_str().into(),
            "order.created".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A worker delivering acme's order.created events to one receiver, and a
/// channel to publish events on straight, past the producer's validation.
struct Setup {
    env: TestEnv,
    ws: WorkspaceId,
    receiver: Receiver,
    worker: InProcessWorker,
    publisher: Publisher,
    channel: lapin::Channel,
    topology: Topology,
    _connection: lapin::Connection,
}

async fn set_up(db: Db) -> Setup {
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let receiver = Receiver::start(Behavior::Ok).await;
    env.webhook(&ws, &receiver.url(), &["order.created"], &[])
        .await;
    let worker = env.start_worker().await;
    let (publisher, connection) = env.publisher().await;
    let topology = env.topology();
    let channel = connection.create_channel().await.unwrap();
    // The worker may still be declaring the deliveries exchange; declaring
    // the same topology here is idempotent and removes the race.
    topology.declare_all(&channel).await.unwrap();
    Setup {
        env,
        ws,
        receiver,
        worker,
        publisher,
        channel,
        topology,
        _connection: connection,
    }
}

/// Empties the poison queue: each message's body and the reason in its
/// `x-courier-error` header.
async fn poison_reasons(env: &TestEnv, poison_queue: &str) -> Vec<(String, String)> {
    let mut reasons = Vec::new();
    for (body, properties) in env.drain(poison_queue).await {
        let body = String::from_utf8_lossy(&body).into_owned();
        let reason = match properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-courier-error").cloned())
        {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("no reason header on {body}: {other:?}"),
        };
        reasons.push((body, reason));
    }
    reasons
}

crate::on_both_databases!(deeply_nested_data_is_set_aside);

/// Data nested deeper than courier accepts (here 100,000 levels) goes to
/// the poison queue with the limit as its reason, and is never delivered.
async fn deeply_nested_data_is_set_aside(db: Db) {
    let Setup {
        env,
        ws,
        receiver,
        worker,
        publisher,
        channel,
        topology,
        _connection,
    } = set_up(db).await;
    let depth = 100_000;
    let body = format!(
        r#"{{"id":"deep-1","workspace_id":"acme","type":"order.created","occurred_at":"2026-01-01T00:00:00Z","data":{{"a":{}{}}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    publish_raw_event(&channel, &topology, body.as_bytes()).await;
    let good = Event::new(ws.clone(), EventType::OrderCreated, None, json!({"ok": 1})).unwrap();
    publisher.publish(&good).await.unwrap();
    wait_for("the good event", Duration::from_secs(30), || async {
        receiver.count() == 1
    })
    .await;
    let poison_queue = topology.poison_queue();
    wait_for(
        "the deep event in the poison queue",
        Duration::from_secs(30),
        || async { env.queue_len(&poison_queue).await == 1 },
    )
    .await;
    worker.stop().await.unwrap();
    let reasons = poison_reasons(&env, &poison_queue).await;
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].0.contains("deep-1"));
    assert!(
        reasons[0].1.contains("more than 63 levels deep"),
        "{}",
        reasons[0].1
    );
    assert_eq!(receiver.count(), 1);
}
