//! courier's ledger: workspaces, subscriptions, events, deliveries and every
//! delivery attempt, on SQLite (the embedded default) or PostgreSQL with the
//! same behaviour.
//!
//! [`Store`] is the one entry point. What the two backends do alike is
//! written once: the batch plan (`batch.rs`), the other queries
//! (`queries.rs`) and the row mapping (`rows.rs`); each backend's connections,
//! encodings and SQL live side by side in `sqlite.rs` and `postgres.rs`,
//! behind one private trait (`dialect.rs`). The hot path (fan-out and
//! attempt records) goes through [`Ledger`], which groups concurrent writes
//! into one transaction (group commit). The web console's sessions, portal
//! links and read models are in `console.rs`. This crate knows nothing of
//! RabbitMQ or HTTP.

mod batch;
mod circuits;
mod console;
mod dialect;
mod error;
mod ledger;
mod lifecycle;
#[cfg(test)]
mod plans;
mod postgres;
mod queries;
mod retention;
mod rows;
pub mod scratch;
mod sqlite;

use chrono::{DateTime, Utc};
use courier_model::{
    DeliveryId, DeliveryStatus, ErrorKind, Event, EventId, EventType, Subscription, SubscriptionId,
    WorkspaceId,
};
use serde::Serialize;

use queries::Queries;

pub use circuits::{CircuitRow, DeadReason, OpenCircuitHeld};
pub use console::{ConsoleSession, PortalLink, SessionKind, WebhookHealth};
pub use error::{Result, StoreError};
pub use ledger::{DEFAULT_SQLITE_COMMIT_INTERVAL, Ledger, LedgerOptions};
pub use lifecycle::{Disabling, EndedEpisode, LifecycleCounts, OpenEpisode, PausedDeliveries};
pub use postgres::PgStore;
pub use retention::{
    NextBatch, OnBatch, PRUNE_LOCK_KEY, PruneLock, PruneOptions, PruneReport, PrunedRows,
    Reclaimed, RetentionPlan, WorkspacePruned,
};
pub use sqlite::SqliteStore;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Workspace {
    pub id: WorkspaceId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// The ledger's subscriptions version: a counter that every change to a
/// subscription moves forward in the change's own transaction (a trigger
/// does, whatever made the change). Equal fingerprints mean no change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SubscriptionsFingerprint {
    pub version: i64,
}

/// One hot-path write. A batch of these commits in one transaction.
///
/// A batch may be applied in kind order (fan-outs, attempts, holds, cancels) rather
/// than as listed, to make fewer statements of it; so the ops of one
/// [`Ledger::write_many`] call must already be in that order (a fan-out
/// before the attempts of its deliveries, never the other way round).
#[derive(Clone, Debug)]
pub enum WriteOp {
    /// Record an event and one pending delivery per matching subscription.
    /// Idempotent: a redelivered event inserts nothing new.
    FanOut {
        event: std::sync::Arc<Event>,
        deliveries: Vec<(DeliveryId, SubscriptionId)>,
        /// Deliveries to disabled webhooks: recorded `paused`, never
        /// published nor attempted until the webhook is enabled again.
        paused: Vec<(DeliveryId, SubscriptionId)>,
    },
    /// Record one attempt and the delivery's new state.
    Attempt(AttemptWrite),
    /// Hold a delivery in the ledger until `until`, owed attempt `attempt`,
    /// with no message for it anywhere: a worker claims it from there (see
    /// [`Store::claim_held`]). Does nothing when that attempt was made
    /// already or the delivery is finished.
    Hold {
        delivery_id: DeliveryId,
        attempt: u32,
        until: DateTime<Utc>,
    },
    /// Mark a delivery canceled (its subscription was deleted).
    Cancel { delivery_id: DeliveryId },
    /// Mark a delivery paused (its subscription is disabled): kept,
    /// unattempted, until the webhook is enabled again.
    Pause { delivery_id: DeliveryId },
}

impl WriteOp {
    /// Position of this kind of op in the order a batch is applied in.
    pub fn kind_rank(&self) -> u8 {
        match self {
            WriteOp::FanOut { .. } => 0,
            WriteOp::Attempt(_) => 1,
            WriteOp::Hold { .. } => 2,
            WriteOp::Cancel { .. } => 3,
            WriteOp::Pause { .. } => 4,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// The deliveries of a fan-out that still need their first message: all
    /// of them for a new event; for a redelivered event, those still pending.
    FanOut {
        to_publish: Vec<(DeliveryId, SubscriptionId)>,
    },
    /// `recorded` is false when the ledger already held this attempt number
    /// (a duplicate message): the caller must not act on it again.
    Attempt {
        recorded: bool,
    },
    /// `held` is false when the delivery no longer owed that attempt.
    Held {
        held: bool,
    },
    Canceled,
    Paused,
}

/// An attempt and the delivery state it leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptWrite {
    pub delivery_id: DeliveryId,
    /// 1-based; unique per delivery.
    pub attempt: u32,
    pub url: String,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u32,
    pub response_status: Option<u16>,
    pub error_kind: Option<ErrorKind>,
    /// A short, human-readable error (never contains secrets).
    pub error: Option<String>,
    /// At most a few KiB of the response body.
    pub response_excerpt: Option<String>,
    /// The response's `Retry-After` header, as sent (bounded).
    pub retry_after: Option<String>,
    pub new_status: DeliveryStatus,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Keeps the delivery held until then (see [`WriteOp::Hold`]): for an
    /// attempt that no message carries (a held delivery released, a first
    /// attempt that outlived its event's ack), the ledger itself owes the
    /// next attempt, so nothing has to be published after the commit.
    /// `None` ends any hold.
    pub held_until: Option<DateTime<Utc>>,
}

/// A delivery as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    pub id: DeliveryId,
    pub event_id: EventId,
    pub subscription_id: SubscriptionId,
    pub workspace_id: WorkspaceId,
    pub event_type: EventType,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_response_status: Option<u16>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Set while the ledger holds the delivery (no message carries it): due
    /// then, or claimed by a worker until then.
    pub held_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A subscription's held deliveries that are due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldDue {
    pub subscription_id: SubscriptionId,
    /// `None` once the subscription is deleted.
    pub url: Option<String>,
    pub due: u64,
}

/// A held delivery a worker claimed: it owes attempt `attempts + 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldDelivery {
    pub id: DeliveryId,
    pub event_id: EventId,
    pub subscription_id: SubscriptionId,
    pub event_type: EventType,
    pub attempts: u32,
}

/// An attempt as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    pub delivery_id: DeliveryId,
    pub attempt: u32,
    pub url: String,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u32,
    pub response_status: Option<u16>,
    pub error_kind: Option<ErrorKind>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    /// The response's `Retry-After` header, as sent.
    pub retry_after: Option<String>,
}

/// An event as the ledger recorded it: every event a worker consumed,
/// whether or not it matched a webhook.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    pub event: Event,
    /// When the fan-out that recorded it committed.
    pub received_at: DateTime<Utc>,
}

/// Everything the delivery stage needs to make one attempt, read in one go.
#[derive(Clone, Debug)]
pub struct DeliveryContext {
    pub delivery: DeliveryRecord,
    pub event: Event,
    /// `None` when the subscription has been deleted since fan-out.
    pub subscription: Option<Subscription>,
}

/// An API key as stored: never the key itself, only its SHA-256 hash (kept
/// apart, see [`Store::insert_api_key`]) and a short prefix an operator can
/// recognise it by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub workspace_id: WorkspaceId,
    pub name: String,
    /// The first characters of the key (`ck_abcd`), for recognising it in a
    /// list; too short to be guessed from.
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
}

/// Which deliveries a log lists; `None` means any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    pub event_type: Option<EventType>,
    pub status: Option<DeliveryStatus>,
    pub subscription: Option<SubscriptionId>,
}

/// A position in a delivery log (newest first): the last row a page showed.
/// Rows are ordered by (created_at, id), both immutable, so a cursor keeps
/// its place however many rows are inserted meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryCursor {
    pub created_at: DateTime<Utc>,
    pub id: DeliveryId,
}

/// A delivery with the URL it goes to: the URL of its latest attempt, or
/// the subscription's current URL when none was made yet (`None` when the
/// subscription is deleted and nothing was attempted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeliveryLogEntry {
    pub delivery: DeliveryRecord,
    pub url: Option<String>,
    /// Why a dead delivery died before its attempts ran out (`None` when
    /// they did, or it is not dead).
    pub dead_reason: Option<DeadReason>,
}

impl DeliveryLogEntry {
    pub fn cursor(&self) -> DeliveryCursor {
        DeliveryCursor {
            created_at: self.delivery.created_at,
            id: self.delivery.id,
        }
    }
}

/// Connection settings beyond the URL.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Upper bound of pooled connections (PostgreSQL; SQLite readers).
    pub max_connections: u32,
    /// What a SQLite commit survives; PostgreSQL has its own settings.
    pub sqlite_sync: SqliteSync,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            sqlite_sync: SqliteSync::Full,
        }
    }
}

/// SQLite's `synchronous` setting (WAL mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SqliteSync {
    /// Every commit is fsynced before it returns: it survives a power loss
    /// or a kernel crash as well as the process dying. Held deliveries and
    /// retries the ledger owes live only there, their events long acked,
    /// so this is the default.
    #[default]
    Full,
    /// Commits are fsynced at checkpoints only: they survive the process
    /// dying, but a power loss may roll back the last of them, and with
    /// them deliveries whose events were acked. An explicit opt-in.
    Normal,
}

impl SqliteSync {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "full" => Some(Self::Full),
            "normal" => Some(Self::Normal),
            _ => None,
        }
    }
}

/// The ledger, on one of its backends. Cheap to clone (pools are shared).
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}
pub(crate) use dispatch;

impl Store {
    /// Connects to `sqlite://PATH` (file created when missing; WAL,
    /// `synchronous` as `options.sqlite_sync` says) or `postgres://...`.
    /// Does not migrate.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite(SqliteStore::connect(url, options).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(PgStore::connect(url, options).await?))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Store::Sqlite(_) => Backend::Sqlite,
            Store::Postgres(_) => Backend::Postgres,
        }
    }

    /// Applies this backend's migrations (`migrations/sqlite` or
    /// `migrations/postgres`).
    pub async fn migrate(&self) -> Result<()> {
        dispatch!(self, s => s.migrate().await)
    }

    /// A round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        dispatch!(self, s => s.ping().await)
    }

    pub async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }

    // --- workspaces -------------------------------------------------------

    /// `Conflict` when the id is taken.
    pub async fn create_workspace(&self, workspace: &Workspace) -> Result<()> {
        dispatch!(self, s => s.create_workspace(workspace).await)
    }

    pub async fn get_workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>> {
        dispatch!(self, s => s.get_workspace(id).await)
    }

    pub async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
        dispatch!(self, s => s.list_workspaces().await)
    }

    // --- subscriptions ----------------------------------------------------

    /// `NotFound { what: "workspace" }` when the workspace does not exist.
    pub async fn insert_subscription(&self, sub: &Subscription) -> Result<()> {
        dispatch!(self, s => s.insert_subscription(sub).await)
    }

    /// Inserts many subscriptions in one transaction, each row exactly as
    /// [`Store::insert_subscription`] writes it, several hundred to a
    /// statement (the bench sets up a million this way). Nothing is
    /// inserted if one is refused.
    pub async fn insert_subscriptions(&self, subs: &[Subscription]) -> Result<()> {
        dispatch!(self, s => s.insert_subscriptions(subs).await)
    }

    /// Scoped to the workspace: another workspace's id is `None`.
    pub async fn get_subscription(
        &self,
        workspace: &WorkspaceId,
        id: SubscriptionId,
    ) -> Result<Option<Subscription>> {
        dispatch!(self, s => s.get_subscription(workspace, id).await)
    }

    /// Oldest first, at most `limit`, strictly after `after` (ids are time
    /// ordered).
    pub async fn list_subscriptions(
        &self,
        workspace: &WorkspaceId,
        limit: u32,
        after: Option<SubscriptionId>,
    ) -> Result<Vec<Subscription>> {
        dispatch!(self, s => s.list_subscriptions(workspace, limit, after).await)
    }

    /// Replaces every mutable field (name, url, types, channels, secrets,
    /// status, updated_at) of the subscription with this id in its
    /// workspace. `false` when there is none.
    pub async fn update_subscription(&self, sub: &Subscription) -> Result<bool> {
        dispatch!(self, s => s.update_subscription(sub).await)
    }

    /// Deletes the subscription; its deliveries and attempts stay readable.
    /// `false` when there is none in that workspace.
    pub async fn delete_subscription(
        &self,
        workspace: &WorkspaceId,
        id: SubscriptionId,
    ) -> Result<bool> {
        dispatch!(self, s => s.delete_subscription(workspace, id).await)
    }

    /// Every enabled subscription, for the matching index.
    pub async fn load_enabled_subscriptions(&self) -> Result<Vec<Subscription>> {
        let mut all = Vec::new();
        self.for_each_enabled_subscription(&mut |s| all.push(s))
            .await?;
        Ok(all)
    }

    /// Streams every enabled subscription into `each` (in id order) without
    /// holding them all; returns how many there were.
    pub async fn for_each_enabled_subscription(
        &self,
        each: &mut (dyn FnMut(Subscription) + Send),
    ) -> Result<usize> {
        dispatch!(self, s => s.for_each_subscription(true, each).await)
    }

    /// As [`Store::for_each_enabled_subscription`], disabled ones too: the
    /// matching index keeps them, so their deliveries are recorded paused.
    pub async fn for_each_subscription(
        &self,
        each: &mut (dyn FnMut(Subscription) + Send),
    ) -> Result<usize> {
        dispatch!(self, s => s.for_each_subscription(false, each).await)
    }

    /// Changes whenever a subscription is created, updated or deleted, in
    /// the change's own transaction: a cheap test (one row) of whether a
    /// cached set is stale.
    pub async fn subscriptions_fingerprint(&self) -> Result<SubscriptionsFingerprint> {
        dispatch!(self, s => s.subscriptions_fingerprint().await)
    }

    // --- API keys ----------------------------------------------------------

    /// Stores a key by its hash. `NotFound { what: "workspace" }` when the
    /// workspace does not exist, `Conflict` when the hash or id is taken.
    pub async fn insert_api_key(&self, key: &ApiKeyRecord, key_hash: &str) -> Result<()> {
        dispatch!(self, s => s.insert_api_key(key, key_hash).await)
    }

    /// The key whose SHA-256 hash is `key_hash`. Looking up by hash needs no
    /// constant-time comparison: the database never sees the key itself.
    pub async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        dispatch!(self, s => s.find_api_key(key_hash).await)
    }

    /// The keys of one workspace, oldest first.
    pub async fn list_api_keys(&self, workspace: &WorkspaceId) -> Result<Vec<ApiKeyRecord>> {
        dispatch!(self, s => s.list_api_keys(workspace).await)
    }

    /// Deletes a key of `workspace`; false when it has no key `id` (another
    /// workspace's key is left alone).
    pub async fn delete_api_key(&self, workspace: &WorkspaceId, id: &str) -> Result<bool> {
        dispatch!(self, s => s.delete_api_key(workspace, id).await)
    }

    // --- delivery log ---------------------------------------------------------

    /// Deliveries of one workspace, newest first, at most `limit`, strictly
    /// after `after` in that order.
    pub async fn list_deliveries(
        &self,
        workspace: &WorkspaceId,
        filter: &DeliveryFilter,
        limit: u32,
        after: Option<DeliveryCursor>,
    ) -> Result<Vec<DeliveryLogEntry>> {
        dispatch!(self, s => s.list_deliveries(workspace, filter, limit, after).await)
    }

    /// One delivery, scoped to the workspace: another workspace's is `None`.
    pub async fn get_delivery_entry(
        &self,
        workspace: &WorkspaceId,
        id: DeliveryId,
    ) -> Result<Option<DeliveryLogEntry>> {
        dispatch!(self, s => s.get_delivery_entry(workspace, id).await)
    }

    /// One event of the workspace as recorded, matched or not; another
    /// workspace's event of the same id is `None`.
    pub async fn get_event(
        &self,
        workspace: &WorkspaceId,
        id: &EventId,
    ) -> Result<Option<EventRecord>> {
        dispatch!(self, s => s.get_event(workspace, id).await)
    }

    /// The deliveries of one event of the workspace with the URL each goes
    /// to, oldest first.
    pub async fn event_deliveries(
        &self,
        workspace: &WorkspaceId,
        id: &EventId,
    ) -> Result<Vec<DeliveryLogEntry>> {
        dispatch!(self, s => s.event_deliveries(workspace, id).await)
    }

    /// Puts a delivery of this workspace back to `retrying` (attempt count
    /// kept, so the next message carries `attempts + 1`) and returns it as it
    /// was before. `None` when there is no such delivery in the workspace.
    pub async fn reopen_delivery(
        &self,
        workspace: &WorkspaceId,
        id: DeliveryId,
    ) -> Result<Option<DeliveryRecord>> {
        dispatch!(self, s => s.reopen_delivery(workspace, id).await)
    }

    /// As [`Store::reopen_delivery`] for the `dead` and `canceled` deliveries
    /// of one subscription created at or after `since`, oldest first, at most
    /// `limit`. Returns them as they were before.
    pub async fn reopen_failed_deliveries(
        &self,
        workspace: &WorkspaceId,
        subscription: SubscriptionId,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>> {
        dispatch!(self, s => s.reopen_failed_deliveries(workspace, subscription, since, limit).await)
    }

    /// Undoes a reopen whose message could not be published: puts back the
    /// status and next attempt time of `before`, unless an attempt was
    /// recorded since. `false` when the delivery had moved on.
    pub async fn restore_delivery(&self, before: &DeliveryRecord) -> Result<bool> {
        dispatch!(self, s => s.restore_delivery(before).await)
    }

    // --- hot path -----------------------------------------------------------

    /// Applies `ops` in one transaction, results in the same order. Prefer
    /// [`Ledger`], which batches concurrent callers into these.
    pub async fn apply(&self, ops: &[WriteOp]) -> Result<Vec<WriteResult>> {
        dispatch!(self, s => batch::apply(s, ops).await)
    }

    pub async fn delivery_context(&self, id: DeliveryId) -> Result<Option<DeliveryContext>> {
        dispatch!(self, s => s.delivery_context(id).await)
    }

    /// The subscriptions with held deliveries due at `now`, with their URL
    /// and how many each has.
    pub async fn held_due(&self, now: DateTime<Utc>) -> Result<Vec<HeldDue>> {
        dispatch!(self, s => s.held_due(now).await)
    }

    /// Claims at most `limit` of the subscription's held deliveries due at
    /// `now`, longest due first: they stay held, but until `lease_until`, so
    /// no other worker claims them meanwhile, and a worker that dies
    /// holding them only delays them. Recording their next attempt (or a
    /// new hold, or a cancel) ends the claim.
    pub async fn claim_held(
        &self,
        subscription: SubscriptionId,
        limit: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<HeldDelivery>> {
        dispatch!(self, s => s.claim(subscription, None, limit, now, lease_until).await)
    }

    /// As [`Store::claim_held`] for the subscription's due held
    /// deliveries created before `created_before`: those whose retry
    /// schedule ran out while they waited.
    pub async fn claim_expired(
        &self,
        subscription: SubscriptionId,
        created_before: DateTime<Utc>,
        limit: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<HeldDelivery>> {
        dispatch!(self, s => s.claim(subscription, Some(created_before), limit, now, lease_until).await)
    }

    /// Marks held deliveries dead for `reason`, ending their hold; returns
    /// those that were still held (an attempt or a cancel may have come
    /// first).
    pub async fn give_up_held(
        &self,
        ids: &[DeliveryId],
        reason: DeadReason,
    ) -> Result<Vec<DeliveryId>> {
        dispatch!(self, s => s.give_up_held(ids, reason).await)
    }

    // --- reads for operators and tests ---------------------------------------

    pub async fn get_delivery(&self, id: DeliveryId) -> Result<Option<DeliveryRecord>> {
        dispatch!(self, s => s.get_delivery(id).await)
    }

    /// The deliveries of one event of one workspace, oldest first.
    pub async fn deliveries_of_event(
        &self,
        workspace: &WorkspaceId,
        event: &EventId,
    ) -> Result<Vec<DeliveryRecord>> {
        dispatch!(self, s => s.deliveries_of_event(workspace, event).await)
    }

    /// Oldest first.
    pub async fn list_attempts(&self, delivery: DeliveryId) -> Result<Vec<AttemptRecord>> {
        dispatch!(self, s => s.list_attempts(delivery).await)
    }

    /// Number of deliveries in each status (statuses with none are absent).
    pub async fn delivery_counts(&self) -> Result<Vec<(DeliveryStatus, u64)>> {
        dispatch!(self, s => s.delivery_counts().await)
    }
}
