//! The endpoint lifecycle in the ledger: webhooks disabled with a reason,
//! their deliveries paused and replayed, and the failing episodes that
//! disable a webhook and are reported to its workspace.
//!
//! A failing episode runs from a webhook's first failed attempt after a
//! success (or ever) to its next success. It is one row in
//! `webhook_health`, written when the episode starts, when it is reported
//! (`webhook.failing`) and when it ends, never on a healthy endpoint's
//! attempts. Every change is a conditional statement, so of several
//! replicas that see the same episode, one starts it, one reports it and
//! one disables the webhook. The queries are written once
//! (`lifecycle/queries.rs`); each backend's SQL sits beside it.

mod postgres;
pub(crate) mod queries;
mod sqlite;

use chrono::{DateTime, Utc};
use courier_model::{DisabledReason, Subscription, SubscriptionId, WorkspaceId};

use crate::{Result, Store, dispatch};
use queries::LifecycleQueries;

/// What becomes of a webhook's outstanding deliveries when it is saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PausedDeliveries {
    /// Nothing changes.
    Keep,
    /// Its pending and retrying deliveries are paused (it was disabled).
    Pause,
    /// Its paused deliveries are due again at once, each owed its next
    /// attempt (it was enabled again, replaying what it missed).
    Replay,
    /// Its paused deliveries are canceled (enabled without replaying).
    Cancel,
}

/// What [`Store::disable_subscription`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disabling {
    /// Disabled it, pausing this many deliveries.
    Disabled { paused: u64 },
    /// A success came after the episode began: it was over, and a new one
    /// starts at the time given (nothing disabled).
    Recovered,
    /// Nothing: disabled already, deleted, or the episode is not open.
    Unchanged,
}

/// A failing episode that ended with a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndedEpisode {
    /// Its first failed attempt.
    pub since: DateTime<Utc>,
    /// Whether it was reported (`webhook.failing` published).
    pub reported: bool,
}

/// A failing episode not ended yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenEpisode {
    pub subscription_id: SubscriptionId,
    pub since: DateTime<Utc>,
    pub reported: bool,
}

/// Disabled webhooks and paused deliveries, for the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LifecycleCounts {
    pub disabled: Vec<(DisabledReason, u64)>,
    pub paused_deliveries: u64,
}

impl Store {
    /// Saves the subscription as [`Store::update_subscription`] does and, in
    /// the same transaction, does `then` to its deliveries. Returns how many
    /// deliveries that changed, or `None` when there is no such
    /// subscription in its workspace.
    pub async fn update_subscription_and(
        &self,
        sub: &Subscription,
        then: PausedDeliveries,
    ) -> Result<Option<u64>> {
        dispatch!(self, s => s.update_subscription_and(sub, then).await)
    }

    /// Disables an enabled webhook for `reason` at `at` and pauses its
    /// outstanding deliveries, in one transaction. With `failing_since`,
    /// only while that failing episode is still open and no delivery of the
    /// webhook succeeded since it began (a success a replica missed); when
    /// one did, the episode restarts at `at` instead.
    pub async fn disable_subscription(
        &self,
        workspace: &WorkspaceId,
        id: SubscriptionId,
        reason: DisabledReason,
        at: DateTime<Utc>,
        failing_since: Option<DateTime<Utc>>,
    ) -> Result<Disabling> {
        dispatch!(self, s => s.disable_subscription(workspace, id, reason, at, failing_since).await)
    }

    /// How many of the webhook's deliveries are paused.
    pub async fn count_paused(&self, workspace: &WorkspaceId, id: SubscriptionId) -> Result<u64> {
        dispatch!(self, s => s.count_paused(workspace, id).await)
    }

    /// Starts a failing episode at `at` unless one is open; returns the open
    /// episode's start, or `None` when the webhook is gone.
    pub async fn start_failing(
        &self,
        workspace: &WorkspaceId,
        id: SubscriptionId,
        at: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        dispatch!(self, s => s.start_failing(workspace, id, at).await)
    }

    /// Marks the episode that started at `since` reported; `true` for the
    /// one caller that did (the episode is still open and was not reported).
    pub async fn report_failing(
        &self,
        id: SubscriptionId,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        dispatch!(self, s => s.report_failing(id, since, at).await)
    }

    /// Ends the webhook's failing episode with a success at `at`; returns it
    /// when one was open.
    pub async fn end_failing(
        &self,
        id: SubscriptionId,
        at: DateTime<Utc>,
    ) -> Result<Option<EndedEpisode>> {
        dispatch!(self, s => s.end_failing(id, at).await)
    }

    /// Every webhook's open failing episode (a small set: webhooks failing
    /// now), so each replica knows which successes end one.
    pub async fn open_episodes(&self) -> Result<Vec<OpenEpisode>> {
        dispatch!(self, s => s.open_episodes().await)
    }

    pub async fn lifecycle_counts(&self) -> Result<LifecycleCounts> {
        dispatch!(self, s => s.lifecycle_counts().await)
    }
}
