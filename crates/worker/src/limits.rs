//! Per-endpoint concurrency caps, so one slow receiver cannot hold every
//! delivery slot of a worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use courier_model::SubscriptionId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct EndpointLimits {
    per_endpoint: usize,
    semaphores: Mutex<HashMap<SubscriptionId, Arc<Semaphore>>>,
}

impl EndpointLimits {
    pub fn new(per_endpoint: usize) -> Self {
        Self {
            per_endpoint: per_endpoint.max(1),
            semaphores: Mutex::new(HashMap::new()),
        }
    }

    pub async fn acquire(&self, endpoint: SubscriptionId) -> OwnedSemaphorePermit {
        let semaphore = {
            let mut map = self.semaphores.lock().unwrap_or_else(|e| e.into_inner());
            // Forget idle endpoints now and then so the map tracks only the
            // endpoints in use, not every endpoint ever seen.
            if map.len() > 4096 {
                map.retain(|_, s| Arc::strong_count(s) > 1);
            }
            Arc::clone(
                map.entry(endpoint)
                    .or_insert_with(|| Arc::new(Semaphore::new(self.per_endpoint))),
            )
        };
        semaphore
            .acquire_owned()
            .await
            .expect("endpoint semaphores are never closed")
    }
}
