//! Releases the deliveries the ledger holds.
//!
//! A delivery is held when its endpoint cannot take it now: the endpoint is
//! slow and every slot it may use is taken, or its webhook's circuit is
//! open after repeated failures. No message carries a held delivery, so a
//! backlog behind one endpoint costs the broker nothing and delays no one
//! else's messages.
//!
//! Every worker runs this loop. Four times a second it asks the ledger which
//! webhooks have held deliveries due and starts a drainer for each: it
//! waits for slots of the webhook's endpoint in line with the delivery
//! stage, and claims that many deliveries. A claim is a lease: the ledger
//! keeps the delivery held, but due only once the lease runs out, so no
//! other worker takes it meanwhile and a worker that dies with it only
//! delays it. The attempt's record ends the hold.
//!
//! While a webhook's circuit is open its drainer takes nothing, until the
//! circuit has cooled down: then it claims the circuit's probe in the
//! ledger (one replica in all gets it, see [`crate::circuit`]) and one held
//! delivery to make it with.
//!
//! A delivery held behind an open circuit is given up as dead (and
//! dead-lettered, its `dead_reason` `circuit_open`) once its retry
//! schedule's time is used up, counted from its creation (its first
//! attempt's time, or when it was held at the fan-out), as it would have
//! been had all its attempts been made and failed. One held until a later
//! time (a receiver's `Retry-After`) waits for that time first. Each worker
//! looks for such deliveries of every open circuit every
//! [`EXPIRE_EVERY`], and gives up all it finds, in batches, so a failing
//! endpoint's deliveries settle on their schedule however many there are.
//! A backlog behind a slow but working endpoint is never given up.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use courier_model::{DeliveryId, DeliveryMessage, SubscriptionId};
use courier_store::{DeadReason, HeldDelivery, HeldDue};
use futures_util::future::try_join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::circuit::Gate;
use crate::error_chain;
use crate::limits::{NoSlot, Slot};
use crate::log::{About, about};
use crate::pipeline::{Pipeline, delivery_span};

/// How often the ledger is asked which held deliveries are due.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// Most deliveries of one endpoint claimed at once.
const CLAIM_AT_MOST: usize = 64;
/// How often the held deliveries of open circuits are looked at for those
/// whose retry schedule ran out.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);
/// Most held deliveries given up in one batch (one claim, their dead
/// letters, one update); a webhook's batches follow each other until none
/// is left.
const EXPIRE_AT_MOST: u32 = 500;

impl Pipeline {
    /// Releases held deliveries as their endpoints make room, until `stop`;
    /// then gives those under way the shutdown grace period to finish.
    ///
    /// Each endpoint with deliveries due gets a drainer: a task that waits
    /// for the endpoint's slots in line with the worker's other attempts,
    /// claims as many deliveries as it got slots, and starts them, until
    /// none is due or the endpoint has no room (slow and saturated, or its
    /// circuit open); the next look starts it again.
    pub async fn release_held(self: Arc<Self>, stop: CancellationToken) {
        let tasks = TaskTracker::new();
        let draining: Arc<Mutex<HashSet<SubscriptionId>>> = Arc::default();
        let expiring = Arc::new(AtomicBool::new(false));
        let mut expired = Instant::now();
        loop {
            let due = match self.store.held_due(Utc::now()).await {
                Ok(due) => due,
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "reading held deliveries failed");
                    Vec::new()
                }
            };
            let total: u64 = due.iter().map(|d| d.due).sum();
            self.metrics
                .held
                .set(i64::try_from(total).unwrap_or(i64::MAX));
            // Giving up runs beside the releases, one round at a time, while
            // some circuit is open.
            if expired.elapsed() >= EXPIRE_EVERY
                && !self.endpoints.circuits().open_webhooks().is_empty()
                && !expiring.swap(true, Ordering::AcqRel)
            {
                expired = Instant::now();
                let pipeline = Arc::clone(&self);
                let expiring = Arc::clone(&expiring);
                tasks.spawn(async move {
                    pipeline.give_up_expired().await;
                    expiring.store(false, Ordering::Release);
                });
            }
            for HeldDue {
                subscription_id: subscription,
                url,
                ..
            } in due
            {
                // A deleted webhook's deliveries are canceled when claimed:
                // they take slots of their own meanwhile.
                let endpoint = url.unwrap_or_else(|| format!("webhook {subscription}"));
                if !lock(&draining).insert(subscription) {
                    continue;
                }
                let pipeline = Arc::clone(&self);
                let (draining, stop, started) =
                    (Arc::clone(&draining), stop.clone(), tasks.clone());
                tasks.spawn(async move {
                    pipeline
                        .drain(subscription, &endpoint, &stop, &started)
                        .await;
                    lock(&draining).remove(&subscription);
                });
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
        // What is not done by then is released again when its claim runs out.
        tasks.close();
        let _ = tokio::time::timeout(self.config.shutdown_grace, tasks.wait()).await;
    }

    /// Releases the subscription's due held deliveries while its endpoint
    /// (`endpoint`, its URL) has room, each on a task of `tasks`.
    async fn drain(
        self: &Arc<Self>,
        subscription: SubscriptionId,
        endpoint: &str,
        stop: &CancellationToken,
        tasks: &TaskTracker,
    ) {
        match self.endpoints.circuits().gate(subscription) {
            Gate::Closed => {}
            Gate::Open { .. } => return,
            Gate::CooledDown => return self.probe(subscription, endpoint, tasks).await,
        }
        while !stop.is_cancelled() {
            // No more than its rate limit lets through now (see
            // `crate::rate`): a rate-limited webhook's drainer waits for
            // its next token, holding no worker slot meanwhile.
            let rate_room = match self.rates.take_up_to(subscription, CLAIM_AT_MOST) {
                None => None,
                Some(Ok(room)) => Some(room),
                Some(Err(wait)) => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            // In line for a worker slot, then an endpoint slot, like the
            // delivery stage; then whatever more of both is free right now.
            let unused = |taken: usize| {
                if let Some(room) = rate_room {
                    self.rates
                        .give_back(subscription, room.saturating_sub(taken));
                }
            };
            let Ok(worker_slot) = Arc::clone(&self.http_slots).acquire_owned().await else {
                return unused(0);
            };
            let slot = match self.endpoints.acquire(endpoint, subscription).await {
                Ok(slot) => slot,
                Err(NoSlot::Busy) => {
                    unused(0);
                    continue;
                }
                Err(NoSlot::Slow { .. } | NoSlot::Open { .. }) => return unused(0),
            };
            let more_workers: Vec<_> =
                std::iter::from_fn(|| Arc::clone(&self.http_slots).try_acquire_owned().ok())
                    .take(rate_room.unwrap_or(CLAIM_AT_MOST).min(CLAIM_AT_MOST) - 1)
                    .collect();
            let slots: Vec<Slot> = std::iter::once(slot)
                .chain(
                    self.endpoints
                        .try_slots(endpoint, subscription, more_workers.len()),
                )
                .collect();
            let workers = std::iter::once(worker_slot).chain(more_workers);

            let now = Utc::now();
            let lease = self.claim_lease();
            let held = match self
                .store
                .claim_held(subscription, slots.len() as u32, now, now + lease)
                .await
            {
                Ok(held) => held,
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "claiming held deliveries failed");
                    return unused(0);
                }
            };
            unused(held.len());
            let all_claimed = held.len() < slots.len();
            for ((held, slot), worker_slot) in held.into_iter().zip(slots).zip(workers) {
                let pipeline = Arc::clone(self);
                tasks.spawn(async move {
                    pipeline.release(held, slot).await;
                    drop(worker_slot);
                });
            }
            if all_claimed {
                return;
            }
        }
    }

    /// Claims the probe of the subscription's cooled-down circuit in the
    /// ledger and, if this worker got it, makes it with one of the
    /// subscription's held deliveries. A probe not made (no endpoint slot
    /// free, no delivery due any more) is given back at once.
    async fn probe(
        self: &Arc<Self>,
        subscription: SubscriptionId,
        endpoint: &str,
        tasks: &TaskTracker,
    ) {
        let Ok(worker_slot) = Arc::clone(&self.http_slots).acquire_owned().await else {
            return;
        };
        let now = Utc::now();
        let lease_until = now + self.claim_lease();
        let circuit = match self
            .store
            .claim_circuit_probe(subscription, now, lease_until)
            .await
        {
            Ok(Some(circuit)) => circuit,
            // Another replica probes, or the circuit closed meanwhile.
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "claiming a circuit's probe failed");
                return;
            }
        };
        self.endpoints
            .circuits()
            .probe_granted(&circuit, lease_until);
        let Some(slot) = self.endpoints.probe_slot(endpoint, subscription) else {
            return;
        };
        let held = match self
            .store
            .claim_held(subscription, 1, now, lease_until)
            .await
        {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "claiming a held delivery to probe with failed");
                return;
            }
        };
        // None left to probe with: the slot gives the probe back.
        if let Some(held) = held.into_iter().next() {
            let pipeline = Arc::clone(self);
            tasks.spawn(async move {
                pipeline.release(held, slot).await;
                drop(worker_slot);
            });
        }
    }

    /// Gives up the held deliveries of open circuits whose retry schedule
    /// (each webhook's own, see
    /// [`courier_model::RetryPolicy::with_max_attempts`]) ran out
    /// while they waited. Whose did is one read (a claim is a write, and
    /// SQLite's one writer is the ledger's too).
    async fn give_up_expired(&self) {
        let now = Utc::now();
        let open = match self.store.held_of_open_circuits(now).await {
            Ok(open) => open,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "reading open circuits' held deliveries failed");
                return;
            }
        };
        for held in open {
            let span = self
                .config
                .retry
                .with_max_attempts(held.max_attempts)
                .span();
            let Ok(span) = chrono::Duration::from_std(span) else {
                continue;
            };
            if held.oldest < now - span {
                self.give_up_expired_of(held.subscription_id, span).await;
            }
        }
    }

    /// Dead-letters the webhook's held deliveries whose retry schedule
    /// (`span`) ran out while they waited, then marks them dead for
    /// `circuit_open`, a batch at a time until none is left. A worker that
    /// dies in between leaves them claimed, and one that finds the circuit
    /// still open dead-letters them again later: a dead letter may come
    /// twice, never not at all.
    async fn give_up_expired_of(&self, subscription: SubscriptionId, span: chrono::Duration) {
        loop {
            let now = Utc::now();
            let lease = self.claim_lease();
            let expired = match self
                .store
                .claim_expired(subscription, now - span, EXPIRE_AT_MOST, now, now + lease)
                .await
            {
                Ok(expired) if expired.is_empty() => return,
                Ok(expired) => expired,
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "claiming expired held deliveries failed");
                    return;
                }
            };
            let letters: Vec<DeliveryMessage> = expired
                .iter()
                .map(|held| {
                    DeliveryMessage::new(
                        held.id,
                        held.event_id.clone(),
                        held.subscription_id,
                        held.attempts.saturating_add(1),
                    )
                })
                .collect();
            if let Err(error) = try_join_all(letters.iter().map(|msg| self.dead_letter(msg))).await
            {
                tracing::warn!(error = %error_chain(&error), "dead-lettering expired held deliveries failed; trying again later");
                return;
            }
            let ids: Vec<DeliveryId> = expired.iter().map(|held| held.id).collect();
            match self.store.give_up_held(&ids, DeadReason::CircuitOpen).await {
                Ok(dead) if dead.is_empty() => {}
                Ok(dead) => {
                    for held in expired.iter().filter(|h| dead.contains(&h.id)) {
                        self.metrics
                            .dead_lettered
                            .with_label_values(&[held.event_type.as_str()])
                            .inc();
                    }
                    tracing::warn!(
                        webhook_id = %subscription,
                        deliveries = dead.len(),
                        "held past their retry schedule while their webhook's circuit stayed open; given up as dead"
                    );
                }
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "marking expired held deliveries dead failed; trying again later");
                    return;
                }
            }
            if expired.len() < EXPIRE_AT_MOST as usize {
                return;
            }
        }
    }

    /// How long a claimed delivery stays out of other workers' reach: long
    /// enough for its attempt to time out and be recorded. Should a worker
    /// take longer still (its database is down), another may attempt the
    /// delivery too; the ledger records one attempt of each number.
    pub(crate) fn claim_lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.config.http.timeout + Duration::from_secs(10))
            .unwrap_or_default()
    }

    async fn release(&self, held: HeldDelivery, slot: Slot) {
        let msg = DeliveryMessage::new(
            held.id,
            held.event_id,
            held.subscription_id,
            held.attempts.saturating_add(1),
        );
        async {
            if let Err(error) = self.deliver_with(&msg, slot).await {
                about!(
                    warn,
                    About::Delivery(&msg),
                    error = %error_chain(&error),
                    "releasing a held delivery failed; it is released again when its claim runs out"
                );
            }
        }
        .instrument(delivery_span(&msg))
        .await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
