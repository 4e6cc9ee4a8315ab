//! The endpoint lifecycle in the ledger: disabling pauses, enabling
//! replays or cancels, failing episodes are started, reported, ended and
//! acted on once, and all of it stays inside the webhook's workspace.

use chrono::Duration;
use courier_model::{DeliveryStatus, DisabledReason, SubscriptionStatus};
use courier_store::{Disabling, EndedEpisode, PausedDeliveries, WriteOp};

use crate::common::{
    TestDb, apply_one, event, failed_attempt, fan_out, now, status_of, stored_subscription,
    succeeded_attempt, workspace,
};
use crate::on_both_backends;

on_both_backends!(
    disabling_pauses_and_enabling_replays_or_cancels,
    a_disabled_webhooks_new_deliveries_are_born_paused,
    failing_episodes_are_started_reported_and_ended_once,
    a_failing_webhook_is_disabled_once_and_never_after_a_success,
    another_workspace_cannot_touch_the_lifecycle,
);

async fn disabling_pauses_and_enabling_replays_or_cancels(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let sub = stored_subscription(store, &ws).await;
    let events: Vec<_> = (0..3).map(|_| event(&ws)).collect();
    let mut ids = Vec::new();
    for e in &events {
        let (op, deliveries) = fan_out(e, &[sub.id]);
        apply_one(store, op).await;
        ids.push(deliveries[0].0);
    }
    // One retrying, one succeeded, one never attempted.
    apply_one(store, WriteOp::Attempt(failed_attempt(ids[0], 1))).await;
    apply_one(store, WriteOp::Attempt(succeeded_attempt(ids[1], 1))).await;

    let at = now();
    let disabled = store
        .disable_subscription(&ws, sub.id, DisabledReason::Gone, at, None)
        .await
        .unwrap();
    assert_eq!(disabled, Disabling::Disabled { paused: 2 });
    let stored = store.get_subscription(&ws, sub.id).await.unwrap().unwrap();
    assert_eq!(stored.status, SubscriptionStatus::Disabled);
    let reason = stored.disabled.expect("a reason");
    assert_eq!((reason.reason, reason.at), (DisabledReason::Gone, at));
    assert_eq!(status_of(store, ids[0]).await, DeliveryStatus::Paused);
    assert_eq!(status_of(store, ids[1]).await, DeliveryStatus::Succeeded);
    assert_eq!(status_of(store, ids[2]).await, DeliveryStatus::Paused);
    assert_eq!(store.count_paused(&ws, sub.id).await.unwrap(), 2);
    // Disabled already: a second disabling changes nothing.
    assert_eq!(
        store
            .disable_subscription(&ws, sub.id, DisabledReason::Failing, now(), None)
            .await
            .unwrap(),
        Disabling::Unchanged
    );

    // Enabled again, replaying: due now, each owed its next attempt.
    let mut enabled = stored.clone();
    enabled.enable();
    enabled.updated_at = now();
    let replayed = store
        .update_subscription_and(&enabled, PausedDeliveries::Replay)
        .await
        .unwrap();
    assert_eq!(replayed, Some(2));
    let retrying = store.get_delivery(ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (retrying.status, retrying.attempts),
        (DeliveryStatus::Retrying, 1)
    );
    assert_eq!(retrying.held_until, Some(enabled.updated_at));
    let fresh = store.get_delivery(ids[2]).await.unwrap().unwrap();
    assert_eq!((fresh.status, fresh.attempts), (DeliveryStatus::Pending, 0));
    assert!(fresh.held_until.is_some());
    let due = store.held_due(now() + Duration::seconds(1)).await.unwrap();
    assert_eq!(due.iter().map(|d| d.due).sum::<u64>(), 2);

    // Disabled and enabled again without replaying: canceled.
    let mut off = enabled.clone();
    off.disable(DisabledReason::Manual, now());
    assert_eq!(
        store
            .update_subscription_and(&off, PausedDeliveries::Pause)
            .await
            .unwrap(),
        Some(2)
    );
    let mut on = off.clone();
    on.enable();
    assert_eq!(
        store
            .update_subscription_and(&on, PausedDeliveries::Cancel)
            .await
            .unwrap(),
        Some(2)
    );
    assert_eq!(status_of(store, ids[0]).await, DeliveryStatus::Canceled);
    assert_eq!(status_of(store, ids[2]).await, DeliveryStatus::Canceled);
}

async fn a_disabled_webhooks_new_deliveries_are_born_paused(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let sub = stored_subscription(store, &ws).await;
    let e = event(&ws);
    let (
        WriteOp::FanOut {
            event, deliveries, ..
        },
        _,
    ) = fan_out(&e, &[sub.id])
    else {
        unreachable!()
    };
    let result = apply_one(
        store,
        WriteOp::FanOut {
            event,
            deliveries: Vec::new(),
            paused: deliveries.clone(),
        },
    )
    .await;
    // Nothing to publish: a paused delivery waits for its webhook.
    assert_eq!(
        result,
        courier_store::WriteResult::FanOut {
            to_publish: Vec::new()
        }
    );
    let record = store.get_delivery(deliveries[0].0).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.attempts),
        (DeliveryStatus::Paused, 0)
    );
    assert_eq!(record.held_until, None);
    // A paused delivery is not final: pausing it again is a no-op, and a
    // cancel (its webhook deleted) does not apply to it either.
    apply_one(
        store,
        WriteOp::Pause {
            delivery_id: deliveries[0].0,
        },
    )
    .await;
    assert_eq!(
        status_of(store, deliveries[0].0).await,
        DeliveryStatus::Paused
    );
    assert!(!DeliveryStatus::Paused.is_final());
}

async fn failing_episodes_are_started_reported_and_ended_once(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let sub = stored_subscription(store, &ws).await;
    let t0 = now();

    // Two replicas start the same episode: the first start stands.
    let since = store.start_failing(&ws, sub.id, t0).await.unwrap();
    assert_eq!(since, Some(t0));
    let again = store
        .start_failing(&ws, sub.id, t0 + Duration::seconds(5))
        .await
        .unwrap();
    assert_eq!(again, Some(t0));
    let open = store.open_episodes().await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!((open[0].subscription_id, open[0].since), (sub.id, t0));
    assert!(!open[0].reported);

    // Reported once, whoever asks.
    assert!(store.report_failing(sub.id, t0, now()).await.unwrap());
    assert!(!store.report_failing(sub.id, t0, now()).await.unwrap());
    // Not an episode that is not the open one.
    assert!(
        !store
            .report_failing(sub.id, t0 - Duration::seconds(1), now())
            .await
            .unwrap()
    );

    // Ended by a success, once.
    let ended = store.end_failing(sub.id, now()).await.unwrap();
    assert_eq!(
        ended,
        Some(EndedEpisode {
            since: t0,
            reported: true
        })
    );
    assert_eq!(store.end_failing(sub.id, now()).await.unwrap(), None);
    assert!(store.open_episodes().await.unwrap().is_empty());

    // A new episode starts fresh, unreported.
    let t1 = now() + Duration::seconds(10);
    assert_eq!(
        store.start_failing(&ws, sub.id, t1).await.unwrap(),
        Some(t1)
    );
    assert!(!store.open_episodes().await.unwrap()[0].reported);

    // A deleted webhook has no episode to start.
    assert!(store.delete_subscription(&ws, sub.id).await.unwrap());
    assert_eq!(store.start_failing(&ws, sub.id, now()).await.unwrap(), None);
    assert!(store.open_episodes().await.unwrap().is_empty());
}

async fn a_failing_webhook_is_disabled_once_and_never_after_a_success(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let sub = stored_subscription(store, &ws).await;
    let e = event(&ws);
    let (op, deliveries) = fan_out(&e, &[sub.id]);
    apply_one(store, op).await;
    let t0 = now() - Duration::seconds(60);
    store.start_failing(&ws, sub.id, t0).await.unwrap();

    // A delivery succeeded after the episode began (on a replica that did
    // not end it): no disabling; the episode starts again.
    apply_one(
        store,
        WriteOp::Attempt(succeeded_attempt(deliveries[0].0, 1)),
    )
    .await;
    let t1 = now();
    let outcome = store
        .disable_subscription(&ws, sub.id, DisabledReason::Failing, t1, Some(t0))
        .await
        .unwrap();
    assert_eq!(outcome, Disabling::Recovered);
    let stored = store.get_subscription(&ws, sub.id).await.unwrap().unwrap();
    assert_eq!(stored.status, SubscriptionStatus::Enabled);
    assert_eq!(store.open_episodes().await.unwrap()[0].since, t1);

    // Failing since t1 with no success: disabled, once. A stale episode
    // start disables nothing.
    let stale = store
        .disable_subscription(&ws, sub.id, DisabledReason::Failing, now(), Some(t0))
        .await
        .unwrap();
    assert_eq!(stale, Disabling::Unchanged);
    let t2 = now() + Duration::seconds(1);
    let first = store
        .disable_subscription(&ws, sub.id, DisabledReason::Failing, t2, Some(t1))
        .await
        .unwrap();
    assert_eq!(first, Disabling::Disabled { paused: 0 });
    let second = store
        .disable_subscription(&ws, sub.id, DisabledReason::Failing, t2, Some(t1))
        .await
        .unwrap();
    assert_eq!(second, Disabling::Unchanged);
    let reason = store
        .get_subscription(&ws, sub.id)
        .await
        .unwrap()
        .unwrap()
        .disabled
        .unwrap();
    assert_eq!(reason.reason, DisabledReason::Failing);
    let counts = store.lifecycle_counts().await.unwrap();
    assert_eq!(counts.disabled, vec![(DisabledReason::Failing, 1)]);

    // Enabling it again forgets the episode: the next failure starts anew.
    let mut on = store.get_subscription(&ws, sub.id).await.unwrap().unwrap();
    on.enable();
    store
        .update_subscription_and(&on, PausedDeliveries::Replay)
        .await
        .unwrap();
    assert!(store.open_episodes().await.unwrap().is_empty());
}

async fn another_workspace_cannot_touch_the_lifecycle(db: TestDb) {
    let store = &db.store;
    let mine = workspace(store).await;
    let theirs = workspace(store).await;
    let sub = stored_subscription(store, &mine).await;
    let e = event(&mine);
    let (op, deliveries) = fan_out(&e, &[sub.id]);
    apply_one(store, op).await;

    let at = now();
    assert_eq!(
        store
            .disable_subscription(&theirs, sub.id, DisabledReason::Manual, at, None)
            .await
            .unwrap(),
        Disabling::Unchanged
    );
    assert_eq!(
        store.start_failing(&theirs, sub.id, at).await.unwrap(),
        None
    );
    assert_eq!(store.count_paused(&theirs, sub.id).await.unwrap(), 0);
    let mut hijack = sub.clone();
    hijack.workspace_id = theirs.clone();
    hijack.disable(DisabledReason::Manual, at);
    assert_eq!(
        store
            .update_subscription_and(&hijack, PausedDeliveries::Pause)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        status_of(store, deliveries[0].0).await,
        DeliveryStatus::Pending
    );
    let stored = store
        .get_subscription(&mine, sub.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, SubscriptionStatus::Enabled);
}
