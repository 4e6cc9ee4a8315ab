//! What the web console keeps in the ledger and reads from it: its sign-in
//! sessions, one-time portal links, and the summaries its webhook list and
//! workspace overview show.
//!
//! Sessions and links are stored by the SHA-256 of their secret, never the
//! secret: the caller hashes, the store only compares hashes. The queries
//! are written once (`console/queries.rs`); each backend's SQL sits beside
//! it (`console/sqlite.rs`, `console/postgres.rs`), as for the rest of the
//! ledger. Every read of deliveries is scoped by workspace: another
//! workspace's rows never count, whatever subscription id is asked about.

mod postgres;
mod queries;
mod sqlite;

use chrono::{DateTime, Utc};
use courier_model::{DeliveryStatus, SubscriptionId, WorkspaceId};
use serde::Serialize;

use crate::{DeliveryFilter, Result, Store, dispatch};
use queries::ConsoleQueries;

/// How a console session was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// With one of the workspace's API keys.
    Key,
    /// Through a portal link.
    Portal,
    /// With the admin token: every workspace.
    Admin,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Portal => "portal",
            Self::Admin => "admin",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::Key, Self::Portal, Self::Admin]
            .into_iter()
            .find(|k| k.as_str() == value)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSession {
    /// SHA-256 (hex) of the cookie's value.
    pub id_hash: String,
    pub kind: SessionKind,
    /// `None` only for [`SessionKind::Admin`] (the database refuses others
    /// without one).
    pub workspace_id: Option<WorkspaceId>,
    pub read_only: bool,
    /// What every form of the session must send back.
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A one-time link into one workspace's console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalLink {
    pub workspace_id: WorkspaceId,
    pub read_only: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// One webhook's deliveries at a glance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebhookHealth {
    pub subscription_id: SubscriptionId,
    /// Deliveries created since `since`, by their status now.
    pub succeeded: u64,
    pub dead: u64,
    pub canceled: u64,
    pub retrying: u64,
    pub pending: u64,
    /// The latest attempt of the webhook's deliveries created since
    /// `since` (`None` when none was attempted), as each delivery records
    /// its last attempt, and that attempt's HTTP status (`None` too when
    /// it got no response).
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_response_status: Option<u16>,
    /// Over all time, not just since `since`: deliveries not final yet
    /// (pending or retrying), and of those the ones the ledger holds.
    pub waiting: u64,
    pub held: u64,
}

impl Store {
    // --- sessions -----------------------------------------------------------

    /// `NotFound { what: "workspace" }` when the workspace does not exist,
    /// `Conflict` when the hash is taken.
    pub async fn insert_console_session(&self, session: &ConsoleSession) -> Result<()> {
        dispatch!(self, s => s.insert_console_session(session).await)
    }

    /// The session whose id hashes to `id_hash`; `None` when unknown or
    /// expired at `now`.
    pub async fn find_console_session(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ConsoleSession>> {
        dispatch!(self, s => s.find_console_session(id_hash, now).await)
    }

    /// `false` when there was none.
    pub async fn delete_console_session(&self, id_hash: &str) -> Result<bool> {
        dispatch!(self, s => s.delete_console_session(id_hash).await)
    }

    /// Removes the sessions and portal links (used or not) expired at
    /// `now`, in one transaction; returns how many rows went.
    pub async fn prune_console(&self, now: DateTime<Utc>) -> Result<u64> {
        dispatch!(self, s => s.prune_console(now).await)
    }

    // --- portal links -------------------------------------------------------

    /// Stores a link by its token's hash. `NotFound { what: "workspace" }`
    /// when the workspace does not exist, `Conflict` when the hash is taken.
    pub async fn insert_portal_link(&self, token_hash: &str, link: &PortalLink) -> Result<()> {
        dispatch!(self, s => s.insert_portal_link(token_hash, link).await)
    }

    /// Marks the link used at `now` and returns it, in one statement, so
    /// that of two redemptions at once (two replicas) exactly one gets it.
    /// `None` when unknown, already used or expired at `now`.
    pub async fn redeem_portal_link(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PortalLink>> {
        dispatch!(self, s => s.redeem_portal_link(token_hash, now).await)
    }

    // --- read models ----------------------------------------------------------

    /// One entry per subscription of the workspace that has deliveries
    /// created since `since` or waiting (subscriptions deleted since
    /// included: their deliveries stay in the ledger), in subscription id
    /// order. Subscriptions with neither are absent.
    ///
    /// Reads every delivery of the workspace (the waiting count is over all
    /// time, and no index knows status), none of another workspace's.
    pub async fn webhook_health(
        &self,
        workspace: &WorkspaceId,
        since: DateTime<Utc>,
    ) -> Result<Vec<WebhookHealth>> {
        dispatch!(self, s => s.webhook_health(workspace, since).await)
    }

    /// The workspace's deliveries created since `since`, counted per hour
    /// of their creation (UTC, the hour's start) and status now, ordered by
    /// hour then status name. Hours with none are absent.
    pub async fn delivery_outcomes_by_hour(
        &self,
        workspace: &WorkspaceId,
        since: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, DeliveryStatus, u64)>> {
        dispatch!(self, s => s.delivery_outcomes_by_hour(workspace, since).await)
    }

    /// How many of the workspace's deliveries, over all time, the delivery
    /// log would list with `filter`.
    pub async fn count_deliveries(
        &self,
        workspace: &WorkspaceId,
        filter: &DeliveryFilter,
    ) -> Result<u64> {
        dispatch!(self, s => s.count_deliveries(workspace, filter).await)
    }
}
