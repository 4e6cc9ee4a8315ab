//! The in-memory matching index, shared by every fan-out task and swapped
//! whole when the subscription set changes.

use std::sync::{Arc, Mutex, RwLock};

use courier_model::{Event, Subscription, SubscriptionIndex};
use courier_store::{Store, StoreError, SubscriptionsFingerprint};

#[derive(Debug, Default)]
pub struct SubscriptionCache {
    index: RwLock<Arc<SubscriptionIndex>>,
    /// The ledger's subscriptions fingerprint as of the last reload.
    loaded: Mutex<Option<SubscriptionsFingerprint>>,
}

impl SubscriptionCache {
    /// Reloads every enabled subscription from the ledger and swaps the
    /// index in one step, so a fan-out sees either the old set or the new.
    /// Rows stream straight into the new index: a large set is never held
    /// twice.
    pub async fn reload(&self, store: &Store) -> Result<usize, StoreError> {
        // Taken first: a change made during the load shows up as a
        // difference at the next check.
        let fingerprint = store.subscriptions_fingerprint().await?;
        let mut index = SubscriptionIndex::default();
        store
            .for_each_enabled_subscription(&mut |sub| index.insert(sub))
            .await?;
        let len = index.len();
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(index);
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = Some(fingerprint);
        Ok(len)
    }

    /// Whether the ledger's subscriptions changed since the last reload (one
    /// small query instead of loading them all).
    pub async fn is_stale(&self, store: &Store) -> Result<bool, StoreError> {
        let now = store.subscriptions_fingerprint().await?;
        Ok(*self.loaded.lock().unwrap_or_else(|e| e.into_inner()) != Some(now))
    }

    pub fn matching(&self, event: &Event) -> Vec<Arc<Subscription>> {
        let index = Arc::clone(&self.index.read().unwrap_or_else(|e| e.into_inner()));
        index.matching(event)
    }
}
