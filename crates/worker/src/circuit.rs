//! Each webhook's circuit breaker, shared by every worker replica through
//! the ledger.
//!
//! A webhook whose endpoint fails [`FAILURES_TO_OPEN`] attempts in a row
//! (no answer, or 5xx, 408, 429) in one replica has its circuit opened:
//! for a cool-down of [`FIRST_COOLDOWN`] no replica attempts it, its
//! deliveries wait in the ledger, held; then one replica in all makes one
//! attempt (a probe). A failed probe opens it again for twice as long, up to
//! [`MAX_COOLDOWN`]; any healthy answer closes it.
//!
//! What is shared, and how:
//!
//! - Failures in a row are counted in memory, per replica: counting them in
//!   the ledger would cost a write per failed attempt, and a healthy
//!   webhook's attempts must cost no query at all. With several replicas a
//!   circuit therefore opens after five failures in one of them.
//! - Opening writes one row (`webhook_circuits`); another replica's open
//!   row stands. Each replica reads the set of open rows every
//!   [`REFRESH_EVERY`] (one query, whatever the number of webhooks) and
//!   holds the deliveries of the webhooks listed: a circuit opened anywhere
//!   stops every replica's attempts within about half a second.
//! - The probe is a lease in the row, taken by one conditional UPDATE: of
//!   the replicas whose release loop finds the circuit cooled down, one gets
//!   it, and the others keep holding. Only the release loop probes (with a
//!   held delivery); the delivery stage and the fan-out hold whatever comes
//!   to an open circuit, cooled down or not.
//! - A probe's outcome moves the row (doubled cool-down) or deletes it; a
//!   probe not made after all (its delivery was not owed any more) gives
//!   the lease back.
//!
//! The replica's own changes take effect in its memory at once and are
//! written by [`Pipeline::sync_circuits`], which also reads the rows back;
//! a read is not applied to the webhooks whose circuit the replica changed
//! while it ran, or has changes of not written yet (the next read is). The
//! ledger is the truth: a replica that opened a circuit whose row cannot
//! be written closes it again at its next read, and opens it again after
//! five more failures.
//!
//! The circuit is a webhook's, not a URL's (a URL's slots and response time
//! stay shared, see [`crate::limits`]): held deliveries, dead letters and
//! the failing and disabled states are per webhook and scoped by workspace
//! in the ledger, and two workspaces' webhooks that post to one URL must
//! not open each other's circuits. The cost: N webhooks on one failing URL
//! get N probes per cool-down, not one.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_model::SubscriptionId;
use courier_store::{CircuitRow, StoreError};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error_chain;
use crate::pipeline::Pipeline;

/// Failed attempts in a row that open a webhook's circuit.
pub const FAILURES_TO_OPEN: u32 = 5;
/// How long a circuit first stays open; doubled by each failed probe.
pub const FIRST_COOLDOWN: Duration = Duration::from_secs(1);
pub const MAX_COOLDOWN: Duration = Duration::from_secs(60);
/// How often each replica reads the open circuits from the ledger.
pub const REFRESH_EVERY: Duration = Duration::from_millis(500);

/// What a webhook's circuit lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Closed,
    /// No attempt for `wait` (zero while some replica probes).
    Open {
        wait: Duration,
    },
    /// Open and cooled down: a probe may be claimed in the ledger
    /// ([`courier_store::Store::claim_circuit_probe`]).
    CooledDown,
}

/// A change this replica made, for the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Open {
        webhook: SubscriptionId,
        failures: u32,
        at: DateTime<Utc>,
    },
    ProbeFailed {
        webhook: SubscriptionId,
        cooldown: Duration,
        at: DateTime<Utc>,
    },
    Close {
        webhook: SubscriptionId,
    },
    ReleaseProbe {
        webhook: SubscriptionId,
        lease_until: DateTime<Utc>,
    },
}

impl Change {
    fn webhook(&self) -> SubscriptionId {
        match *self {
            Change::Open { webhook, .. }
            | Change::ProbeFailed { webhook, .. }
            | Change::Close { webhook }
            | Change::ReleaseProbe { webhook, .. } => webhook,
        }
    }
}

/// The circuits of one replica: the open ones as the ledger last said (and
/// as this replica changed them since), the failures in a row it counted,
/// and its changes not written yet.
#[derive(Debug, Default)]
pub struct Circuits {
    state: Mutex<State>,
    /// Entries of `state.open`: while 0, a gate is one atomic load.
    open: AtomicUsize,
    /// Entries of `state.failures`: while 0 (and none open), a healthy
    /// outcome is one atomic load.
    failing: AtomicUsize,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    open: HashMap<SubscriptionId, Open>,
    failures: HashMap<SubscriptionId, u32>,
    pending: Vec<Change>,
    /// Moved on by every change this replica makes to an open circuit.
    generation: u64,
    /// The generation of each webhook's latest such change, until a read
    /// of the ledger begun after it replaced it.
    touched: HashMap<SubscriptionId, u64>,
}

#[derive(Clone, Debug)]
struct Open {
    open_until: Instant,
    cooldown: Duration,
    /// Until when some replica holds the probe.
    probe_until: Option<Instant>,
    /// The lease, when this replica holds it.
    lease: Option<DateTime<Utc>>,
}

impl Circuits {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `state`'s maps into the atomics, and wakes the writer when a
    /// change is pending. Called with the lock held after every change;
    /// `touched` is the webhook whose open circuit this replica changed
    /// (which a read of the ledger begun before may not show).
    fn changed(&self, state: &mut State, touched: Option<SubscriptionId>) {
        if let Some(webhook) = touched {
            state.generation += 1;
            state.touched.insert(webhook, state.generation);
        }
        self.open.store(state.open.len(), Ordering::Relaxed);
        self.failing.store(state.failures.len(), Ordering::Relaxed);
        if !state.pending.is_empty() {
            self.changed.notify_one();
        }
    }

    pub fn gate(&self, webhook: SubscriptionId) -> Gate {
        if self.open.load(Ordering::Relaxed) == 0 {
            return Gate::Closed;
        }
        let state = self.lock();
        let Some(open) = state.open.get(&webhook) else {
            return Gate::Closed;
        };
        let now = Instant::now();
        if now < open.open_until {
            return Gate::Open {
                wait: open.open_until - now,
            };
        }
        match open.probe_until {
            Some(until) if now < until => Gate::Open {
                wait: Duration::ZERO,
            },
            _ => Gate::CooledDown,
        }
    }

    /// The webhooks whose circuit is open.
    pub fn open_webhooks(&self) -> Vec<SubscriptionId> {
        if self.open.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        self.lock().open.keys().copied().collect()
    }

    /// Counts an attempt's outcome: `healthy` when the endpoint answered as
    /// a working one does, `probe` when it was the circuit's probe. Returns
    /// true when this failure opened the circuit (a failed probe opens it
    /// again, for longer: that is not counted as opening).
    pub fn outcome(&self, webhook: SubscriptionId, healthy: bool, probe: bool) -> bool {
        if healthy
            && !probe
            && self.failing.load(Ordering::Relaxed) == 0
            && self.open.load(Ordering::Relaxed) == 0
        {
            return false;
        }
        let mut state = self.lock();
        let state = &mut *state;
        let (opened, open_changed) = if healthy {
            state.failures.remove(&webhook);
            let closed = state.open.remove(&webhook).is_some();
            if closed {
                state.pending.push(Change::Close { webhook });
            }
            (false, closed)
        } else {
            let failures = state.failures.entry(webhook).or_default();
            *failures = failures.saturating_add(1);
            let failures = *failures;
            let (at, now) = (Utc::now(), Instant::now());
            match state.open.get_mut(&webhook) {
                // A failed probe: open again for twice as long.
                Some(open) if probe => {
                    open.cooldown = (open.cooldown * 2).min(MAX_COOLDOWN);
                    open.open_until = now + open.cooldown;
                    open.probe_until = None;
                    open.lease = None;
                    let cooldown = open.cooldown;
                    state.pending.push(Change::ProbeFailed {
                        webhook,
                        cooldown,
                        at,
                    });
                    (false, true)
                }
                // An attempt begun before it opened.
                Some(_) => (false, false),
                None if failures < FAILURES_TO_OPEN => (false, false),
                None => {
                    state.open.insert(
                        webhook,
                        Open {
                            open_until: now + FIRST_COOLDOWN,
                            cooldown: FIRST_COOLDOWN,
                            probe_until: None,
                            lease: None,
                        },
                    );
                    state.pending.push(Change::Open {
                        webhook,
                        failures,
                        at,
                    });
                    (true, true)
                }
            }
        };
        self.changed(state, open_changed.then_some(webhook));
        opened
    }

    /// The ledger gave this replica the probe of `row`'s circuit until
    /// `lease_until`.
    pub fn probe_granted(&self, row: &CircuitRow, lease_until: DateTime<Utc>) {
        let mut state = self.lock();
        let (now, at) = (Instant::now(), Utc::now());
        let mut open = open_from(row, now, at);
        open.probe_until = Some(instant_at(lease_until, now, at));
        open.lease = Some(lease_until);
        state.open.insert(row.subscription_id, open);
        self.changed(&mut state, Some(row.subscription_id));
    }

    /// The probe this replica holds was not made after all: it is free for
    /// whoever comes next (this replica or another).
    pub fn probe_unused(&self, webhook: SubscriptionId) {
        let mut state = self.lock();
        let Some(open) = state.open.get_mut(&webhook) else {
            return;
        };
        open.probe_until = None;
        if let Some(lease_until) = open.lease.take() {
            state.pending.push(Change::ReleaseProbe {
                webhook,
                lease_until,
            });
        }
        self.changed(&mut state, Some(webhook));
    }

    /// The changes not written yet, oldest first.
    pub fn take_pending(&self) -> Vec<Change> {
        std::mem::take(&mut self.lock().pending)
    }

    /// Puts back changes that could not be written, before any made since.
    pub fn requeue(&self, mut changes: Vec<Change>) {
        let mut state = self.lock();
        changes.append(&mut state.pending);
        state.pending = changes;
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Takes the open circuits from `rows`, read from the ledger after
    /// [`Circuits::generation`] said `generation`: each webhook's as the
    /// ledger has it (open or not), except those this replica changed since
    /// or has changes of not written yet, which the read may not show (the
    /// next read does). A webhook whose circuit closed elsewhere starts
    /// counting its failures again.
    pub fn refresh(&self, rows: &[CircuitRow], generation: u64) {
        let mut state = self.lock();
        let state = &mut *state;
        let mut local: HashSet<SubscriptionId> = state
            .touched
            .iter()
            .filter(|&(_, &g)| g > generation)
            .map(|(&w, _)| w)
            .collect();
        local.extend(state.pending.iter().map(Change::webhook));
        let (now, at) = (Instant::now(), Utc::now());
        let mut open = HashMap::with_capacity(rows.len());
        for row in rows.iter().filter(|r| !local.contains(&r.subscription_id)) {
            let mut entry = open_from(row, now, at);
            // Still this replica's probe if the ledger still has a lease.
            entry.lease = state
                .open
                .get(&row.subscription_id)
                .and_then(|o| o.lease)
                .filter(|_| row.probe_until.is_some());
            open.insert(row.subscription_id, entry);
        }
        for (webhook, entry) in state.open.drain() {
            if local.contains(&webhook) {
                open.insert(webhook, entry);
            } else if !open.contains_key(&webhook) {
                state.failures.remove(&webhook);
            }
        }
        state.open = open;
        state.touched.retain(|_, &mut g| g > generation);
        self.changed(state, None);
    }

    /// Resolves when a change is waiting to be written (or was, since the
    /// last call).
    pub async fn pending_change(&self) {
        self.changed.notified().await
    }
}

/// A ledger time as an instant of this process's clock.
fn instant_at(at: DateTime<Utc>, now: Instant, now_at: DateTime<Utc>) -> Instant {
    match (at - now_at).to_std() {
        Ok(ahead) => now + ahead,
        Err(_) => (now_at - at)
            .to_std()
            .ok()
            .and_then(|behind| now.checked_sub(behind))
            .unwrap_or(now),
    }
}

fn open_from(row: &CircuitRow, now: Instant, at: DateTime<Utc>) -> Open {
    Open {
        open_until: instant_at(row.open_until, now, at),
        cooldown: row.cooldown.clamp(FIRST_COOLDOWN, MAX_COOLDOWN),
        probe_until: row.probe_until.map(|u| instant_at(u, now, at)),
        lease: None,
    }
}

impl Pipeline {
    /// Writes this replica's circuit changes to the ledger and reads the
    /// open circuits back, every [`REFRESH_EVERY`] and at once after a
    /// change, until `stop`.
    pub(crate) async fn sync_circuits(self: Arc<Self>, stop: CancellationToken) {
        let circuits = Arc::clone(self.endpoints.circuits());
        let mut ticks = tokio::time::interval(REFRESH_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => {}
                () = circuits.pending_change() => {}
            }
            self.write_circuit_changes().await;
            if let Err(error) = self.refresh_circuits().await {
                tracing::warn!(error = %error_chain(&error), "reading open circuits failed");
            }
        }
        // What the attempts that finished meanwhile changed.
        self.write_circuit_changes().await;
    }

    /// Reads the open circuits from the ledger into this replica's.
    pub(crate) async fn refresh_circuits(&self) -> Result<(), StoreError> {
        let circuits = self.endpoints.circuits();
        let generation = circuits.generation();
        let rows = self.store.open_circuits().await?;
        let now = Utc::now();
        let longest = rows
            .iter()
            .map(|r| (now - r.opened_at).num_seconds())
            .max()
            .unwrap_or(0);
        self.metrics
            .circuits_open
            .set(i64::try_from(rows.len()).unwrap_or(i64::MAX));
        self.metrics.circuit_longest_open.set(longest.max(0));
        circuits.refresh(&rows, generation);
        Ok(())
    }

    async fn write_circuit_changes(&self) {
        let circuits = self.endpoints.circuits();
        let changes = circuits.take_pending();
        for (i, change) in changes.iter().enumerate() {
            let written = match *change {
                Change::Open {
                    webhook,
                    failures,
                    at,
                } => self
                    .store
                    .open_circuit(webhook, failures, at, FIRST_COOLDOWN)
                    .await
                    .map(drop),
                Change::ProbeFailed {
                    webhook,
                    cooldown,
                    at,
                } => self.store.circuit_probe_failed(webhook, at, cooldown).await,
                Change::Close { webhook } => self.store.close_circuit(webhook).await.map(drop),
                Change::ReleaseProbe {
                    webhook,
                    lease_until,
                } => {
                    self.store
                        .release_circuit_probe(webhook, lease_until, Utc::now())
                        .await
                }
            };
            match written {
                Ok(()) => {}
                Err(error) if error.is_transient() && !self.stopping.is_cancelled() => {
                    tracing::warn!(error = %error_chain(&error), "writing a circuit change failed; trying again");
                    circuits.requeue(changes[i..].to_vec());
                    return;
                }
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), change = ?change, "writing a circuit change failed; dropped");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(webhook: SubscriptionId, open_for: chrono::Duration) -> CircuitRow {
        let now = Utc::now();
        CircuitRow {
            subscription_id: webhook,
            failures: FAILURES_TO_OPEN,
            opened_at: now,
            open_until: now + open_for,
            cooldown: FIRST_COOLDOWN,
            probe_until: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn five_failures_in_a_row_open_the_circuit_once() {
        let circuits = Circuits::default();
        let (a, b) = (SubscriptionId::generate(), SubscriptionId::generate());
        for _ in 0..FAILURES_TO_OPEN - 1 {
            assert!(!circuits.outcome(a, false, false));
        }
        // A success in between starts the count again.
        assert!(!circuits.outcome(a, true, false));
        for _ in 0..FAILURES_TO_OPEN - 1 {
            assert!(!circuits.outcome(a, false, false));
        }
        assert_eq!(circuits.gate(a), Gate::Closed);
        assert!(circuits.outcome(a, false, false), "the fifth in a row");
        assert!(!circuits.outcome(a, false, false), "open already");
        assert_eq!(
            circuits.gate(a),
            Gate::Open {
                wait: FIRST_COOLDOWN
            }
        );
        assert_eq!(circuits.gate(b), Gate::Closed, "another webhook's");
        assert_eq!(circuits.open_webhooks(), [a]);
        let pending = circuits.take_pending();
        assert!(
            matches!(pending.as_slice(), [Change::Open { webhook, failures: 5, .. }] if *webhook == a),
            "{pending:?}"
        );

        tokio::time::advance(FIRST_COOLDOWN).await;
        assert_eq!(circuits.gate(a), Gate::CooledDown);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_held_here_or_elsewhere_keeps_the_circuit_shut() {
        let circuits = Circuits::default();
        let a = SubscriptionId::generate();
        for _ in 0..FAILURES_TO_OPEN {
            circuits.outcome(a, false, false);
        }
        circuits.take_pending();
        tokio::time::advance(FIRST_COOLDOWN).await;

        // Granted here: nothing else goes until its outcome.
        let lease = Utc::now() + chrono::Duration::seconds(10);
        circuits.probe_granted(&row(a, chrono::Duration::zero()), lease);
        assert_eq!(
            circuits.gate(a),
            Gate::Open {
                wait: Duration::ZERO
            }
        );
        // Failed: open for twice as long, the ledger told.
        assert!(!circuits.outcome(a, false, true));
        assert_eq!(
            circuits.gate(a),
            Gate::Open {
                wait: 2 * FIRST_COOLDOWN
            }
        );
        assert!(matches!(
            circuits.take_pending().as_slice(),
            [Change::ProbeFailed { cooldown, .. }] if *cooldown == 2 * FIRST_COOLDOWN
        ));

        // Granted again and given back unused: free at once.
        tokio::time::advance(2 * FIRST_COOLDOWN).await;
        circuits.probe_granted(&row(a, chrono::Duration::zero()), lease);
        circuits.probe_unused(a);
        assert_eq!(circuits.gate(a), Gate::CooledDown);
        assert_eq!(
            circuits.take_pending(),
            [Change::ReleaseProbe {
                webhook: a,
                lease_until: lease
            }]
        );

        // A successful probe closes it, and the ledger is told.
        circuits.probe_granted(&row(a, chrono::Duration::zero()), lease);
        assert!(!circuits.outcome(a, true, true));
        assert_eq!(circuits.gate(a), Gate::Closed);
        assert_eq!(circuits.take_pending(), [Change::Close { webhook: a }]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_ledger_says_what_is_open_but_of_what_this_replica_changed_since() {
        let circuits = Circuits::default();
        let (a, b, c) = (
            SubscriptionId::generate(),
            SubscriptionId::generate(),
            SubscriptionId::generate(),
        );

        // Opened by another replica: held here once read.
        circuits.refresh(
            &[row(b, chrono::Duration::seconds(30))],
            circuits.generation(),
        );
        assert!(matches!(circuits.gate(b), Gate::Open { wait } if wait > Duration::from_secs(29)));

        // Opened here after a read began: that read does not undo it, and
        // says all the same what became of the others (b closed, c open).
        let generation = circuits.generation();
        for _ in 0..FAILURES_TO_OPEN {
            circuits.outcome(a, false, false);
        }
        circuits.refresh(&[row(c, chrono::Duration::seconds(30))], generation);
        assert!(matches!(circuits.gate(a), Gate::Open { .. }), "mine");
        assert_eq!(circuits.gate(b), Gate::Closed, "closed elsewhere");
        assert!(
            matches!(circuits.gate(c), Gate::Open { .. }),
            "opened elsewhere"
        );
        // Nor does a read begun later, while the change is not written.
        circuits.refresh(&[], circuits.generation());
        assert!(matches!(circuits.gate(a), Gate::Open { .. }), "pending");
        assert_eq!(circuits.gate(c), Gate::Closed);

        // Written, and the ledger has closed it since (a probe elsewhere):
        // closed here too, and failures count from zero again.
        assert_eq!(circuits.take_pending().len(), 1);
        circuits.refresh(&[], circuits.generation());
        assert_eq!(circuits.gate(a), Gate::Closed);
        assert!(circuits.open_webhooks().is_empty());
        for _ in 0..FAILURES_TO_OPEN - 1 {
            assert!(!circuits.outcome(a, false, false));
        }
        assert!(circuits.outcome(a, false, false));
    }

    #[tokio::test(start_paused = true)]
    async fn changes_that_could_not_be_written_go_first_next_time() {
        let circuits = Circuits::default();
        let (a, b) = (SubscriptionId::generate(), SubscriptionId::generate());
        for _ in 0..FAILURES_TO_OPEN {
            circuits.outcome(a, false, false);
        }
        let failed = circuits.take_pending();
        for _ in 0..FAILURES_TO_OPEN {
            circuits.outcome(b, false, false);
        }
        circuits.requeue(failed);
        let webhooks: Vec<_> = circuits
            .take_pending()
            .into_iter()
            .map(|c| match c {
                Change::Open { webhook, .. } => webhook,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(webhooks, [a, b]);
    }
}
