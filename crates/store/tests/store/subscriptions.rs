//! Workspaces and subscriptions: creation, paging, scoping, the fingerprint.

use chrono::Duration;
use courier_model::{
    DisabledReason, EventType, RateLimit, Subscription, SubscriptionStatus, WebhookSecret,
    WebhookSettings, WebhookUrl, WorkspaceId,
};
use courier_store::{StoreError, Workspace};

use crate::common::{TestDb, now, stored_subscription, subscription, workspace};
use crate::on_both_backends;

on_both_backends!(
    workspaces_are_created_once,
    subscriptions_round_trip_and_page,
    subscription_fingerprint_tracks_every_change,
    subscriptions_are_scoped_to_their_workspace,
    subscription_needs_its_workspace,
    enabled_subscriptions_skip_disabled,
    subscriptions_insert_in_bulk_as_one_by_one,
);

async fn workspaces_are_created_once(db: TestDb) {
    let store = &db.store;
    let first = Workspace {
        id: WorkspaceId::parse("acme-eu").unwrap(),
        name: "Acme EU".into(),
        created_at: now() - Duration::hours(1),
    };
    let second = Workspace {
        id: WorkspaceId::parse("acme-us").unwrap(),
        name: "Acme US".into(),
        created_at: now(),
    };
    store.create_workspace(&first).await.unwrap();
    store.create_workspace(&second).await.unwrap();

    let again = Workspace {
        name: "someone else".into(),
        ..first.clone()
    };
    let err = store.create_workspace(&again).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { what: "workspace" }),
        "{err:?}"
    );

    assert_eq!(
        store.get_workspace(&first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store
            .get_workspace(&WorkspaceId::parse("nope").unwrap())
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.list_workspaces().await.unwrap(), vec![first, second]);
}

async fn subscription_fingerprint_tracks_every_change(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    // Each change gives a fingerprint other than the one before it, which
    // is what a cache loaded before the change compares against.
    let mut last = store.subscriptions_fingerprint().await.unwrap();
    let mut changed = |fingerprint| {
        assert_ne!(fingerprint, last);
        last = fingerprint;
    };

    let mut sub = subscription(&ws, &[EventType::OrderCreated], &[]);
    store.insert_subscription(&sub).await.unwrap();
    changed(store.subscriptions_fingerprint().await.unwrap());

    // Updates (to the status as well) stamp a later updated_at.
    sub.status = SubscriptionStatus::Disabled;
    sub.updated_at += chrono::Duration::milliseconds(5);
    assert!(store.update_subscription(&sub).await.unwrap());
    changed(store.subscriptions_fingerprint().await.unwrap());

    store.delete_subscription(&ws, sub.id).await.unwrap();
    changed(store.subscriptions_fingerprint().await.unwrap());
    // Unchanged ledger, unchanged fingerprint.
    assert_eq!(
        store.subscriptions_fingerprint().await.unwrap(),
        store.subscriptions_fingerprint().await.unwrap()
    );
}

async fn subscriptions_round_trip_and_page(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let mut subs = Vec::new();
    for i in 0..5 {
        let mut sub = subscription(
            &ws,
            &[EventType::OrderCreated, EventType::ShipmentCreated],
            &["amazon-de", "shopify"],
        );
        sub.name = format!("endpoint {i}");
        store.insert_subscription(&sub).await.unwrap();
        subs.push(sub);
    }
    subs.sort_by_key(|s| s.id);

    let got = store.get_subscription(&ws, subs[2].id).await.unwrap();
    assert_eq!(got.as_ref(), Some(&subs[2]));

    let page1 = store.list_subscriptions(&ws, 2, None).await.unwrap();
    assert_eq!(page1, subs[0..2]);
    let page2 = store
        .list_subscriptions(&ws, 2, Some(page1[1].id))
        .await
        .unwrap();
    assert_eq!(page2, subs[2..4]);
    let page3 = store
        .list_subscriptions(&ws, 2, Some(page2[1].id))
        .await
        .unwrap();
    assert_eq!(page3, subs[4..5]);
    assert!(
        store
            .list_subscriptions(&ws, 2, Some(page3[0].id))
            .await
            .unwrap()
            .is_empty()
    );

    // Update replaces every mutable field, including a rotation.
    let mut updated = subs[1].clone();
    updated.name = "renamed".into();
    updated.url = WebhookUrl::parse("http://erp.example.com:8080/v2?x=1").unwrap();
    updated.event_types = vec![EventType::RefundRequested];
    updated.channels = vec![];
    updated.previous_secret = Some(updated.secret.clone());
    updated.previous_secret_expires_at = Some(now() + Duration::hours(24));
    updated.secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    updated.updated_at = now() + Duration::seconds(1);
    updated.disable(DisabledReason::Gone, updated.updated_at);
    updated.settings = WebhookSettings {
        description: Some("Orders to the ERP.\nOwner: ops".into()),
        timeout_ms: Some(2500),
        max_attempts: Some(3),
        headers: vec![("X-Tenant".into(), "acme".into())],
        rate_limit: Some(RateLimit {
            per_second: 50,
            burst: 10,
        }),
    };
    assert!(store.update_subscription(&updated).await.unwrap());
    assert_eq!(
        store.get_subscription(&ws, updated.id).await.unwrap(),
        Some(updated.clone())
    );

    let mut stranger = subscription(&ws, &[EventType::OrderCreated], &[]);
    stranger.name = "never stored".into();
    assert!(!store.update_subscription(&stranger).await.unwrap());

    let err = store.insert_subscription(&subs[0]).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                what: "subscription"
            }
        ),
        "{err:?}"
    );

    assert!(store.delete_subscription(&ws, subs[0].id).await.unwrap());
    assert!(!store.delete_subscription(&ws, subs[0].id).await.unwrap());
    assert_eq!(store.get_subscription(&ws, subs[0].id).await.unwrap(), None);
    let remaining = store.list_subscriptions(&ws, 100, None).await.unwrap();
    assert_eq!(
        remaining.iter().map(|s| s.id).collect::<Vec<_>>(),
        subs[1..].iter().map(|s| s.id).collect::<Vec<_>>()
    );
}

async fn subscriptions_are_scoped_to_their_workspace(db: TestDb) {
    let store = &db.store;
    let mine = workspace(store).await;
    let theirs = workspace(store).await;
    let sub = stored_subscription(store, &mine).await;

    assert_eq!(store.get_subscription(&theirs, sub.id).await.unwrap(), None);
    assert!(
        store
            .list_subscriptions(&theirs, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!store.delete_subscription(&theirs, sub.id).await.unwrap());
    let hijack = Subscription {
        workspace_id: theirs.clone(),
        name: "hijacked".into(),
        ..sub.clone()
    };
    assert!(!store.update_subscription(&hijack).await.unwrap());
    assert_eq!(
        store.get_subscription(&mine, sub.id).await.unwrap(),
        Some(sub)
    );
}

async fn subscription_needs_its_workspace(db: TestDb) {
    let store = &db.store;
    let sub = subscription(&WorkspaceId::generate(), &[EventType::OrderCreated], &[]);
    let err = store.insert_subscription(&sub).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "workspace" }),
        "{err:?}"
    );
    assert!(store.load_enabled_subscriptions().await.unwrap().is_empty());
}

async fn enabled_subscriptions_skip_disabled(db: TestDb) {
    let store = &db.store;
    let a = workspace(store).await;
    let b = workspace(store).await;
    let on_a = stored_subscription(store, &a).await;
    let on_b = stored_subscription(store, &b).await;
    let mut off = subscription(&a, &[EventType::OrderCreated], &[]);
    off.status = SubscriptionStatus::Disabled;
    store.insert_subscription(&off).await.unwrap();

    let mut expected = vec![on_a.clone(), on_b];
    expected.sort_by_key(|s| s.id);
    assert_eq!(store.load_enabled_subscriptions().await.unwrap(), expected);

    // Disabling one takes it out; re-enabling brings it back.
    let disabled = Subscription {
        status: SubscriptionStatus::Disabled,
        ..on_a.clone()
    };
    assert!(store.update_subscription(&disabled).await.unwrap());
    let ids: Vec<_> = store
        .load_enabled_subscriptions()
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert!(!ids.contains(&on_a.id) && ids.len() == 1);
}

/// The bulk insert writes what one insert writes, row for row (settings,
/// lifecycle and rotation columns too), across statements of several
/// hundred rows, and all or nothing.
async fn subscriptions_insert_in_bulk_as_one_by_one(db: TestDb) {
    let store = &db.store;
    let a = workspace(store).await;
    let b = workspace(store).await;
    let mut subs: Vec<Subscription> = (0..1_203)
        .map(|i| {
            let ws = if i % 2 == 0 { &a } else { &b };
            let channel = format!("c{}", i % 7);
            subscription(ws, &[EventType::OrderCreated], &[&channel])
        })
        .collect();
    let mut special = subscription(
        &a,
        &[EventType::OrderCreated, EventType::RefundRequested],
        &[],
    );
    special.previous_secret = Some(WebhookSecret::generate());
    special.previous_secret_expires_at = Some(now() + Duration::hours(1));
    special.disable(DisabledReason::Failing, now());
    special.settings = WebhookSettings {
        description: Some("bulk".into()),
        timeout_ms: Some(900),
        max_attempts: Some(4),
        headers: vec![("x-a".into(), "1".into())],
        rate_limit: Some(RateLimit {
            per_second: 3,
            burst: 6,
        }),
    };
    subs.push(special);
    let before = store.subscriptions_fingerprint().await.unwrap();
    store.insert_subscriptions(&subs).await.unwrap();
    assert_ne!(store.subscriptions_fingerprint().await.unwrap(), before);

    let mut loaded = Vec::new();
    let n = store
        .for_each_subscription(&mut |s| loaded.push(s))
        .await
        .unwrap();
    assert_eq!(n, subs.len());
    subs.sort_by_key(|s| s.id);
    assert_eq!(loaded, subs);

    // One refused row (its workspace does not exist) leaves nothing.
    let mut more = vec![subscription(&a, &[EventType::OrderCreated], &[])];
    more.push(subscription(
        &WorkspaceId::generate(),
        &[EventType::OrderCreated],
        &[],
    ));
    assert!(store.insert_subscriptions(&more).await.is_err());
    assert_eq!(store.get_subscription(&a, more[0].id).await.unwrap(), None);
    store.insert_subscriptions(&[]).await.unwrap();
}
