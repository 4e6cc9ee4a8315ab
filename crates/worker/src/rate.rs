//! Per-webhook request-rate limits (`rate_limit` in a webhook's settings),
//! held across replicas by sharing them out: each worker replica sends a
//! webhook at most `per_second / replicas` requests a second, with a burst
//! of `burst / replicas` (at least one), where `replicas` is the number of
//! consumers the broker reports on the deliveries queue, one per replica.
//!
//! Why shares and not tokens leased from the ledger: a share costs nothing
//! per request (no query, no lock across replicas), and the held
//! deliveries' release loop, which every replica runs, spreads a limited
//! webhook's backlog over the replicas, so that each uses its share. The
//! price is that a replica count that just changed takes until the next
//! broker reading (a few seconds) to be seen, and that a webhook whose
//! traffic reaches only one replica gets that replica's share, not the
//! whole limit: staying under the limit is what the receiver asked for.
//!
//! A delivery over the limit is held in the ledger until its bucket has a
//! token: it holds no worker slot and delays no other endpoint.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use courier_model::{RateLimit, SubscriptionId};
use tokio::time::Instant;

/// Buckets of webhooks not seen for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct RateLimits {
    buckets: Mutex<HashMap<SubscriptionId, Bucket>>,
    replicas: AtomicUsize,
}

#[derive(Debug)]
struct Bucket {
    limit: RateLimit,
    replicas: usize,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(limit: RateLimit, replicas: usize, now: Instant) -> Self {
        let mut bucket = Self {
            limit,
            replicas,
            tokens: 0.0,
            refilled: now,
        };
        bucket.tokens = bucket.capacity();
        bucket
    }

    fn rate(&self) -> f64 {
        f64::from(self.limit.per_second) / self.replicas as f64
    }

    fn capacity(&self) -> f64 {
        (f64::from(self.limit.burst) / self.replicas as f64).max(1.0)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate()).min(self.capacity());
        self.refilled = now;
    }

    /// How long until a whole token is there (zero if one is).
    fn wait(&self) -> Duration {
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate())
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            replicas: AtomicUsize::new(1),
        }
    }
}

impl RateLimits {
    /// How many replicas share each limit (the deliveries queue's
    /// consumers, at least one).
    pub fn set_replicas(&self, replicas: usize) {
        self.replicas.store(replicas.max(1), Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SubscriptionId, Bucket>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bucket of `webhook` under `limit`, brought up to date at `now`.
    fn bucket(
        map: &mut HashMap<SubscriptionId, Bucket>,
        webhook: SubscriptionId,
        limit: RateLimit,
        replicas: usize,
        now: Instant,
    ) -> &mut Bucket {
        let bucket = map
            .entry(webhook)
            .or_insert_with(|| Bucket::new(limit, replicas, now));
        if bucket.limit != limit || bucket.replicas != replicas {
            // A changed limit or replica count applies from now on.
            bucket.refill(now);
            bucket.limit = limit;
            bucket.replicas = replicas;
            bucket.tokens = bucket.tokens.min(bucket.capacity());
        }
        bucket.refill(now);
        bucket
    }

    /// Takes a token for one request to `webhook`, or says how long until
    /// one is there. A webhook without a limit always gets one.
    pub fn take(&self, webhook: SubscriptionId, limit: Option<RateLimit>) -> Result<(), Duration> {
        let Some(limit) = limit else {
            return Ok(());
        };
        let replicas = self.replicas.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() > 4096 {
            map.retain(|_, b| now.saturating_duration_since(b.refilled) < FORGET_AFTER);
        }
        let bucket = Self::bucket(&mut map, webhook, limit, replicas, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(bucket.wait())
        }
    }

    /// Takes up to `max` tokens for `webhook`'s held deliveries about to
    /// be claimed: how many it got, or how long until one is there. `None`
    /// when this worker knows no limit for it (then each claimed delivery
    /// takes its own, see [`RateLimits::admit_claimed`]).
    pub fn take_up_to(
        &self,
        webhook: SubscriptionId,
        max: usize,
    ) -> Option<Result<usize, Duration>> {
        let replicas = self.replicas.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut map = self.lock();
        let limit = map.get(&webhook)?.limit;
        let bucket = Self::bucket(&mut map, webhook, limit, replicas, now);
        Some(match (bucket.tokens.floor() as usize).min(max) {
            0 => Err(bucket.wait()),
            n => {
                bucket.tokens -= n as f64;
                Ok(n)
            }
        })
    }

    /// Gives back tokens taken with [`RateLimits::take_up_to`] that no
    /// claimed delivery used.
    pub fn give_back(&self, webhook: SubscriptionId, unused: usize) {
        if unused == 0 {
            return;
        }
        if let Some(bucket) = self.lock().get_mut(&webhook) {
            bucket.tokens = (bucket.tokens + unused as f64).min(bucket.capacity());
        }
    }

    /// Whether a claimed held delivery may go now: yes when its tokens were
    /// taken at the claim (its limit known then), or it takes one now.
    pub fn admit_claimed(
        &self,
        webhook: SubscriptionId,
        limit: Option<RateLimit>,
    ) -> Result<(), Duration> {
        if self.lock().contains_key(&webhook) {
            return Ok(());
        }
        self.take(webhook, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: u32, burst: u32) -> Option<RateLimit> {
        Some(RateLimit { per_second, burst })
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let rates = RateLimits::default();
        let hook = SubscriptionId::generate();
        for _ in 0..5 {
            assert_eq!(rates.take(hook, limit(10, 5)), Ok(()));
        }
        // Empty: the next token comes in a tenth of a second.
        let wait = rates.take(hook, limit(10, 5)).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::from_millis(90));
        assert!(
            matches!(rates.take_up_to(hook, 8), Some(Err(wait)) if wait <= Duration::from_millis(100))
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(rates.take(hook, limit(10, 5)), Ok(()));
        // A second refills the burst, never more; a claim takes what it
        // may and gives back what it did not use.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(rates.take_up_to(hook, 64), Some(Ok(5)));
        rates.give_back(hook, 2);
        assert_eq!(rates.take_up_to(hook, 1), Some(Ok(1)));
        assert_eq!(rates.take_up_to(hook, 64), Some(Ok(1)));
        rates.give_back(hook, 50);
        assert_eq!(rates.take_up_to(hook, 64), Some(Ok(5)));

        // Over a long stretch, no more than the rate (plus the burst).
        let mut sent = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            match rates.take(hook, limit(10, 5)) {
                Ok(()) => sent += 1,
                Err(wait) => tokio::time::advance(wait).await,
            }
        }
        assert!((99..=106).contains(&sent), "{sent}");
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_share_the_limit() {
        let rates = RateLimits::default();
        rates.set_replicas(2);
        let hook = SubscriptionId::generate();
        // Half the burst each.
        let mut got = 0;
        while rates.take(hook, limit(50, 10)).is_ok() {
            got += 1;
        }
        assert_eq!(got, 5);
        // Half the rate each: 25 a second.
        let mut sent = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(4) {
            match rates.take(hook, limit(50, 10)) {
                Ok(()) => sent += 1,
                Err(wait) => tokio::time::advance(wait).await,
            }
        }
        assert!((99..=101).contains(&sent), "{sent}");
        // A burst smaller than the replicas still lets one through.
        let other = SubscriptionId::generate();
        rates.set_replicas(4);
        assert_eq!(rates.take(other, limit(2, 1)), Ok(()));
    }

    #[test]
    fn no_limit_no_bucket() {
        let rates = RateLimits::default();
        let hook = SubscriptionId::generate();
        for _ in 0..1000 {
            assert_eq!(rates.take(hook, None), Ok(()));
        }
        assert_eq!(rates.take_up_to(hook, 8), None);
        assert_eq!(rates.admit_claimed(hook, None), Ok(()));
    }
}
