//! A broker that cannot be reached, or is reached wrongly: the real binary
//! says why in one line naming `amqp.url`, keeps trying and stops at once on
//! SIGTERM; an API-only process announces webhook changes before any worker
//! ran, and again after its channel was closed under it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier::{App, Roles};
use courier_model::{Event, EventType};
use courier_tests::env::amqp_url;
use courier_tests::{Behavior, Db, Receiver, TestEnv, wait_for};
use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Runs `courier serve` against `amqp_url`, waits for the line that names
/// `cause`, then sends SIGTERM and expects a clean exit within seconds.
async fn serve_explains_and_stops(amqp_url: &str, cause: &str) -> String {
    let env = TestEnv::new(Db::Sqlite).await;
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("courier");
    let mut child = tokio::process::Command::new(&binary)
        .arg("serve")
        .env("COURIER__DATABASE__URL", &env.settings.database.url)
        .env("COURIER__AMQP__URL", amqp_url)
        .env("COURIER__AMQP__PREFIX", &env.prefix)
        .env("COURIER__HTTP__LISTEN", "127.0.0.1:0")
        .env("COURIER__LOG__LEVEL", "warn")
        .env("COURIER__LOG__FORMAT", "json")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
    let log = Arc::new(Mutex::new(String::new()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });

    let wanted = format!("cannot reach RabbitMQ at amqp.url: {cause}");
    wait_for("the failure line", Duration::from_secs(20), || async {
        log.lock().unwrap().contains(&wanted)
    })
    .await;

    let pid = child.id().expect("still running");
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let asked = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("courier stops within 5 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(asked.elapsed() < Duration::from_secs(5));
    let log = log.lock().unwrap().clone();
    // One line per cause, not one per role or per attempt.
    assert_eq!(log.matches(&wanted).count(), 1, "{log}");
    assert!(!log.contains("guest:guest@"), "password leaked: {log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_is_not_amqp_is_named_and_sigterm_stops_it() {
    // Redis listens on 6379: it accepts the connection and never answers
    // the AMQP handshake.
    let log = serve_explains_and_stops(
        "amqp://guest:guest@127.0.0.1:6379/%2f",
        "not an AMQP server",
    )
    .await;
    assert!(log.contains("RabbitMQ's AMQP port"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_node_answering_each_node_is_named() {
    // Nothing listens on ports 1 and 2.
    let log = serve_explains_and_stops(
        "amqp://guest:guest@127.0.0.1:1/%2f,amqp://guest:guest@127.0.0.1:2/%2f",
        "connection refused",
    )
    .await;
    assert!(
        log.contains("127.0.0.1:1/") && log.contains("127.0.0.1:2/"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_answer_is_skipped() {
    let nodes = format!("amqp://guest:guest@127.0.0.1:1/%2f,{}", amqp_url());
    let env = TestEnv::on_broker(nodes, Db::Sqlite, &[]).await;
    let ws = env.workspace("acme").await;
    let receiver = Receiver::start(Behavior::Ok).await;
    env.webhook(&ws, &receiver.url(), &["order.created"], &[])
        .await;
    let worker = env.start_worker().await;
    let (publisher, connection) = env.publisher().await;
    let event = Event::new(ws, EventType::OrderCreated, None, json!({"n": 1})).unwrap();
    publisher.publish(&event).await.unwrap();
    connection.close(200, "".into()).await.ok();
    wait_for("the delivery", Duration::from_secs(30), || async {
        receiver.distinct() == 1
    })
    .await;
    worker.stop().await.expect("the worker stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_says_authentication_failed() {
    let log = serve_explains_and_stops(
        "amqp://guest:wrong@127.0.0.1:5672/%2f",
        "authentication failed",
    )
    .await;
    assert!(log.contains("check the user and password"), "{log}");
    assert!(!log.contains("rabbitmq-server -detached"), "{log}");
    assert!(!log.contains("guest:wrong@"), "password leaked: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_only_process_announces_changes_before_any_worker() {
    let env = TestEnv::new(Db::Sqlite).await;
    let ws = env.workspace("acme").await;
    let (key, _) = courier_api::keys::create_api_key(&env.store, &ws, Some("e2e"))
        .await
        .unwrap();
    let app = App::build(
        env.settings.clone(),
        Roles {
            worker: false,
            api: true,
            console: false,
        },
    )
    .await
    .unwrap();
    let addr = app.http_addr();
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(stop.clone()));
    let http = reqwest::Client::new();
    let made = AtomicUsize::new(0);
    let create = || async {
        let name = format!("hook-{}", made.fetch_add(1, Ordering::Relaxed));
        let response = http
            .post(format!("http://{addr}/v1/workspaces/{ws}/webhooks"))
            .bearer_auth(&key)
            .json(&serde_json::json!({
                "name": name,
                "url": "http://127.0.0.1:9/hook",
                "events": ["order.created"],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    };

    // No worker ever ran on this prefix: the API declared the control
    // exchange itself, so this change is announced (to nobody) and its
    // channel stays open.
    create().await;

    let control = env.topology().control_exchange();
    let connection = env.amqp().await;
    let channel = connection.create_channel().await.unwrap();
    let watch = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .name()
        .clone();
    // A channel per attempt: a failed bind closes its channel.
    let bind = || async {
        let attempt = connection.create_channel().await.unwrap();
        attempt
            .queue_bind(
                watch.clone(),
                control.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .is_ok()
    };
    assert!(bind().await, "the API declared {control}");
    create().await;
    let notice = || async {
        channel
            .basic_get(watch.clone(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .is_some()
    };
    wait_for("a change notice", Duration::from_secs(10), notice).await;

    // The exchange disappears under the API: its next announcement closes
    // its channel (NOT_FOUND). Later announcements reopen a channel,
    // declare the exchange again and arrive.
    channel
        .exchange_delete(control.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    create().await;
    wait_for(
        "the API declares the exchange again",
        Duration::from_secs(10),
        || async {
            create().await;
            bind().await
        },
    )
    .await;
    create().await;
    wait_for(
        "a change notice after the channel closed",
        Duration::from_secs(10),
        notice,
    )
    .await;

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the API stops")
        .unwrap()
        .unwrap();
    connection.close(200, "".into()).await.ok();
}
