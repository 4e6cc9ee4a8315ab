//! The soak's faults: a schedule drawn from the seed, and what each fault
//! does to the running system.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_tests::{PrivateCluster, PrivatePostgres, TestEnv, WorkerProcess};
use rand::RngExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::receivers::{Mode, Receivers};

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// SIGKILL a worker, start another in its place after a moment.
    KillWorker { worker: usize },
    /// Stop a broker node's application, start it again after `down`.
    StopNode { node: usize, down: Duration },
    /// Fast shutdown of PostgreSQL, start after `down`.
    RestartPostgres { down: Duration },
    /// An endpoint answers as `mode` for `lasting`, then 200 again.
    Endpoint {
        endpoint: usize,
        mode: Mode,
        lasting: Duration,
    },
    /// An endpoint answers 410 Gone from now on.
    Gone { endpoint: usize },
}

#[derive(Clone, Copy)]
enum Kind {
    Worker,
    Node,
    Postgres,
    Failing,
    Slow,
    TooMany,
    Gone,
}

/// The kinds that may come more than once (`Gone` comes once).
const REPEATABLE: [Kind; 6] = [
    Kind::Worker,
    Kind::Node,
    Kind::Postgres,
    Kind::Failing,
    Kind::Slow,
    Kind::TooMany,
];

impl Fault {
    /// Faults at times within the first `span` of the run, at least `gap`
    /// apart (plus each fault's own length). Every kind comes once, in an
    /// order drawn from `rng`, before kinds repeat at random; `Gone` comes
    /// once, to the last endpoint, which no other fault touches.
    pub fn schedule(
        rng: &mut StdRng,
        span: Duration,
        gap: Duration,
        workers: usize,
        nodes: usize,
        endpoints: usize,
    ) -> Vec<(Duration, Fault)> {
        let mut first = REPEATABLE.to_vec();
        if endpoints >= 2 {
            first.push(Kind::Gone);
        }
        first.shuffle(rng);
        // The endpoints other faults may touch.
        let touchable = if endpoints >= 2 { endpoints - 1 } else { 1 };
        let mut at = gap;
        let mut schedule = Vec::new();
        let mut kinds = first.into_iter();
        while at < span {
            let kind = kinds
                .next()
                .unwrap_or_else(|| REPEATABLE[rng.random_range(0..REPEATABLE.len())]);
            let secs = |rng: &mut StdRng, low: u64, high: u64| {
                Duration::from_secs(rng.random_range(low..=high))
            };
            let fault = match kind {
                Kind::Worker => Fault::KillWorker {
                    worker: rng.random_range(0..workers),
                },
                Kind::Node => Fault::StopNode {
                    node: rng.random_range(0..nodes),
                    down: secs(rng, 5, 20),
                },
                Kind::Postgres => Fault::RestartPostgres {
                    down: secs(rng, 2, 8),
                },
                Kind::Failing | Kind::Slow | Kind::TooMany => Fault::Endpoint {
                    endpoint: rng.random_range(0..touchable),
                    mode: match kind {
                        Kind::Failing => Mode::Failing,
                        Kind::Slow => Mode::Slow,
                        _ => Mode::TooMany,
                    },
                    // Up to 60 s of 500s outlasts the retries (about 40 s):
                    // some deliveries end dead.
                    lasting: secs(rng, 10, 60),
                },
                Kind::Gone => Fault::Gone {
                    endpoint: endpoints - 1,
                },
            };
            schedule.push((at, fault));
            at += fault.length() + gap + secs(rng, 0, gap.as_secs());
        }
        schedule
    }

    fn length(&self) -> Duration {
        match *self {
            Fault::KillWorker { .. } => WORKER_RESTART_AFTER,
            Fault::StopNode { down, .. } | Fault::RestartPostgres { down } => down,
            Fault::Endpoint { lasting, .. } => lasting,
            Fault::Gone { .. } => Duration::ZERO,
        }
    }
}

/// How long a killed worker stays away.
const WORKER_RESTART_AFTER: Duration = Duration::from_secs(2);

/// What the faults act on.
pub struct Faults {
    env: Arc<TestEnv>,
    cluster: Arc<PrivateCluster>,
    pg: Arc<PrivatePostgres>,
    workers: Vec<WorkerProcess>,
    receivers: Receivers,
}

impl Faults {
    pub fn new(
        env: Arc<TestEnv>,
        cluster: Arc<PrivateCluster>,
        pg: Arc<PrivatePostgres>,
        workers: Vec<WorkerProcess>,
        receivers: Receivers,
    ) -> Self {
        Self {
            env,
            cluster,
            pg,
            workers,
            receivers,
        }
    }

    /// Injects each fault at its time after `started`, one after the
    /// other; returns the workers (to stop at the end) and a line per
    /// fault.
    pub async fn run(
        mut self,
        schedule: Vec<(Duration, Fault)>,
        started: Instant,
    ) -> (Vec<WorkerProcess>, Vec<String>) {
        let mut log = Vec::new();
        for (at, fault) in schedule {
            tokio::time::sleep_until((started + at).into()).await;
            let began = started.elapsed().as_secs_f64();
            let what = self.inject(fault).await;
            let line = format!(
                "{began:>6.1} s to {:>6.1} s: {what}",
                started.elapsed().as_secs_f64()
            );
            println!("soak fault: {line}");
            log.push(line);
        }
        (self.workers, log)
    }

    async fn inject(&mut self, fault: Fault) -> String {
        match fault {
            Fault::KillWorker { worker } => {
                let pid = self.workers[worker].id();
                self.workers[worker].kill();
                tokio::time::sleep(WORKER_RESTART_AFTER).await;
                self.workers[worker] = self.env.spawn_worker_process();
                format!("worker {worker} (pid {pid}) SIGKILLed and started again")
            }
            Fault::StopNode { node, down } => {
                let cluster = Arc::clone(&self.cluster);
                let name = cluster.node(node).node().to_owned();
                tokio::task::spawn_blocking(move || cluster.node(node).stop())
                    .await
                    .expect("stopping a node");
                tokio::time::sleep(down).await;
                let cluster = Arc::clone(&self.cluster);
                tokio::task::spawn_blocking(move || cluster.node(node).start_again())
                    .await
                    .expect("starting a node");
                format!(
                    "RabbitMQ node {name} stopped, started after {} s",
                    down.as_secs()
                )
            }
            Fault::RestartPostgres { down } => {
                let pg = Arc::clone(&self.pg);
                tokio::task::spawn_blocking(move || pg.down())
                    .await
                    .expect("stopping PostgreSQL");
                tokio::time::sleep(down).await;
                let pg = Arc::clone(&self.pg);
                tokio::task::spawn_blocking(move || pg.up())
                    .await
                    .expect("starting PostgreSQL");
                format!(
                    "PostgreSQL stopped (fast), started after {} s",
                    down.as_secs()
                )
            }
            Fault::Endpoint {
                endpoint,
                mode,
                lasting,
            } => {
                self.receivers.set(endpoint, mode);
                tokio::time::sleep(lasting).await;
                self.receivers.set(endpoint, Mode::Ok);
                format!(
                    "endpoint {endpoint} answered {mode:?} for {} s",
                    lasting.as_secs()
                )
            }
            Fault::Gone { endpoint } => {
                self.receivers.set(endpoint, Mode::Gone);
                format!("endpoint {endpoint} answers 410 Gone from now on")
            }
        }
    }
}
