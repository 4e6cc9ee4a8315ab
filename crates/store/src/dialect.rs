//! What a backend supplies: its connections, how it encodes and decodes the
//! ledger's values, its SQL, and the statements of the hot path. Everything
//! else (the batch plan in `batch.rs`, the queries in `queries.rs`, the row
//! mapping in `rows.rs`) is written once against this trait.
//!
//! The trait is generic and statically dispatched: each backend's code is
//! compiled into the shared code as if written there, so the hot path pays
//! nothing for it.

use std::collections::HashSet;
use std::future::Future;
use std::ops::DerefMut;

use chrono::{DateTime, Utc};
use courier_model::{DeliveryStatus, Event, EventData};
use sqlx::{ColumnIndex, Database, Decode, Encode, Pool, Transaction, Type};
use uuid::Uuid;

use crate::batch::{Conflicts, NewDelivery, PendingOfEvents};
use crate::{AttemptWrite, Result};

/// A backend's row.
pub(crate) type Row<D> = <<D as Dialect>::Db as Database>::Row;

/// A backend's connection.
pub(crate) type Conn<D> = <<D as Dialect>::Db as Database>::Connection;

/// A value a query can bind for `DB`, borrowing for `'a`.
pub(crate) trait Bind<'a, DB: Database>: Encode<'a, DB> + Type<DB> + Send {}

impl<'a, DB: Database, T: Encode<'a, DB> + Type<DB> + Send> Bind<'a, DB> for T {}

/// Columns every backend decodes alike: text, 64-bit integers and
/// booleans.
pub(crate) trait Columns {
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    /// A `BIGINT` column or a `COUNT(*)`.
    fn count(&self, col: &str) -> Result<i64>;
    /// A `BOOLEAN` column (SQLite's 0 or 1).
    fn flag(&self, col: &str) -> Result<bool>;
}

impl<R: sqlx::Row> Columns for R
where
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.try_get(col)?)
    }

    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        Ok(self.try_get(col)?)
    }

    fn count(&self, col: &str) -> Result<i64> {
        Ok(self.try_get(col)?)
    }

    fn flag(&self, col: &str) -> Result<bool> {
        Ok(self.try_get(col)?)
    }
}

pub(crate) trait Dialect: Send + Sync + Sized + 'static {
    type Db: Database<Row: Columns>;

    // --- connections ------------------------------------------------------
    //
    // The futures are declared `Send` here, so shared code that awaits them
    // is `Send` too without looking into each backend's.

    /// Where reads go.
    fn reads(&self) -> &Pool<Self::Db>;

    /// Opens a transaction that writes.
    fn begin(&self) -> impl Future<Output = sqlx::Result<Transaction<'static, Self::Db>>> + Send;

    /// What a write of one statement runs on.
    type Writer: DerefMut<Target = Conn<Self>> + Send;

    fn writer(&self) -> impl Future<Output = Result<Self::Writer>> + Send;

    /// Ends a write on `writer` that came to `result`.
    fn finish_write<T: Send>(
        writer: Self::Writer,
        result: Result<T>,
    ) -> impl Future<Output = Result<T>> + Send;

    // --- encodings --------------------------------------------------------

    /// A UUID as bound.
    type Uuid: for<'a> Bind<'a, Self::Db> + 'static;
    /// A timestamp as bound.
    type Ts: for<'a> Bind<'a, Self::Db> + Sync + 'static;
    /// A list of names (event types, channels) as bound.
    type List: for<'a> Bind<'a, Self::Db> + 'static;
    /// Many UUIDs as bound, for `id IN` a list.
    type Ids: for<'a> Bind<'a, Self::Db> + 'static;

    fn uuid(id: Uuid) -> Self::Uuid;
    fn ts(at: &DateTime<Utc>) -> Self::Ts;
    fn list(items: Vec<String>) -> Self::List;
    fn ids(ids: impl Iterator<Item = Uuid>) -> Result<Self::Ids>;

    /// How many rows a statement changed.
    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;

    // --- decodings --------------------------------------------------------
    //
    // Column `col` of `row` (text and counts decode alike, see [`Columns`]);
    // a value the backend cannot decode is corrupt.

    fn uuid_of(row: &Row<Self>, col: &str) -> Result<Uuid>;
    fn opt_uuid_of(row: &Row<Self>, col: &str) -> Result<Option<Uuid>>;
    /// An `INTEGER` column (attempt numbers, HTTP statuses, durations).
    fn int(row: &Row<Self>, col: &str) -> Result<i64>;
    fn opt_int(row: &Row<Self>, col: &str) -> Result<Option<i64>>;
    fn ts_of(row: &Row<Self>, col: &str) -> Result<DateTime<Utc>>;
    fn opt_ts_of(row: &Row<Self>, col: &str) -> Result<Option<DateTime<Utc>>>;
    fn list_of(row: &Row<Self>, col: &str) -> Result<Vec<String>>;
    fn data_of(row: &Row<Self>, col: &str) -> Result<EventData>;

    // --- SQL ----------------------------------------------------------------
    //
    // Each statement's parameters are bound in the order `queries.rs` binds
    // them; statements that need no parameters are written there once.

    const INSERT_WORKSPACE: &'static str;
    const SELECT_WORKSPACE: &'static str;

    const INSERT_SUBSCRIPTION: &'static str;
    /// Rows of INSERT_SUBSCRIPTION's shape in one statement of a bulk
    /// insert ([`crate::rows::multi_row_insert`]).
    const SUBSCRIPTIONS_PER_INSERT: usize;
    const SELECT_SUBSCRIPTION: &'static str;
    const LIST_SUBSCRIPTIONS: &'static str;
    const LIST_SUBSCRIPTIONS_AFTER: &'static str;
    const UPDATE_SUBSCRIPTION: &'static str;
    const DELETE_SUBSCRIPTION: &'static str;

    /// Every subscription, and the enabled ones, in id order, for loading
    /// the matching index, and how a row of theirs becomes a subscription:
    /// by default the columns of [`crate::rows::subscription`].
    const LOAD_SUBSCRIPTIONS: &'static str = concat!(
        "SELECT ",
        crate::rows::subscription_columns!(),
        " FROM subscriptions s ORDER BY s.id"
    );
    const LOAD_ENABLED_SUBSCRIPTIONS: &'static str = concat!(
        "SELECT ",
        crate::rows::subscription_columns!(),
        " FROM subscriptions s WHERE s.status = 'enabled' ORDER BY s.id"
    );
    fn loaded_subscription(row: &Row<Self>) -> Result<courier_model::Subscription> {
        crate::rows::subscription::<Self>(row)
    }

    const SELECT_DELIVERY_CONTEXT: &'static str;
    const HELD_DUE: &'static str;
    const CLAIM_HELD: &'static str;
    const GIVE_UP_HELD: &'static str;

    const SELECT_DELIVERY: &'static str;
    const DELIVERIES_OF_EVENT: &'static str;
    const LIST_ATTEMPTS: &'static str;

    const INSERT_API_KEY: &'static str;
    const FIND_API_KEY: &'static str;
    const LIST_API_KEYS: &'static str;
    const DELETE_API_KEY: &'static str;
    const LIST_DELIVERIES: &'static str;
    const SELECT_DELIVERY_ENTRY: &'static str;
    const SELECT_EVENT: &'static str;
    const EVENT_DELIVERIES: &'static str;
    const REOPEN_SELECT: &'static str;
    const REOPEN_FAILED_SELECT: &'static str;
    const REOPEN: &'static str;
    const RESTORE_DELIVERY: &'static str;

    // --- the hot path -------------------------------------------------------

    /// Whether a batch is first tried with plain INSERTs (see
    /// [`Conflicts`]), or applied once with every conflict handled.
    const PLAIN_INSERTS_FIRST: bool;

    /// A run's new events, as its insert takes them.
    type EventRows<'a>: Default + Send;
    fn push_event<'a>(rows: &mut Self::EventRows<'a>, event: &'a Event);
    /// Inserts the events not recorded yet; returns (workspace, id) of those
    /// it inserted.
    fn insert_events(
        conn: &mut Conn<Self>,
        rows: Self::EventRows<'_>,
        now: &Self::Ts,
        conflicts: Conflicts,
    ) -> impl Future<Output = Result<HashSet<(String, String)>>> + Send;

    /// A run's new deliveries, as their insert takes them.
    type DeliveryRows<'a>: Default + Send;
    fn push_delivery<'a>(rows: &mut Self::DeliveryRows<'a>, delivery: NewDelivery<'a>);
    /// Inserts the deliveries not recorded yet; returns the ids of those it
    /// inserted.
    fn insert_deliveries(
        conn: &mut Conn<Self>,
        rows: Self::DeliveryRows<'_>,
        now: &Self::Ts,
        conflicts: Conflicts,
    ) -> impl Future<Output = Result<Vec<Uuid>>> + Send;

    /// The deliveries still pending of the events named (workspace, event
    /// id), as (subscription, delivery id) by event.
    fn pending_of_events(
        conn: &mut Conn<Self>,
        events: &[(&str, &str)],
    ) -> impl Future<Output = Result<PendingOfEvents>> + Send;

    /// Records attempts of distinct deliveries and moves each delivery whose
    /// attempt was new to the state it leads to, except those `born` (set
    /// at insert already). Returns the deliveries whose attempt was new.
    fn record_attempts(
        conn: &mut Conn<Self>,
        attempts: &[&AttemptWrite],
        born: &[bool],
        now: &Self::Ts,
        conflicts: Conflicts,
    ) -> impl Future<Output = Result<HashSet<Uuid>>> + Send;

    /// Holds each delivery (id, attempt owed, until) that still owes that
    /// attempt; returns those it held.
    fn hold(
        conn: &mut Conn<Self>,
        holds: &[(Uuid, u32, DateTime<Utc>)],
        now: &Self::Ts,
    ) -> impl Future<Output = Result<HashSet<Uuid>>> + Send;

    /// Moves the deliveries not finished yet (pending or retrying) to `to`
    /// (canceled or paused), no longer held nor due.
    fn stop(
        conn: &mut Conn<Self>,
        ids: &[Uuid],
        to: DeliveryStatus,
        now: &Self::Ts,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// Ends a transaction that came to `result`: commits it when `result` is
/// Ok, and otherwise rolls it back at once rather than on drop, so the
/// connection is clean for whoever writes next.
pub(crate) async fn finish<DB: Database, T>(
    tx: Transaction<'static, DB>,
    result: Result<T>,
) -> Result<T> {
    match result {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(err) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "rolling back a failed ledger write failed");
            }
            Err(err)
        }
    }
}
