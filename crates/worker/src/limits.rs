//! Per-endpoint concurrency caps and a running estimate of each endpoint's
//! response time, so one slow receiver can hold neither every delivery slot
//! of a worker nor the events whose other deliveries are ready to go.
//!
//! A slow endpoint gets a quarter of the slots a quick one gets: its
//! attempts would hold the worker's slots for as long as it takes to
//! answer, and more requests at once rarely make a slow receiver faster.
//! A new endpoint starts with that quarter too, and gets the rest with its
//! first quick answer: one that never answers holds few slots meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_model::SubscriptionId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// What courier expects of a healthy endpoint: answers within this long on
/// average, so that a delivery waiting for one of its slots waits at most
/// this long. A slower endpoint gets no first attempts from the fan-out stage
/// (they would hold up the event's other deliveries) and its deliveries do
/// not queue for its slots inside a worker (they would hold the worker's
/// slots): they are put off instead.
pub const QUICK: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct EndpointLimits {
    per_endpoint: usize,
    endpoints: Mutex<HashMap<SubscriptionId, Arc<Endpoint>>>,
}

#[derive(Debug)]
struct Endpoint {
    slots: Arc<Semaphore>,
    /// The slots it has once it answered quickly, and those it may use
    /// before that and while slow.
    size: usize,
    slow_size: usize,
    /// Whether it answered quickly once, and so has all `size` slots.
    opened: AtomicBool,
    /// Exponentially weighted mean of recent attempt durations, in µs.
    mean_micros: AtomicU64,
    /// When a slot was last taken or freed, in µs after `created`.
    progress_micros: AtomicU64,
    created: Instant,
}

impl Endpoint {
    fn new(size: usize) -> Self {
        let slow_size = (size / 4).max(1);
        Self {
            slots: Arc::new(Semaphore::new(slow_size)),
            size,
            slow_size,
            opened: AtomicBool::new(false),
            mean_micros: AtomicU64::new(0),
            progress_micros: AtomicU64::new(0),
            created: Instant::now(),
        }
    }

    fn now_micros(&self) -> u64 {
        self.created.elapsed().as_micros().min(u128::from(u64::MAX)) as u64
    }

    fn progressed(&self) {
        self.progress_micros
            .fetch_max(self.now_micros(), Ordering::Relaxed);
    }

    /// Slow if its answers have been, or if every slot is taken and none
    /// has freed for longer than [`QUICK`]: attempts stuck on an endpoint
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
        (slow > QUICK.as_micros() as u64).then(|| NoSlot::Slow {
            mean: Duration::from_micros(slow),
            full: total.saturating_sub(available) >= self.slow_size,
        })
    }

    /// Gives a new endpoint all its slots once it answered quickly.
    fn answered(&self, took: Duration) {
        if took <= QUICK && !self.opened.swap(true, Ordering::Relaxed) {
            self.slots.add_permits(self.size - self.slow_size);
        }
    }

    fn try_slot(self: Arc<Self>) -> Option<Slot> {
        let permit = Arc::clone(&self.slots).try_acquire_owned().ok()?;
        Some(Slot::new(self, permit))
    }
}

/// Why no slot was had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoSlot {
    /// The endpoint has been answering slowly, `mean` on average; `full`
    /// when every one of its slots is taken.
    Slow { mean: Duration, full: bool },
    /// It is quick, but no slot freed within [`QUICK`].
    Busy,
}

/// The right to make one attempt at an endpoint. Report how long the attempt
/// took with [`Slot::observe`]; dropping the slot frees it.
#[derive(Debug)]
pub struct Slot {
    endpoint: Arc<Endpoint>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.endpoint.progressed();
    }
}

impl Slot {
    fn new(endpoint: Arc<Endpoint>, permit: OwnedSemaphorePermit) -> Self {
        endpoint.progressed();
        Self {
            endpoint,
            _permit: permit,
        }
    }

    pub fn observe(&self, took: Duration) {
        self.endpoint.answered(took);
        let sample = took.as_micros().min(u128::from(u64::MAX)) as u64;
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
    pub fn new(per_endpoint: usize) -> Self {
        Self {
            per_endpoint: per_endpoint.max(1),
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    fn endpoint(&self, id: SubscriptionId) -> Arc<Endpoint> {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        // Forget idle endpoints now and then so the map tracks only the
        // endpoints in use, not every endpoint ever seen (a slot or a waiter
        // holds its endpoint).
        if map.len() > 4096 {
            map.retain(|_, e| Arc::strong_count(e) > 1);
        }
        Arc::clone(
            map.entry(id)
                .or_insert_with(|| Arc::new(Endpoint::new(self.per_endpoint))),
        )
    }

    /// A slot for an endpoint that has been answering quickly, waiting at
    /// most [`QUICK`] for one: the fan-out stage's test for attempting
    /// right away.
    pub async fn acquire_quick(&self, id: SubscriptionId) -> Result<Slot, NoSlot> {
        let endpoint = self.endpoint(id);
        if let Some(slow) = endpoint.slow() {
            return Err(slow);
        }
        Self::wait(endpoint).await.ok_or(NoSlot::Busy)
    }

    /// A slot, waiting at most [`QUICK`] for one, and not at all for a slow
    /// endpoint whose slots are all taken. An error means the caller should
    /// put the delivery off rather than hold a worker slot in a queue
    /// behind the endpoint.
    pub async fn acquire(&self, id: SubscriptionId) -> Result<Slot, NoSlot> {
        let endpoint = self.endpoint(id);
        match endpoint.slow() {
            Some(slow @ NoSlot::Slow { full: true, .. }) => return Err(slow),
            Some(slow) => return endpoint.try_slot().ok_or(slow),
            None => {}
        }
        match Arc::clone(&endpoint).try_slot() {
            Some(slot) => Ok(slot),
            None => Self::wait(endpoint).await.ok_or(NoSlot::Busy),
        }
    }

    /// A slot, however long it takes.
    pub async fn acquire_waiting(&self, id: SubscriptionId) -> Slot {
        let endpoint = self.endpoint(id);
        let permit = Arc::clone(&endpoint.slots)
            .acquire_owned()
            .await
            .expect("endpoint semaphores are never closed");
        Slot::new(endpoint, permit)
    }

    async fn wait(endpoint: Arc<Endpoint>) -> Option<Slot> {
        let permit = tokio::time::timeout(QUICK, Arc::clone(&endpoint.slots).acquire_owned())
            .await
            .ok()?
            .expect("endpoint semaphores are never closed");
        Some(Slot::new(endpoint, permit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slow_endpoints_lose_the_quick_path_and_full_ones_are_busy() {
        let limits = EndpointLimits::new(2);
        let id = SubscriptionId::generate();

        let a = limits
            .acquire_quick(id)
            .await
            .expect("a fresh endpoint is quick");
        // A quick answer gives it its second slot.
        a.observe(Duration::ZERO);
        let b = limits.acquire(id).await.expect("a second slot");
        // Full: a waiter gets the slot that frees within QUICK ...
        let freed = tokio::spawn(async move {
            tokio::time::sleep(QUICK / 2).await;
            drop(a);
        });
        let c = limits.acquire(id).await.expect("a slot freed in time");
        freed.await.unwrap();
        // ... and gives up after QUICK when none does.
        let started = tokio::time::Instant::now();
        assert_eq!(limits.acquire_quick(id).await.err(), Some(NoSlot::Busy));
        assert_eq!(started.elapsed(), QUICK);
        drop((b, c));

        // Slow answers take the endpoint off the quick path, and a slow
        // endpoint whose slow share of slots (one of two) is taken is busy
        // at once.
        let slot = limits.acquire(id).await.unwrap();
        slot.observe(Duration::from_secs(5));
        drop(slot);
        let mean = Duration::from_millis(1250);
        assert_eq!(
            limits.acquire_quick(id).await.err(),
            Some(NoSlot::Slow { mean, full: false }),
            "5 s answers are not quick"
        );
        let slot = limits.acquire(id).await.expect("a free slot is still used");
        let started = tokio::time::Instant::now();
        assert_eq!(
            limits.acquire(id).await.err(),
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
            let slot = limits.acquire(id).await.unwrap();
            slot.observe(Duration::from_millis(2));
        }
        assert!(limits.acquire_quick(id).await.is_ok(), "quick again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_endpoint_gets_a_quarter_of_the_slots() {
        let limits = EndpointLimits::new(8);
        let id = SubscriptionId::generate();
        let first = limits.acquire(id).await.unwrap();
        first.observe(Duration::from_secs(4));
        let second = limits
            .acquire(id)
            .await
            .expect("a slow endpoint's first slot");
        let third = limits.acquire(id).await.err();
        assert_eq!(
            third,
            Some(NoSlot::Slow {
                mean: Duration::from_secs(1),
                full: true
            }),
            "two of eight slots in use"
        );
        drop((first, second));
        assert!(limits.acquire(id).await.is_ok(), "its share is free again");
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_stuck_on_its_first_requests_is_slow_before_it_answers() {
        let limits = EndpointLimits::new(8);
        let id = SubscriptionId::generate();
        // Until it answers, a new endpoint has a quarter of its slots.
        let held = (
            limits.acquire(id).await.unwrap(),
            limits.acquire(id).await.unwrap(),
        );
        // Just filled: a waiter may still get a slot soon, so it waits.
        let started = Instant::now();
        assert_eq!(limits.acquire_quick(id).await.err(), Some(NoSlot::Busy));
        assert_eq!(started.elapsed(), QUICK);

        // Nothing freed for longer than QUICK: slow, no more waiting.
        tokio::time::advance(Duration::from_millis(1)).await;
        let started = Instant::now();
        match limits.acquire(id).await {
            Err(NoSlot::Slow { mean, full: true }) => assert!(mean > QUICK, "{mean:?}"),
            other => panic!("expected slow and full, got {other:?}"),
        }
        assert_eq!(started.elapsed(), Duration::ZERO);

        // A freed slot is progress: the endpoint is usable again.
        drop(held);
        assert!(limits.acquire_quick(id).await.is_ok());
    }
}
