//! `courier-bench` (`make bench`): measures courier, run as the release
//! binary against the local RabbitMQ and SQLite or PostgreSQL, against the
//! bare limit of its own parts (lapin + a quorum queue + reqwest) in the
//! same run, and prints a table plus `target/bench/report.json`.
//!
//! Scenarios live in `scenarios.rs`, the bare bound in `bare.rs`, the
//! isolated environments (prefix, database, child processes) in `env.rs`,
//! the receivers in `receiver.rs`. This crate must not be a dependency of
//! anything: it only drives courier from outside, as an operator would.

mod bare;
mod env;
mod http1;
mod ingest;
mod receiver;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde_json::json;

use crate::env::{Db, Services};
use crate::report::{Outcome, Status};
use crate::scenarios::Sizes;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 1 KiB events, one matching subscription each, as fast as possible.
    #[value(name = "throughput-1")]
    Throughput1,
    /// Each event matches 10 subscriptions (10 receivers).
    #[value(name = "fanout-10")]
    Fanout10,
    /// A fixed rate for a fixed time: publish-to-receipt percentiles.
    Latency,
    /// 100,000 subscriptions across 1,000 workspaces, each event matching one.
    ManySubscriptions,
    /// 10 endpoints, one answering after 5 s and one answering 500.
    BadNeighbour,
    /// throughput-1 with two worker processes.
    ScaleOut,
    /// lapin + quorum queue + reqwest alone (runs once, not per database).
    BareBound,
    /// throughput-1's events POSTed to HTTP ingest, one per request, from
    /// 64 keep-alive clients.
    #[value(name = "ingest-1")]
    Ingest1,
    /// fanout-10's events through HTTP ingest.
    #[value(name = "ingest-10")]
    Ingest10,
    /// throughput-1's events through the batch ingest route (--batch each).
    IngestBatch,
    /// latency's rate through HTTP ingest: request-to-202 and
    /// send-to-receipt percentiles.
    IngestLatency,
    /// throughput-1 on a ledger prefilled with --prune-rows old deliveries,
    /// pruning off (PostgreSQL; only when named).
    #[value(name = "prefilled-1")]
    Prefilled1,
    /// prefilled-1 with pruning on, compared with prefilled-1 (PostgreSQL;
    /// only when named).
    #[value(name = "prune-1")]
    Prune1,
}

impl Scenario {
    /// Run order: each scenario that is reported relative to another runs
    /// right after it (the load of a shared machine drifts over minutes).
    const ALL: [Scenario; 13] = [
        Scenario::BareBound,
        Scenario::Throughput1,
        Scenario::Ingest1,
        Scenario::IngestBatch,
        Scenario::ScaleOut,
        Scenario::ManySubscriptions,
        Scenario::Fanout10,
        Scenario::Ingest10,
        Scenario::BadNeighbour,
        Scenario::Latency,
        Scenario::IngestLatency,
        Scenario::Prefilled1,
        Scenario::Prune1,
    ];

    /// Long, and PostgreSQL's: run only when named.
    fn only_when_named(self) -> bool {
        matches!(self, Scenario::Prefilled1 | Scenario::Prune1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DbChoice {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Parser, Debug)]
#[command(
    name = "courier-bench",
    about = "Benchmarks courier against the bare limit of its parts (RabbitMQ + HTTP) on this machine"
)]
struct Cli {
    /// Scenarios to run (repeat or comma-separate); all when absent. The
    /// bare bound runs too unless --no-bare.
    #[arg(long = "scenario", value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Skip the bare bound (no percentages then).
    #[arg(long)]
    no_bare: bool,
    #[arg(long, value_enum, default_value = "both")]
    db: DbChoice,
    /// Events of throughput-1, scale-out, many-subscriptions and the bare
    /// bound (enough for several seconds of steady flow, so that start-up
    /// and the last stragglers do not dominate the rate).
    #[arg(long, default_value_t = 60_000)]
    events: u64,
    /// Events of fanout-10 and bad-neighbour (10 deliveries each).
    #[arg(long, default_value_t = 10_000)]
    fanout_events: u64,
    /// latency: events per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// latency: how long to publish at --rate.
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    /// many-subscriptions: subscriptions in all.
    #[arg(long, default_value_t = 100_000)]
    subscriptions: u64,
    /// many-subscriptions: across this many workspaces.
    #[arg(long, default_value_t = 1000)]
    workspaces: u64,
    /// Size of each published event in bytes (JSON envelope included).
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// prefilled-1 and prune-1: old deliveries (past retention) in the
    /// ledger at the start.
    #[arg(long, default_value_t = 5_000_000)]
    prune_rows: u64,
    /// prefilled-1 and prune-1: publish at this many events/s for
    /// --duration-secs instead of --events as fast as possible (a long run
    /// that shows whether the ledger's size holds).
    #[arg(long)]
    prune_rate: Option<f64>,
    /// ingest-batch: events per request (the route takes up to 1,000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    batch: u64,
    /// A scenario that has not drained this long after its last publish
    /// reports "timed out" with what arrived.
    #[arg(long, default_value_t = 120)]
    drain_timeout_secs: u64,
    /// How long courier may take to start consuming (it loads every
    /// subscription first).
    #[arg(long, default_value_t = 180)]
    ready_timeout_secs: u64,
    #[arg(
        long,
        env = "COURIER_BENCH_AMQP_URL",
        default_value = courier_producer::DEFAULT_AMQP_URL
    )]
    amqp_url: String,
    /// Admin connection used to create and drop the bench databases.
    #[arg(
        long,
        env = "COURIER_BENCH_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pg_admin_url: String,
    /// The courier binary to measure; target/release/courier by default.
    #[arg(long)]
    courier: Option<PathBuf>,
    /// Where the JSON report goes; target/bench/report.json by default. A
    /// copy named by the run's start stays in target/bench/runs/ either way.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Runs the selected scenarios this many times, the bare bound first in
    /// each round, and reports the median of each figure with its spread.
    /// Each percentage is taken within its round, against the bare bound
    /// measured next to it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    repeat: u32,
    /// Extra courier configuration for every scenario, e.g.
    /// --set COURIER__AMQP__PREFETCH=512 (repeatable).
    #[arg(long = "set", value_parser = parse_setting)]
    set: Vec<(String, String)>,
}

fn parse_setting(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((k, v)) if k.starts_with("COURIER__") => Ok((k.to_owned(), v.to_owned())),
        _ => Err("expected COURIER__SECTION__KEY=VALUE".into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(cli) => result,
            _ = tokio::signal::ctrl_c() => {
                // Dropping the run kills courier and cleans up its prefix and
                // database (BenchEnv and CourierProcess do it on drop).
                bail!("interrupted")
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `target/<profile>`: where this binary lives, next to courier's.
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot tell where courier-bench runs from")?;
    Ok(exe
        .parent()
        .context("courier-bench has no parent directory")?
        .to_path_buf())
}

/// Runs the selected scenarios; false when one failed.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let profile = profile_dir()?;
    let courier = cli
        .courier
        .clone()
        .unwrap_or_else(|| profile.join(format!("courier{}", std::env::consts::EXE_SUFFIX)));
    if !courier.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p courier` (make bench does)",
            courier.display()
        );
    }
    let bench_dir = profile
        .parent()
        .map(|target| target.join("bench"))
        .unwrap_or_else(|| PathBuf::from("target/bench"));
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| bench_dir.join("report.json"));
    // courier's logs of this run only, one file per process.
    let log_dir = bench_dir.join("logs");
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir).ok();
    }
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("could not create {}", log_dir.display()))?;

    let services = Services {
        amqp_url: cli.amqp_url.clone(),
        pg_admin_url: cli.pg_admin_url.clone(),
        courier: courier.clone(),
        log_dir,
        overrides: cli.set.clone(),
    };
    let sizes = Sizes {
        events: cli.events.max(1),
        fanout_events: cli.fanout_events.max(1),
        rate: cli.rate.max(1.0),
        duration: Duration::from_secs(cli.duration_secs.max(1)),
        subscriptions: cli.subscriptions.max(1),
        workspaces: cli.workspaces.max(1),
        payload_bytes: cli.payload_bytes,
        batch: cli.batch,
        drain_timeout: Duration::from_secs(cli.drain_timeout_secs.max(1)),
        ready_timeout: Duration::from_secs(cli.ready_timeout_secs.max(1)),
        prune_rows: cli.prune_rows.max(1),
        prune_rate: cli.prune_rate.map(|r| r.max(1.0)),
    };
    let selected: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| match s {
            Scenario::BareBound => !cli.no_bare,
            s if s.only_when_named() => cli.scenarios.contains(s),
            s => cli.scenarios.is_empty() || cli.scenarios.contains(s),
        })
        .collect();
    let dbs: &[Db] = match cli.db {
        DbChoice::Sqlite => &[Db::Sqlite],
        DbChoice::Postgres => &[Db::Postgres],
        DbChoice::Both => &[Db::Sqlite, Db::Postgres],
    };

    let run = Run {
        load_start: env::load_average(),
        started_at: chrono::Utc::now(),
        courier: &courier,
        cli: &cli,
        sizes: &sizes,
    };
    // Every run also keeps its own copy, named by its start, which a later
    // run cannot overwrite.
    let kept = bench_dir.join("runs").join(format!(
        "report-{}.json",
        run.started_at.format("%Y%m%dT%H%M%SZ")
    ));
    let mut rounds = Vec::new();
    for round in 1..=cli.repeat {
        if cli.repeat > 1 {
            eprintln!("== round {round} of {}", cli.repeat);
        }
        let mut outcomes = run_round(&services, &sizes, &selected, dbs).await;
        compare(&mut outcomes);
        report::finish(&mut outcomes);
        rounds.push(outcomes);
        if round < cli.repeat {
            // The rounds so far, in case the run is cut short.
            run.write(&rounds, &kept)?;
        }
    }
    let outcomes = run.write(&rounds, &kept)?;
    let table = report::table(&outcomes);
    println!();
    print!("{table}");
    std::fs::copy(&kept, &out).with_context(|| format!("could not write {}", out.display()))?;
    println!("\nreport: {} (also {})", out.display(), kept.display());
    Ok(outcomes.iter().all(|o| o.status != Status::Failed))
}

/// What a report says about the run besides its outcomes.
struct Run<'a> {
    load_start: f64,
    started_at: chrono::DateTime<chrono::Utc>,
    courier: &'a std::path::Path,
    cli: &'a Cli,
    sizes: &'a Sizes,
}

impl Run<'_> {
    /// Writes the report of the rounds so far to `path` and returns its
    /// results: the one round's outcomes, or the summary of several.
    fn write(
        &self,
        rounds: &[Vec<Outcome>],
        path: &std::path::Path,
    ) -> anyhow::Result<Vec<Outcome>> {
        let outcomes = if rounds.len() == 1 {
            rounds[0].clone()
        } else {
            let mut summary = report::summarize(rounds);
            report::finish(&mut summary);
            summary
        };
        let (cli, sizes) = (self.cli, self.sizes);
        let report = json!({
            "started_at": self.started_at,
            "finished_at": chrono::Utc::now(),
            "complete": rounds.len() as u32 == cli.repeat,
            "machine": {
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "load_start": self.load_start,
                "load_end": env::load_average(),
            },
            "courier": self.courier.display().to_string(),
            "overrides": cli.set.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "sizes": {
                "events": sizes.events,
                "fanout_events": sizes.fanout_events,
                "rate": sizes.rate,
                "duration_s": sizes.duration.as_secs(),
                "subscriptions": sizes.subscriptions,
                "workspaces": sizes.workspaces,
                "payload_bytes": sizes.payload_bytes,
                "batch": sizes.batch,
                "drain_timeout_s": sizes.drain_timeout.as_secs(),
            },
            "repeat": cli.repeat,
            "rounds_done": rounds.len(),
            "results": outcomes,
            "rounds": if rounds.len() > 1 { json!(rounds) } else { json!(null) },
        });
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("could not write {}", path.display()))?;
        Ok(outcomes)
    }
}

/// One round: scenario by scenario, both databases back to back, so the
/// two are measured under the most similar machine load.
async fn run_round(
    services: &Services,
    sizes: &Sizes,
    selected: &[Scenario],
    dbs: &[Db],
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for &scenario in selected {
        if scenario == Scenario::BareBound {
            outcomes.push(bare::run(services, sizes).await);
            continue;
        }
        for &db in dbs {
            if scenario.only_when_named() && db != Db::Postgres {
                continue;
            }
            let outcome = match scenario {
                Scenario::Throughput1 => scenarios::throughput_1(services, sizes, db).await,
                Scenario::Fanout10 => scenarios::fanout_10(services, sizes, db).await,
                Scenario::Latency => scenarios::latency(services, sizes, db).await,
                Scenario::ManySubscriptions => {
                    scenarios::many_subscriptions(services, sizes, db).await
                }
                Scenario::BadNeighbour => scenarios::bad_neighbour(services, sizes, db).await,
                Scenario::ScaleOut => scenarios::scale_out(services, sizes, db).await,
                Scenario::Ingest1 => scenarios::ingest_1(services, sizes, db).await,
                Scenario::Ingest10 => scenarios::ingest_10(services, sizes, db).await,
                Scenario::IngestBatch => scenarios::ingest_batch(services, sizes, db).await,
                Scenario::IngestLatency => scenarios::ingest_latency(services, sizes, db).await,
                Scenario::Prefilled1 => scenarios::prefilled_1(services, sizes, db).await,
                Scenario::Prune1 => scenarios::prune_1(services, sizes, db).await,
                Scenario::BareBound => unreachable!("handled above"),
            };
            if let Some(error) = &outcome.error {
                eprintln!("   {} on {}: {error}", outcome.scenario, outcome.db);
            }
            outcomes.push(outcome);
        }
    }
    outcomes
}

/// Percentages of the bare bound, and the comparisons the scenarios ask
/// for: many-subscriptions and scale-out against throughput-1, bad-neighbour
/// per healthy endpoint against fanout-10's (all healthy), and the CPU of
/// each ingest scenario against its broker-path twin's.
fn compare(outcomes: &mut [Outcome]) {
    let find = |outcomes: &[Outcome], scenario: &str, db: &str| {
        outcomes
            .iter()
            .find(|o| o.scenario == scenario && o.db == db)
            .map(|o| (o.events_per_s, o.deliveries_per_s))
    };
    let bare = find(outcomes, "bare-bound", "none");
    let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b * 100.0),
        _ => None,
    };
    for i in 0..outcomes.len() {
        let (scenario, db) = (outcomes[i].scenario.clone(), outcomes[i].db.clone());
        if let Some((bare_events, bare_deliveries)) = bare
            && scenario != "bare-bound"
        {
            let o = &mut outcomes[i];
            o.events_pct_of_bare = pct(o.events_per_s, bare_events);
            o.deliveries_pct_of_bare = pct(o.deliveries_per_s, bare_deliveries);
        }
        let baseline = baseline_of(&scenario);
        let base = baseline.and_then(|(name, _, _)| {
            let i = outcomes
                .iter()
                .position(|o| o.scenario == name && o.db == db)?;
            Some((name, outcomes[i].deliveries_per_s, cost(&outcomes[i])))
        });
        let o = &mut outcomes[i];
        match (baseline, base) {
            (Some((_, ours_per, base_per)), Some((name, rate, base_cost))) => {
                let key = name.replace('-', "_");
                let per_endpoint = pct(
                    o.deliveries_per_s.map(|d| d / ours_per),
                    rate.map(|d| d / base_per),
                );
                // Both latency scenarios run at --rate: their rates say
                // nothing of one another.
                if let Some(p) = per_endpoint.filter(|_| name != "latency") {
                    o.extra(&format!("pct_of_{key}"), p);
                }
                if scenario.starts_with("ingest")
                    && let (Some(ours), Some(theirs)) = (cost(o), base_cost)
                    && theirs > 0.0
                {
                    o.extra(&format!("cpu_x_of_{key}"), ours / theirs);
                }
            }
            (Some((name, _, _)), None) => o.remark(format!("run {name} too for a comparison")),
            (None, _) => {}
        }
    }
}

/// The scenario a scenario is compared with, and the deliveries per healthy
/// endpoint of each (ours, theirs).
fn baseline_of(scenario: &str) -> Option<(&'static str, f64, f64)> {
    match scenario {
        "many-subscriptions" | "scale-out" | "ingest-1" | "ingest-batch" => {
            Some(("throughput-1", 1.0, 1.0))
        }
        "ingest-10" => Some(("fanout-10", 1.0, 1.0)),
        // The same events at the same steady rate, one path against the
        // other: what ingest adds, without the difference between a backlog
        // drained at full speed (throughput-1) and events arriving live.
        "ingest-latency" => Some(("latency", 1.0, 1.0)),
        "prune-1" => Some(("prefilled-1", 1.0, 1.0)),
        // Two of its ten endpoints are the bad neighbours.
        "bad-neighbour" => Some(("fanout-10", 8.0, 10.0)),
        _ => None,
    }
}

/// courier's and the database's CPU seconds per 1,000 deliveries: what an
/// ingested delivery costs against a published one.
fn cost(o: &report::Outcome) -> Option<f64> {
    let database = o
        .extra
        .get("database_cpu_s_per_1000")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    o.cpu_s_per_1000.map(|courier| courier + database)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(scenario: &str, deliveries_per_s: f64, courier: f64, database: f64) -> Outcome {
        let mut o = Outcome::new(scenario, "postgres");
        o.deliveries_per_s = Some(deliveries_per_s);
        o.cpu_s_per_1000 = Some(courier);
        o.extra("database_cpu_s_per_1000", database);
        o
    }

    #[test]
    fn each_ingest_scenario_is_costed_against_its_broker_path_twin() {
        let mut outcomes = vec![
            measured("throughput-1", 10_000.0, 0.06, 0.04),
            measured("ingest-1", 9_000.0, 0.09, 0.04),
            measured("latency", 1_000.0, 0.3, 0.4),
            measured("ingest-latency", 1_000.0, 0.44, 0.4),
        ];
        compare(&mut outcomes);
        let [_, ingest_1, _, ingest_latency] = &outcomes[..] else {
            unreachable!()
        };
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(ingest_1.figure("cpu_x_of_throughput_1"), 1.3));
        assert!(close(ingest_1.figure("pct_of_throughput_1"), 90.0));
        assert!(close(ingest_latency.figure("cpu_x_of_latency"), 1.2));
        // Both run at --rate: a percentage of one another would be noise.
        assert_eq!(ingest_latency.figure("pct_of_latency"), None);
        assert_eq!(ingest_latency.figure("cpu_x_of_throughput_1"), None);
    }

    #[test]
    fn an_ingest_scenario_without_its_twin_says_what_to_run() {
        let mut outcomes = vec![measured("ingest-latency", 1_000.0, 0.44, 0.4)];
        compare(&mut outcomes);
        assert_eq!(outcomes[0].figure("cpu_x_of_latency"), None);
        assert_eq!(
            outcomes[0].remarks,
            vec!["run latency too for a comparison".to_owned()]
        );
    }
}
