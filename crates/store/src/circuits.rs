//! Each webhook's circuit breaker as the ledger keeps it, shared by every
//! worker replica (`webhook_circuits`, see
//! migrations/postgres/0010_webhook_circuits.sql), and why a delivery died
//! before its attempts ran out.
//!
//! A row exists only while a circuit is open, so a healthy webhook costs
//! nothing here: opening writes one row, each failed probe moves it, the
//! first healthy answer deletes it. Workers read the whole (small) set of
//! rows a couple of times a second ([`Store::open_circuits`]). The
//! half-open probe is a lease taken with one conditional UPDATE
//! ([`Store::claim_circuit_probe`]): of the replicas that try at once, one
//! gets it.
//!
//! The circuit is the webhook's, not its URL's: everything else the ledger
//! keeps (held deliveries, dead letters, the failing and disabled state) is
//! per webhook and scoped by workspace, and two workspaces posting to one
//! URL must not open each other's circuits.

use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_model::SubscriptionId;
use sqlx::{Database, Executor, IntoArguments};

use crate::dialect::{Bind, Conn, Dialect, Row};
use crate::rows::corrupt;
use crate::{PgStore, Result, SqliteStore, Store, dispatch};

/// Why a delivery is dead though it made fewer attempts than the schedule
/// allows. A delivery whose attempts all failed has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// Held behind its webhook's open circuit until its retry schedule's
    /// time was used up: given up as it would have been had every attempt
    /// been made and failed.
    CircuitOpen,
}

impl DeadReason {
    pub const ALL: [DeadReason; 1] = [DeadReason::CircuitOpen];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CircuitOpen => "circuit_open",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == value)
    }
}

/// One open circuit, as the ledger has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitRow {
    pub subscription_id: SubscriptionId,
    /// Failed attempts in a row the ledger knows of: those that opened the
    /// circuit, then one per failed probe.
    pub failures: u32,
    pub opened_at: DateTime<Utc>,
    /// No attempt before then; then one probe.
    pub open_until: DateTime<Utc>,
    pub cooldown: Duration,
    /// Set while a replica holds the probe (until then at most).
    pub probe_until: Option<DateTime<Utc>>,
}

/// An open circuit's held deliveries due now, as the give-up pass reads
/// them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenCircuitHeld {
    pub subscription_id: SubscriptionId,
    /// The webhook's own max attempts (`None`: the deployment's), which
    /// sets its retry schedule's span.
    pub max_attempts: Option<u32>,
    /// When the oldest of them was created.
    pub oldest: DateTime<Utc>,
}

/// Open circuits of enabled webhooks: a disabled webhook is attempted by no
/// one, and its row waits, harmless, for it to be enabled again (its first
/// delivery then probes). Every replica reads this twice a second, so it
/// walks the (few) circuits and looks each webhook up: written as a join,
/// SQLite's planner scanned every subscription instead, a million rows
/// with a million webhooks.
pub(crate) const OPEN_CIRCUITS: &str = "SELECT c.subscription_id, c.failures, c.opened_at, c.open_until, \
     c.cooldown_ms, c.probe_until FROM webhook_circuits c \
     WHERE EXISTS (SELECT 1 FROM subscriptions s \
         WHERE s.id = c.subscription_id AND s.status = 'enabled')";

/// A backend's circuit SQL; parameters in the order [`CircuitQueries`]
/// binds them.
pub(crate) trait CircuitSql: Dialect {
    /// subscription, failures, now, open_until, cooldown_ms: inserts the
    /// row unless the circuit is open already (another replica's stands).
    const OPEN_CIRCUIT: &'static str;
    /// subscription, now, lease_until: the probe's lease, taken only when
    /// the circuit has cooled down and nobody holds it; returns the row.
    const CLAIM_PROBE: &'static str;
    /// subscription, open_until, cooldown_ms, now: a failed probe.
    const PROBE_FAILED: &'static str;
    /// subscription.
    const CLOSE_CIRCUIT: &'static str;
    /// subscription, lease_until, now: gives back an unused probe, if the
    /// lease is still this one.
    const RELEASE_PROBE: &'static str;
    /// now: for each enabled webhook with an open circuit and held
    /// deliveries due at `now`, its own max attempts and the oldest of
    /// those deliveries' creation (a read, where claiming would write).
    const HELD_OF_OPEN_CIRCUITS: &'static str;
}

impl CircuitSql for PgStore {
    const OPEN_CIRCUIT: &'static str = "INSERT INTO webhook_circuits (subscription_id, \
         workspace_id, failures, opened_at, open_until, cooldown_ms, probe_until, updated_at) \
         SELECT s.id, s.workspace_id, $2, $3, $4, $5, NULL, $3 FROM subscriptions s \
         WHERE s.id = $1 ON CONFLICT (subscription_id) DO NOTHING";
    /// Of two replicas claiming at once, the second waits for the first's
    /// row lock, then finds `probe_until` set (READ COMMITTED re-checks the
    /// WHERE on the updated row) and updates nothing.
    const CLAIM_PROBE: &'static str = "UPDATE webhook_circuits SET probe_until = $3, \
         updated_at = $2 WHERE subscription_id = $1 AND open_until <= $2 \
         AND (probe_until IS NULL OR probe_until <= $2) \
         RETURNING subscription_id, failures, opened_at, open_until, cooldown_ms, probe_until";
    const PROBE_FAILED: &'static str = "UPDATE webhook_circuits SET failures = failures + 1, \
         open_until = $2, cooldown_ms = $3, probe_until = NULL, updated_at = $4 \
         WHERE subscription_id = $1";
    const CLOSE_CIRCUIT: &'static str = "DELETE FROM webhook_circuits WHERE subscription_id = $1";
    const RELEASE_PROBE: &'static str = "UPDATE webhook_circuits SET probe_until = NULL, \
         updated_at = $3 WHERE subscription_id = $1 AND probe_until = $2";
    const HELD_OF_OPEN_CIRCUITS: &'static str = "SELECT c.subscription_id, s.max_attempts, \
         MIN(d.created_at) AS oldest FROM webhook_circuits c \
         JOIN subscriptions s ON s.id = c.subscription_id AND s.status = 'enabled' \
         JOIN deliveries d ON d.subscription_id = c.subscription_id \
         AND d.held_until IS NOT NULL AND d.held_until <= $1 \
         AND d.status IN ('pending', 'retrying') \
         GROUP BY c.subscription_id, s.max_attempts";
}

impl CircuitSql for SqliteStore {
    const OPEN_CIRCUIT: &'static str = "INSERT INTO webhook_circuits (subscription_id, \
         workspace_id, failures, opened_at, open_until, cooldown_ms, probe_until, updated_at) \
         SELECT s.id, s.workspace_id, ?2, ?3, ?4, ?5, NULL, ?3 FROM subscriptions s \
         WHERE s.id = ?1 ON CONFLICT (subscription_id) DO NOTHING";
    /// One writer at a time: the second claim finds `probe_until` set.
    const CLAIM_PROBE: &'static str = "UPDATE webhook_circuits SET probe_until = ?3, \
         updated_at = ?2 WHERE subscription_id = ?1 AND open_until <= ?2 \
         AND (probe_until IS NULL OR probe_until <= ?2) \
         RETURNING subscription_id, failures, opened_at, open_until, cooldown_ms, probe_until";
    const PROBE_FAILED: &'static str = "UPDATE webhook_circuits SET failures = failures + 1, \
         open_until = ?2, cooldown_ms = ?3, probe_until = NULL, updated_at = ?4 \
         WHERE subscription_id = ?1";
    const CLOSE_CIRCUIT: &'static str = "DELETE FROM webhook_circuits WHERE subscription_id = ?1";
    const RELEASE_PROBE: &'static str = "UPDATE webhook_circuits SET probe_until = NULL, \
         updated_at = ?3 WHERE subscription_id = ?1 AND probe_until = ?2";
    const HELD_OF_OPEN_CIRCUITS: &'static str = "SELECT c.subscription_id, s.max_attempts, \
         MIN(d.created_at) AS oldest FROM webhook_circuits c \
         JOIN subscriptions s ON s.id = c.subscription_id AND s.status = 'enabled' \
         JOIN deliveries d ON d.subscription_id = c.subscription_id \
         AND d.held_until IS NOT NULL AND d.held_until <= ?1 \
         AND d.status IN ('pending', 'retrying') \
         GROUP BY c.subscription_id, s.max_attempts";
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The stored form of a time the ledger compares for equality (a lease):
/// whole microseconds, as both backends keep them.
fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    chrono::SubsecRound::trunc_subsecs(at, 6)
}

pub(crate) trait CircuitQueries: CircuitSql
where
    for<'c> &'c mut Conn<Self>: Executor<'c, Database = Self::Db>,
    <Self::Db as Database>::Arguments: IntoArguments<Self::Db>,
    for<'a> i64: Bind<'a, Self::Db>,
{
    async fn open_circuits(&self) -> Result<Vec<CircuitRow>> {
        sqlx::query::<Self::Db>(OPEN_CIRCUITS)
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(circuit::<Self>)
            .collect()
    }

    async fn open_circuit(
        &self,
        subscription: SubscriptionId,
        failures: u32,
        now: DateTime<Utc>,
        cooldown: Duration,
    ) -> Result<bool> {
        let open_until = now + chrono::Duration::from_std(cooldown).unwrap_or_default();
        let mut conn = self.writer().await?;
        let done = sqlx::query::<Self::Db>(Self::OPEN_CIRCUIT)
            .bind(Self::uuid(subscription.0))
            .bind(i64::from(failures.max(1)))
            .bind(Self::ts(&now))
            .bind(Self::ts(&open_until))
            .bind(millis(cooldown))
            .execute(&mut *conn)
            .await;
        let done = Self::finish_write(conn, done.map_err(Into::into)).await?;
        Ok(Self::rows_affected(&done) > 0)
    }

    async fn claim_probe(
        &self,
        subscription: SubscriptionId,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<CircuitRow>> {
        let mut conn = self.writer().await?;
        let row = sqlx::query::<Self::Db>(Self::CLAIM_PROBE)
            .bind(Self::uuid(subscription.0))
            .bind(Self::ts(&now))
            .bind(Self::ts(&micros(lease_until)))
            .fetch_optional(&mut *conn)
            .await;
        let row = Self::finish_write(conn, row.map_err(Into::into)).await?;
        row.as_ref().map(circuit::<Self>).transpose()
    }

    async fn probe_failed(
        &self,
        subscription: SubscriptionId,
        now: DateTime<Utc>,
        cooldown: Duration,
    ) -> Result<()> {
        let open_until = now + chrono::Duration::from_std(cooldown).unwrap_or_default();
        let mut conn = self.writer().await?;
        let done = sqlx::query::<Self::Db>(Self::PROBE_FAILED)
            .bind(Self::uuid(subscription.0))
            .bind(Self::ts(&open_until))
            .bind(millis(cooldown))
            .bind(Self::ts(&now))
            .execute(&mut *conn)
            .await;
        Self::finish_write(conn, done.map(|_| ()).map_err(Into::into)).await
    }

    async fn close_circuit(&self, subscription: SubscriptionId) -> Result<bool> {
        let mut conn = self.writer().await?;
        let done = sqlx::query::<Self::Db>(Self::CLOSE_CIRCUIT)
            .bind(Self::uuid(subscription.0))
            .execute(&mut *conn)
            .await;
        let done = Self::finish_write(conn, done.map_err(Into::into)).await?;
        Ok(Self::rows_affected(&done) > 0)
    }

    async fn release_probe(
        &self,
        subscription: SubscriptionId,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut conn = self.writer().await?;
        let done = sqlx::query::<Self::Db>(Self::RELEASE_PROBE)
            .bind(Self::uuid(subscription.0))
            .bind(Self::ts(&micros(lease_until)))
            .bind(Self::ts(&now))
            .execute(&mut *conn)
            .await;
        Self::finish_write(conn, done.map(|_| ()).map_err(Into::into)).await
    }

    async fn held_of_open_circuits(&self, now: DateTime<Utc>) -> Result<Vec<OpenCircuitHeld>> {
        sqlx::query::<Self::Db>(Self::HELD_OF_OPEN_CIRCUITS)
            .bind(Self::ts(&now))
            .fetch_all(self.reads())
            .await?
            .iter()
            .map(|row| {
                let max_attempts = Self::opt_int(row, "max_attempts")?
                    .map(|n| {
                        u32::try_from(n).map_err(|_| {
                            corrupt("subscriptions.max_attempts", format!("{n} is out of range"))
                        })
                    })
                    .transpose()?;
                Ok(OpenCircuitHeld {
                    subscription_id: SubscriptionId(Self::uuid_of(row, "subscription_id")?),
                    max_attempts,
                    oldest: Self::ts_of(row, "oldest")?,
                })
            })
            .collect()
    }
}

impl<D: CircuitSql> CircuitQueries for D
where
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
    for<'a> i64: Bind<'a, D::Db>,
{
}

fn circuit<D: Dialect>(row: &Row<D>) -> Result<CircuitRow> {
    let count = |col: &str| -> Result<u32> {
        let value = D::int(row, col)?;
        u32::try_from(value)
            .map_err(|_| corrupt(&format!("webhook_circuits.{col}"), format!("{value}")))
    };
    Ok(CircuitRow {
        subscription_id: SubscriptionId(D::uuid_of(row, "subscription_id")?),
        failures: count("failures")?,
        opened_at: D::ts_of(row, "opened_at")?,
        open_until: D::ts_of(row, "open_until")?,
        cooldown: Duration::from_millis(u64::from(count("cooldown_ms")?)),
        probe_until: D::opt_ts_of(row, "probe_until")?,
    })
}

impl Store {
    /// Every open circuit of an enabled webhook: a handful of rows at most
    /// times, none when every endpoint answers.
    pub async fn open_circuits(&self) -> Result<Vec<CircuitRow>> {
        dispatch!(self, s => s.open_circuits().await)
    }

    /// Opens the webhook's circuit for `cooldown` from `now` after
    /// `failures` failed attempts in a row. `false` when it was open
    /// already (the row another replica wrote stands), or the webhook is
    /// gone.
    pub async fn open_circuit(
        &self,
        subscription: SubscriptionId,
        failures: u32,
        now: DateTime<Utc>,
        cooldown: Duration,
    ) -> Result<bool> {
        dispatch!(self, s => s.open_circuit(subscription, failures, now, cooldown).await)
    }

    /// Takes the probe of the webhook's circuit until `lease_until`, if it
    /// has cooled down at `now` and no one holds the probe; the row as it
    /// is then. `None`: not this caller's to probe (still cooling down,
    /// another replica probing, or closed).
    pub async fn claim_circuit_probe(
        &self,
        subscription: SubscriptionId,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<CircuitRow>> {
        dispatch!(self, s => s.claim_probe(subscription, now, lease_until).await)
    }

    /// The probe failed: the circuit stays open for `cooldown` from `now`,
    /// and its probe is free again then.
    pub async fn circuit_probe_failed(
        &self,
        subscription: SubscriptionId,
        now: DateTime<Utc>,
        cooldown: Duration,
    ) -> Result<()> {
        dispatch!(self, s => s.probe_failed(subscription, now, cooldown).await)
    }

    /// The endpoint answered: the circuit is closed. `false` when it was not
    /// open.
    pub async fn close_circuit(&self, subscription: SubscriptionId) -> Result<bool> {
        dispatch!(self, s => s.close_circuit(subscription).await)
    }

    /// The enabled webhooks whose circuit is open and which have held
    /// deliveries due at `now`, with the oldest one's creation and the
    /// webhook's own max attempts: what tells, in one read for all, whose
    /// retry schedule ran out and so what [`Store::claim_expired`] would
    /// claim (open circuits are looked at every second, and mostly none
    /// has any).
    pub async fn held_of_open_circuits(&self, now: DateTime<Utc>) -> Result<Vec<OpenCircuitHeld>> {
        dispatch!(self, s => s.held_of_open_circuits(now).await)
    }

    /// Gives back a probe taken until `lease_until` and not used (its
    /// delivery needed no attempt after all), so that another can be made
    /// at once rather than when the lease runs out.
    pub async fn release_circuit_probe(
        &self,
        subscription: SubscriptionId,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        dispatch!(self, s => s.release_probe(subscription, lease_until, now).await)
    }
}
