//! The web console's rows: sessions, one-time portal links, pruning, and
//! the read models of its webhook list and workspace overview, which count
//! one workspace's deliveries and never another's.

use std::collections::HashMap;

use chrono::{DateTime, Duration, DurationRound, Utc};
use courier_model::{
    DeliveryId, DeliveryStatus, ErrorKind, EventType, SubscriptionId, WorkspaceId,
};
use courier_store::{
    AttemptWrite, Backend, ConsoleSession, DeliveryFilter, PortalLink, SessionKind, Store,
    StoreError, StoreOptions, WebhookHealth, WriteOp,
};
use sqlx::{Connection, PgConnection, SqliteConnection};

use crate::common::{
    TestDb, apply_one, event, failed_attempt, fan_out, hold, now, stored_subscription, workspace,
};
use crate::on_both_backends;

on_both_backends!(
    sessions_are_found_until_they_expire,
    portal_links_redeem_once_and_never_expired,
    concurrent_redeems_of_one_link_succeed_once,
    prune_removes_what_expired_and_nothing_else,
    webhook_health_counts_each_webhook,
    outcomes_are_counted_by_hour_and_status,
    deliveries_are_counted_by_filter,
    one_workspace_never_counts_anothers_rows,
);

fn session(ws: Option<&WorkspaceId>, kind: SessionKind, hash: &str) -> ConsoleSession {
    let at = now();
    ConsoleSession {
        id_hash: hash.into(),
        kind,
        workspace_id: ws.cloned(),
        read_only: kind == SessionKind::Portal,
        csrf_token: format!("csrf-{hash}"),
        created_at: at,
        expires_at: at + Duration::hours(8),
    }
}

fn link(ws: &WorkspaceId, expires_at: DateTime<Utc>) -> PortalLink {
    PortalLink {
        workspace_id: ws.clone(),
        read_only: true,
        created_at: expires_at - Duration::hours(1),
        expires_at,
    }
}

async fn sessions_are_found_until_they_expire(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let key = session(Some(&ws), SessionKind::Key, "hash-key");
    let portal = session(Some(&ws), SessionKind::Portal, "hash-portal");
    let admin = session(None, SessionKind::Admin, "hash-admin");
    for s in [&key, &portal, &admin] {
        store.insert_console_session(s).await.unwrap();
    }

    let t = key.created_at;
    for s in [&key, &portal, &admin] {
        assert_eq!(
            store.find_console_session(&s.id_hash, t).await.unwrap(),
            Some(s.clone())
        );
    }
    let last = key.expires_at - Duration::microseconds(1);
    assert_eq!(
        store.find_console_session("hash-key", last).await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(
        store
            .find_console_session("hash-key", key.expires_at)
            .await
            .unwrap(),
        None,
        "expired at its expiry"
    );
    assert_eq!(store.find_console_session("nope", t).await.unwrap(), None);

    assert!(store.delete_console_session("hash-key").await.unwrap());
    assert!(!store.delete_console_session("hash-key").await.unwrap());
    assert_eq!(
        store.find_console_session("hash-key", t).await.unwrap(),
        None
    );
    assert_eq!(
        store.find_console_session("hash-admin", t).await.unwrap(),
        Some(admin.clone()),
        "deleting one session leaves the others"
    );

    assert!(matches!(
        store.insert_console_session(&admin).await,
        Err(StoreError::Conflict { .. })
    ));
    let nobody = WorkspaceId::parse("nobody").unwrap();
    assert!(matches!(
        store
            .insert_console_session(&session(Some(&nobody), SessionKind::Key, "hash-2"))
            .await,
        Err(StoreError::NotFound { what: "workspace" })
    ));
    // Only an admin session may have no workspace.
    let unscoped = session(None, SessionKind::Portal, "hash-3");
    assert!(matches!(
        store.insert_console_session(&unscoped).await,
        Err(StoreError::Database(_))
    ));
    assert_eq!(store.find_console_session("hash-3", t).await.unwrap(), None);
}

async fn portal_links_redeem_once_and_never_expired(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let t = now();
    let live = link(&ws, t + Duration::minutes(15));
    let writable = PortalLink {
        read_only: false,
        ..live.clone()
    };
    store.insert_portal_link("live", &live).await.unwrap();
    store
        .insert_portal_link("writable", &writable)
        .await
        .unwrap();
    store
        .insert_portal_link("expired", &link(&ws, t))
        .await
        .unwrap();

    assert_eq!(
        store.redeem_portal_link("live", t).await.unwrap(),
        Some(live.clone())
    );
    assert_eq!(store.redeem_portal_link("live", t).await.unwrap(), None);
    assert_eq!(
        store.redeem_portal_link("writable", t).await.unwrap(),
        Some(writable)
    );
    assert_eq!(
        store.redeem_portal_link("expired", t).await.unwrap(),
        None,
        "expired at its expiry"
    );
    // Refusing it did not use it: a moment before its expiry it was good.
    assert_eq!(
        store
            .redeem_portal_link("expired", t - Duration::microseconds(1))
            .await
            .unwrap(),
        Some(link(&ws, t))
    );
    assert_eq!(store.redeem_portal_link("unknown", t).await.unwrap(), None);

    assert!(matches!(
        store.insert_portal_link("live", &live).await,
        Err(StoreError::Conflict { .. })
    ));
    let nobody = WorkspaceId::parse("nobody").unwrap();
    assert!(matches!(
        store.insert_portal_link("orphan", &link(&nobody, t)).await,
        Err(StoreError::NotFound { what: "workspace" })
    ));
}

async fn concurrent_redeems_of_one_link_succeed_once(db: TestDb) {
    let ws = workspace(&db.store).await;
    let t = now();
    // Two replicas: stores with pools of their own on the same ledger.
    let options = StoreOptions {
        max_connections: 8,
        ..StoreOptions::default()
    };
    let replicas = [
        Store::connect(&db.url, &options).await.unwrap(),
        Store::connect(&db.url, &options).await.unwrap(),
    ];
    const LINKS: usize = 20;
    for i in 0..LINKS {
        db.store
            .insert_portal_link(&format!("token-{i}"), &link(&ws, t + Duration::hours(1)))
            .await
            .unwrap();
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(2 * LINKS));
    let mut tasks = Vec::new();
    for i in 0..LINKS {
        for replica in &replicas {
            let (replica, start) = (replica.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let redeemed = replica
                    .redeem_portal_link(&format!("token-{i}"), t)
                    .await
                    .unwrap();
                (i, redeemed.is_some())
            }));
        }
    }
    let mut redeemed = [0; LINKS];
    for task in tasks {
        let (i, got) = task.await.unwrap();
        redeemed[i] += usize::from(got);
    }
    assert_eq!(redeemed, [1; LINKS], "each link exactly once");
    for replica in replicas {
        replica.close().await;
    }
}

async fn prune_removes_what_expired_and_nothing_else(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let t = now();
    let expired = ConsoleSession {
        expires_at: t,
        ..session(Some(&ws), SessionKind::Key, "s-expired")
    };
    let live = ConsoleSession {
        expires_at: t + Duration::microseconds(1),
        ..session(None, SessionKind::Admin, "s-live")
    };
    store.insert_console_session(&expired).await.unwrap();
    store.insert_console_session(&live).await.unwrap();
    let before = t - Duration::minutes(1);
    let later = t + Duration::hours(1);
    for (hash, expires) in [
        ("l-expired-unused", t),
        ("l-expired-used", t),
        ("l-live-unused", later),
        ("l-live-used", later),
    ] {
        store
            .insert_portal_link(hash, &link(&ws, expires))
            .await
            .unwrap();
    }
    for hash in ["l-expired-used", "l-live-used"] {
        assert!(
            store
                .redeem_portal_link(hash, before)
                .await
                .unwrap()
                .is_some()
        );
    }

    assert_eq!(store.prune_console(t).await.unwrap(), 3);
    assert_eq!(store.prune_console(t).await.unwrap(), 0);

    // What went can be stored again under its hash; what stayed cannot.
    assert_eq!(
        store.find_console_session("s-live", before).await.unwrap(),
        Some(live.clone())
    );
    assert!(matches!(
        store.insert_console_session(&live).await,
        Err(StoreError::Conflict { .. })
    ));
    store.insert_console_session(&expired).await.unwrap();
    for hash in ["l-expired-unused", "l-expired-used"] {
        store
            .insert_portal_link(hash, &link(&ws, later))
            .await
            .unwrap();
    }
    assert!(matches!(
        store
            .insert_portal_link("l-live-used", &link(&ws, later))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        store.redeem_portal_link("l-live-used", t).await.unwrap(),
        None,
        "still used"
    );
    assert_eq!(
        store.redeem_portal_link("l-live-unused", t).await.unwrap(),
        Some(link(&ws, later))
    );
}

// --- read models ----------------------------------------------------------------

/// A ledger of two workspaces, every delivery's creation time set (see
/// [`backdate`]), and every figure the read models should give for it.
struct TwoWorkspaces {
    /// The start of an hour a few hours ago: `since` for most reads.
    h: DateTime<Utc>,
    a: WorkspaceId,
    b: WorkspaceId,
    /// A's webhooks: a1 and a2 with recent deliveries, a3 with only an old
    /// finished one, a4 with none.
    a1: SubscriptionId,
    a2: SubscriptionId,
    a3: SubscriptionId,
    a4: SubscriptionId,
    b1: SubscriptionId,
}

fn at(h: DateTime<Utc>, hours: i64, minutes: i64) -> DateTime<Utc> {
    h + Duration::hours(hours) + Duration::minutes(minutes)
}

/// One event of `event_type` in `ws`, fanned out to `sub` alone.
async fn delivery(
    store: &Store,
    ws: &WorkspaceId,
    sub: SubscriptionId,
    t: EventType,
) -> DeliveryId {
    let mut event = event(ws);
    event.event_type = t;
    let (op, deliveries) = fan_out(&event, &[sub]);
    apply_one(store, op).await;
    deliveries[0].0
}

/// An attempt started at `started_at` that got `status` (or no response),
/// leaving the delivery `new_status`.
async fn attempt(
    store: &Store,
    id: DeliveryId,
    n: u32,
    started_at: DateTime<Utc>,
    status: Option<u16>,
    new_status: DeliveryStatus,
) {
    let write = AttemptWrite {
        started_at,
        response_status: status,
        error_kind: status.is_none().then_some(ErrorKind::Timeout),
        new_status,
        next_attempt_at: (!new_status.is_final()).then_some(started_at + Duration::minutes(1)),
        ..failed_attempt(id, n)
    };
    apply_one(store, WriteOp::Attempt(write)).await;
}

/// Sets deliveries' creation times, which the ledger takes from its clock:
/// no public write sets them, and the read models are about them.
async fn backdate(db: &TestDb, rows: &[(DeliveryId, DateTime<Utc>)]) {
    const SQLITE: &str = "UPDATE deliveries SET created_at = ?1 WHERE id = ?2";
    const POSTGRES: &str = "UPDATE deliveries SET created_at = $1 WHERE id = $2";
    match db.store.backend() {
        Backend::Sqlite => {
            let mut conn = SqliteConnection::connect(&db.url).await.unwrap();
            for (id, created_at) in rows {
                let text = created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                let done = sqlx::query(SQLITE)
                    .bind(text)
                    .bind(id.0.to_string())
                    .execute(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(done.rows_affected(), 1);
            }
            conn.close().await.unwrap();
        }
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&db.url).await.unwrap();
            for (id, created_at) in rows {
                let done = sqlx::query(POSTGRES)
                    .bind(created_at)
                    .bind(id.0)
                    .execute(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(done.rows_affected(), 1);
            }
            conn.close().await.unwrap();
        }
    }
}

/// Workspace A:
///
/// | delivery | webhook | created | now                 | attempts                |
/// |----------|---------|---------|---------------------|-------------------------|
/// | d1       | a1      | H+0:10  | succeeded           | 200 at H+0:11           |
/// | d2       | a1      | H+0:20  | dead                | 500 at H+0:21           |
/// | d3       | a1      | H+1:05  | retrying            | 500 at H+1:06, 503 at H+2:30 |
/// | d4       | a1      | H+1:10  | pending             |                         |
/// | d5       | a1      | H-48h   | retrying, held      | 502 at H+3:00           |
/// | d6       | a1      | H-48h   | succeeded           | 200 at H-47h            |
/// | d7       | a2      | H+1:30  | canceled (shipment) |                         |
/// | d8       | a2      | H+1:40  | retrying            | timed out at H+1:41     |
/// | d9       | a3      | H-48h   | dead                | 500 at H-47h            |
///
/// Workspace B: d10 (b1, H+0:15, succeeded, 200 at H+0:16), d11 (b1,
/// H+1:00, pending, held), d12 (b1, H-48h, retrying), and d13: a delivery
/// of B's that names A's webhook a1 (H+0:30, dead, 410 at H+5:00, later
/// than any of A's attempts).
async fn two_workspaces(db: &TestDb) -> TwoWorkspaces {
    use DeliveryStatus::*;
    let store = &db.store;
    let h = (Utc::now() - Duration::hours(10))
        .duration_trunc(Duration::hours(1))
        .unwrap();
    let old = h - Duration::hours(48);
    let (a, b) = (workspace(store).await, workspace(store).await);
    let [a1, a2, a3, a4] = [
        stored_subscription(store, &a).await.id,
        stored_subscription(store, &a).await.id,
        stored_subscription(store, &a).await.id,
        stored_subscription(store, &a).await.id,
    ];
    let b1 = stored_subscription(store, &b).await.id;
    let order = EventType::OrderCreated;

    let d1 = delivery(store, &a, a1, order).await;
    attempt(store, d1, 1, at(h, 0, 11), Some(200), Succeeded).await;
    let d2 = delivery(store, &a, a1, order).await;
    attempt(store, d2, 1, at(h, 0, 21), Some(500), Dead).await;
    let d3 = delivery(store, &a, a1, order).await;
    attempt(store, d3, 1, at(h, 1, 6), Some(500), Retrying).await;
    attempt(store, d3, 2, at(h, 2, 30), Some(503), Retrying).await;
    let d4 = delivery(store, &a, a1, order).await;
    let d5 = delivery(store, &a, a1, order).await;
    attempt(store, d5, 1, at(h, 3, 0), Some(502), Retrying).await;
    apply_one(store, hold(d5, 2, at(h, 3, 1))).await;
    let d6 = delivery(store, &a, a1, order).await;
    attempt(store, d6, 1, old + Duration::hours(1), Some(200), Succeeded).await;
    let d7 = delivery(store, &a, a2, EventType::ShipmentCreated).await;
    apply_one(store, WriteOp::Cancel { delivery_id: d7 }).await;
    let d8 = delivery(store, &a, a2, order).await;
    attempt(store, d8, 1, at(h, 1, 41), None, Retrying).await;
    let d9 = delivery(store, &a, a3, order).await;
    attempt(store, d9, 1, old + Duration::hours(1), Some(500), Dead).await;

    let d10 = delivery(store, &b, b1, order).await;
    attempt(store, d10, 1, at(h, 0, 16), Some(200), Succeeded).await;
    let d11 = delivery(store, &b, b1, order).await;
    apply_one(store, hold(d11, 1, at(h, 1, 1))).await;
    let d12 = delivery(store, &b, b1, order).await;
    attempt(store, d12, 1, old + Duration::hours(1), Some(503), Retrying).await;
    let d13 = delivery(store, &b, a1, order).await;
    attempt(store, d13, 1, at(h, 5, 0), Some(410), Dead).await;

    backdate(
        db,
        &[
            (d1, at(h, 0, 10)),
            (d2, at(h, 0, 20)),
            (d3, at(h, 1, 5)),
            (d4, at(h, 1, 10)),
            (d5, old),
            (d6, old),
            (d7, at(h, 1, 30)),
            (d8, at(h, 1, 40)),
            (d9, old),
            (d10, at(h, 0, 15)),
            (d11, at(h, 1, 0)),
            (d12, old),
            (d13, at(h, 0, 30)),
        ],
    )
    .await;
    TwoWorkspaces {
        h,
        a,
        b,
        a1,
        a2,
        a3,
        a4,
        b1,
    }
}

fn empty_health(subscription_id: SubscriptionId) -> WebhookHealth {
    WebhookHealth {
        subscription_id,
        succeeded: 0,
        dead: 0,
        canceled: 0,
        retrying: 0,
        pending: 0,
        last_attempt_at: None,
        last_response_status: None,
        waiting: 0,
        held: 0,
    }
}

fn by_subscription(mut health: Vec<WebhookHealth>) -> Vec<WebhookHealth> {
    health.sort_by_key(|h| h.subscription_id.0);
    health
}

async fn webhook_health_counts_each_webhook(db: TestDb) {
    let store = &db.store;
    let l = two_workspaces(&db).await;
    let h = l.h;

    let a = store.webhook_health(&l.a, h).await.unwrap();
    let expected = by_subscription(vec![
        WebhookHealth {
            succeeded: 1,
            dead: 1,
            retrying: 1,
            pending: 1,
            last_attempt_at: Some(at(h, 2, 30)),
            last_response_status: Some(503),
            waiting: 3,
            held: 1,
            ..empty_health(l.a1)
        },
        WebhookHealth {
            canceled: 1,
            retrying: 1,
            last_attempt_at: Some(at(h, 1, 41)),
            last_response_status: None,
            waiting: 1,
            ..empty_health(l.a2)
        },
    ]);
    assert_eq!(a, expected, "in subscription order, a3 and a4 absent");
    assert!(
        a.iter()
            .all(|w| w.subscription_id != l.a3 && w.subscription_id != l.a4)
    );

    // From H+1:00 on: d3 (retrying) and d4 of a1; d7 and d8 of a2; the
    // waiting ones of any age as before.
    let later = store.webhook_health(&l.a, at(h, 1, 0)).await.unwrap();
    assert_eq!(
        later,
        by_subscription(vec![
            WebhookHealth {
                retrying: 1,
                pending: 1,
                last_attempt_at: Some(at(h, 2, 30)),
                last_response_status: Some(503),
                waiting: 3,
                held: 1,
                ..empty_health(l.a1)
            },
            WebhookHealth {
                canceled: 1,
                retrying: 1,
                last_attempt_at: Some(at(h, 1, 41)),
                waiting: 1,
                ..empty_health(l.a2)
            },
        ])
    );

    // Long after: nothing recent, so only webhooks with waiting deliveries.
    let future = h + Duration::days(2);
    assert_eq!(
        store.webhook_health(&l.a, future).await.unwrap(),
        by_subscription(vec![
            WebhookHealth {
                waiting: 3,
                held: 1,
                ..empty_health(l.a1)
            },
            WebhookHealth {
                waiting: 1,
                ..empty_health(l.a2)
            },
        ])
    );

    let b = store.webhook_health(&l.b, h).await.unwrap();
    assert_eq!(
        b,
        by_subscription(vec![
            WebhookHealth {
                succeeded: 1,
                pending: 1,
                last_attempt_at: Some(at(h, 0, 16)),
                last_response_status: Some(200),
                waiting: 2,
                held: 1,
                ..empty_health(l.b1)
            },
            // B's own delivery naming A's webhook, and nothing of A's.
            WebhookHealth {
                dead: 1,
                last_attempt_at: Some(at(h, 5, 0)),
                last_response_status: Some(410),
                ..empty_health(l.a1)
            },
        ])
    );

    let nobody = WorkspaceId::parse("nobody").unwrap();
    assert!(store.webhook_health(&nobody, h).await.unwrap().is_empty());
}

async fn outcomes_are_counted_by_hour_and_status(db: TestDb) {
    use DeliveryStatus::*;
    let store = &db.store;
    let l = two_workspaces(&db).await;
    let (h, h1) = (l.h, at(l.h, 1, 0));

    assert_eq!(
        store.delivery_outcomes_by_hour(&l.a, h).await.unwrap(),
        [
            (h, Dead, 1),
            (h, Succeeded, 1),
            (h1, Canceled, 1),
            (h1, Pending, 1),
            (h1, Retrying, 2),
        ]
    );
    // A `since` inside an hour still labels the hour by its start.
    assert_eq!(
        store
            .delivery_outcomes_by_hour(&l.a, at(h, 0, 15))
            .await
            .unwrap(),
        [
            (h, Dead, 1),
            (h1, Canceled, 1),
            (h1, Pending, 1),
            (h1, Retrying, 2),
        ]
    );
    // From the old deliveries on: they are in their own hour.
    let old = h - Duration::hours(48);
    let all = store.delivery_outcomes_by_hour(&l.a, old).await.unwrap();
    assert_eq!(
        all[..3],
        [(old, Dead, 1), (old, Retrying, 1), (old, Succeeded, 1)]
    );
    assert_eq!(all.len(), 8);
    assert_eq!(
        store.delivery_outcomes_by_hour(&l.b, h).await.unwrap(),
        [(h, Dead, 1), (h, Succeeded, 1), (h1, Pending, 1)]
    );
    assert!(
        store
            .delivery_outcomes_by_hour(&l.a, at(h, 2, 0))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn count(store: &Store, ws: &WorkspaceId, filter: DeliveryFilter) -> u64 {
    store.count_deliveries(ws, &filter).await.unwrap()
}

async fn deliveries_are_counted_by_filter(db: TestDb) {
    let store = &db.store;
    let l = two_workspaces(&db).await;
    let all = DeliveryFilter::default();
    let retrying = DeliveryFilter {
        status: Some(DeliveryStatus::Retrying),
        ..all.clone()
    };
    let of = |sub| DeliveryFilter {
        subscription: Some(sub),
        ..all.clone()
    };

    assert_eq!(count(store, &l.a, all.clone()).await, 9);
    assert_eq!(count(store, &l.a, retrying.clone()).await, 3);
    assert_eq!(count(store, &l.a, of(l.a1)).await, 6);
    assert_eq!(count(store, &l.a, of(l.a2)).await, 2);
    assert_eq!(count(store, &l.a, of(l.a4)).await, 0);
    assert_eq!(
        count(
            store,
            &l.a,
            DeliveryFilter {
                subscription: Some(l.a1),
                ..retrying.clone()
            }
        )
        .await,
        2
    );
    let shipments = DeliveryFilter {
        event_type: Some(EventType::ShipmentCreated),
        ..all.clone()
    };
    assert_eq!(count(store, &l.a, shipments.clone()).await, 1);
    assert_eq!(
        count(
            store,
            &l.a,
            DeliveryFilter {
                status: Some(DeliveryStatus::Canceled),
                subscription: Some(l.a2),
                ..shipments.clone()
            }
        )
        .await,
        1
    );
    assert_eq!(
        count(
            store,
            &l.a,
            DeliveryFilter {
                status: Some(DeliveryStatus::Dead),
                ..shipments
            }
        )
        .await,
        0
    );

    assert_eq!(count(store, &l.b, all.clone()).await, 4);
    assert_eq!(count(store, &l.b, retrying).await, 1);
    assert_eq!(count(store, &l.b, of(l.a1)).await, 1, "d13 alone");
    assert_eq!(count(store, &l.b, of(l.a2)).await, 0);
    assert_eq!(count(store, &l.a, of(l.b1)).await, 0);
}

/// Everything the console shows of a workspace.
async fn figures(
    store: &Store,
    ws: &WorkspaceId,
    since: DateTime<Utc>,
    subs: &[SubscriptionId],
) -> (
    Vec<WebhookHealth>,
    Vec<(DateTime<Utc>, DeliveryStatus, u64)>,
    HashMap<Option<SubscriptionId>, u64>,
) {
    let mut counts = HashMap::new();
    for sub in subs.iter().copied().map(Some).chain([None]) {
        let filter = DeliveryFilter {
            subscription: sub,
            ..DeliveryFilter::default()
        };
        counts.insert(sub, store.count_deliveries(ws, &filter).await.unwrap());
    }
    (
        store.webhook_health(ws, since).await.unwrap(),
        store.delivery_outcomes_by_hour(ws, since).await.unwrap(),
        counts,
    )
}

async fn one_workspace_never_counts_anothers_rows(db: TestDb) {
    use DeliveryStatus::*;
    let store = &db.store;
    let l = two_workspaces(&db).await;
    let h = l.h;
    let subs = [l.a1, l.a2, l.a3, l.b1];
    let b_before = figures(store, &l.b, h, &subs).await;
    let a_before = figures(store, &l.a, h, &subs).await;

    // A gets more of everything, in B's hours, some naming B's webhook.
    let mut rows = Vec::new();
    for (i, sub) in [l.a1, l.b1, l.b1, l.a2].into_iter().enumerate() {
        let id = delivery(store, &l.a, sub, EventType::OrderCreated).await;
        let n = i64::try_from(i).unwrap();
        match i {
            0 => attempt(store, id, 1, at(h, 6, 0), Some(201), Succeeded).await,
            1 => attempt(store, id, 1, at(h, 7, 0), Some(429), Retrying).await,
            2 => {
                apply_one(store, hold(id, 1, at(h, 7, 0))).await;
            }
            _ => {}
        }
        rows.push((id, at(h, n % 2, 5 + n)));
    }
    backdate(&db, &rows).await;

    assert_eq!(figures(store, &l.b, h, &subs).await, b_before);
    let a_after = figures(store, &l.a, h, &subs).await;
    assert_ne!(a_after, a_before, "A's new rows are A's");
    assert_eq!(a_after.2[&None], 13);
    assert_eq!(a_after.2[&Some(l.b1)], 2);
    let b1_in_a = a_after
        .0
        .iter()
        .find(|w| w.subscription_id == l.b1)
        .unwrap();
    assert_eq!(
        (
            b1_in_a.retrying,
            b1_in_a.pending,
            b1_in_a.waiting,
            b1_in_a.held
        ),
        (1, 1, 2, 1)
    );
}
