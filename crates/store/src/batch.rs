//! The batch plan, one for both backends: how a ledger batch (the hot path's
//! [`WriteOp`]s, see `ledger.rs`) becomes a few set-based statements in one
//! transaction. Every statement is a round trip (to PostgreSQL's server, or
//! to the thread of SQLite's connection), so a batch is applied as a few
//! statements per run of ops rather than a few per op: PostgreSQL's take a
//! run's rows as arrays they unroll (`UNNEST`), SQLite's bind them as the
//! rows of a multi-row VALUES, in chunks of a few fixed sizes. Results
//! still come out in input order and match applying the ops one at a time.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use chrono::{DateTime, Utc};
use courier_model::{DeliveryId, DeliveryStatus, Event, SubscriptionId};
use uuid::Uuid;

use crate::dialect::{Conn, Dialect, finish};
use crate::error::is_unique_violation;
use crate::rows;
use crate::{AttemptWrite, Result, StoreError, WriteOp, WriteResult};

/// Whether a batch's inserts may meet rows already in the ledger. With
/// `Unexpected` they are plain INSERTs, and a row already there fails the
/// batch with a unique violation; the batch is then applied again with
/// `Expected`, each INSERT with its ON CONFLICT clause (see
/// [`Dialect::PLAIN_INSERTS_FIRST`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Conflicts {
    Unexpected,
    Expected,
}

/// Applies a ledger batch in one transaction.
///
/// Where the backend tries plain INSERTs first, a batch that meets a row
/// already recorded (a redelivered event, a duplicate message) is rolled
/// back as a whole and applied again with every conflict handled, which
/// gives the same results as if it had gone that way at once.
pub(crate) async fn apply<D: Dialect>(store: &D, ops: &[WriteOp]) -> Result<Vec<WriteResult>> {
    if ops.is_empty() {
        return Ok(Vec::new());
    }
    if !D::PLAIN_INSERTS_FIRST {
        return apply_as(store, ops, Conflicts::Expected).await;
    }
    match apply_as(store, ops, Conflicts::Unexpected).await {
        Err(StoreError::Database(error)) if is_unique_violation(&error) => {
            tracing::debug!(
                ops = ops.len(),
                "ledger batch met rows already recorded; applying it again"
            );
            apply_as(store, ops, Conflicts::Expected).await
        }
        other => other,
    }
}

async fn apply_as<D: Dialect>(
    store: &D,
    ops: &[WriteOp],
    conflicts: Conflicts,
) -> Result<Vec<WriteResult>> {
    let mut tx = store.begin().await?;
    let result = apply_in::<D>(&mut tx, ops, conflicts).await;
    finish(tx, result).await
}

/// Applies a batch as a few set-based statements. The batch is first put in
/// kind order (fan-outs, then attempts, holds, cancels; stable within a
/// kind), which is one of the orders its callers' concurrent requests could
/// have arrived in, given each request lists its own ops in that order (see
/// [`WriteOp`]). It is then split into runs that can each be one statement
/// without changing what applying the ops one by one would do: fan-outs only
/// ever insert-if-absent, so any number commute; attempts commute as long as
/// no two touch the same delivery; holds and cancels commute.
///
/// Its future is declared `Send` here, where it is proven once for any
/// backend: left to be inferred, the ledger's writer task fails to prove it
/// through the backends' futures (rust-lang/rust#100013).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn's Send is inferred where it is used, which the compiler cannot yet do here"
)]
fn apply_in<D: Dialect>(
    conn: &mut Conn<D>,
    ops: &[WriteOp],
    conflicts: Conflicts,
) -> impl Future<Output = Result<Vec<WriteResult>>> + Send {
    async move {
        let now = D::ts(&Utc::now());
        let order = kind_order(ops);
        let sorted: Vec<&WriteOp> = order.iter().map(|&i| &ops[i]).collect();
        let first_attempts = first_attempts(sorted.iter().copied());
        let first_holds = first_holds(sorted.iter().copied(), &first_attempts);
        // Deliveries inserted with their first attempt's state: that attempt
        // then only needs its row. Likewise deliveries inserted held.
        let mut born_attempted = HashSet::new();
        let mut born_held = HashSet::new();

        let mut sorted_results = Vec::with_capacity(ops.len());
        for run in runs(&sorted) {
            match run[0] {
                WriteOp::FanOut { .. } => {
                    let births = Births {
                        first_attempts: &first_attempts,
                        first_holds: &first_holds,
                        born_attempted: &mut born_attempted,
                        born_held: &mut born_held,
                    };
                    sorted_results
                        .extend(fan_out_run::<D>(conn, run, &now, births, conflicts).await?);
                }
                WriteOp::Attempt(_) => sorted_results.extend(
                    attempt_run::<D>(conn, run, &now, &mut born_attempted, conflicts).await?,
                ),
                WriteOp::Hold { .. } => {
                    sorted_results.extend(hold_run::<D>(conn, run, &now, &mut born_held).await?)
                }
                WriteOp::Cancel { .. } | WriteOp::Pause { .. } => {
                    let pause = matches!(run[0], WriteOp::Pause { .. });
                    let ids: Vec<Uuid> =
                        run.iter()
                            .filter_map(|op| match op {
                                WriteOp::Cancel { delivery_id }
                                | WriteOp::Pause { delivery_id } => Some(delivery_id.0),
                                _ => None,
                            })
                            .collect();
                    let (to, result) = if pause {
                        (DeliveryStatus::Paused, WriteResult::Paused)
                    } else {
                        (DeliveryStatus::Canceled, WriteResult::Canceled)
                    };
                    D::stop(conn, &ids, to, &now).await?;
                    sorted_results.extend(run.iter().map(|_| result.clone()));
                }
            }
        }

        in_callers_order(&order, sorted_results)
    }
}

/// The first attempts and holds of a batch, and the deliveries inserted in
/// their state.
struct Births<'a, 'b> {
    first_attempts: &'a HashMap<Uuid, &'b AttemptWrite>,
    first_holds: &'a HashMap<Uuid, DateTime<Utc>>,
    born_attempted: &'a mut HashSet<Uuid>,
    born_held: &'a mut HashSet<Uuid>,
}

/// A delivery as a fan-out inserts it: pending, or already in the state of
/// its first attempt or hold when the same batch makes it.
pub(crate) struct NewDelivery<'a> {
    pub id: Uuid,
    pub event: &'a Event,
    pub subscription: Uuid,
    pub status: &'static str,
    /// 0, or 1 when born attempted.
    pub attempts: u8,
    pub last_response_status: Option<u16>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub held_until: Option<DateTime<Utc>>,
}

/// Fan-outs: one statement inserts the new events, one the deliveries
/// (those attempted or held in this batch already in that state), and one
/// finds which deliveries of events seen before are still pending. Returns
/// the fan-outs' results, and notes in `births` the deliveries it inserted
/// in the state of their first attempt or hold.
async fn fan_out_run<D: Dialect>(
    conn: &mut Conn<D>,
    run: &[&WriteOp],
    now: &D::Ts,
    births: Births<'_, '_>,
    conflicts: Conflicts,
) -> Result<Vec<WriteResult>> {
    let fan_outs: Vec<(&Event, &[(DeliveryId, SubscriptionId)])> = run
        .iter()
        .filter_map(|op| match op {
            WriteOp::FanOut {
                event, deliveries, ..
            } => Some((&**event, deliveries.as_slice())),
            _ => None,
        })
        .collect();
    let paused = run.iter().flat_map(|op| match op {
        WriteOp::FanOut { event, paused, .. } => paused
            .iter()
            .map(|delivery| (&**event, delivery))
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    });

    // One row per distinct event: the first op naming an event speaks for
    // it, as it would have when applied first.
    let mut first_op_of_event: HashMap<(&str, &str), usize> = HashMap::new();
    let mut events: D::EventRows<'_> = Default::default();
    for (i, (event, _)) in fan_outs.iter().enumerate() {
        if first_op_of_event.contains_key(&rows::event_key(event)) {
            continue;
        }
        first_op_of_event.insert(rows::event_key(event), i);
        D::push_event(&mut events, event);
    }
    let new_events = D::insert_events(conn, events, now, conflicts).await?;

    let mut seen = HashSet::new();
    let mut deliveries: D::DeliveryRows<'_> = Default::default();
    for (event, of_event) in &fan_outs {
        for (delivery, subscription) in *of_event {
            if !seen.insert(delivery.0) {
                continue;
            }
            let first = births.first_attempts.get(&delivery.0);
            let held = births.first_holds.get(&delivery.0).copied();
            D::push_delivery(
                &mut deliveries,
                NewDelivery {
                    id: delivery.0,
                    event,
                    subscription: subscription.0,
                    status: first.map_or("pending", |a| a.new_status.as_str()),
                    attempts: u8::from(first.is_some()),
                    last_response_status: first.and_then(|a| a.response_status),
                    last_attempt_at: first.map(|a| a.started_at),
                    next_attempt_at: first.and_then(|a| a.next_attempt_at).or(held),
                    held_until: first.map_or(held, |a| a.held_until),
                },
            );
        }
    }
    // A disabled webhook's deliveries are born paused: never published.
    for (event, (delivery, subscription)) in paused {
        if !seen.insert(delivery.0) {
            continue;
        }
        D::push_delivery(
            &mut deliveries,
            NewDelivery {
                id: delivery.0,
                event,
                subscription: subscription.0,
                status: DeliveryStatus::Paused.as_str(),
                attempts: 0,
                last_response_status: None,
                last_attempt_at: None,
                next_attempt_at: None,
                held_until: None,
            },
        );
    }
    if !seen.is_empty() {
        for id in D::insert_deliveries(conn, deliveries, now, conflicts).await? {
            if births.first_attempts.contains_key(&id) {
                births.born_attempted.insert(id);
            } else if births.first_holds.contains_key(&id) {
                births.born_held.insert(id);
            }
        }
    }

    // Whether each fan-out's event is new: inserted now, by this op.
    let inserted: HashSet<(&str, &str)> = new_events
        .iter()
        .map(|(ws, id)| (ws.as_str(), id.as_str()))
        .collect();
    let is_new: Vec<bool> = fan_outs
        .iter()
        .enumerate()
        .map(|(i, (event, _))| {
            let key = rows::event_key(event);
            inserted.contains(&key) && first_op_of_event.get(&key) == Some(&i)
        })
        .collect();
    // Events seen before publish only what is still pending: one lookup for
    // all of them. It goes by event and webhook, and what is published is
    // the id the ledger holds: a worker from before delivery ids carried
    // their event's time (see `DeliveryId::derive`) may have recorded these
    // deliveries under other ids.
    let recheck: Vec<(&str, &str)> = fan_outs
        .iter()
        .zip(&is_new)
        .filter(|(_, new)| !**new)
        .map(|((event, _), _)| rows::event_key(event))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let pending = if recheck.is_empty() {
        PendingOfEvents::new()
    } else {
        D::pending_of_events(conn, &recheck).await?
    };
    // Applied one by one, every fan-out comes before every attempt and
    // hold: to them, a delivery born attempted or held is still pending.
    let born = |id: &Uuid| births.born_attempted.contains(id) || births.born_held.contains(id);
    Ok(fan_outs
        .iter()
        .zip(is_new)
        .map(|((event, deliveries), new)| WriteResult::FanOut {
            to_publish: if new {
                deliveries.to_vec()
            } else {
                let (workspace, id) = rows::event_key(event);
                let recorded = pending.get(&(workspace.to_owned(), id.to_owned()));
                deliveries
                    .iter()
                    .filter_map(|&(id, subscription)| {
                        if born(&id.0) {
                            return Some((id, subscription));
                        }
                        let stored = recorded?.get(&subscription.0)?;
                        Some((DeliveryId(*stored), subscription))
                    })
                    .collect()
            },
        })
        .collect())
}

/// The pending deliveries of events seen before: by (workspace, event id),
/// the delivery id of each webhook.
pub(crate) type PendingOfEvents = HashMap<(String, String), HashMap<Uuid, Uuid>>;

/// Builds [`PendingOfEvents`] from rows of (workspace, event id, webhook,
/// delivery id).
pub(crate) fn pending_of_events(
    rows: impl IntoIterator<Item = (String, String, Uuid, Uuid)>,
) -> PendingOfEvents {
    let mut pending = PendingOfEvents::new();
    for (workspace, event, subscription, id) in rows {
        pending
            .entry((workspace, event))
            .or_default()
            .insert(subscription, id);
    }
    pending
}

/// Attempts of distinct deliveries: the attempt rows, and exactly the
/// deliveries whose attempt was new, except those born in this batch
/// already in their first attempt's state.
async fn attempt_run<D: Dialect>(
    conn: &mut Conn<D>,
    run: &[&WriteOp],
    now: &D::Ts,
    born_attempted: &mut HashSet<Uuid>,
    conflicts: Conflicts,
) -> Result<Vec<WriteResult>> {
    let attempts: Vec<&AttemptWrite> = run
        .iter()
        .filter_map(|op| match op {
            WriteOp::Attempt(a) => Some(a),
            _ => None,
        })
        .collect();
    let born: Vec<bool> = attempts
        .iter()
        .map(|a| a.attempt == 1 && born_attempted.remove(&a.delivery_id.0))
        .collect();
    let recorded = D::record_attempts(conn, &attempts, &born, now, conflicts).await?;
    Ok(attempts
        .iter()
        .map(|a| WriteResult::Attempt {
            recorded: recorded.contains(&a.delivery_id.0),
        })
        .collect())
}

/// Holds: one statement holds every delivery that still owes the attempt
/// named, except those born held in this batch.
async fn hold_run<D: Dialect>(
    conn: &mut Conn<D>,
    run: &[&WriteOp],
    now: &D::Ts,
    born_held: &mut HashSet<Uuid>,
) -> Result<Vec<WriteResult>> {
    let holds: Vec<(Uuid, u32, DateTime<Utc>)> = run
        .iter()
        .filter_map(|op| match op {
            WriteOp::Hold {
                delivery_id,
                attempt,
                until,
            } => Some((delivery_id.0, *attempt, *until)),
            _ => None,
        })
        .collect();
    let born: Vec<bool> = holds
        .iter()
        .map(|&(id, attempt, _)| attempt == 1 && born_held.remove(&id))
        .collect();
    let held = if born.iter().all(|&born| born) {
        HashSet::new()
    } else {
        let rest: Vec<(Uuid, u32, DateTime<Utc>)> = holds
            .iter()
            .zip(&born)
            .filter(|(_, born)| !**born)
            .map(|(&hold, _)| hold)
            .collect();
        D::hold(conn, &rest, now).await?
    };
    Ok(holds
        .iter()
        .zip(born)
        .map(|(&(id, _, _), born)| WriteResult::Held {
            held: born || held.contains(&id),
        })
        .collect())
}

/// The order a batch is applied in: indices of `ops`, by kind, stable within
/// a kind.
fn kind_order(ops: &[WriteOp]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| ops[i].kind_rank());
    order
}

/// The first attempt (attempt 1) of each delivery among `ops`, the first
/// such op winning. A delivery a batch creates with its first attempt in the
/// same batch is inserted in the state that attempt leads to, instead of
/// inserted pending and then updated (a second row version and, when the
/// page is full, an entry in every index); the attempt then only adds its
/// row.
fn first_attempts<'a>(ops: impl Iterator<Item = &'a WriteOp>) -> HashMap<Uuid, &'a AttemptWrite> {
    let mut first = HashMap::new();
    for op in ops {
        if let WriteOp::Attempt(a) = op
            && a.attempt == 1
        {
            first.entry(a.delivery_id.0).or_insert(a);
        }
    }
    first
}

/// The holds of attempt 1 among `ops` of deliveries that `first_attempts`
/// does not attempt, the first such op winning: a delivery a batch creates
/// held is inserted held, like one created with its first attempt.
fn first_holds<'a>(
    ops: impl Iterator<Item = &'a WriteOp>,
    first_attempts: &HashMap<Uuid, &AttemptWrite>,
) -> HashMap<Uuid, DateTime<Utc>> {
    let mut first = HashMap::new();
    for op in ops {
        if let WriteOp::Hold {
            delivery_id,
            attempt: 1,
            until,
        } = op
            && !first_attempts.contains_key(&delivery_id.0)
        {
            first.entry(delivery_id.0).or_insert(*until);
        }
    }
    first
}

/// Splits ops sorted by kind into runs that one statement each can apply:
/// ops of one kind, and for attempts, of distinct deliveries (two attempts
/// of one delivery must update it one after the other).
fn runs<'s, 'o>(mut sorted: &'s [&'o WriteOp]) -> impl Iterator<Item = &'s [&'o WriteOp]> {
    std::iter::from_fn(move || {
        let first = sorted.first()?;
        let len = match first {
            WriteOp::Attempt(_) => {
                let mut seen = HashSet::new();
                sorted
                    .iter()
                    .take_while(
                        |op| matches!(op, WriteOp::Attempt(a) if seen.insert(a.delivery_id)),
                    )
                    .count()
            }
            _ => sorted
                .iter()
                .take_while(|op| op.kind_rank() == first.kind_rank())
                .count(),
        };
        let (run, rest) = sorted.split_at(len);
        sorted = rest;
        Some(run)
    })
}

/// Puts the results of ops applied in `order` back in the callers' order.
fn in_callers_order(order: &[usize], applied: Vec<WriteResult>) -> Result<Vec<WriteResult>> {
    if applied.len() != order.len() {
        return Err(StoreError::Corrupt(format!(
            "ledger batch of {} ops returned {} results",
            order.len(),
            applied.len()
        )));
    }
    let mut results: Vec<Option<WriteResult>> = vec![None; order.len()];
    for (&i, result) in order.iter().zip(applied) {
        results[i] = Some(result);
    }
    Ok(results.into_iter().flatten().collect())
}
