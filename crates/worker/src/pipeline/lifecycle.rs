//! The endpoint lifecycle after each recorded attempt: a webhook whose
//! endpoint answered `410 Gone` is disabled at once; one that keeps failing
//! is reported to its workspace (`webhook.failing`, once per failing
//! episode) and, with no success for `endpoints.disable_after`, disabled
//! (`webhook.disabled`); a success after a reported episode is reported too
//! (`webhook.recovered`). A disabled webhook's deliveries are paused in the
//! transaction that disables it.
//!
//! The episodes live in the ledger (see `courier_store`'s lifecycle); this
//! worker keeps only what saves it queries: which webhooks have an open
//! episode (read from the ledger every [`LOOK_EVERY`], and kept up to date
//! by its own changes), and how many attempts in a row failed here. A
//! healthy endpoint's attempts cost a map lookup and nothing else.
//!
//! Notices are ordinary events of the webhook's workspace, published with a
//! confirm to the events exchange; their ids are derived from the episode,
//! so that two replicas reporting the same thing make one event. A notice
//! whose publish fails is logged and not retried: the state change it
//! reports is in the ledger, the API and the metrics regardless.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_model::{
    Decision, DeliveryMessage, DeliveryTarget, DisabledReason, Event, Subscription, SubscriptionId,
    WorkspaceId, notice,
};
use courier_store::Disabling;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};
use tokio_util::sync::CancellationToken;

use super::Pipeline;
use super::attempt::Attempted;
use crate::error_chain;
use crate::log::{About, about};
use crate::metrics::Metrics;

/// How often the ledger's open episodes are read.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How often the disabled and paused counts are read for the metrics.
const COUNT_EVERY: Duration = Duration::from_secs(15);

/// What this worker knows of webhooks' failing episodes.
#[derive(Debug, Default)]
pub(crate) struct Episodes {
    by_webhook: Mutex<HashMap<SubscriptionId, Local>>,
    /// Whether the map holds anything: while it does not (every webhook
    /// healthy, as far as this worker knows), a success takes no lock.
    any: AtomicBool,
}

/// The map, locked; says on release whether it holds anything.
struct Locked<'a> {
    map: MutexGuard<'a, HashMap<SubscriptionId, Local>>,
    any: &'a AtomicBool,
}

impl std::ops::Deref for Locked<'_> {
    type Target = HashMap<SubscriptionId, Local>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.any.store(!self.map.is_empty(), Ordering::Release);
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Local {
    /// The open episode's start, as the ledger has it.
    since: Option<DateTime<Utc>>,
    /// Whether it was reported.
    reported: bool,
    /// Failed attempts in a row seen by this worker.
    in_a_row: u32,
}

impl Episodes {
    fn lock(&self) -> Locked<'_> {
        Locked {
            map: self.by_webhook.lock().unwrap_or_else(|e| e.into_inner()),
            any: &self.any,
        }
    }

    /// Whether this worker knows of any failing webhook (no lock).
    fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// Takes the ledger's open episodes as the truth about which episodes
    /// are open; keeps this worker's failure counts.
    fn refresh(&self, open: &[courier_store::OpenEpisode]) {
        let mut map = self.lock();
        for local in map.values_mut() {
            local.since = None;
            local.reported = false;
        }
        for episode in open {
            let local = map.entry(episode.subscription_id).or_default();
            local.since = Some(episode.since);
            local.reported = episode.reported;
        }
        map.retain(|_, l| l.since.is_some() || l.in_a_row > 0);
    }
}

/// The lifecycle's metrics, in the worker's registry.
#[derive(Clone, Debug)]
pub(crate) struct LifecycleMetrics {
    disabled: IntGaugeVec,
    paused: IntGauge,
    disabled_total: IntCounterVec,
    notices: IntCounterVec,
}

impl LifecycleMetrics {
    pub(crate) fn new(metrics: &Metrics) -> Self {
        let registry = metrics.registry();
        let disabled = IntGaugeVec::new(
            Opts::new(
                "courier_webhooks_disabled",
                "Disabled webhooks by reason: manual, failing, gone (ledger-wide).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let paused = IntGauge::new(
            "courier_deliveries_paused",
            "Deliveries kept paused because their webhook is disabled (ledger-wide).",
        )
        .expect("valid metric");
        let disabled_total = IntCounterVec::new(
            Opts::new(
                "courier_webhooks_disabled_total",
                "Webhooks this process disabled, by reason: failing or gone.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let notices = IntCounterVec::new(
            Opts::new(
                "courier_webhook_notices_total",
                "Operational events published, by type and outcome (published or failed).",
            ),
            &["type", "outcome"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(disabled.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(paused.clone()),
            Box::new(disabled_total.clone()),
            Box::new(notices.clone()),
        ] {
            // A second worker in one process (tests) shares the first's.
            let _ = registry.register(metric);
        }
        // Present from the start, at zero, for dashboards and alerts.
        for reason in [DisabledReason::Failing, DisabledReason::Gone] {
            disabled_total.with_label_values(&[reason.as_str()]);
        }
        Self {
            disabled,
            paused,
            disabled_total,
            notices,
        }
    }
}

impl Pipeline {
    /// What a recorded attempt means for its webhook's lifecycle: ends a
    /// failing episode, starts or reports one, or disables the webhook.
    /// Never fails the delivery: what goes wrong is logged.
    pub(super) async fn after_attempt(
        &self,
        msg: &DeliveryMessage,
        event: &Event,
        attempted: &Attempted,
    ) {
        let webhook = msg.subscription_id;
        let now = Utc::now();
        // The branches that touch the ledger are rare and their futures
        // large: boxed, so that the common case's future stays small (see
        // future_sizes.rs).
        match attempted.decision {
            // Disabled already, before the attempt was recorded.
            Decision::Gone => {}
            // The common case: nothing failing anywhere, nothing to do.
            Decision::Succeeded if !self.episodes.any() => {}
            Decision::Succeeded => {
                let open = {
                    let mut map = self.episodes.lock();
                    map.get_mut(&webhook).and_then(|local| {
                        local.in_a_row = 0;
                        local.since.take()
                    })
                };
                if let Some(since) = open {
                    Box::pin(self.end_episode(&event.workspace_id, webhook, since, now)).await;
                }
            }
            Decision::Retry { .. } | Decision::Dead => {
                let last = notice::LastFailure {
                    at: Some(attempted.write.started_at),
                    status: attempted.write.response_status,
                    error: attempted.write.error_kind.map(|k| k.as_str().to_owned()),
                };
                if let Err(error) =
                    Box::pin(self.failed(&event.workspace_id, webhook, now, &last)).await
                {
                    about!(warn, About::Delivery(msg), error = %error_chain(&error), "recording the webhook's failing episode failed; the next failure tries again");
                }
            }
        }
    }

    async fn end_episode(
        &self,
        workspace: &WorkspaceId,
        webhook: SubscriptionId,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) {
        match self.store.end_failing(webhook, now).await {
            Ok(Some(episode)) if episode.reported => {
                if let Some(sub) = self.webhook(workspace, webhook).await {
                    tracing::info!(webhook_id = %webhook, "webhook delivered again after failing; reporting its recovery");
                    self.publish_notice(notice::recovered(&sub, episode.since, now))
                        .await;
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(webhook_id = %webhook, error = %error_chain(&error), "ending the webhook's failing episode failed; the next success tries again");
                // Still open as far as the ledger knows: the next success
                // ends it.
                self.episodes
                    .lock()
                    .entry(webhook)
                    .or_default()
                    .since
                    .get_or_insert(since);
            }
        }
    }

    async fn failed(
        &self,
        workspace: &WorkspaceId,
        webhook: SubscriptionId,
        now: DateTime<Utc>,
        last: &notice::LastFailure,
    ) -> Result<(), courier_store::StoreError> {
        let known = {
            let mut map = self.episodes.lock();
            let local = map.entry(webhook).or_default();
            local.in_a_row = local.in_a_row.saturating_add(1);
            *local
        };
        let since = match known.since {
            Some(since) => since,
            None => {
                let Some(since) = self.store.start_failing(workspace, webhook, now).await? else {
                    return Ok(()); // deleted meanwhile
                };
                self.episodes.lock().entry(webhook).or_default().since = Some(since);
                since
            }
        };
        let policy = self.config.endpoints;
        if !known.reported && known.in_a_row >= policy.failing_after {
            // One replica's conditional update wins the report.
            if self.store.report_failing(webhook, since, now).await?
                && let Some(sub) = self.webhook(workspace, webhook).await
            {
                tracing::warn!(webhook_id = %webhook, failures = known.in_a_row, "webhook failing; reporting it to its workspace");
                self.publish_notice(notice::failing(&sub, since, known.in_a_row, last))
                    .await;
            }
            if let Some(local) = self.episodes.lock().get_mut(&webhook) {
                local.reported = true;
            }
        }
        let failing_for = (now - since).to_std().unwrap_or_default();
        if failing_for >= policy.disable_after {
            self.disable(
                workspace,
                webhook,
                DisabledReason::Failing,
                now,
                Some(since),
            )
            .await?;
        }
        Ok(())
    }

    /// The endpoint answered 410 Gone on this attempt: its webhook is
    /// disabled now, before the attempt is recorded, so that its
    /// outstanding deliveries (and this one, should the worker die before
    /// recording it) are paused rather than attempted again.
    pub(super) async fn webhook_gone(
        &self,
        subscription: &dyn DeliveryTarget,
        msg: &DeliveryMessage,
    ) {
        let now = Utc::now();
        let result = self
            .durably("disabling a gone webhook", About::Delivery(msg), || {
                self.disable(
                    subscription.workspace_id(),
                    subscription.id(),
                    DisabledReason::Gone,
                    now,
                    None,
                )
            })
            .await;
        if let Err(error) = result {
            about!(warn, About::Delivery(msg), error = %error_chain(&error), "disabling the webhook after 410 Gone failed; the next 410 tries again");
        }
    }

    /// Disables the webhook for `reason` and reports it, unless another
    /// replica (or a success, for `failing_since`) came first.
    async fn disable(
        &self,
        workspace: &WorkspaceId,
        webhook: SubscriptionId,
        reason: DisabledReason,
        now: DateTime<Utc>,
        failing_since: Option<DateTime<Utc>>,
    ) -> Result<(), courier_store::StoreError> {
        let paused = match self
            .store
            .disable_subscription(workspace, webhook, reason, now, failing_since)
            .await?
        {
            Disabling::Disabled { paused } => paused,
            Disabling::Recovered => {
                // Read the new episode on the next failure.
                if let Some(local) = self.episodes.lock().get_mut(&webhook) {
                    local.since = None;
                    local.reported = false;
                }
                return Ok(());
            }
            Disabling::Unchanged => {
                if let Some(local) = self.episodes.lock().get_mut(&webhook) {
                    local.since = None;
                }
                return Ok(());
            }
        };
        let since =
            failing_since.or_else(|| self.episodes.lock().get(&webhook).and_then(|l| l.since));
        self.episodes.lock().remove(&webhook);
        self.lifecycle_metrics
            .disabled_total
            .with_label_values(&[reason.as_str()])
            .inc();
        tracing::warn!(
            webhook_id = %webhook,
            reason = reason.as_str(),
            paused,
            "webhook disabled: {}; its deliveries are paused until it is enabled again",
            reason.describe()
        );
        if let Some(sub) = self.webhook(workspace, webhook).await {
            self.publish_notice(notice::disabled(&sub, reason, now, since, paused))
                .await;
        }
        Ok(())
    }

    async fn webhook(&self, workspace: &WorkspaceId, id: SubscriptionId) -> Option<Subscription> {
        match self.store.get_subscription(workspace, id).await {
            Ok(sub) => sub,
            Err(error) => {
                tracing::warn!(webhook_id = %id, error = %error_chain(&error), "reading the webhook for its notice failed; no notice sent");
                None
            }
        }
    }

    async fn publish_notice(&self, event: Event) {
        let ty = event.event_type.as_str();
        let outcome = match self.topology.event(&event) {
            Ok(outgoing) => self.send(outgoing).await.map_err(|e| error_chain(&e)),
            Err(error) => Err(error_chain(&error)),
        };
        let label = match &outcome {
            Ok(()) => "published",
            Err(error) => {
                tracing::warn!(event_id = %event.id, event_type = ty, error = %error, "publishing an operational event failed");
                "failed"
            }
        };
        self.lifecycle_metrics
            .notices
            .with_label_values(&[ty, label])
            .inc();
    }

    /// Keeps this worker's view of open failing episodes and the lifecycle
    /// gauges up to date, until `stop`.
    pub async fn watch_lifecycle(self: Arc<Self>, stop: CancellationToken) {
        let mut counted: Option<tokio::time::Instant> = None;
        loop {
            match self.store.open_episodes().await {
                Ok(open) => self.episodes.refresh(&open),
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "reading failing webhooks failed")
                }
            }
            if counted.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
                counted = Some(tokio::time::Instant::now());
                match self.store.lifecycle_counts().await {
                    Ok(counts) => {
                        for reason in DisabledReason::ALL {
                            let n = counts
                                .disabled
                                .iter()
                                .find(|(r, _)| r == reason)
                                .map_or(0, |(_, n)| *n);
                            self.lifecycle_metrics
                                .disabled
                                .with_label_values(&[reason.as_str()])
                                .set(i64::try_from(n).unwrap_or(i64::MAX));
                        }
                        self.lifecycle_metrics
                            .paused
                            .set(i64::try_from(counts.paused_deliveries).unwrap_or(i64::MAX));
                    }
                    Err(error) => {
                        tracing::warn!(error = %error_chain(&error), "counting disabled webhooks failed")
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successes_take_no_lock_while_no_webhook_is_failing() {
        let episodes = Episodes::default();
        assert!(!episodes.any());
        let webhook = SubscriptionId::generate();
        episodes.lock().entry(webhook).or_default().in_a_row = 1;
        assert!(episodes.any());

        // The ledger says an episode is open: kept, with its start.
        let since = Utc::now();
        episodes.refresh(&[courier_store::OpenEpisode {
            subscription_id: webhook,
            since,
            reported: true,
        }]);
        let local = episodes.lock()[&webhook];
        assert_eq!(
            (local.since, local.reported, local.in_a_row),
            (Some(since), true, 1)
        );

        // Ended everywhere and no failure in a row here: forgotten.
        episodes.lock().get_mut(&webhook).unwrap().in_a_row = 0;
        episodes.refresh(&[]);
        assert!(!episodes.any());
        assert!(episodes.lock().is_empty());
    }
}
