//! The futures made for every event and every delivery stay small.
//!
//! An async fn's future is as large as the most it holds across any one
//! await, sub-futures included, whether or not that branch ever runs. Rare
//! branches awaited inline (disabling a webhook after a 410, a failing
//! episode, a publish awaiting its confirm) once made each first attempt's
//! and each follow-up's future 10 KB. Every event and delivery then paid to
//! allocate and copy them, in CPU and in peak memory (docs/benchmarks.md,
//! "Rare branches awaited boxed").
//! The fix is to box the rare branch at its call site.
//!
//! The sizes are type sizes, computed without running anything: each
//! closure below is only there to name its future's type.

use courier_model::{DeliveryMessage, DeliveryTarget, Event};
use lapin::message::Delivery;

use super::Pipeline;
use super::attempt::Attempted;
use crate::consumer::Finish;
use crate::limits::Slot;

/// The size of the future that `make` returns, never calling it.
fn future_size<A, F: Future>(_make: impl FnOnce(A) -> F) -> usize {
    size_of::<F>()
}

type P = &'static Pipeline;

/// Budgets in bytes. The handlers that run once per message are spawned
/// as tasks; the per-delivery ones are allocated once per delivery (the
/// first attempts in the fan-out's set, a follow-up in its box).
const PER_MESSAGE: usize = 3584;
const PER_DELIVERY: usize = 2048;

#[test]
fn the_futures_made_per_event_and_per_delivery_stay_small() {
    let sizes = [
        (
            "fan_out (a task per event message)",
            future_size(|(p, m, f): (P, &'static Delivery, Finish)| p.fan_out(m, f)),
            PER_MESSAGE,
        ),
        (
            "deliver (a task per delivery message)",
            future_size(|(p, m): (P, &'static Delivery)| p.deliver(m)),
            PER_MESSAGE,
        ),
        (
            "first_attempt (one per delivery of a fan-out)",
            future_size(
                |(p, e, t, m): (
                    P,
                    &'static Event,
                    &'static dyn DeliveryTarget,
                    DeliveryMessage,
                )| { p.first_attempt(e, t, m) },
            ),
            PER_DELIVERY,
        ),
        (
            "attempt",
            future_size(
                |(p, e, t, m, s): (
                    P,
                    &'static Event,
                    &'static dyn DeliveryTarget,
                    &'static DeliveryMessage,
                    Slot,
                )| p.attempt(e, t, m, s),
            ),
            PER_DELIVERY,
        ),
        (
            "follow_up (boxed per attempt made in a fan-out)",
            future_size(
                |(p, m, a, e): (
                    P,
                    &'static DeliveryMessage,
                    &'static Attempted,
                    &'static Event,
                )| { p.follow_up(m, a, e) },
            ),
            PER_DELIVERY,
        ),
    ];
    let too_large: Vec<String> = sizes
        .iter()
        .filter(|(_, size, budget)| size > budget)
        .map(|(name, size, budget)| format!("{name}: {size} bytes, budget {budget}"))
        .collect();
    assert!(
        too_large.is_empty(),
        "hot-path futures grew past their budget: {too_large:?}. Find the large \
         sub-future awaited inline (usually a rare branch) and await it boxed: \
         `Box::pin(self.rare_branch(..)).await`"
    );
    // The measure itself works: a future holding a large value across an
    // await is at least that large.
    let holding = future_size(|(): ()| async {
        let buffer = [0u8; 8192];
        tokio::task::yield_now().await;
        buffer.len()
    });
    assert!(holding >= 8192, "{holding}");
}
