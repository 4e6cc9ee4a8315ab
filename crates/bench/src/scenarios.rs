//! The courier scenarios. Each one builds an environment of its own (prefix,
//! database, subscriptions, receivers), starts `courier serve`, publishes,
//! waits for the healthy receivers to have everything or for the deadline,
//! reads courier's /proc figures, and tears it all down.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use courier_model::{Channel, Event, EventType, WorkspaceId};
use courier_producer::Publisher;
use courier_store::{Store, Workspace};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use serde_json::json;

use crate::env::{BenchEnv, CourierProcess, Db, PartsCpu, Services};
use crate::ingest;
use crate::receiver::{Behavior, Receivers, Recorder, Window};
use crate::report::{Outcome, Status};

/// Publishes in flight at once: confirms are pipelined, not awaited in turn.
pub const PUBLISH_WINDOW: usize = 256;

/// How big and how long; every loop of the bench is bounded by these.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// Events of throughput-1, scale-out, many-subscriptions and the bare bound.
    pub events: u64,
    /// Events of fanout-10 and bad-neighbour (each makes 10 deliveries).
    pub fanout_events: u64,
    /// latency: events per second, and for how long.
    pub rate: f64,
    pub duration: Duration,
    /// many-subscriptions: how many, across how many workspaces.
    pub subscriptions: u64,
    pub workspaces: u64,
    /// Size of one published event, JSON envelope included.
    pub payload_bytes: usize,
    /// ingest-batch: events per request.
    pub batch: u64,
    /// How long after the last publish the receivers may take to get
    /// everything before the scenario reports "timed out".
    pub drain_timeout: Duration,
    /// How long courier may take to start consuming.
    pub ready_timeout: Duration,
    /// prefilled-1 and prune-1: old deliveries in the ledger at the start,
    /// and a rate to publish at for `duration` (as fast as possible if
    /// none).
    pub prune_rows: u64,
    pub prune_rate: Option<f64>,
}

/// Which workspace and channel event number `seq` is published with.
pub type Route = Arc<dyn Fn(u64) -> (WorkspaceId, Option<Channel>) + Send + Sync>;

/// Filler that brings an event to `payload_bytes` once encoded.
pub fn padding(payload_bytes: usize) -> anyhow::Result<String> {
    let probe = Event::new(
        WorkspaceId::parse("bench-w00000")?,
        EventType::OrderCreated,
        None,
        json!({"seq": 10_000_000u64, "t_us": 1_000_000_000u64, "pad": ""}),
    )?;
    let size = probe.to_vec()?.len();
    Ok("x".repeat(payload_bytes.saturating_sub(size)))
}

/// What publishing achieved.
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub accepted: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub start_us: u64,
    pub end_us: u64,
}

/// 0..count, at once or `rate` per second.
pub fn paced(count: u64, rate: Option<f64>) -> BoxStream<'static, u64> {
    match rate {
        None => stream::iter(0..count).boxed(),
        Some(rate) => {
            let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            // Catch up after a stall so the average rate holds.
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            stream::unfold((0u64, interval), move |(seq, mut interval)| async move {
                if seq >= count {
                    return None;
                }
                interval.tick().await;
                Some((seq, (seq + 1, interval)))
            })
            .boxed()
        }
    }
}

/// Publishes `events` events (`data.seq` = 0..events, `data.t_us` = the
/// publish time on the recorder's clock), as fast as the window allows or
/// at `rate` per second, and gives up at `deadline`.
pub async fn publish(
    publisher: &Publisher,
    recorder: &Recorder,
    route: &Route,
    events: u64,
    rate: Option<f64>,
    pad: &str,
    deadline: Duration,
) -> Published {
    let seqs = paced(events, rate);
    let mut published = Published {
        start_us: recorder.now_us(),
        ..Published::default()
    };
    let results = seqs
        .map(|seq| {
            let (workspace, channel) = route(seq);
            async move {
                let data = json!({"seq": seq, "t_us": recorder.now_us(), "pad": pad});
                let event = Event::new(workspace, EventType::OrderCreated, channel, data)?;
                publisher.publish(&event).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(PUBLISH_WINDOW);
    let counting = results.for_each(|result| {
        published.count(1, result);
        async {}
    });
    if tokio::time::timeout(deadline, counting).await.is_err() {
        published.gave_up(events, "publishing", deadline);
    }
    published.end_us = recorder.now_us();
    published
}

impl Published {
    /// Counts `events` sent together; true when they were accepted.
    pub fn count(&mut self, events: u64, result: anyhow::Result<()>) -> bool {
        match result {
            Ok(()) => {
                self.accepted += events;
                true
            }
            Err(error) => {
                self.failed += events;
                self.first_error.get_or_insert_with(|| format!("{error:#}"));
                false
            }
        }
    }

    /// Counts what was not sent of `events` by `deadline` as failed.
    pub fn gave_up(&mut self, events: u64, doing: &str, deadline: Duration) {
        self.failed += events - self.accepted - self.failed;
        self.first_error
            .get_or_insert_with(|| format!("{doing} did not finish within {deadline:?}"));
    }
}

/// Waits until the healthy receivers have `expected` distinct deliveries,
/// or `timeout` passes; true when everything arrived.
pub async fn wait_drained(recorder: &Recorder, expected: u64, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if recorder.healthy_distinct() >= expected {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fills the figures every scenario shares from what was published and
/// what arrived.
pub fn fill(outcome: &mut Outcome, published: &Published, window: &Window, drained: bool) {
    outcome.events_published = published.accepted;
    outcome.events_failed = published.failed;
    outcome.deliveries_received = window.count;
    let publish_s = published.end_us.saturating_sub(published.start_us) as f64 / 1e6;
    outcome.events_per_s = (publish_s > 0.0).then(|| published.accepted as f64 / publish_s);
    outcome.deliveries_per_s = window.rate();
    if window.count > 0 {
        outcome.drain_s = Some(window.last_us.saturating_sub(published.end_us) as f64 / 1e6);
        outcome.total_s = Some(window.last_us.saturating_sub(published.start_us) as f64 / 1e6);
    }
    if let Some(error) = &published.first_error {
        outcome.status = Status::Failed;
        outcome.error = Some(format!("{} events not accepted: {error}", published.failed));
    } else if !drained {
        outcome.status = Status::TimedOut;
    }
}

/// How the subscriptions of a scenario are laid out.
enum Layout {
    /// One workspace; every receiver subscribed once to order.created.
    OneWorkspace,
    /// `workspaces` workspaces of `per_workspace` subscriptions each, all to
    /// the first receiver, each for one channel: an event matches one.
    Many { workspaces: u64, per_workspace: u64 },
}

struct Shape {
    name: &'static str,
    workers: usize,
    behaviors: Vec<Behavior>,
    layout: Layout,
    events: u64,
    rate: Option<f64>,
    /// Publish every event before any worker starts, then time how fast
    /// the workers drain that backlog: what they can do with the whole
    /// machine, none of it taken by the producer.
    backlog: bool,
    via: Via,
    /// Old, finished deliveries (past retention) put in the ledger before
    /// courier starts.
    prefill: u64,
    /// courier settings of this scenario (the bench's --set still wins).
    settings: &'static [(&'static str, &'static str)],
}

/// How the events reach courier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// Published to the events exchange with confirms, as courier-producer does.
    Amqp,
    /// POSTed to courier's HTTP ingest, this many events per request (1:
    /// the single-event route).
    Http { per_request: u64 },
}

pub async fn throughput_1(services: &Services, sizes: &Sizes, db: Db) -> Outcome {
    run(
        services,
        sizes,
        db,
        Shape {
            name: "throughput-1",
            workers: 1,
            behaviors: vec![Behavior::Ok],
            layout: Layout::OneWorkspace,
            events: sizes.events,
            rate: None,
            backlog: false,
            via: Via::Amqp,
            prefill: 0,
            settings: &[],
        },
    )
    .await
}

/// throughput-1 on a ledger holding `--prune-rows` old deliveries, all
/// past retention, with pruning off: what prune-1 is compared with.
pub async fn prefilled_1(services: &Services, sizes: &Sizes, db: Db) -> Outcome {
    prefilled(services, sizes, db, "prefilled-1", false).await
}

/// prefilled-1 with pruning on: courier prunes the old deliveries from its
/// start, paced by retention.duty_percent, while it delivers.
pub async fn prune_1(services: &Services, sizes: &Sizes, db: Db) -> Outcome {
    prefilled(services, sizes, db, "prune-1", true).await
}

async fn prefilled(
    services: &Services,
    sizes: &Sizes,
    db: Db,
    name: &'static str,
    pruning: bool,
) -> Outcome {
    let settings: &'static [(&str, &str)] = if pruning {
        &[("COURIER__RETENTION__ENABLED", "true")]
    } else {
        &[("COURIER__RETENTION__ENABLED", "false")]
    };
    run(
        services,
        sizes,
        db,
        Shape {
            name,
            workers: 1,
            behaviors: vec![Behavior::Ok],
            layout: Layout::OneWorkspace,
            events: match sizes.prune_rate {
                Some(rate) => (rate * sizes.duration.as_secs_f64()) as u64,
                None => sizes.events,
            },
            rate: sizes.prune_rate,
            backlog: false,
            via: Via::Amqp,
            prefill: sizes.prune_rows,
            settings,
        },
    )
    .await
}

/// Two worker processes on the same broker and database, while the events
/// are published (compared with throughput-1), and the capacity of one
/// worker against two: each drains a backlog of the same size, published
/// before it starts. On a small machine the producer competes with the
/// workers for the cores, so the live figure tells little about what a
/// second worker adds; the backlog figures do.
pub async fn scale_out(services: &Services, sizes: &Sizes, db: Db) -> Outcome {
    let shape = |workers, backlog| Shape {
        name: "scale-out",
        workers,
        behaviors: vec![Behavior::Ok],
        layout: Layout::OneWorkspace,
        events: sizes.events,
        rate: None,
        backlog,
        via: Via::Amqp,
        prefill: 0,
        settings: &[],
    };
    let mut live = run(services, sizes, db, shape(2, false)).await;
    let one = run(services, sizes, db, shape(1, true)).await;
    let two = run(services, sizes, db, shape(2, true)).await;
    live.extra("backlog_events", sizes.events);
    for (drain, key) in [(&one, "backlog_1_worker"), (&two, "backlog_2_workers")] {
        if let Some(rate) = drain.deliveries_per_s {
            live.extra(&format!("{key}_per_s"), rate);
        }
        if let Some(cpu) = drain.cpu_s_per_1000 {
            live.extra(&format!("{key}_cpu_s_per_1000"), cpu);
        }
        for (part, value) in &drain.extra {
            if part.ends_with("_cpu_s_per_1000") {
                live.extra(&format!("{key}_{part}"), value.clone());
            }
        }
        if let Some(rss) = drain.peak_rss_mb {
            live.peak_rss_mb = Some(live.peak_rss_mb.map_or(rss, |r| r.max(rss)));
        }
        if drain.status != Status::Ok && live.status == Status::Ok {
            live.status = drain.status;
        }
        if let Some(error) = &drain.error {
            live.error.get_or_insert_with(|| {
                format!(
                    "draining a backlog with {} worker(s): {error}",
                    drain.workers
                )
            });
        }
    }
    if let (Some(one), Some(two)) = (one.deliveries_per_s, two.deliveries_per_s)
        && one > 0.0
    {
        live.extra("backlog_pct_of_one_worker", two / one * 100.0);
    }
    live
}

pub async fn fanout_10(services: &Services, sizes: &Sizes, db: Db) -> Outcome {
    run(
        services,
        sizes,
        db,
        Shape {
            name: "fanout-10",
            workers: 1,
            behaviors: vec![Behavior::Ok; 10],
            layout: Layout::OneWorkspace,
            events: sizes.fanout_events,
            rate: None,
            backlog: false,
            via: Via::Amqp,
            prefill: 0,
            settings: &[],
        },
    )
    .await
}

pub async fn bad_neighbour(services: &Services, sizes: &Sizes, db: Db) -> Outcome {
    let mut behaviors = vec![Behavior::Ok; 10];
    behaviors[0] = Behavior::Late(Duration::from_secs(5));
    behaviors[1] = Behavior::Status(500);
    run(
        services,
        sizes,
        db,
        Shape {
            name: "bad-neighbour",
            workers: 1,
            behaviors,
            layout: Layout::OneWorkspace,
            events: sizes.fanout_events,
            rate: None,
            backlog: false,
            via: Via::Amqp,
            prefill: 0,
            settings: &[],
        },
    )
    .await
}

pub async fn latency(services: &Services, sizes: &Sizes, db: Db) -> Outcome {
    run(
        services,
        sizes,
        db,
        Shape {
            name: "latency",
            workers: 1,
            behaviors: vec![Behavior::Ok],
            layout: Layout::OneWorkspace,
            events: (sizes.rate * sizes.duration.as_secs_f64()).round() as u64,
            rate: Some(sizes.rate),
            backlog: false,
            via: Via::Amqp,
            prefill: 0,
            settings: &[],
        },
    )
    .await
}

/// throughput-1's load through HTTP ingest, one event per request.
pub async fn ingest_1(services: &Services, sizes: &Sizes, db: Db) -> Outcome {
    let shape = http_shape("ingest-1", 1, sizes.events, None, 1);
    run(services, sizes, db, shape).await
}

/// fanout-10's load through HTTP ingest, one event per request.
pub async fn ingest_10(services: &Services, sizes: &Sizes, db: Db) -> Outcome {
    let shape = http_shape("ingest-10", 10, sizes.fanout_events, None, 1);
    run(services, sizes, db, shape).await
}

/// throughput-1's load through the batch route, `sizes.batch` events a
/// request.
pub async fn ingest_batch(services: &Services, sizes: &Sizes, db: Db) -> Outcome {
    let shape = http_shape("ingest-batch", 1, sizes.events, None, sizes.batch);
    run(services, sizes, db, shape).await
}

/// latency's fixed rate through HTTP ingest: request-to-202 and
/// send-to-receipt percentiles.
pub async fn ingest_latency(services: &Services, sizes: &Sizes, db: Db) -> Outcome {
    let events = (sizes.rate * sizes.duration.as_secs_f64()).round() as u64;
    let shape = http_shape("ingest-latency", 1, events, Some(sizes.rate), 1);
    run(services, sizes, db, shape).await
}

/// One worker, `receivers` healthy receivers in one workspace, events sent
/// through HTTP ingest.
fn http_shape(
    name: &'static str,
    receivers: usize,
    events: u64,
    rate: Option<f64>,
    per_request: u64,
) -> Shape {
    Shape {
        name,
        workers: 1,
        behaviors: vec![Behavior::Ok; receivers],
        layout: Layout::OneWorkspace,
        events,
        rate,
        backlog: false,
        via: Via::Http { per_request },
        prefill: 0,
        settings: &[],
    }
}

pub async fn many_subscriptions(services: &Services, sizes: &Sizes, db: Db) -> Outcome {
    let workspaces = sizes.workspaces.clamp(1, sizes.subscriptions.max(1));
    run(
        services,
        sizes,
        db,
        Shape {
            name: "many-subscriptions",
            workers: 1,
            behaviors: vec![Behavior::Ok],
            layout: Layout::Many {
                workspaces,
                per_workspace: (sizes.subscriptions / workspaces).max(1),
            },
            events: sizes.events,
            rate: None,
            backlog: false,
            via: Via::Amqp,
            prefill: 0,
            settings: &[],
        },
    )
    .await
}

async fn run(services: &Services, sizes: &Sizes, db: Db, shape: Shape) -> Outcome {
    let mut outcome = Outcome::new(shape.name, db.name());
    outcome.workers = shape.workers as u32;
    let backlog = if shape.backlog { ", backlog" } else { "" };
    eprintln!(
        "-- {} on {} ({} worker{}{backlog})",
        shape.name,
        db.name(),
        shape.workers,
        if shape.workers == 1 { "" } else { "s" },
    );
    let mut env = match BenchEnv::create(db, services).await {
        Ok(env) => env,
        Err(error) => return finish(outcome.failed(&error)),
    };
    for (key, value) in shape.settings {
        env.set(key, value);
    }
    let result = measure(&env, sizes, &shape, &mut outcome).await;
    env.cleanup().await;
    match result {
        Ok(()) => finish(outcome),
        Err(error) => finish(outcome.failed(&error)),
    }
}

fn finish(mut outcome: Outcome) -> Outcome {
    outcome.load_end = crate::env::load_average();
    outcome
}

async fn measure(
    env: &BenchEnv,
    sizes: &Sizes,
    shape: &Shape,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let recorder = Recorder::new();
    let receivers = Receivers::start(&recorder, &shape.behaviors).await?;
    let healthy = shape
        .behaviors
        .iter()
        .filter(|b| **b == Behavior::Ok)
        .count() as u64;

    let store = env.store().await?;
    let setup = tokio::time::Instant::now();
    let route = subscribe(&store, &shape.layout, receivers.urls()).await;
    let http = match (shape.via, &route) {
        (Via::Http { per_request }, Ok(route)) => {
            let workspace = route(0).0;
            let key = courier_api::keys::create_api_key(&store, &workspace, Some("bench"))
                .await
                .map(|(key, _)| key)
                .map_err(|e| anyhow::anyhow!("could not create an API key: {e}"));
            let port = ingest::free_port();
            Some(key.and_then(|key| {
                let base = format!("http://127.0.0.1:{}", port?);
                Ok((
                    ingest::Target {
                        base,
                        workspace,
                        key,
                    },
                    per_request,
                ))
            }))
        }
        _ => None,
    };
    store.close().await;
    let route = route?;
    let http = http.transpose()?;
    if shape.prefill > 0 {
        let filling = tokio::time::Instant::now();
        env.prefill_old(shape.prefill, padding(sizes.payload_bytes)?.len())
            .await?;
        outcome.extra("prefilled_deliveries", shape.prefill);
        outcome.extra("prefill_s", filling.elapsed().as_secs_f64());
    }
    env.settle_database().await?;
    if shape.prefill > 0 {
        outcome.extra("ledger_mb_at_start", env.ledger_mb().await?);
    }
    outcome.extra("setup_s", setup.elapsed().as_secs_f64());

    let expected = shape.events * healthy;
    outcome.deliveries_expected = expected;
    let pad = padding(sizes.payload_bytes)?;
    let publish_deadline = match shape.rate {
        Some(_) => sizes.duration + sizes.drain_timeout,
        None => sizes.drain_timeout,
    };
    let publish_all = || async {
        let (publisher, connection) = env.publisher().await?;
        let published = publish(
            &publisher,
            &recorder,
            &route,
            shape.events,
            shape.rate,
            &pad,
            publish_deadline,
        )
        .await;
        connection.close(200, "".into()).await.ok();
        anyhow::Ok((published, None))
    };
    // Through HTTP ingest instead, when the shape says so.
    let publish_all = || async {
        let Some((target, per_request)) = &http else {
            return publish_all().await;
        };
        let sent = ingest::ingest(
            target,
            &recorder,
            shape.events,
            *per_request,
            shape.rate,
            &pad,
            publish_deadline,
        )
        .await?;
        anyhow::Ok((sent.published.clone(), Some(sent)))
    };

    let mut backlog = None;
    if shape.backlog {
        env.declare_topology().await?;
        backlog = Some(publish_all().await?);
    }
    let spawned_us = recorder.now_us();
    let mut processes = Vec::with_capacity(shape.workers);
    for n in 0..shape.workers {
        let listen = http
            .as_ref()
            .filter(|_| n == 0)
            .map(|(t, _)| t.base.as_str());
        processes.push(env.spawn_courier(n, listen).await?);
    }
    let mut before = (sample_all(&processes)?, PartsCpu::now());
    let ready = env.wait_ready(&mut processes, sizes.ready_timeout).await?;
    if let Some((target, _)) = &http {
        ingest::wait_answering(&target.base, sizes.ready_timeout).await?;
    }
    outcome.extra("courier_ready_s", ready.as_secs_f64());
    // The ledger's size each minute while courier runs (prefilled shapes).
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = (shape.prefill > 0).then(|| {
        let (url, stop) = (env.settings.database.url.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut sizes = Vec::new();
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return sizes,
                    _ = every.tick() => {}
                }
                if let Ok(mb) = crate::env::database_mb(&url).await {
                    sizes.push((mb * 10.0).round() / 10.0);
                }
            }
        })
    });
    let (published, ingested) = match backlog {
        // Workers consume from the moment they attach: their CPU counts
        // from their start (loading a few subscriptions costs next to
        // nothing).
        Some(published) => published,
        None => {
            before = (sample_all(&processes)?, PartsCpu::now());
            publish_all().await?
        }
    };
    if let (Some(sent), Some((_, per_request))) = (&ingested, &http) {
        ingest::figures(outcome, sent, *per_request);
    }
    let drained = wait_drained(&recorder, expected, sizes.drain_timeout).await;
    let (after, parts) = (sample_all(&processes)?, PartsCpu::now());
    let (before, parts_before) = before;
    for process in processes {
        process.stop().await;
    }
    sampling.cancel();
    if let Some(sampler) = sampler
        && let Ok(sizes) = sampler.await
    {
        outcome.extra("ledger_mb_each_minute", sizes);
    }
    if shape.prefill > 0 {
        // courier ran (and pruned) from its start to now.
        let ran_s = (recorder.now_us().saturating_sub(spawned_us)) as f64 / 1e6;
        let left = env.old_deliveries_left().await?;
        let pruned = shape.prefill.saturating_sub(left);
        outcome.extra("pruned_deliveries", pruned);
        outcome.extra("pruned_per_s", pruned as f64 / ran_s.max(0.001));
        outcome.extra("ledger_mb_at_end", env.ledger_mb().await?);
    }

    let arrivals = recorder.arrivals();
    let window = Window::of(&arrivals);
    fill(outcome, &published, &window, drained);
    if shape.backlog && window.count > 0 {
        // From the workers' start, not from the last publish.
        outcome.drain_s = Some(window.last_us.saturating_sub(spawned_us) as f64 / 1e6);
    }
    outcome.peak_rss_mb = Some(after.1 as f64 / 1024.0);
    let cpu = after.0 - before.0;
    outcome.extra("courier_cpu_s", cpu);
    if window.count > 0 {
        outcome.cpu_s_per_1000 = Some(cpu / window.count as f64 * 1000.0);
    }
    parts
        .since(parts_before)
        .report(outcome, window.count, env.db == Db::Postgres);
    if recorder.unreadable() > 0 {
        outcome.remark(format!(
            "{} request bodies were not courier's shape",
            recorder.unreadable()
        ));
    }
    let duplicates = arrivals.iter().filter(|a| a.healthy && !a.first).count();
    outcome.extra("duplicates", duplicates as u64);

    match shape.name {
        "latency" | "ingest-latency" => latency_figures(outcome, &arrivals, shape),
        "bad-neighbour" => {
            let late = arrivals.iter().filter(|a| a.receiver == 0).count();
            let broken = arrivals.iter().filter(|a| a.receiver == 1).count();
            outcome.extra("late_endpoint_requests", late as u64);
            outcome.extra("failing_endpoint_requests", broken as u64);
        }
        "many-subscriptions" => {
            outcome.extra("subscriptions", subscription_count(&shape.layout));
        }
        _ => {}
    }
    drop(receivers);
    Ok(())
}

fn subscription_count(layout: &Layout) -> u64 {
    match layout {
        Layout::OneWorkspace => 0,
        Layout::Many {
            workspaces,
            per_workspace,
        } => workspaces * per_workspace,
    }
}

/// Publish-to-receipt percentiles over the first arrival of each event.
fn latency_figures(outcome: &mut Outcome, arrivals: &[crate::receiver::Arrival], shape: &Shape) {
    let mut latencies: Vec<u64> = arrivals
        .iter()
        .filter(|a| a.first && a.healthy)
        .map(|a| a.at_us.saturating_sub(a.sent_us))
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        let last = latencies.len().checked_sub(1)?;
        let i = ((p / 100.0) * last as f64).round() as usize;
        Some(latencies[i.min(last)] as f64 / 1000.0)
    };
    for (key, p) in [
        ("latency_p50_ms", 50.0),
        ("latency_p95_ms", 95.0),
        ("latency_p99_ms", 99.0),
        ("latency_max_ms", 100.0),
    ] {
        if let Some(v) = pct(p) {
            outcome.extra(key, v);
        }
    }
    if let Some(rate) = shape.rate {
        outcome.extra("target_rate", rate);
    }
    slow_seconds(outcome, arrivals);
}

/// Where in the run the slow deliveries were: how many took longer than
/// [`SLOW_MS`], and the one-second windows (by publish time, from the first
/// publish) that held the most of them. A single stall shows as one or two
/// windows; a machine that is slow throughout spreads them over many.
fn slow_seconds(outcome: &mut Outcome, arrivals: &[crate::receiver::Arrival]) {
    let firsts = arrivals.iter().filter(|a| a.first && a.healthy);
    let Some(start) = firsts.clone().map(|a| a.sent_us).min() else {
        return;
    };
    // second -> (slow deliveries, slowest ms)
    let mut by_second: std::collections::BTreeMap<u64, (u64, f64)> = Default::default();
    for a in firsts {
        let ms = a.at_us.saturating_sub(a.sent_us) as f64 / 1000.0;
        if ms > SLOW_MS {
            let entry = by_second
                .entry((a.sent_us - start) / 1_000_000)
                .or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(ms);
        }
    }
    let slow: u64 = by_second.values().map(|(n, _)| n).sum();
    outcome.extra("latency_over_50ms", slow);
    outcome.extra("latency_slow_seconds", by_second.len() as u64);
    let mut worst: Vec<_> = by_second.into_iter().collect();
    worst.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
    let worst: Vec<serde_json::Value> = worst
        .into_iter()
        .take(5)
        .map(|(second, (count, max_ms))| {
            json!({ "second": second, "over_50ms": count, "max_ms": max_ms })
        })
        .collect();
    outcome.extra("latency_worst_seconds", worst);
}

/// A delivery slower than this counts as slow in the latency scenario.
const SLOW_MS: f64 = 50.0;

/// (courier CPU seconds summed, largest peak RSS in KiB) over processes.
fn sample_all(processes: &[CourierProcess]) -> anyhow::Result<(f64, u64)> {
    let mut cpu = 0.0;
    let mut rss = 0;
    for process in processes {
        let sample = process.sample()?;
        cpu += sample.cpu_s;
        rss = rss.max(sample.peak_rss_kib);
    }
    Ok((cpu, rss))
}

/// Creates the workspaces and webhooks through the same code the admin CLI
/// uses, and returns how to address events to them.
async fn subscribe(store: &Store, layout: &Layout, urls: &[String]) -> anyhow::Result<Route> {
    match *layout {
        Layout::OneWorkspace => {
            let workspace = workspace(store, 0).await?;
            for url in urls {
                webhook(store, &workspace, url, vec![]).await?;
            }
            Ok(Arc::new(move |_| (workspace.clone(), None)))
        }
        Layout::Many {
            workspaces,
            per_workspace,
        } => {
            let mut ids = Vec::with_capacity(workspaces as usize);
            for w in 0..workspaces {
                ids.push(workspace(store, w).await?);
            }
            let channels: Vec<Channel> = (0..per_workspace)
                .map(|c| Channel::parse(&format!("c{c}")))
                .collect::<Result<_, _>>()?;
            let url = courier_model::WebhookUrl::parse(urls.first().context("no receiver")?)?;
            // A million webhooks one API call at a time would take an hour:
            // they go in bulk, rows exactly as `courier_api::webhooks::create`
            // writes them for this input (a generated secret, no settings).
            let pairs = ids
                .iter()
                .flat_map(|w| channels.iter().map(move |c| (w, c)));
            let mut batch = Vec::with_capacity(BULK_WEBHOOKS);
            for (w, c) in pairs {
                let now = chrono::Utc::now();
                batch.push(courier_model::Subscription {
                    id: courier_model::SubscriptionId::generate(),
                    workspace_id: w.clone(),
                    name: "bench".into(),
                    url: url.clone(),
                    event_types: vec![EventType::OrderCreated],
                    channels: vec![c.clone()],
                    secret: courier_model::WebhookSecret::generate(),
                    previous_secret: None,
                    previous_secret_expires_at: None,
                    status: courier_model::SubscriptionStatus::Enabled,
                    disabled: None,
                    settings: Default::default(),
                    created_at: now,
                    updated_at: now,
                });
                if batch.len() == BULK_WEBHOOKS {
                    store.insert_subscriptions(&batch).await?;
                    batch.clear();
                }
            }
            store.insert_subscriptions(&batch).await?;
            Ok(Arc::new(move |seq| {
                let w = (seq % workspaces) as usize;
                let c = ((seq / workspaces) % per_workspace) as usize;
                (ids[w].clone(), Some(channels[c].clone()))
            }))
        }
    }
}

/// Webhooks per transaction when the bench creates them in bulk.
const BULK_WEBHOOKS: usize = 10_000;

async fn workspace(store: &Store, n: u64) -> anyhow::Result<WorkspaceId> {
    let id = WorkspaceId::parse(format!("bench-w{n:05}"))?;
    store
        .create_workspace(&Workspace {
            id: id.clone(),
            name: format!("bench workspace {n}"),
            created_at: chrono::Utc::now(),
        })
        .await
        .context("could not create a workspace")?;
    Ok(id)
}

async fn webhook(
    store: &Store,
    workspace: &WorkspaceId,
    url: &str,
    channels: Vec<String>,
) -> anyhow::Result<()> {
    courier_api::webhooks::create(
        store,
        workspace,
        courier_api::webhooks::NewWebhook {
            name: "bench".into(),
            url: url.into(),
            events: vec!["order.created".into()],
            channels,
            secret: None,
            active: true,
            ..Default::default()
        },
        courier_api::webhooks::UrlPolicy {
            require_https: false,
        },
    )
    .await
    .context("could not create a webhook")?;
    Ok(())
}
