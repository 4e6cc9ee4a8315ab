//! Per-endpoint concurrency caps and a running estimate of each endpoint's
//! response time, so one slow receiver can hold neither every delivery slot
//! of a worker nor the events whose other deliveries are ready to go.
//!
//! An endpoint is a URL: webhooks that post to the same URL share its slots
//! and its response time, as they share the server behind it.
//!
//! A slow endpoint gets a quarter of the slots a quick one gets: its
//! attempts would hold the worker's slots for as long as it takes to
//! answer, and more requests at once rarely make a slow receiver faster.
//! A new endpoint starts with that quarter too, and gets the rest with its
//! first quick answer: one that never answers holds few slots meanwhile.
//!
//! A slot is also for one webhook, whose circuit breaker (see
//! [`crate::circuit`], shared by every replica) it checks first: while the
//! circuit is open the webhook gets no slot at all, and its deliveries wait
//! in the ledger, held, instead of each failing once more and travelling
//! through a retry queue. The one attempt after the cool-down (the probe)
//! is claimed in the ledger by the release loop, which then takes its slot
//! with [`EndpointLimits::probe_slot`]; the slot reports the attempt's
//! outcome to the circuit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_model::SubscriptionId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::circuit::{Circuits, Gate};

/// Failed attempts in a row that open a webhook's circuit.
pub use crate::circuit::FAILURES_TO_OPEN;

#[derive(Debug)]
pub struct EndpointLimits {
    per_endpoint: usize,
    /// What courier expects of a healthy endpoint (`delivery.quick_ms`):
    /// answers within this long on average, so that a delivery waiting for
    /// one of its slots waits at most this long. A slower endpoint gets no
    /// first attempts from the fan-out stage (they would hold up the
    /// event's other deliveries) and its deliveries do not queue for its
    /// slots inside a worker (they would hold the worker's slots): they are
    /// held in the ledger instead.
    quick: Duration,
    /// By URL.
    endpoints: Mutex<HashMap<Arc<str>, Arc<Endpoint>>>,
    /// By webhook.
    circuits: Arc<Circuits>,
}

#[derive(Debug)]
struct Endpoint {
    slots: Arc<Semaphore>,
    /// The slots it has once it answered quickly, and those it may use
    /// before that and while slow.
    size: usize,
    slow_size: usize,
    /// [`EndpointLimits`]'s `quick`, in µs.
    quick_micros: u64,
    /// Whether it answered quickly once, and so has all `size` slots.
    opened: AtomicBool,
    /// Exponentially weighted mean of recent attempt durations, in µs.
    mean_micros: AtomicU64,
    /// When a slot was last taken or freed, in µs after `created`.
    progress_micros: AtomicU64,
    created: Instant,
}

impl Endpoint {
    fn new(size: usize, quick: Duration) -> Self {
        let slow_size = (size / 4).max(1);
        Self {
            slots: Arc::new(Semaphore::new(slow_size)),
            size,
            slow_size,
            quick_micros: micros(quick),
            opened: AtomicBool::new(false),
            mean_micros: AtomicU64::new(0),
            progress_micros: AtomicU64::new(0),
            created: Instant::now(),
        }
    }

    /// How many more attempts it may take now: its free slots, or for a
    /// slow endpoint, what is left of its slow share.
    fn room(&self) -> usize {
        let available = self.slots.available_permits();
        match self.slow() {
            Some(_) => {
                let total = if self.opened.load(Ordering::Relaxed) {
                    self.size
                } else {
                    self.slow_size
                };
                let in_use = total.saturating_sub(available);
                self.slow_size.saturating_sub(in_use).min(available)
            }
            None => available,
        }
    }

    fn now_micros(&self) -> u64 {
        micros(self.created.elapsed())
    }

    fn progressed(&self) {
        self.progress_micros
            .fetch_max(self.now_micros(), Ordering::Relaxed);
    }

    /// Slow if its answers have been, or if every slot is taken and none
    /// has freed for longer than the quick time: attempts stuck on an endpoint
    /// that has not answered yet say as much as a mean would, and waiting
    /// for their slots would only hold the waiter up. A slow endpoint is
    /// full once it uses its `slow_size` slots.
    fn slow(&self) -> Option<NoSlot> {
        let mean = self.mean_micros.load(Ordering::Relaxed);
        let available = self.slots.available_permits();
        let stalled = if available == 0 {
            self.now_micros()
                .saturating_sub(self.progress_micros.load(Ordering::Relaxed))
        } else {
            0
        };
        let slow = mean.max(stalled);
        let total = if self.opened.load(Ordering::Relaxed) {
            self.size
        } else {
            self.slow_size
        };
        (slow > self.quick_micros).then(|| NoSlot::Slow {
            mean: Duration::from_micros(slow),
            full: total.saturating_sub(available) >= self.slow_size,
        })
    }

    /// Gives a new endpoint all its slots once it answered quickly.
    fn answered(&self, took: Duration) {
        if micros(took) <= self.quick_micros && !self.opened.swap(true, Ordering::Relaxed) {
            self.slots.add_permits(self.size - self.slow_size);
        }
    }

    fn try_slot(self: Arc<Self>, circuit: &Circuit) -> Option<Slot> {
        let permit = Arc::clone(&self.slots).try_acquire_owned().ok()?;
        Some(Slot::new(self, permit, circuit.clone()))
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

/// Why no slot was had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoSlot {
    /// The endpoint has been answering slowly, `mean` on average; `full`
    /// when every one of its slots is taken.
    Slow { mean: Duration, full: bool },
    /// It is quick, but no slot freed within the quick time.
    Busy,
    /// Its webhook's circuit is open after repeated failures: no attempt
    /// for `wait` (zero while a probe is under way, or is to be claimed).
    Open { wait: Duration },
}

impl NoSlot {
    /// Whether the webhook's circuit lets an attempt through other than
    /// its probe.
    fn check(gate: Gate) -> Result<(), NoSlot> {
        match gate {
            Gate::Closed => Ok(()),
            Gate::Open { wait } => Err(NoSlot::Open { wait }),
            Gate::CooledDown => Err(NoSlot::Open {
                wait: Duration::ZERO,
            }),
        }
    }
}

/// One webhook's circuit, as a slot reports to it.
#[derive(Clone, Debug)]
struct Circuit {
    circuits: Arc<Circuits>,
    webhook: SubscriptionId,
}

/// The right to make one attempt at an endpoint for one webhook. Report
/// how long the attempt took with [`Slot::observe`] and how it went with
/// [`Slot::outcome`]; dropping the slot frees it.
#[derive(Debug)]
pub struct Slot {
    endpoint: Arc<Endpoint>,
    _permit: OwnedSemaphorePermit,
    circuit: Circuit,
    /// The circuit's probe, until its outcome is reported.
    probe: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.endpoint.progressed();
        if self.probe {
            self.circuit.circuits.probe_unused(self.circuit.webhook);
        }
    }
}

impl Slot {
    fn new(endpoint: Arc<Endpoint>, permit: OwnedSemaphorePermit, circuit: Circuit) -> Self {
        endpoint.progressed();
        Self {
            endpoint,
            _permit: permit,
            circuit,
            probe: false,
        }
    }

    /// Reports whether the endpoint answered the attempt made with this
    /// slot as a working endpoint does: with anything but 5xx, 408 or 429.
    /// Returns true when this failure opened the webhook's circuit.
    pub fn outcome(&mut self, healthy: bool) -> bool {
        let probe = std::mem::take(&mut self.probe);
        self.circuit
            .circuits
            .outcome(self.circuit.webhook, healthy, probe)
    }

    pub fn observe(&self, took: Duration) {
        self.endpoint.answered(took);
        let sample = micros(took);
        // mean += (sample - mean) / 4; a lost race only drops one sample.
        let _ =
            self.endpoint
                .mean_micros
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
                    Some(mean - mean / 4 + sample / 4)
                });
    }
}

impl EndpointLimits {
    /// `per_endpoint` attempts at once for a quick endpoint (a quarter of
    /// that for a slow one), which answers within `quick` on average.
    pub fn new(per_endpoint: usize, quick: Duration) -> Self {
        Self {
            per_endpoint: per_endpoint.max(1),
            quick,
            endpoints: Mutex::new(HashMap::new()),
            circuits: Arc::default(),
        }
    }

    /// The webhooks' circuits.
    pub fn circuits(&self) -> &Arc<Circuits> {
        &self.circuits
    }

    fn circuit(&self, webhook: SubscriptionId) -> Circuit {
        Circuit {
            circuits: Arc::clone(&self.circuits),
            webhook,
        }
    }

    fn endpoint(&self, url: &str) -> Arc<Endpoint> {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(endpoint) = map.get(url) {
            return Arc::clone(endpoint);
        }
        // Forget idle endpoints now and then so the map tracks only the
        // endpoints in use, not every endpoint ever seen (a slot or a waiter
        // holds its endpoint).
        if map.len() > 4096 {
            map.retain(|_, e| Arc::strong_count(e) > 1);
        }
        let endpoint = Arc::new(Endpoint::new(self.per_endpoint, self.quick));
        map.insert(Arc::from(url), Arc::clone(&endpoint));
        endpoint
    }

    /// A slot at `url` for `webhook` if its endpoint has been answering
    /// quickly, waiting at most the quick time for one: the fan-out stage's test
    /// for attempting right away.
    pub async fn acquire_quick(&self, url: &str, webhook: SubscriptionId) -> Result<Slot, NoSlot> {
        NoSlot::check(self.circuits.gate(webhook))?;
        let endpoint = self.endpoint(url);
        if let Some(slow) = endpoint.slow() {
            return Err(slow);
        }
        self.wait(endpoint, webhook).await
    }

    /// A slot at `url` for `webhook`, waiting at most the quick time for one,
    /// and not at all for a slow endpoint whose slots are all taken. An
    /// error means the caller should put the delivery off rather than hold
    /// a worker slot in a queue behind the endpoint.
    pub async fn acquire(&self, url: &str, webhook: SubscriptionId) -> Result<Slot, NoSlot> {
        NoSlot::check(self.circuits.gate(webhook))?;
        let endpoint = self.endpoint(url);
        let circuit = self.circuit(webhook);
        match endpoint.slow() {
            Some(slow @ NoSlot::Slow { full: true, .. }) => return Err(slow),
            Some(slow) => return endpoint.try_slot(&circuit).ok_or(slow),
            None => {}
        }
        match Arc::clone(&endpoint).try_slot(&circuit) {
            Some(slot) => Ok(slot),
            None => self.wait(endpoint, webhook).await,
        }
    }

    /// As many slots at `url` for `webhook` as the endpoint has room for
    /// now, at most `max`, without waiting; none while the webhook's
    /// circuit is open.
    pub fn try_slots(&self, url: &str, webhook: SubscriptionId, max: usize) -> Vec<Slot> {
        if NoSlot::check(self.circuits.gate(webhook)).is_err() {
            return Vec::new();
        }
        let endpoint = self.endpoint(url);
        let circuit = self.circuit(webhook);
        let room = endpoint.room().min(max);
        std::iter::from_fn(|| Arc::clone(&endpoint).try_slot(&circuit))
            .take(room)
            .collect()
    }

    /// The slot of the probe the ledger gave this replica for `webhook`
    /// (see [`Circuits::probe_granted`]), if its endpoint has a slot free;
    /// otherwise the probe is given back.
    pub fn probe_slot(&self, url: &str, webhook: SubscriptionId) -> Option<Slot> {
        match self.endpoint(url).try_slot(&self.circuit(webhook)) {
            Some(mut slot) => {
                slot.probe = true;
                Some(slot)
            }
            None => {
                self.circuits.probe_unused(webhook);
                None
            }
        }
    }

    /// A slot that frees within the quick time, if the circuit still lets the
    /// attempt through once it has one: waiters queued while the endpoint
    /// was failing must not all go on to fail once more.
    async fn wait(&self, endpoint: Arc<Endpoint>, webhook: SubscriptionId) -> Result<Slot, NoSlot> {
        let permit = tokio::time::timeout(self.quick, Arc::clone(&endpoint.slots).acquire_owned())
            .await
            .map_err(|_| NoSlot::Busy)?
            .expect("endpoint semaphores are never closed");
        let slot = Slot::new(endpoint, permit, self.circuit(webhook));
        NoSlot::check(self.circuits.gate(webhook))?;
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::FIRST_COOLDOWN;

    /// `delivery.quick_ms`'s default.
    const QUICK: Duration = Duration::from_millis(250);

    /// The webhook of every test's attempts.
    const HOOK: SubscriptionId = SubscriptionId(uuid::Uuid::from_u128(1));

    #[tokio::test(start_paused = true)]
    async fn slow_endpoints_lose_the_quick_path_and_full_ones_are_busy() {
        let limits = EndpointLimits::new(2, QUICK);
        let id = "http://127.0.0.1:8080/hook";

        let a = limits
            .acquire_quick(id, HOOK)
            .await
            .expect("a fresh endpoint is quick");
        // A quick answer gives it its second slot.
        a.observe(Duration::ZERO);
        let b = limits.acquire(id, HOOK).await.expect("a second slot");
        // Full: a waiter gets the slot that frees within QUICK ...
        let freed = tokio::spawn(async move {
            tokio::time::sleep(QUICK / 2).await;
            drop(a);
        });
        let c = limits
            .acquire(id, HOOK)
            .await
            .expect("a slot freed in time");
        freed.await.unwrap();
        // ... and gives up after QUICK when none does.
        let started = tokio::time::Instant::now();
        assert_eq!(
            limits.acquire_quick(id, HOOK).await.err(),
            Some(NoSlot::Busy)
        );
        assert_eq!(started.elapsed(), QUICK);
        drop((b, c));

        // Slow answers take the endpoint off the quick path, and a slow
        // endpoint whose slow share of slots (one of two) is taken is busy
        // at once.
        let slot = limits.acquire(id, HOOK).await.unwrap();
        slot.observe(Duration::from_secs(5));
        drop(slot);
        let mean = Duration::from_millis(1250);
        assert_eq!(
            limits.acquire_quick(id, HOOK).await.err(),
            Some(NoSlot::Slow { mean, full: false }),
            "5 s answers are not quick"
        );
        let slot = limits
            .acquire(id, HOOK)
            .await
            .expect("a free slot is still used");
        let started = tokio::time::Instant::now();
        assert_eq!(
            limits.acquire(id, HOOK).await.err(),
            Some(NoSlot::Slow { mean, full: true }),
            "the other slot is not for a slow endpoint"
        );
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no wait for a slow endpoint"
        );
        drop(slot);

        // Quick answers bring it back.
        for _ in 0..20 {
            let slot = limits.acquire(id, HOOK).await.unwrap();
            slot.observe(Duration::from_millis(2));
        }
        assert!(limits.acquire_quick(id, HOOK).await.is_ok(), "quick again");
    }

    #[tokio::test(start_paused = true)]
    async fn the_quick_time_is_the_operators() {
        let id = "http://127.0.0.1:8080/hook";
        let second = Duration::from_secs(1);
        // One-second answers: slow by default, quick with 2 s.
        for (quick, slow) in [(QUICK, true), (2 * second, false)] {
            let limits = EndpointLimits::new(4, quick);
            let slot = limits.acquire_quick(id, HOOK).await.unwrap();
            slot.observe(4 * second);
            drop(slot);
            match limits.acquire_quick(id, HOOK).await {
                Err(NoSlot::Slow { mean, .. }) if slow => assert_eq!(mean, second),
                Ok(_) if !slow => {}
                other => panic!("quick time {quick:?}: {other:?}"),
            }
        }
        // A full endpoint's waiter gives up after the quick time.
        let limits = EndpointLimits::new(1, 2 * second);
        let _held = limits.acquire(id, HOOK).await.unwrap();
        let started = Instant::now();
        assert_eq!(limits.acquire(id, HOOK).await.err(), Some(NoSlot::Busy));
        assert_eq!(started.elapsed(), 2 * second);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_endpoint_gets_a_quarter_of_the_slots() {
        let limits = EndpointLimits::new(8, QUICK);
        let id = "http://127.0.0.1:8080/hook";
        let first = limits.acquire(id, HOOK).await.unwrap();
        first.observe(Duration::from_secs(4));
        let second = limits
            .acquire(id, HOOK)
            .await
            .expect("a slow endpoint's first slot");
        let third = limits.acquire(id, HOOK).await.err();
        assert_eq!(
            third,
            Some(NoSlot::Slow {
                mean: Duration::from_secs(1),
                full: true
            }),
            "two of eight slots in use"
        );
        drop((first, second));
        assert!(
            limits.acquire(id, HOOK).await.is_ok(),
            "its share is free again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_stuck_on_its_first_requests_is_slow_before_it_answers() {
        let limits = EndpointLimits::new(8, QUICK);
        let id = "http://127.0.0.1:8080/hook";
        // Until it answers, a new endpoint has a quarter of its slots.
        let held = (
            limits.acquire(id, HOOK).await.unwrap(),
            limits.acquire(id, HOOK).await.unwrap(),
        );
        // Just filled: a waiter may still get a slot soon, so it waits.
        let started = Instant::now();
        assert_eq!(
            limits.acquire_quick(id, HOOK).await.err(),
            Some(NoSlot::Busy)
        );
        assert_eq!(started.elapsed(), QUICK);

        // Nothing freed for longer than QUICK: slow, no more waiting.
        tokio::time::advance(Duration::from_millis(1)).await;
        let started = Instant::now();
        match limits.acquire(id, HOOK).await {
            Err(NoSlot::Slow { mean, full: true }) => assert!(mean > QUICK, "{mean:?}"),
            other => panic!("expected slow and full, got {other:?}"),
        }
        assert_eq!(started.elapsed(), Duration::ZERO);

        // A freed slot is progress: the endpoint is usable again.
        drop(held);
        assert!(limits.acquire_quick(id, HOOK).await.is_ok());
    }

    /// Fails `n` attempts at `id`, one after the other.
    async fn fail(limits: &EndpointLimits, id: &str, n: u32) -> bool {
        let mut opened = false;
        for _ in 0..n {
            let mut slot = limits.acquire(id, HOOK).await.expect("a slot");
            slot.observe(Duration::from_millis(1));
            opened |= slot.outcome(false);
        }
        opened
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_gives_its_webhook_no_slot_but_its_probe() {
        let limits = EndpointLimits::new(8, QUICK);
        let id = "http://127.0.0.1:8080/hook";
        let other = SubscriptionId(uuid::Uuid::from_u128(2));

        assert!(!fail(&limits, id, FAILURES_TO_OPEN - 1).await, "not yet");
        assert!(
            fail(&limits, id, 1).await,
            "the fifth failure in a row opens it"
        );

        // Open: no slot at all, and the wait is the cool-down.
        assert_eq!(
            limits.acquire(id, HOOK).await.err(),
            Some(NoSlot::Open {
                wait: FIRST_COOLDOWN
            })
        );
        assert!(limits.try_slots(id, HOOK, 8).is_empty());
        // Another webhook on the same URL has its own circuit.
        assert!(limits.acquire(id, other).await.is_ok());

        // Cooled down: still nothing but the probe, which the ledger hands
        // out; the delivery stage and the fan-out hold their deliveries.
        tokio::time::advance(FIRST_COOLDOWN).await;
        assert_eq!(
            limits.acquire_quick(id, HOOK).await.err(),
            Some(NoSlot::Open {
                wait: Duration::ZERO
            })
        );
        assert!(limits.try_slots(id, HOOK, 8).is_empty());
        let row = courier_store::CircuitRow {
            subscription_id: HOOK,
            failures: FAILURES_TO_OPEN,
            opened_at: chrono::Utc::now(),
            open_until: chrono::Utc::now(),
            cooldown: FIRST_COOLDOWN,
            probe_until: None,
        };
        let lease = chrono::Utc::now() + chrono::Duration::seconds(10);
        limits.circuits().probe_granted(&row, lease);
        let mut probe = limits.probe_slot(id, HOOK).expect("the probe's slot");
        assert!(limits.try_slots(id, HOOK, 8).is_empty(), "one probe");
        // A failed probe opens it for twice as long.
        assert!(!probe.outcome(false), "reopened, not newly opened");
        drop(probe);
        assert_eq!(
            limits.acquire(id, HOOK).await.err(),
            Some(NoSlot::Open {
                wait: 2 * FIRST_COOLDOWN
            })
        );

        // A probe slot dropped unused gives the probe back.
        tokio::time::advance(2 * FIRST_COOLDOWN).await;
        limits.circuits().probe_granted(&row, lease);
        drop(limits.probe_slot(id, HOOK));
        assert_eq!(limits.circuits().gate(HOOK), Gate::CooledDown);
        // A successful probe closes it: every slot is usable again.
        limits.circuits().probe_granted(&row, lease);
        let mut probe = limits.probe_slot(id, HOOK).unwrap();
        assert!(!probe.outcome(true));
        drop(probe);
        assert_eq!(limits.try_slots(id, HOOK, 8).len(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn try_slots_takes_only_what_is_free() {
        let limits = EndpointLimits::new(8, QUICK);
        let id = "http://127.0.0.1:8080/hook";
        // New: a quarter of its slots until it answers quickly.
        let first = limits.try_slots(id, HOOK, 8);
        assert_eq!(first.len(), 2);
        first[0].observe(Duration::from_millis(1));
        assert_eq!(
            limits.try_slots(id, HOOK, 3).len(),
            3,
            "at most what was asked"
        );
        let rest = limits.try_slots(id, HOOK, 8);
        assert_eq!(rest.len(), 6, "the rest of its eight");
        drop(rest);

        // Slow: only its share, less what it has in use.
        for slot in &first {
            slot.observe(Duration::from_secs(10));
        }
        assert_eq!(
            limits.try_slots(id, HOOK, 8).len(),
            0,
            "its two slow slots are taken"
        );
        drop(first);
        assert_eq!(limits.try_slots(id, HOOK, 8).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_queued_before_the_circuit_opened_does_not_get_through() {
        let limits = Arc::new(EndpointLimits::new(8, QUICK));
        let id = "http://127.0.0.1:8080/hook";
        let first = limits.acquire(id, HOOK).await.unwrap();
        first.observe(Duration::from_millis(1));
        let mut slots = vec![first];
        for _ in 1..8 {
            slots.push(
                limits
                    .acquire(id, HOOK)
                    .await
                    .expect("a quick endpoint's eight slots"),
            );
        }
        let waiter = tokio::spawn({
            let limits = Arc::clone(&limits);
            async move { limits.acquire_quick(id, HOOK).await.err() }
        });
        tokio::task::yield_now().await;

        let opened = slots[..FAILURES_TO_OPEN as usize]
            .iter_mut()
            .map(|slot| slot.outcome(false))
            .fold(false, |a, b| a | b);
        assert!(opened);
        drop(slots);
        assert!(
            matches!(waiter.await.unwrap(), Some(NoSlot::Open { .. })),
            "the freed slot is no way past an open circuit"
        );
    }
}
