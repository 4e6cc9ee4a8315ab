//! One isolated courier installation per scenario: a RabbitMQ prefix
//! `bench-<hex>` and a fresh SQLite file or PostgreSQL database, configured
//! only through `COURIER__` variables, with `courier serve` run as child
//! processes of the release binary so their memory and CPU can be read from
//! /proc. Everything is removed when the [`BenchEnv`] is cleaned up or
//! dropped (also on error or interruption).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use courier::Settings;
use courier_producer::{Publisher, Topology};
use courier_store::scratch::ScratchDb;
use courier_store::{Backend, Store, StoreOptions};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rand::RngExt;
use sqlx::Connection as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Db {
    Sqlite,
    Postgres,
}

impl Db {
    pub fn name(self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres => "postgres",
        }
    }
}

/// Where the services are and how courier is run.
#[derive(Clone, Debug)]
pub struct Services {
    pub amqp_url: String,
    /// Admin connection to PostgreSQL, used to create and drop databases.
    pub pg_admin_url: String,
    /// The release `courier` binary.
    pub courier: PathBuf,
    /// Where courier's logs go, one file per process.
    pub log_dir: PathBuf,
    /// Extra `COURIER__...` variables from `--set`, applied last.
    pub overrides: Vec<(String, String)>,
}

/// The size on disk of the PostgreSQL database at `url`, in MB.
pub async fn database_mb(url: &str) -> anyhow::Result<f64> {
    let mut connection = sqlx::PgConnection::connect(url).await?;
    let (bytes,): (i64,) = sqlx::query_as("SELECT pg_database_size(current_database())")
        .fetch_one(&mut connection)
        .await
        .context("could not read the ledger's size")?;
    connection.close().await.ok();
    Ok(bytes as f64 / 1e6)
}

/// How old the prefilled deliveries are: past the default retention of
/// succeeded deliveries (30 days).
const PREFILL_AGE_DAYS: i32 = 40;

pub fn token() -> String {
    format!("{:012x}", rand::rng().random::<u64>() & 0xffff_ffff_ffff)
}

pub struct BenchEnv {
    pub db: Db,
    pub prefix: String,
    pub settings: Settings,
    services: Services,
    vars: Vec<(String, String)>,
    /// The database or SQLite file, removed at the end (`None` once it is).
    scratch: Option<ScratchDb>,
    cleaned: bool,
}

impl BenchEnv {
    /// Creates the database, applies the migrations with `courier migrate`,
    /// and returns the environment; nothing runs yet.
    pub async fn create(db: Db, services: &Services) -> anyhow::Result<Self> {
        let token = token();
        let prefix = format!("bench-{token}");
        let backend = match db {
            Db::Sqlite => Backend::Sqlite,
            Db::Postgres => Backend::Postgres,
        };
        let scratch = ScratchDb::create(
            backend,
            &format!("courier_bench_{token}"),
            &services.pg_admin_url,
        )
        .await
        .with_context(|| {
            format!(
                "could not create the bench database on PostgreSQL at {} (is it running? --pg-admin-url)",
                services.pg_admin_url
            )
        })?;
        let database_url = scratch.url().to_owned();
        let mut vars: Vec<(String, String)> = [
            ("COURIER__DATABASE__URL", database_url.as_str()),
            ("COURIER__AMQP__URL", services.amqp_url.as_str()),
            ("COURIER__AMQP__PREFIX", prefix.as_str()),
            ("COURIER__DELIVERY__REQUIRE_HTTPS", "false"),
            ("COURIER__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true"),
            ("COURIER__HTTP__LISTEN", "127.0.0.1:0"),
            // courier's default level: what a deployment pays for logging.
            ("COURIER__LOG__LEVEL", "info"),
            // Files, not a terminal: no colour codes.
            ("COURIER__LOG__FORMAT", "json"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        vars.extend(services.overrides.iter().cloned());
        let mut env = Self {
            db,
            prefix,
            settings: Settings::load_from(None, vars.clone())
                .context("the bench's courier settings are invalid (check --set)")?,
            services: services.clone(),
            vars,
            scratch: Some(scratch),
            cleaned: false,
        };
        if let Err(error) = env.migrate().await {
            env.cleanup().await;
            return Err(error);
        }
        Ok(env)
    }

    /// Sets a courier variable for the processes started after this; the
    /// bench's `--set` still wins.
    pub fn set(&mut self, key: &str, value: &str) {
        self.vars.push((key.to_owned(), value.to_owned()));
        self.vars.extend(self.services.overrides.iter().cloned());
    }

    /// Fills the ledger with `rows` events that arrived [`PREFILL_AGE_DAYS`]
    /// days ago, each delivered once to the bench's webhook (succeeded at
    /// its first attempt): the ledger months of use leave, all of it past
    /// the default retention. Each event's data is padded with `pad_bytes`
    /// bytes, as the live events are, and its id is as long as a generated
    /// one (`evt_` and 32 hex digits, ascending, before any live id), so
    /// that a pruned row and its index entries free what a new one takes.
    /// PostgreSQL only, in transactions of a million events.
    pub async fn prefill_old(&self, rows: u64, pad_bytes: usize) -> anyhow::Result<()> {
        if self.db != Db::Postgres {
            bail!("only a PostgreSQL ledger is prefilled");
        }
        let url = &self.settings.database.url;
        let mut connection = sqlx::PgConnection::connect(url)
            .await
            .with_context(|| format!("could not open {url} to prefill it"))?;
        let context = || "could not prefill the bench ledger".to_owned();
        let (subscription, workspace): (sqlx::types::Uuid, String) =
            sqlx::query_as("SELECT id, workspace_id FROM subscriptions LIMIT 1")
                .fetch_one(&mut connection)
                .await
                .with_context(context)?;
        const CHUNK: u64 = 1_000_000;
        let mut first = 1;
        while first <= rows {
            let last = (first + CHUNK - 1).min(rows);
            let mut tx = sqlx::Connection::begin(&mut connection)
                .await
                .with_context(context)?;
            // One statement: the events, their deliveries, and an attempt
            // for each delivery it returns.
            sqlx::query(
                "WITH old AS (
                     SELECT g, 'evt_' || lpad(to_hex(g), 32, '0') AS id,
                            now() - make_interval(days => $4) + g * interval '1 millisecond' AS t
                     FROM generate_series($1::bigint, $2::bigint) AS g
                 ), events_added AS (
                     INSERT INTO events (id, workspace_id, type, channel, occurred_at, data, received_at)
                     SELECT id, $3, 'order.created', NULL, t,
                            json_build_object('seq', g, 't_us', 0, 'pad', repeat('x', $6)), t
                     FROM old
                 ), deliveries_added AS (
                     INSERT INTO deliveries (id, event_id, subscription_id, workspace_id, event_type,
                                             status, attempts, last_response_status, last_attempt_at,
                                             created_at, updated_at)
                     SELECT gen_random_uuid(), id, $5, $3, 'order.created', 'succeeded', 1, 200,
                            t, t, t
                     FROM old
                     RETURNING id, created_at
                 )
                 INSERT INTO attempts (delivery_id, attempt, url, started_at, duration_ms,
                                       response_status, response_excerpt)
                 SELECT id, 1, 'http://127.0.0.1/hook', created_at, 3, 200, 'ok'
                 FROM deliveries_added",
            )
            .bind(first as i64)
            .bind(last as i64)
            .bind(&workspace)
            .bind(PREFILL_AGE_DAYS)
            .bind(subscription)
            .bind(i32::try_from(pad_bytes).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await
            .with_context(context)?;
            tx.commit().await.with_context(context)?;
            eprintln!("   prefilled {last} of {rows} old deliveries");
            first = last + 1;
        }
        connection.close().await.ok();
        Ok(())
    }

    /// How many of the prefilled deliveries are still in the ledger.
    pub async fn old_deliveries_left(&self) -> anyhow::Result<u64> {
        let url = &self.settings.database.url;
        let mut connection = sqlx::PgConnection::connect(url).await?;
        let (left,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM deliveries WHERE created_at < now() - make_interval(days => $1 - 1)",
        )
        .bind(PREFILL_AGE_DAYS)
        .fetch_one(&mut connection)
        .await
        .context("could not count the old deliveries left")?;
        connection.close().await.ok();
        Ok(u64::try_from(left).unwrap_or(0))
    }

    /// The PostgreSQL database's size on disk, in MB.
    pub async fn ledger_mb(&self) -> anyhow::Result<f64> {
        database_mb(&self.settings.database.url).await
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        let log = self.log_path("migrate");
        let output = self
            .command(&log)?
            .arg("migrate")
            .output()
            .await
            .with_context(|| {
                format!("could not run {} migrate", self.services.courier.display())
            })?;
        if !output.status.success() {
            bail!(
                "courier migrate failed ({}); see {}",
                output.status,
                log.display()
            );
        }
        Ok(())
    }

    /// The ledger, opened in-process to create workspaces and webhooks
    /// before courier starts. Close it before starting courier.
    pub async fn store(&self) -> anyhow::Result<Store> {
        Store::connect(
            &self.settings.database.url,
            &StoreOptions {
                max_connections: 8,
                ..StoreOptions::default()
            },
        )
        .await
        .context("could not open the bench ledger")
    }

    /// Lets the database catch up with the set-up's writes before anything
    /// is measured: on PostgreSQL the vacuum, statistics and checkpoint that
    /// 100,000 new webhooks would otherwise set off in the middle of the
    /// run; on SQLite a checkpoint that empties the WAL.
    pub async fn settle_database(&self) -> anyhow::Result<()> {
        let url = &self.settings.database.url;
        let context = || format!("could not settle the bench database {url}");
        match self.db {
            Db::Postgres => {
                let mut connection = sqlx::PgConnection::connect(url)
                    .await
                    .with_context(context)?;
                // One at a time: VACUUM refuses to run in the implicit
                // transaction of a multi-statement query.
                for statement in ["VACUUM (ANALYZE)", "CHECKPOINT"] {
                    sqlx::raw_sql(statement)
                        .execute(&mut connection)
                        .await
                        .with_context(context)?;
                }
                connection.close().await.ok();
            }
            Db::Sqlite => {
                let mut connection = sqlx::SqliteConnection::connect(url)
                    .await
                    .with_context(context)?;
                sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&mut connection)
                    .await
                    .with_context(context)?;
                connection.close().await.ok();
            }
        }
        Ok(())
    }

    pub fn topology(&self) -> Topology {
        self.settings.worker_config().topology()
    }

    pub async fn amqp(&self) -> anyhow::Result<Connection> {
        Connection::connect(&self.services.amqp_url, ConnectionProperties::default())
            .await
            .with_context(|| {
                format!(
                    "could not reach RabbitMQ at {} (start it with `rabbitmq-server -detached`)",
                    courier_producer::redact_url(&self.services.amqp_url)
                )
            })
    }

    /// Declares courier's exchanges and queues as a worker does at start,
    /// so that events published before any worker runs wait in its queue.
    pub async fn declare_topology(&self) -> anyhow::Result<()> {
        let connection = self.amqp().await?;
        let channel = connection.create_channel().await?;
        self.topology()
            .declare_all(&channel)
            .await
            .context("could not declare courier's exchanges and queues")?;
        connection.close(200, "".into()).await.ok();
        Ok(())
    }

    /// A publisher on its own connection (keep the connection alive).
    pub async fn publisher(&self) -> anyhow::Result<(Publisher, Connection)> {
        let connection = self.amqp().await?;
        let publisher = Publisher::on_connection(&connection, self.topology())
            .await
            .context("could not prepare the publisher")?;
        Ok((publisher, connection))
    }

    fn log_path(&self, what: &str) -> PathBuf {
        self.services
            .log_dir
            .join(format!("{}-{}-{what}.log", self.prefix, self.db.name()))
    }

    fn command(&self, log: &Path) -> anyhow::Result<tokio::process::Command> {
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("could not create {}", log.display()))?;
        let mut command = tokio::process::Command::new(&self.services.courier);
        // Only our configuration: none of the caller's COURIER__ variables
        // or RUST_LOG leak into the measured process.
        for (key, _) in std::env::vars() {
            if key.starts_with("COURIER__") || key == "RUST_LOG" || key == "COURIER_CONFIG" {
                command.env_remove(key);
            }
        }
        command
            .envs(self.vars.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        Ok(command)
    }

    /// Starts `courier serve` as worker number `n`, its HTTP server (API,
    /// metrics) on `listen` (`http://host:port`) or on a port of its
    /// choosing.
    pub async fn spawn_courier(
        &self,
        n: usize,
        listen: Option<&str>,
    ) -> anyhow::Result<CourierProcess> {
        let log = self.log_path(&format!("serve{n}"));
        let mut command = self.command(&log)?;
        if let Some(base) = listen {
            let address = base.trim_start_matches("http://");
            command.env("COURIER__HTTP__LISTEN", address);
        }
        let child = command
            .arg("serve")
            .spawn()
            .with_context(|| format!("could not start {}", self.services.courier.display()))?;
        let pid = child.id().context("courier exited at once")?;
        Ok(CourierProcess { child, pid, log })
    }

    /// Waits until `workers` consumers are attached to the fan-out and the
    /// deliveries queues: courier is ready (`http.listen` is port 0, so
    /// /readyz's port is not known from outside).
    pub async fn wait_ready(
        &self,
        processes: &mut [CourierProcess],
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let connection = self.amqp().await?;
        let topology = self.topology();
        let result = loop {
            for process in processes.iter_mut() {
                process.check_running()?;
            }
            if self
                .consumers_attached(&connection, &topology, processes.len())
                .await
            {
                break Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                break Err(anyhow::anyhow!(
                    "courier did not start consuming within {timeout:?}; see {}",
                    processes
                        .first()
                        .map(|p| p.log.display().to_string())
                        .unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        connection.close(200, "".into()).await.ok();
        result
    }

    async fn consumers_attached(
        &self,
        connection: &Connection,
        topology: &Topology,
        wanted: usize,
    ) -> bool {
        // A passive declare of a queue not declared yet closes its channel:
        // one channel per look.
        let Ok(channel) = connection.create_channel().await else {
            return false;
        };
        let mut attached = true;
        for queue in [topology.fanout_queue(), topology.deliveries_queue()] {
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            if !matches!(declared, Ok(q) if q.consumer_count() as usize >= wanted) {
                attached = false;
                break;
            }
        }
        if channel.status().connected() {
            channel.close(200, "".into()).await.ok();
        }
        attached
    }

    /// Deletes the prefix's queues and exchanges, drops the database or
    /// removes the SQLite files. Best effort, idempotent.
    pub async fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        cleanup(self.services.clone(), self.topology(), self.scratch.take()).await;
    }
}

impl Drop for BenchEnv {
    /// After an error or an interruption: clean up on a thread of its own,
    /// which works inside or outside a runtime.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let services = self.services.clone();
        let topology = self.topology();
        let scratch = self.scratch.take();
        std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(cleanup(services, topology, scratch));
            }
        })
        .join()
        .ok();
    }
}

async fn cleanup(services: Services, topology: Topology, scratch: Option<ScratchDb>) {
    if let Ok(connection) =
        Connection::connect(&services.amqp_url, ConnectionProperties::default()).await
        && let Ok(channel) = connection.create_channel().await
    {
        topology.delete_all(&channel).await;
        connection.close(200, "".into()).await.ok();
    }
    if let Some(scratch) = scratch {
        let name = scratch.name().to_owned();
        if let Err(error) = scratch.remove().await {
            eprintln!("warning: could not remove database {name}: {error}");
        }
    }
}

/// Peak resident memory and CPU time of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// VmHWM: the peak resident set, in KiB.
    pub peak_rss_kib: u64,
    /// utime + stime, in seconds.
    pub cpu_s: f64,
}

/// A running `courier serve`; killed when dropped.
pub struct CourierProcess {
    child: tokio::process::Child,
    pid: u32,
    pub log: PathBuf,
}

impl CourierProcess {
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("courier exited ({status}); see {}", self.log.display());
        }
        Ok(())
    }

    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        proc_sample(self.pid)
    }

    /// SIGTERM, a few seconds to finish, then SIGKILL.
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await.ok();
        }
    }
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub fn proc_sample(pid: u32) -> anyhow::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("could not read /proc/{pid}/status"))?;
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("could not read /proc/{pid}/stat"))?;
    let (_, [user, system, ..]) = stat_times(&stat).context("unreadable /proc/<pid>/stat")?;
    let cpu_s = (user + system) / clock_ticks_per_second();
    Ok(ProcSample {
        peak_rss_kib,
        cpu_s,
    })
}

/// CPU seconds spent so far by the parts a scenario runs on besides
/// courier: the broker (every `beam.smp`), the database server (every
/// `postgres` process, with the children it has reaped, so that backends
/// that exit are counted too), and this process (the producer, the
/// receivers, and the bare bound's consumer). The machine is shared by all
/// of them, so where its CPU goes is what bounds a scenario.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PartsCpu {
    pub broker_s: f64,
    pub database_s: f64,
    pub bench_s: f64,
}

impl PartsCpu {
    pub fn now() -> Self {
        let mut parts = PartsCpu::default();
        let me = std::process::id();
        let tick = clock_ticks_per_second();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return parts;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some((command, times)) = stat_times(&stat) else {
                continue;
            };
            let [user, system, reaped_user, reaped_system] = times;
            if pid == me {
                parts.bench_s += (user + system) / tick;
            } else if command == "beam.smp" {
                parts.broker_s += (user + system) / tick;
            } else if command == "postgres" {
                parts.database_s += (user + system + reaped_user + reaped_system) / tick;
            }
        }
        parts
    }

    pub fn since(self, before: PartsCpu) -> PartsCpu {
        PartsCpu {
            broker_s: (self.broker_s - before.broker_s).max(0.0),
            database_s: (self.database_s - before.database_s).max(0.0),
            bench_s: (self.bench_s - before.bench_s).max(0.0),
        }
    }

    /// Adds each part's CPU seconds per 1,000 deliveries to `outcome`.
    pub fn report(self, outcome: &mut crate::report::Outcome, deliveries: u64, database: bool) {
        if deliveries == 0 {
            return;
        }
        let per_1000 = |s: f64| s / deliveries as f64 * 1000.0;
        outcome.extra("broker_cpu_s_per_1000", per_1000(self.broker_s));
        if database {
            outcome.extra("database_cpu_s_per_1000", per_1000(self.database_s));
        }
        outcome.extra("bench_cpu_s_per_1000", per_1000(self.bench_s));
    }
}

/// The command name and the utime, stime, cutime and cstime ticks of a
/// `/proc/<pid>/stat` line.
fn stat_times(stat: &str) -> Option<(&str, [f64; 4])> {
    // The command name may hold spaces and parentheses: it runs from the
    // first '(' to the last ')', and fields are counted after it.
    let (head, rest) = stat.rsplit_once(')')?;
    let (_, command) = head.split_once('(')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' come state (field 3), ..., utime (14) to cstime (17).
    let mut times = [0.0; 4];
    for (i, time) in times.iter_mut().enumerate() {
        *time = fields.get(11 + i)?.parse().ok()?;
    }
    Some((command, times))
}

/// The 1-minute load average of the machine.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_after_the_command_name() {
        let line = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 2048 0 0 0 \
                    150 30 7 3 20 0 4 0 12345 1000000 500";
        assert_eq!(
            stat_times(line),
            Some(("tokio (rt) x", [150.0, 30.0, 7.0, 3.0]))
        );
        assert_eq!(stat_times("4242 (short) S 1 2"), None);
    }

    #[test]
    fn this_process_counts_as_the_bench() {
        // Burn a little CPU so the figure cannot be zero by accident.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(PartsCpu::now().bench_s > 0.0);
    }
}
