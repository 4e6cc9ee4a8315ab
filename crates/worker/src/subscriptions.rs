//! The in-memory matching index, shared by every fan-out task and swapped
//! whole when the subscription set changes.
//!
//! Read-your-writes: once a webhook change has returned (API, GraphQL, the
//! admin CLI), every event published after it is matched against the
//! changed set, on every replica. The ledger keeps a version of the
//! subscriptions that every change moves forward in its own transaction;
//! before matching, a fan-out makes sure the index was checked against
//! that version by a read that started after its event arrived (and so
//! after the change committed), reloading the index if it was behind.
//! One such read serves every event that arrived before it started, and
//! reads start at most every [`CHECK_SPACING`], so under load it costs one
//! small query per group of events, not one per event. Change notices and
//! the periodic refresh still reload ahead of time, so the check rarely
//! finds the index behind.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use courier_model::{SubscriptionIndex, SubscriptionIndexBuilder};
use courier_store::{Store, StoreError, SubscriptionsFingerprint};

/// The least time between the starts of two checks against the ledger.
/// Under load, events arrive faster than a check takes; spacing the checks
/// makes each one serve more events (at most a thousand checks a second),
/// for at most this long added to an event's wait.
pub const CHECK_SPACING: Duration = Duration::from_millis(1);

#[derive(Debug, Default)]
pub struct SubscriptionCache {
    index: RwLock<Arc<SubscriptionIndex>>,
    /// The ledger's subscriptions version as of the index's load.
    loaded: Mutex<Option<SubscriptionsFingerprint>>,
    /// One check against the ledger at a time; fan-outs queue here in order.
    checking: tokio::sync::Mutex<()>,
    /// When the latest completed check started: the index holds every
    /// change committed before then.
    checked_from: Mutex<Option<Instant>>,
}

impl SubscriptionCache {
    /// Reloads every subscription (disabled ones too) from the ledger and swaps the
    /// index in one step, so a fan-out sees either the old set or the new.
    /// Rows stream straight into the new index, which keeps only what
    /// matching and attempts need of each: a large set is never held
    /// whole, as rows or as subscriptions. Returns how many it loaded.
    pub async fn reload(&self, store: &Store) -> Result<usize, StoreError> {
        // Read first: a change made during the load shows up as a newer
        // version at the next check.
        let version = store.subscriptions_fingerprint().await?;
        let mut builder = SubscriptionIndexBuilder::default();
        store
            .for_each_subscription(&mut |sub| builder.insert(&sub))
            .await?;
        let index = builder.build();
        let len = index.len();
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        // Two reloads may overlap (a notice, a check): the later version
        // stays.
        if loaded.is_none_or(|current| current <= version) {
            *self.index.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(index);
            *loaded = Some(version);
        }
        Ok(len)
    }

    /// Whether the ledger's subscriptions changed since the last reload (one
    /// small query instead of loading them all).
    pub async fn is_stale(&self, store: &Store) -> Result<bool, StoreError> {
        let now = store.subscriptions_fingerprint().await?;
        Ok(self.loaded_version() != Some(now))
    }

    /// Brings the index up to every change committed before `arrived` (the
    /// moment an event reached this worker), reloading when the ledger is
    /// ahead. Returns the reload's count when it reloaded.
    pub async fn catch_up(
        &self,
        store: &Store,
        arrived: Instant,
    ) -> Result<Option<usize>, StoreError> {
        if self.checked_since(arrived) {
            return Ok(None);
        }
        let _turn = self.checking.lock().await;
        // The check that held the turn may have started after `arrived`.
        if self.checked_since(arrived) {
            return Ok(None);
        }
        // Wait out the spacing since the last check started: the events
        // that arrive meanwhile queue behind this one, and the check that
        // starts after it serves them all.
        let last = *self.checked_from.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = last {
            tokio::time::sleep_until((last + CHECK_SPACING).into()).await;
        }
        let started = Instant::now();
        let reloaded = if self.is_stale(store).await? {
            Some(self.reload(store).await?)
        } else {
            None
        };
        let mut checked = self.checked_from.lock().unwrap_or_else(|e| e.into_inner());
        *checked = (*checked).max(Some(started));
        Ok(reloaded)
    }

    /// The index as loaded now; a fan-out matches its event against it and
    /// keeps it while it delivers (a reload meanwhile swaps in another).
    pub fn snapshot(&self) -> Arc<SubscriptionIndex> {
        Arc::clone(&self.index.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn loaded_version(&self) -> Option<SubscriptionsFingerprint> {
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn checked_since(&self, arrived: Instant) -> bool {
        self.checked_from
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|from| from >= arrived)
    }
}
