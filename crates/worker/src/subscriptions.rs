//! The in-memory matching index, shared by every fan-out task and swapped
//! whole when the subscription set changes.

use std::sync::{Arc, RwLock};

use courier_model::{Event, Subscription, SubscriptionIndex};
use courier_store::{Store, StoreError};

#[derive(Debug, Default)]
pub struct SubscriptionCache {
    index: RwLock<Arc<SubscriptionIndex>>,
}

impl SubscriptionCache {
    /// Reloads every enabled subscription from the ledger and swaps the
    /// index in one step, so a fan-out sees either the old set or the new.
    pub async fn reload(&self, store: &Store) -> Result<usize, StoreError> {
        let subs = store.load_enabled_subscriptions().await?;
        let index = Arc::new(SubscriptionIndex::new(subs));
        let len = index.len();
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = index;
        Ok(len)
    }

    pub fn matching(&self, event: &Event) -> Vec<Arc<Subscription>> {
        let index = Arc::clone(&self.index.read().unwrap_or_else(|e| e.into_inner()));
        index.matching(event)
    }
}
