//! The two stages' handlers, one file per role in the order an event
//! travels:
//!
//! - [`fan_out`]: stage 1, an event in, its deliveries and first attempts
//!   recorded, the event acked;
//! - [`first_attempt`]: the first attempts the fan-out makes itself;
//! - [`deliver`]: stage 2, one attempt of one delivery per message (and
//!   per held delivery the ledger releases);
//! - [`attempt`]: making one attempt and deciding what comes next;
//! - [`follow_up`]: what follows a recorded attempt (a retry, a dead
//!   letter), holding a delivery in the ledger, and the poison queue;
//! - [`owed`]: what the ledger says is still owed, as pure functions.
//!
//! Each handler takes one broker message and returns what to tell the
//! broker; every branch that acks says why that is safe.

mod attempt;
mod deliver;
mod fan_out;
mod first_attempt;
mod follow_up;
#[cfg(test)]
mod future_sizes;
mod lifecycle;
mod owed;

use std::sync::Arc;
use std::time::Duration;

use courier_producer::{ConfirmedChannel, Outgoing, PublishError, Topology};
use courier_store::{Ledger, Store, StoreError};
use courier_webhook::WebhookClient;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub(crate) use attempt::delivery_span;
pub(crate) use lifecycle::{Episodes, LifecycleMetrics};

use crate::consumer::Handled;
use crate::limits::EndpointLimits;
use crate::log::{About, about};
use crate::metrics::Metrics;
use crate::rate::RateLimits;
use crate::subscriptions::SubscriptionCache;
use crate::{WorkerConfig, error_chain};

/// Why a handler could not finish; the message goes back to the broker.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error("ledger write failed")]
    Store(#[from] StoreError),
    #[error("publish failed")]
    Publish(#[from] PublishError),
}

/// Shared state of both stages.
pub struct Pipeline {
    pub(crate) config: WorkerConfig,
    pub(crate) topology: Topology,
    pub(crate) store: Store,
    pub(crate) ledger: Ledger,
    pub(crate) publisher: ConfirmedChannel,
    pub(crate) client: WebhookClient,
    pub(crate) subscriptions: SubscriptionCache,
    pub(crate) endpoints: EndpointLimits,
    /// Each webhook's rate limit, this replica's share of it.
    pub(crate) rates: RateLimits,
    /// Bounds the attempts in flight across both stages.
    pub(crate) http_slots: Arc<Semaphore>,
    /// Bounds the first attempts fan-outs make at once, one permit per
    /// attempt, to as many as `http_slots` holds: a fan-out starts its
    /// attempts when there is room for them, rather than queueing them for
    /// slots until they give up (see [`Pipeline::first_attempt`]). The
    /// prefetch, larger, bounds the events held unacked meanwhile, most of
    /// them waiting for their commit.
    pub(crate) first_attempt_room: Arc<Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
    /// Open failing episodes, as far as this worker knows them.
    pub(crate) episodes: Episodes,
    pub(crate) lifecycle_metrics: LifecycleMetrics,
    /// Cancelled on shutdown: ends the waits for a database to come back.
    pub(crate) stopping: CancellationToken,
}

impl Pipeline {
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Reloads the matching index; returns the subscriptions loaded (disabled ones too).
    /// `trigger` (start, notice, periodic; catch_up for a fan-out's own
    /// check) labels the reload metric.
    pub async fn reload_subscriptions(&self, trigger: &str) -> Result<usize, StoreError> {
        let n = self.subscriptions.reload(&self.store).await?;
        self.count_reload(trigger, n);
        Ok(n)
    }

    fn count_reload(&self, trigger: &str, subscriptions: usize) {
        self.metrics.subscriptions_cached.set(subscriptions as i64);
        self.metrics
            .subscription_reloads
            .with_label_values(&[trigger])
            .inc();
    }

    /// The periodic refresh: reloads the matching index if the ledger's
    /// subscriptions changed since the last load, or if `full`.
    pub async fn refresh_subscriptions(&self, full: bool) -> Result<(), StoreError> {
        if full || self.subscriptions.is_stale(&self.store).await? {
            self.reload_subscriptions("periodic").await?;
        }
        Ok(())
    }

    /// Runs a ledger operation until it succeeds, waiting out transient
    /// database failures (a restart, a failover) with backoff instead of
    /// handing the message back: requeueing would burn through the queue's
    /// delivery limit and poison good messages. Gives up on shutdown, and at
    /// once on errors that retrying cannot fix.
    pub(super) async fn durably<T, F, Fut>(
        &self,
        what: &str,
        about: About<'_>,
        mut operation: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut wait = Duration::from_millis(100);
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(error) if error.is_transient() && !self.stopping.is_cancelled() => {
                    about!(warn, about, error = %error_chain(&error), retry_in_ms = wait.as_millis() as u64, "{what} failed; retrying");
                    tokio::select! {
                        _ = self.stopping.cancelled() => return Err(error),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Sends one of courier's own messages with a confirm, counting the
    /// outcome and its latency.
    pub(super) async fn send(&self, outgoing: Outgoing<'_>) -> Result<(), PublishError> {
        let started = std::time::Instant::now();
        // Boxed: a publish awaiting its confirm is a future of more than
        // 2 KB, and every handler that may publish would otherwise carry it.
        let result = Box::pin(self.publisher.send(&outgoing)).await;
        let outcome = match &result {
            Ok(()) => "ack",
            Err(PublishError::Nacked { .. }) => "nack",
            Err(PublishError::Unroutable { .. }) => "unroutable",
            Err(_) => "error",
        };
        self.metrics
            .publish_confirms
            .with_label_values(&[outcome])
            .inc();
        self.metrics
            .publish_confirm_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Logs why a message goes back, and pauses briefly so a failing
    /// database or broker is not hammered by instant redeliveries.
    pub(super) async fn requeue_after(&self, about: About<'_>, error: &StepError) -> Handled {
        about!(warn, about, error = %error_chain(error), "handing message back for redelivery");
        tokio::time::sleep(Duration::from_millis(500)).await;
        Handled::Requeue
    }
}
