//! Pruning the ledger on a schedule: every `interval` (the first time at
//! start), take the pruning lock, remove what has outlived its retention
//! ([`courier_store::Store::prune`]), give SQLite's freed pages back, and
//! let go. Of several replicas, the one that gets the lock prunes; the
//! others skip that round. `courier prune` runs one round the same way.
//!
//! Pruning is batched, so the hot path gets the database between
//! transactions, and paced: after a batch that took `t` it pauses for
//! `t × (100 − p) / p`, so that it keeps the database busy `p` percent of
//! the time at most (`retention.duty_percent`), and less where the database
//! is busy, as batches take longer there. A shutdown stops it after the
//! batch under way, at once if it is pausing.
//!
//! Deleted rows keep their space until it is reclaimed: a PostgreSQL
//! vacuum, SQLite's incremental vacuum. A round reclaims after every
//! [`reclaim_every`] deliveries it prunes and at its end, paced like a
//! batch, so a ledger that prunes as much as it takes in stops growing
//! whatever the server's autovacuum does.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use courier_model::{RetentionPolicy, error_chain};
use courier_store::{
    PruneOptions, PruneReport, PrunedRows, Reclaimed, RetentionPlan, Store, StoreError,
};
use tokio_util::sync::CancellationToken;

use crate::Metrics;

/// How long a SQLite pruning lease lasts: longer than a run takes on any
/// ledger one machine holds. One that outlives it may overlap the next
/// process's run, which is safe (each batch checks its rows under the
/// write lock), only wasteful.
const SQLITE_LEASE: Duration = Duration::from_secs(3600);

/// What the schedule needs, validated by the caller.
#[derive(Clone, Copy, Debug)]
pub struct RetentionConfig {
    pub policy: RetentionPolicy,
    pub interval: Duration,
    /// Most deliveries removed per transaction.
    pub batch_rows: u32,
    /// The share of the time, 1 to 100, pruning may keep the database
    /// busy: see [`pause_after`]. 100 prunes without pausing.
    pub duty_percent: u8,
}

/// Resolves once `pause` is over (`Continue`), or at once when `stop` is
/// cancelled (`Break`).
async fn rest(stop: CancellationToken, pause: Duration) -> ControlFlow<()> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => ControlFlow::Break(()),
        _ = tokio::time::sleep(pause) => ControlFlow::Continue(()),
    }
}

/// The fewest deliveries pruned between two reclaims within a round.
const RECLAIM_MIN_DELIVERIES: u64 = 10_000;

/// How many deliveries a round prunes between two reclaims of their space
/// ([`Store::reclaim_space`]): a twentieth of the ledger's (as PostgreSQL
/// estimates it), so that at most about 5 % of a table is dead space, and
/// the cost of a vacuum (which reads the tables' indexes whole) stays in
/// proportion to what it frees.
pub fn reclaim_every(deliveries_estimate: u64) -> u64 {
    (deliveries_estimate / 20).max(RECLAIM_MIN_DELIVERIES)
}

/// The longest pause between two batches, however long the first took.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// The pause after a batch that took `took`, so that batches take at most
/// `duty_percent` of the time: `took × (100 − p) / p`, at most a minute.
pub fn pause_after(took: Duration, duty_percent: u8) -> Duration {
    let p = u32::from(duty_percent.clamp(1, 100));
    (took * (100 - p) / p).min(MAX_PAUSE)
}

/// One round's outcome.
#[derive(Debug)]
pub enum PruneRound {
    /// Another process holds the pruning lock.
    Busy,
    Done {
        report: PruneReport,
        /// SQLite only; `None` on PostgreSQL and in a dry run.
        reclaimed: Option<Reclaimed>,
        took: Duration,
    },
}

/// Prunes one ledger; cheap to clone.
#[derive(Clone)]
pub struct Pruner {
    store: Store,
    config: RetentionConfig,
    metrics: Arc<Metrics>,
    /// Names this process in a SQLite lease.
    holder: String,
}

impl Pruner {
    pub fn new(store: Store, config: RetentionConfig, metrics: Arc<Metrics>) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "courier".into());
        Self {
            store,
            config,
            metrics,
            holder: format!("{host} pid {}", std::process::id()),
        }
    }

    /// Prunes every `interval` until `shutdown`. A failed round is logged
    /// and counted; the next one tries again.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Said once per process: an older SQLite file never shrinks.
        let mut told_about_vacuum = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.run_once(false, &shutdown).await {
                Ok(PruneRound::Busy) => {
                    tracing::debug!("another courier process is pruning the ledger; skipping");
                }
                Ok(PruneRound::Done {
                    report, reclaimed, ..
                }) => {
                    if let Some(r) = reclaimed
                        && !r.incremental
                        && !told_about_vacuum
                        && !report.total.is_empty()
                    {
                        told_about_vacuum = true;
                        tracing::info!(
                            "the SQLite ledger file was created before courier used incremental \
                             vacuum: pruned pages are reused, but the file does not shrink; run \
                             `courier prune --vacuum` once, with courier stopped, to switch it"
                        );
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "pruning the ledger failed; trying again next round");
                }
            }
        }
    }

    /// One round: the lock (unless `dry_run`), the prune, the vacuum.
    /// `stop` ends it after the batch under way.
    pub async fn run_once(
        &self,
        dry_run: bool,
        stop: &CancellationToken,
    ) -> Result<PruneRound, StoreError> {
        let started = Instant::now();
        let lock = if dry_run {
            None
        } else {
            match self
                .store
                .try_lock_pruning(&self.holder, SQLITE_LEASE)
                .await
            {
                Ok(Some(lock)) => Some(lock),
                Ok(None) => {
                    self.metrics
                        .retention_runs
                        .with_label_values(&["skipped"])
                        .inc();
                    return Ok(PruneRound::Busy);
                }
                Err(error) => {
                    self.metrics
                        .retention_runs
                        .with_label_values(&["failed"])
                        .inc();
                    return Err(error);
                }
            }
        };
        let result = self.prune(dry_run, stop).await;
        if let Some(lock) = lock {
            lock.release().await;
        }
        let outcome = if result.is_ok() { "done" } else { "failed" };
        if !dry_run {
            self.metrics
                .retention_runs
                .with_label_values(&[outcome])
                .inc();
        }
        let (report, reclaimed) = result?;
        let took = started.elapsed();
        if !dry_run {
            self.metrics.retention_last_run.set(Utc::now().timestamp());
            let t = &report.total;
            tracing::info!(
                events = t.events,
                deliveries = t.deliveries,
                attempts = t.attempts,
                workspaces = report.workspaces.len(),
                batches = report.batches,
                reclaimed_bytes = reclaimed.map_or(0, |r| r.bytes),
                took_ms = millis(took),
                stopped = report.stopped,
                "pruned the ledger"
            );
        }
        Ok(PruneRound::Done {
            report,
            reclaimed,
            took,
        })
    }

    async fn prune(
        &self,
        dry_run: bool,
        stop: &CancellationToken,
    ) -> Result<(PruneReport, Option<Reclaimed>), StoreError> {
        let plan = RetentionPlan {
            policy: self.config.policy,
            overrides: self.store.retention_overrides().await?,
            now: Utc::now(),
        };
        let options = PruneOptions {
            dry_run,
            batch_rows: self.config.batch_rows,
        };
        let duty = if dry_run {
            100
        } else {
            self.config.duty_percent
        };
        // Read again after each reclaim, which refreshes the estimate (a
        // ledger never vacuumed or analyzed has none yet).
        let every = Arc::new(AtomicU64::new(reclaim_every(
            self.store.deliveries_estimate().await?,
        )));
        let reclaimed = Arc::new(Mutex::new(None));
        // Pruned since the last reclaim.
        let mut unreclaimed = PrunedRows::default();
        let metrics = &self.metrics;
        let mut on_batch = |workspace: &courier_model::WorkspaceId,
                            rows: &PrunedRows,
                            took: Duration|
         -> courier_store::NextBatch {
            let mut pause = pause_after(took, duty);
            tracing::debug!(
                workspace_id = %workspace,
                events = rows.events,
                deliveries = rows.deliveries,
                attempts = rows.attempts,
                took_ms = millis(took),
                pause_ms = millis(pause),
                dry_run,
                "pruning batch"
            );
            let mut reclaim = None;
            if !dry_run {
                for (table, n) in [
                    ("events", rows.events),
                    ("deliveries", rows.deliveries),
                    ("attempts", rows.attempts),
                ] {
                    metrics
                        .retention_pruned
                        .with_label_values(&[table])
                        .inc_by(n);
                }
                unreclaimed.add(rows);
                if unreclaimed.deliveries >= every.load(Ordering::Relaxed) {
                    unreclaimed = PrunedRows::default();
                    reclaim = Some(self.reclaim(reclaimed.clone(), Some(every.clone())));
                }
            }
            let stop = stop.clone();
            Box::pin(async move {
                if let Some(reclaim) = reclaim {
                    match reclaim.await {
                        Ok(took) => pause += pause_after(took, duty),
                        Err(error) => tracing::warn!(
                            error = %error_chain(&error),
                            "reclaiming the space pruning freed failed; pruning goes on and tries again"
                        ),
                    }
                }
                rest(stop, pause).await
            })
        };
        let report = self.store.prune(&plan, options, &mut on_batch).await?;
        if !unreclaimed.is_empty() {
            self.reclaim(reclaimed.clone(), None).await?;
        }
        let reclaimed = *reclaimed.lock().expect("reclaimed tally poisoned");
        Ok((report, reclaimed))
    }

    /// Reclaims the space pruned rows held ([`Store::reclaim_space`]),
    /// adding what SQLite gave back to `tally` and, given `every`, setting
    /// it from the ledger's new estimate; resolves to how long it took.
    fn reclaim(
        &self,
        tally: Arc<Mutex<Option<Reclaimed>>>,
        every: Option<Arc<AtomicU64>>,
    ) -> impl Future<Output = Result<Duration, StoreError>> + Send + 'static {
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        async move {
            let started = Instant::now();
            let reclaimed = store.reclaim_space().await?;
            let took = started.elapsed();
            if let Some(r) = reclaimed {
                metrics.retention_reclaimed_bytes.inc_by(r.bytes);
                let mut tally = tally.lock().expect("reclaimed tally poisoned");
                *tally = Some(match *tally {
                    Some(sum) => Reclaimed {
                        incremental: r.incremental,
                        pages: sum.pages + r.pages,
                        bytes: sum.bytes + r.bytes,
                    },
                    None => r,
                });
            }
            let next = match every {
                Some(every) => {
                    let next = reclaim_every(store.deliveries_estimate().await?);
                    every.store(next, Ordering::Relaxed);
                    Some(next)
                }
                None => None,
            };
            tracing::debug!(
                took_ms = millis(took),
                reclaimed_bytes = reclaimed.map_or(0, |r| r.bytes),
                next_after_deliveries = next,
                "reclaimed the space pruning freed"
            );
            Ok(took)
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_take_their_share_of_the_time_and_pauses_are_bounded() {
        let ms = Duration::from_millis;
        assert_eq!(pause_after(ms(50), 5), ms(950));
        assert_eq!(pause_after(ms(100), 20), ms(400));
        assert_eq!(pause_after(ms(100), 100), Duration::ZERO);
        // 0 is refused by the settings; here it counts as 1.
        assert_eq!(pause_after(ms(10), 0), ms(990));
        assert_eq!(pause_after(Duration::from_secs(30), 5), MAX_PAUSE);
    }

    #[test]
    fn a_reclaim_follows_a_twentieth_of_the_ledger() {
        assert_eq!(reclaim_every(0), RECLAIM_MIN_DELIVERIES);
        assert_eq!(reclaim_every(100_000), RECLAIM_MIN_DELIVERIES);
        assert_eq!(reclaim_every(5_000_000), 250_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rest_waits_out_its_pause_unless_stopped() {
        let stop = CancellationToken::new();
        let pause = Duration::from_millis(400);
        let started = tokio::time::Instant::now();
        assert_eq!(rest(stop.clone(), pause).await, ControlFlow::Continue(()));
        assert_eq!(started.elapsed(), pause);

        // A stop during a pause ends it at once.
        let mut next = Box::pin(rest(stop.clone(), pause));
        assert!(futures_util::poll!(&mut next).is_pending());
        stop.cancel();
        let started = tokio::time::Instant::now();
        assert_eq!(next.await, ControlFlow::Break(()));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
