//! `make soak`: a long run of courier under faults, with exact accounting.
//!
//! It boots a private three-node RabbitMQ cluster and a private PostgreSQL,
//! starts worker processes (the release `courier` next to this binary),
//! publishes events paced over the run to a workspace whose webhooks each
//! receive every event, and meanwhile injects faults at times drawn from a
//! seed: a worker SIGKILLed and started again, a broker node stopped and
//! started, PostgreSQL restarted, receivers that fail, answer slowly, ask to
//! wait (429 with Retry-After) or answer 410 Gone.
//!
//! When every delivery is final it counts, from the receivers and the
//! ledger: expected deliveries, succeeded, dead, paused (the webhook that
//! answered 410 is disabled and its deliveries wait), lost (expected but
//! missing from the ledger, or succeeded in the ledger without the
//! receiver having answered 2xx), and duplicates. It prints a table,
//! writes a JSON report and exits 1 on any loss, 2 on bad arguments.

mod faults;
mod receivers;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use courier_model::{DeliveryStatus, Event, EventType};
use courier_producer::ReconnectingPublisher;
use courier_tests::{PrivateCluster, PrivatePostgres, TestEnv};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::faults::{Fault, Faults};
use crate::receivers::Receivers;

#[derive(Parser, Debug)]
#[command(about = "Runs courier through a long load under seeded faults and counts every delivery")]
struct Args {
    /// Deliveries to make in all (events x webhooks).
    #[arg(long, default_value_t = 1_000_000)]
    deliveries: u64,
    /// Webhooks, each subscribed to every event.
    #[arg(long, default_value_t = 10)]
    webhooks: u64,
    /// Events published per second.
    #[arg(long, default_value_t = 400.0)]
    rate: f64,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// RabbitMQ nodes in the private cluster (1 for a single node).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seed of the fault schedule; a random one when not given (printed,
    /// to run the same schedule again).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds between faults, at least (a fault's own length adds to it).
    #[arg(long, default_value_t = 10)]
    fault_gap_secs: u64,
    /// How long to wait, after the last publish, for every delivery to be
    /// final.
    #[arg(long, default_value_t = 600)]
    settle_secs: u64,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/soak/report.json")]
    report: PathBuf,
}

/// The workers' settings for the run: retries that outlast a short outage
/// but end in dead for a long one, and a timeout the slow receivers stay
/// within.
const SETTINGS: &[(&str, &str)] = &[
    ("COURIER__RETRY__MAX_ATTEMPTS", "8"),
    ("COURIER__RETRY__INITIAL_DELAY_MS", "500"),
    ("COURIER__RETRY__MULTIPLIER", "2"),
    ("COURIER__RETRY__MAX_DELAY_MS", "8000"),
    ("COURIER__DELIVERY__TIMEOUT_MS", "5000"),
    ("COURIER__RETENTION__ENABLED", "false"),
    // Faults make workers warn by the thousand; the soak's own lines and
    // its accounting are what to read.
    ("COURIER__LOG__LEVEL", "error"),
];

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.webhooks == 0 || args.deliveries < args.webhooks || args.rate <= 0.0 {
        eprintln!(
            "error: --deliveries must be at least --webhooks, and --webhooks and --rate above 0"
        );
        return std::process::ExitCode::from(2);
    }
    if args.workers == 0 || args.nodes == 0 {
        eprintln!("error: --workers and --nodes must be at least 1");
        return std::process::ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(soak(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn soak(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let events = args.deliveries / args.webhooks;
    let expected = events * args.webhooks;
    println!(
        "soak: {expected} deliveries ({events} events x {} webhooks) at {} events/s, {} workers, \
         {} RabbitMQ nodes, seed {seed}",
        args.webhooks, args.rate, args.workers, args.nodes
    );

    let nodes = args.nodes;
    let (cluster, pg) = tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            let pg = scope.spawn(PrivatePostgres::start);
            let cluster = PrivateCluster::start(nodes);
            (cluster, pg.join().expect("PostgreSQL boots"))
        })
    })
    .await?;
    let cluster = Arc::new(cluster);
    let pg = Arc::new(pg);
    let env = Arc::new(TestEnv::on(cluster.amqp_urls(), pg.admin_url(), SETTINGS).await);
    let ws = env.workspace("soak").await;
    let receivers = Receivers::start(args.webhooks as usize).await?;
    for url in receivers.urls() {
        env.webhook(&ws, &url, &["order.created"], &[]).await;
    }
    let workers: Vec<_> = (0..args.workers)
        .map(|_| env.spawn_worker_process())
        .collect();
    println!(
        "soak: {} broker nodes, PostgreSQL and {} workers up",
        args.nodes, args.workers
    );

    let started = Instant::now();
    let publish_for = Duration::from_secs_f64(events as f64 / args.rate);
    let mut rng = StdRng::seed_from_u64(seed);
    let schedule = Fault::schedule(
        &mut rng,
        publish_for,
        Duration::from_secs(args.fault_gap_secs),
        args.workers,
        args.nodes,
        args.webhooks as usize,
    );
    let faults = Faults::new(
        Arc::clone(&env),
        Arc::clone(&cluster),
        Arc::clone(&pg),
        workers,
        receivers.clone(),
    );
    let injecting = tokio::spawn(faults.run(schedule, started));

    let publisher = Arc::new(
        ReconnectingPublisher::connect(&cluster.amqp_urls(), &env.prefix, Duration::from_secs(120))
            .await
            .context("connecting the soak's publisher")?,
    );
    let published = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let progress = tokio::spawn(report_progress(
        Arc::clone(&env),
        Arc::clone(&published),
        started,
    ));
    let in_flight = Arc::new(Semaphore::new(64));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let padding = "x".repeat(512);
    for seq in 0..events {
        tick.tick().await;
        let permit = Arc::clone(&in_flight).acquire_owned().await?;
        let event = Event::new(
            ws.clone(),
            EventType::OrderCreated,
            None,
            json!({ "seq": seq, "padding": padding }),
        )?;
        let (publisher, published, failed) = (
            Arc::clone(&publisher),
            Arc::clone(&published),
            Arc::clone(&failed),
        );
        tokio::spawn(async move {
            match publisher.publish(&event).await {
                Ok(()) => published.fetch_add(1, Ordering::Relaxed),
                Err(error) => {
                    eprintln!("soak: event {seq} was not confirmed: {error}");
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            drop(permit);
        });
    }
    // Every publish has ended once every permit is back.
    let _all = in_flight.acquire_many(64).await?;
    let publishing = started.elapsed();
    println!(
        "soak: publishing done after {:.0} s; waiting for the faults to end",
        publishing.as_secs_f64()
    );
    let (workers, fault_log) = injecting.await?;

    let expected = published.load(Ordering::Relaxed) * args.webhooks;
    let settled = settle(&env, expected, Duration::from_secs(args.settle_secs)).await?;
    let elapsed = started.elapsed();
    progress.abort();

    let confirmed = published.load(Ordering::Relaxed);
    let unconfirmed = failed.load(Ordering::Relaxed);
    let counts = settled.counts;
    let count = |status: DeliveryStatus| {
        counts
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    };
    let (succeeded, dead, paused, canceled) = (
        count(DeliveryStatus::Succeeded),
        count(DeliveryStatus::Dead),
        count(DeliveryStatus::Paused),
        count(DeliveryStatus::Canceled),
    );
    let unsettled = count(DeliveryStatus::Pending) + count(DeliveryStatus::Retrying);
    let in_ledger: u64 = counts.iter().map(|(_, n)| n).sum();
    let missing = expected.saturating_sub(in_ledger);
    let received = receivers.answered_ok();
    let succeeded_ids = succeeded_ids(&env).await?;
    let never_received = succeeded_ids.difference(&received.ids).count() as u64;
    let lost = missing + never_received;
    let duplicates = received.answers - received.ids.len() as u64;
    let duplicate_share = duplicates as f64 / received.answers.max(1) as f64;
    let rate = in_ledger.saturating_sub(unsettled) as f64 / elapsed.as_secs_f64();
    let passed = lost == 0 && unsettled == 0;

    drop(workers);
    println!();
    println!("| seed | {seed} |");
    println!("| events confirmed (not confirmed) | {confirmed} ({unconfirmed}) |");
    println!("| expected deliveries | {expected} |");
    println!("| succeeded | {succeeded} |");
    println!("| dead | {dead} |");
    println!("| paused (webhook disabled by a 410) | {paused} |");
    println!("| canceled | {canceled} |");
    println!("| not final after {} s | {unsettled} |", args.settle_secs);
    println!(
        "| lost | {lost} ({missing} missing from the ledger, {never_received} succeeded without a 2xx at the receiver) |"
    );
    println!(
        "| duplicates | {duplicates} ({:.3} % of {} 2xx answers) |",
        duplicate_share * 100.0,
        received.answers
    );
    println!(
        "| run | {:.0} s ({:.0} s publishing), {rate:.0} final deliveries/s |",
        elapsed.as_secs_f64(),
        publishing.as_secs_f64()
    );
    println!("| faults | {} |", fault_log.len());
    for entry in &fault_log {
        println!("|   | {entry} |");
    }
    println!();
    println!(
        "{}",
        if passed {
            "soak: PASSED"
        } else {
            "soak: FAILED"
        }
    );

    let report = json!({
        "seed": seed,
        "webhooks": args.webhooks,
        "workers": args.workers,
        "rabbitmq_nodes": args.nodes,
        "rate_events_per_s": args.rate,
        "events_confirmed": confirmed,
        "events_not_confirmed": unconfirmed,
        "expected": expected,
        "succeeded": succeeded,
        "dead": dead,
        "paused": paused,
        "canceled": canceled,
        "unsettled": unsettled,
        "lost": lost,
        "missing_from_ledger": missing,
        "succeeded_without_2xx": never_received,
        "duplicates": duplicates,
        "duplicate_share": duplicate_share,
        "answers_2xx": received.answers,
        "elapsed_s": elapsed.as_secs_f64(),
        "publishing_s": publishing.as_secs_f64(),
        "final_deliveries_per_s": rate,
        "faults": fault_log,
        "passed": passed,
    });
    if let Some(dir) = args.report.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.report, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", args.report.display()))?;
    println!("soak: report in {}", args.report.display());
    Ok(passed)
}

/// The ledger's counts once every expected delivery is in it and final,
/// or once nothing is pending or retrying and the ledger has not grown for
/// a minute (something is missing: the accounting says what), or when the
/// wait ends.
struct Settled {
    counts: Vec<(DeliveryStatus, u64)>,
}

async fn settle(env: &TestEnv, expected: u64, patience: Duration) -> anyhow::Result<Settled> {
    const STILL_FOR: Duration = Duration::from_secs(60);
    let deadline = Instant::now() + patience;
    let mut last_total = 0;
    let mut still_since = Instant::now();
    loop {
        // PostgreSQL may just have restarted: a failed count is tried again.
        if let Ok(counts) = env.store.delivery_counts().await {
            let total: u64 = counts.iter().map(|(_, n)| n).sum();
            let open = counts
                .iter()
                .filter(|(s, _)| matches!(s, DeliveryStatus::Pending | DeliveryStatus::Retrying))
                .map(|(_, n)| n)
                .sum::<u64>();
            if total != last_total || open > 0 {
                last_total = total;
                still_since = Instant::now();
            }
            let final_ = open == 0 && (total >= expected || still_since.elapsed() > STILL_FOR);
            if final_ || Instant::now() > deadline {
                return Ok(Settled { counts });
            }
        } else if Instant::now() > deadline {
            bail!("the ledger did not answer");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The ids of the deliveries the ledger records as succeeded.
async fn succeeded_ids(env: &TestEnv) -> anyhow::Result<HashSet<String>> {
    use sqlx::Row;
    let pool = sqlx::PgPool::connect(&env.settings.database.url).await?;
    let rows = sqlx::query("SELECT id::text AS id FROM deliveries WHERE status = 'succeeded'")
        .fetch_all(&pool)
        .await?;
    pool.close().await;
    Ok(rows.iter().map(|row| row.get::<String, _>("id")).collect())
}

/// A line every 15 s: events confirmed, and the ledger's counts.
async fn report_progress(env: Arc<TestEnv>, published: Arc<AtomicU64>, started: Instant) {
    let mut every = tokio::time::interval(Duration::from_secs(15));
    every.tick().await;
    loop {
        every.tick().await;
        let counts = match env.store.delivery_counts().await {
            Ok(counts) => counts
                .iter()
                .map(|(s, n)| format!("{} {n}", s.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
            Err(_) => "ledger not answering".to_owned(),
        };
        println!(
            "soak: {:>5.0} s: {} events confirmed; {counts}",
            started.elapsed().as_secs_f64(),
            published.load(Ordering::Relaxed)
        );
    }
}
