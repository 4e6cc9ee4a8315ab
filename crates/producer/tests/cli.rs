//! The `courier-producer` binary, and the library's `Publisher` under it,
//! against the real RabbitMQ (127.0.0.1:5672, or `COURIER__AMQP__URL`). Each
//! test gets its own name prefix, reads what arrived in that prefix's fan-out
//! queue, and deletes its queues and exchanges afterwards, even when it fails.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::Arc;

use courier_producer::{DEFAULT_AMQP_URL, Topology};
use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rand::RngExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// One test's slice of the shared broker.
#[derive(Clone)]
struct Ctx {
    prefix: String,
    url: String,
    connection: Arc<Connection>,
}

/// A message taken from the fan-out queue.
#[derive(Debug)]
struct Received {
    body: Value,
    /// The bytes as published, for what a `Value` would normalise away.
    raw: Vec<u8>,
    properties: BasicProperties,
}

/// Runs `test` with a fresh prefix, then deletes that prefix's queues and
/// exchanges whether or not the test panicked, so the shared broker does
/// not accumulate quorum queues run after run.
async fn isolated<F, Fut>(test: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let url = std::env::var("COURIER__AMQP__URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.into());
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be reachable for these tests");
    let ctx = Ctx {
        prefix: format!("ptest_{:016x}", rand::rng().random::<u64>()),
        url,
        connection: Arc::new(connection),
    };
    let outcome = tokio::spawn(test(ctx.clone())).await;
    ctx.cleanup().await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

impl Ctx {
    fn topology(&self) -> Topology {
        Topology::new(self.prefix.clone(), vec![])
    }

    fn command(&self, args: &[&str]) -> Command {
        self.command_on(&self.url, args)
    }

    /// [`Ctx::command`] with another `--amqp-url`.
    fn command_on(&self, url: &str, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_courier-producer"));
        command
            .args(["--amqp-url", url, "--prefix", &self.prefix])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().await.unwrap()
    }

    async fn run_with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self.command(args).stdin(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
        drop(stdin);
        child.wait_with_output().await.unwrap()
    }

    /// What the CLI declares itself; tests that expect nothing to be
    /// published declare it first, so that "empty" is observable.
    async fn declare_ingress(&self) {
        let channel = self.connection.create_channel().await.unwrap();
        self.topology().declare_ingress(&channel).await.unwrap();
    }

    async fn fanout_count(&self) -> u32 {
        let channel = self.connection.create_channel().await.unwrap();
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(
                self.topology().fanout_queue().into(),
                options,
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Empties the fan-out queue, in queue order.
    async fn drain(&self) -> Vec<Received> {
        let channel = self.connection.create_channel().await.unwrap();
        let queue = self.topology().fanout_queue();
        let mut received = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            received.push(Received {
                body: serde_json::from_slice(&message.delivery.data).unwrap(),
                raw: message.delivery.data.clone(),
                properties: message.delivery.properties.clone(),
            });
        }
        received
    }

    /// A failed delete closes the channel, so each delete gets its own.
    async fn cleanup(&self) {
        let topology = self.topology();
        for queue in topology.queues() {
            if let Ok(channel) = self.connection.create_channel().await {
                let _ = channel
                    .queue_delete(queue.into(), QueueDeleteOptions::default())
                    .await;
            }
        }
        for exchange in topology.exchanges() {
            if let Ok(channel) = self.connection.create_channel().await {
                let _ = channel
                    .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
    }

    fn temp_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("{}-{name}", self.prefix));
        std::fs::write(&path, contents).unwrap();
        path
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[track_caller]
fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        stdout(output),
        stderr(output)
    );
}

#[tokio::test]
async fn publish_prints_the_id_once_the_event_is_in_the_fanout_queue() {
    isolated(|ctx| async move {
        let data =
            json!({"order_id": "o-1", "total": "12.50", "items": [{"sku": "A", "quantity": 2}]});
        let output = ctx
            .run(&[
                "publish",
                "--workspace",
                "acme",
                "--type",
                "order.created",
                "--channel",
                "amazon",
                "--data",
                &data.to_string(),
            ])
            .await;
        assert_success(&output);
        let id = stdout(&output);
        let id = id.strip_suffix('\n').expect("one line");
        assert!(
            id.starts_with("evt_") && !id.contains(char::is_whitespace),
            "{id:?}"
        );

        let received = ctx.drain().await;
        assert_eq!(received.len(), 1);
        let message = &received[0];
        assert_eq!(message.body["id"], id);
        assert_eq!(message.body["type"], "order.created");
        assert_eq!(message.body["workspace_id"], "acme");
        assert_eq!(message.body["channel"], "amazon");
        assert_eq!(message.body["data"], data);
        let occurred_at: chrono::DateTime<chrono::Utc> = message.body["occurred_at"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((chrono::Utc::now() - occurred_at).num_seconds().abs() < 60);

        let properties = &message.properties;
        assert_eq!(
            properties.message_id().as_ref().map(|m| m.as_str()),
            Some(id)
        );
        assert_eq!(
            properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    })
    .await;
}

#[tokio::test]
async fn publish_reads_stdin_and_files_and_keeps_a_given_id() {
    isolated(|ctx| async move {
        let output = ctx
            .run_with_stdin(
                &[
                    "publish",
                    "--workspace",
                    "acme",
                    "--type",
                    "ORDER_STATUS_CHANGED",
                    "--id",
                    "evt_given-1",
                    "-",
                ],
                r#"{"order_id": "o-2", "status": "FULFILLED"}"#,
            )
            .await;
        assert_success(&output);
        assert_eq!(stdout(&output), "evt_given-1\n");

        let file = ctx.temp_file("data.json", "{\n  \"order_id\": \"o-3\"\n}\n");
        let output = ctx
            .run(&[
                "publish",
                "--workspace",
                "acme",
                "--type",
                "refund.requested",
                "--file",
                file.to_str().unwrap(),
            ])
            .await;
        std::fs::remove_file(&file).unwrap();
        assert_success(&output);
        let generated = stdout(&output).trim().to_owned();

        let received = ctx.drain().await;
        assert_eq!(received.len(), 2);
        assert_eq!(received[0].body["id"], "evt_given-1");
        assert_eq!(
            received[0]
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str()),
            Some("evt_given-1")
        );
        assert_eq!(received[0].body["type"], "order.status_changed");
        assert_eq!(received[0].body["data"]["status"], "FULFILLED");
        assert!(received[0].body.get("channel").is_none());
        assert_eq!(received[1].body["id"], generated.as_str());
        assert_eq!(received[1].body["type"], "refund.requested");
        assert_eq!(received[1].body["data"], json!({"order_id": "o-3"}));
    })
    .await;
}

/// Data a `serde_json::Value` would change: digits beyond f64 and u64, keys
/// out of order, escapes (`\u00e9`, `\n`) a writer re-encodes, characters
/// beyond ASCII, spacing of its own.
const EXACT_DATA: &str = r#"{"order_id": "o-1", "total": 12.50000000000000000001, "big": 123456789012345678901234567890, "note":"caf\u00e9 ✓\n",  "a": {"z": 1, "b": []}}"#;

/// The published event ends with its data, byte for byte.
#[track_caller]
fn assert_data_exact(message: &Received, data: &str) {
    let raw = String::from_utf8(message.raw.clone()).unwrap();
    assert!(
        raw.ends_with(&format!(r#""data":{data}}}"#)),
        "data changed on the way:\n sent {data}\n got {raw}"
    );
}

#[tokio::test]
async fn publish_keeps_the_data_byte_for_byte_from_every_source() {
    isolated(|ctx| async move {
        let base = ["publish", "--workspace", "acme", "--type", "order.created"];
        let output = ctx
            .run(&[&base[..], &["--data", EXACT_DATA]].concat())
            .await;
        assert_success(&output);

        // Space around the object is not part of it; everything inside is.
        let output = ctx
            .run_with_stdin(
                &[&base[..], &["-"]].concat(),
                &format!("\n {EXACT_DATA} \n"),
            )
            .await;
        assert_success(&output);

        let pretty = "{\n  \"total\": 1e-7,\n  \"order_id\": \"o-\\u0031\"\n}";
        let file = ctx.temp_file("exact.json", &format!("{pretty}\n"));
        let output = ctx
            .run(&[&base[..], &["--file", file.to_str().unwrap()]].concat())
            .await;
        std::fs::remove_file(&file).unwrap();
        assert_success(&output);

        let received = ctx.drain().await;
        assert_eq!(received.len(), 3);
        assert_data_exact(&received[0], EXACT_DATA);
        assert_data_exact(&received[1], EXACT_DATA);
        assert_data_exact(&received[2], pretty);
    })
    .await;
}

#[tokio::test]
async fn the_library_publishes_data_text_as_given() {
    use courier_model::{Event, EventData, EventType, WorkspaceId};
    use courier_producer::Publisher;

    isolated(|ctx| async move {
        let (publisher, connection) = Publisher::connect(&ctx.url, &ctx.prefix).await.unwrap();
        let data = EventData::parse(EXACT_DATA).unwrap();
        let workspace = WorkspaceId::parse("acme").unwrap();
        let event = Event::with_data(workspace, EventType::OrderCreated, None, data).unwrap();
        publisher.publish(&event).await.unwrap();
        connection.close(200, "done".into()).await.unwrap();

        let received = ctx.drain().await;
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].body["id"], event.id.as_str());
        assert_data_exact(&received[0], EXACT_DATA);
    })
    .await;
}

#[tokio::test]
async fn bad_input_exits_2_naming_the_problem_and_publishes_nothing() {
    isolated(|ctx| async move {
        ctx.declare_ingress().await;
        let malformed = ctx.temp_file("malformed.json", "{\n  \"a\": 1,\n  oops\n}\n");
        let oversized = ctx.temp_file(
            "oversized.json",
            &json!({"blob": "x".repeat(300 * 1024)}).to_string(),
        );
        // Accepted by serde_json, which skips data without its recursion
        // limit; refused by courier's own.
        let deep = ctx.temp_file(
            "deep.json",
            &format!("{{\"a\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000)),
        );
        let base = ["publish", "--workspace", "acme", "--type", "order.created"];
        let cases: Vec<(Vec<&str>, Vec<String>)> = vec![
            (
                vec![
                    "publish",
                    "--workspace",
                    "acme",
                    "--type",
                    "order.nope",
                    "--data",
                    "{}",
                ],
                vec![
                    "unknown event type \"order.nope\"".into(),
                    "order.created".into(),
                ],
            ),
            (
                [&base[..], &["--data", r#"{"a": }"#]].concat(),
                vec!["malformed JSON in --data".into(), "line 1 column 7".into()],
            ),
            (
                [&base[..], &["--file", malformed.to_str().unwrap()]].concat(),
                vec![
                    format!("malformed JSON in file {}", malformed.display()),
                    "line 3 column 3".into(),
                ],
            ),
            (
                [&base[..], &["--data", r#""just text""#]].concat(),
                vec!["must be a JSON object".into(), "not a string".into()],
            ),
            (
                [&base[..], &["--data", "[1, 2]"]].concat(),
                vec!["must be a JSON object".into(), "not an array".into()],
            ),
            (
                [&base[..], &["--file", deep.to_str().unwrap()]].concat(),
                vec![
                    format!("file {}: ", deep.display()),
                    "`data` nests arrays and objects more than 63 levels deep".into(),
                ],
            ),
            (
                [&base[..], &["--file", oversized.to_str().unwrap()]].concat(),
                vec![
                    format!("built from file {}", oversized.display()),
                    "too large".into(),
                    "at most 262144".into(),
                ],
            ),
            (
                [&base[..], &["--file", "/nonexistent/courier.json"]].concat(),
                vec!["cannot open file /nonexistent/courier.json".into()],
            ),
            (
                vec![
                    "publish",
                    "--workspace",
                    "a b",
                    "--type",
                    "order.created",
                    "--data",
                    "{}",
                ],
                vec!["--workspace".into(), "workspace id may only contain".into()],
            ),
            (
                [&base[..], &["--id", "no spaces", "--data", "{}"]].concat(),
                vec!["--id".into(), "event id may only contain".into()],
            ),
            (
                [&base[..], &["--channel", "", "--data", "{}"]].concat(),
                vec!["--channel".into()],
            ),
            (
                [&base[..], &["--data", "{}", "-"]].concat(),
                vec!["cannot be used with".into()],
            ),
            (base.to_vec(), vec!["--data".into(), "--file".into()]),
        ];

        for (args, expected) in &cases {
            let output = ctx.run(args).await;
            let err = stderr(&output);
            assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.starts_with("error: "), "{args:?}: {err}");
            for needle in expected {
                assert!(
                    err.contains(needle.as_str()),
                    "{args:?}: {needle:?} not in {err}"
                );
            }
            assert_eq!(stdout(&output), "", "{args:?}");
        }
        std::fs::remove_file(&malformed).unwrap();
        std::fs::remove_file(&oversized).unwrap();
        std::fs::remove_file(&deep).unwrap();

        assert_eq!(ctx.fanout_count().await, 0);
        assert!(ctx.drain().await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_broker_exits_1_and_says_how_to_start_one() {
    let output = Command::new(env!("CARGO_BIN_EXE_courier-producer"))
        .args(["--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"])
        .args([
            "publish",
            "--workspace",
            "acme",
            "--type",
            "order.created",
            "--data",
            "{}",
        ])
        .output()
        .await
        .unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: could not reach RabbitMQ at"),
        "{err}"
    );
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(err.contains("rabbitmq-server -detached"), "{err}");
    assert!(!err.contains("guest:guest"), "password shown: {err}");
    assert_eq!(stdout(&output), "");
}

#[tokio::test]
async fn load_publishes_exactly_n_events_round_robin_over_workspaces() {
    isolated(|ctx| async move {
        let output = ctx
            .run(&[
                "load",
                "--events",
                "200",
                "--workspaces",
                "3",
                "--size",
                "512",
                "--window",
                "32",
            ])
            .await;
        assert_success(&output);
        let summary: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
        assert_eq!(summary["events"], 200);
        assert_eq!(summary["failed"], 0);
        assert!(summary["seconds"].as_f64().unwrap() > 0.0, "{summary}");
        assert!(
            summary["events_per_second"].as_f64().unwrap() > 0.0,
            "{summary}"
        );

        assert_eq!(ctx.fanout_count().await, 200);
        let received = ctx.drain().await;
        assert_eq!(received.len(), 200);
        let mut per_workspace: HashMap<String, usize> = HashMap::new();
        let mut seqs = HashSet::new();
        let mut runs = HashSet::new();
        for message in &received {
            let body = &message.body;
            *per_workspace
                .entry(body["workspace_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
            assert_eq!(body["type"], "order.created");
            let seq = body["data"]["seq"].as_u64().unwrap();
            let expected_workspace = format!("load-{}", seq % 3);
            assert_eq!(body["workspace_id"], expected_workspace.as_str());
            assert!(seqs.insert(seq), "seq {seq} twice");
            runs.insert(body["data"]["run"].as_str().unwrap().to_owned());
            let size = body["data"].to_string().len();
            assert!((480..=560).contains(&size), "data of {size} bytes");
        }
        assert_eq!(seqs, (0..200).collect::<HashSet<u64>>());
        assert_eq!(runs.len(), 1);
        assert_eq!(
            per_workspace,
            HashMap::from([
                ("load-0".into(), 67),
                ("load-1".into(), 67),
                ("load-2".into(), 66)
            ])
        );
    })
    .await;
}

#[tokio::test]
async fn load_paces_and_cycles_types_and_channels() {
    isolated(|ctx| async move {
        let output = ctx
            .run(&[
                "load",
                "--events",
                "20",
                "--rate",
                "200",
                "--workspace-prefix",
                "bench",
                "--types",
                "order.created,parcel.status_changed",
                "--channels",
                "amazon,ebay",
            ])
            .await;
        assert_success(&output);
        let summary: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
        assert_eq!(summary["events"], 20);
        assert_eq!(summary["failed"], 0);
        // 20 ticks 5 ms apart, the first at once: the pace is a lower bound.
        assert!(summary["seconds"].as_f64().unwrap() >= 0.09, "{summary}");

        let received = ctx.drain().await;
        assert_eq!(received.len(), 20);
        let combos: HashSet<(String, String, String)> = received
            .iter()
            .map(|m| {
                (
                    m.body["workspace_id"].as_str().unwrap().to_owned(),
                    m.body["type"].as_str().unwrap().to_owned(),
                    m.body["channel"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(combos.len(), 4, "{combos:?}");
        assert!(combos.contains(&(
            "bench-0".into(),
            "parcel.status_changed".into(),
            "ebay".into()
        )));
    })
    .await;
}

#[tokio::test]
async fn demo_publishes_a_coherent_stream() {
    isolated(|ctx| async move {
        let output = ctx
            .run(&[
                "demo",
                "--workspace",
                "demo-test",
                "--events",
                "20",
                "--rate",
                "1000",
            ])
            .await;
        assert_success(&output);
        assert!(stderr(&output).contains("published 20 events"));
        let lines: Vec<Vec<String>> = stdout(&output)
            .lines()
            .map(|line| line.split(' ').map(str::to_owned).collect())
            .collect();
        assert_eq!(lines.len(), 20);

        // Confirmed one by one, so the queue holds them in printed order.
        let received = ctx.drain().await;
        assert_eq!(received.len(), 20);
        let mut created: HashMap<String, String> = HashMap::new();
        for (line, message) in lines.iter().zip(&received) {
            let [event_type, id, order] = line.as_slice() else {
                panic!("bad line {line:?}");
            };
            let body = &message.body;
            assert_eq!(body["type"], event_type.as_str());
            assert_eq!(body["id"], id.as_str());
            assert_eq!(body["workspace_id"], "demo-test");
            assert_eq!(body["data"]["order_id"], order.as_str());
            let channel = body["channel"].as_str().unwrap().to_owned();
            assert!(["amazon", "ebay", "shopify", "zalando"].contains(&channel.as_str()));
            if event_type == "order.created" {
                assert!(
                    body["data"]["items"]
                        .as_array()
                        .is_some_and(|i| !i.is_empty())
                );
                assert!(body["data"]["total"].is_string());
                assert!(
                    created.insert(order.clone(), channel).is_none(),
                    "{order} created twice"
                );
            } else {
                assert_eq!(
                    created.get(order),
                    Some(&channel),
                    "{event_type} for {order} before it was created"
                );
            }
        }
        assert_eq!(lines[0][0], "order.created");
        assert!(created.len() < 20, "the stream never moved an order along");
    })
    .await;
}

#[tokio::test]
async fn help_explains_the_flags_without_showing_the_password() {
    let help = |args: &'static [&'static str]| async move {
        let output = Command::new(env!("CARGO_BIN_EXE_courier-producer"))
            .args(args)
            .env("COURIER__AMQP__URL", "amqp://user:hunter2@broker:5672/%2f")
            .output()
            .await
            .unwrap();
        assert_success(&output);
        stdout(&output)
    };
    let publish = help(&["publish", "--help"]).await;
    for flag in [
        "--workspace",
        "--type",
        "--channel",
        "--id",
        "--data",
        "--file",
        "--amqp-url",
        "--prefix",
        "stdin",
    ] {
        assert!(publish.contains(flag), "{flag} missing from\n{publish}");
    }
    assert!(!publish.contains("hunter2"), "{publish}");
    let load = help(&["load", "--help"]).await;
    for flag in [
        "--events",
        "--rate",
        "--workspaces",
        "--workspace-prefix",
        "--types",
        "--channels",
        "--size",
        "--window",
    ] {
        assert!(load.contains(flag), "{flag} missing from\n{load}");
    }
    let demo = help(&["demo", "--help"]).await;
    for flag in ["--workspace", "--events", "--rate", "Ctrl-C"] {
        assert!(demo.contains(flag), "{flag} missing from\n{demo}");
    }
}

#[tokio::test]
async fn the_cli_publishes_through_the_first_node_that_answers() {
    isolated(|ctx| async move {
        // Nothing listens on port 1: that node is skipped, whichever node
        // the list is tried from.
        let nodes = format!("amqp://guest:guest@127.0.0.1:1/%2f, {}", ctx.url);
        for _ in 0..3 {
            let output = ctx
                .command_on(
                    &nodes,
                    &[
                        "publish",
                        "--workspace",
                        "acme",
                        "--type",
                        "order.created",
                        "--data",
                        "{}",
                    ],
                )
                .output()
                .await
                .unwrap();
            assert_success(&output);
        }
        assert_eq!(ctx.drain().await.len(), 3);
    })
    .await;
}

/// A node that accepts TCP but never speaks AMQP (a stuck broker, another
/// service on the port) costs its own handshake bound, then the next node
/// is tried; alone, it is named as the reason.
#[tokio::test]
async fn a_node_that_accepts_but_never_answers_is_passed_over() {
    isolated(|ctx| async move {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_url = format!("amqp://guest:guest@{}/%2f", silent.local_addr().unwrap());
        // Hold every accepted connection open, saying nothing.
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        let publish = [
            "publish",
            "--workspace",
            "acme",
            "--type",
            "order.created",
            "--data",
            "{}",
        ];

        let alone = ctx
            .command_on(&silent_url, &publish)
            .output()
            .await
            .unwrap();
        assert_eq!(alone.status.code(), Some(1), "{}", stderr(&alone));
        assert!(
            stderr(&alone).contains("no AMQP handshake within 10 s"),
            "{}",
            stderr(&alone)
        );

        let nodes = format!("{silent_url}, {}", ctx.url);
        let output = ctx.command_on(&nodes, &publish).output().await.unwrap();
        assert_success(&output);
        assert_eq!(ctx.drain().await.len(), 1);
        holder.abort();
    })
    .await;
}

#[tokio::test]
async fn a_malformed_node_list_is_refused_naming_the_node() {
    isolated(|ctx| async move {
        let output = ctx
            .command_on(
                "amqp://guest:secret@127.0.0.1:5672/%2f,,amqp://b",
                &[
                    "publish",
                    "--workspace",
                    "acme",
                    "--type",
                    "order.created",
                    "--data",
                    "{}",
                ],
            )
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "bad input");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--amqp-url") && stderr.contains("empty address (node 2 of 3)"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("secret"),
            "no password in errors: {stderr}"
        );
    })
    .await;
}
