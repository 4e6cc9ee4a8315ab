//! Retention in a running courier: `courier serve` prunes on its schedule
//! what has outlived its retention, leaves paused deliveries' events
//! whole, honours a workspace's override, and counts what it removed on
//! /metrics.

use std::time::Duration;

use courier_model::{
    DeliveryStatus, Event, EventType, RetentionOverride, SubscriptionId, WorkspaceId,
};
use courier_tests::{Behavior, Db, Receiver, TestEnv, wait_for};
use serde_json::json;
use sqlx::Connection;

crate::on_both_databases!(serve_prunes_on_its_schedule);

/// Moves every event of `ws` and its deliveries `days` into the past.
async fn age(env: &TestEnv, ws: &WorkspaceId, days: i64) {
    let at = chrono::Utc::now() - chrono::Duration::days(days);
    let url = &env.settings.database.url;
    match env.db {
        Db::Sqlite => {
            let at = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            for table in ["events SET received_at", "deliveries SET updated_at"] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {table} = ?1 WHERE workspace_id = ?2"
                )))
                .bind(&at)
                .bind(ws.as_str())
                .execute(&mut conn)
                .await
                .unwrap();
            }
            conn.close().await.unwrap();
        }
        Db::Postgres => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            for table in ["events SET received_at", "deliveries SET updated_at"] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {table} = $1 WHERE workspace_id = $2"
                )))
                .bind(at)
                .bind(ws.as_str())
                .execute(&mut conn)
                .await
                .unwrap();
            }
            conn.close().await.unwrap();
        }
    }
}

fn order(ws: &WorkspaceId, ty: EventType, tag: &str) -> Event {
    Event::new(ws.clone(), ty, None, json!({ "order_id": tag })).unwrap()
}

/// A sample of /metrics, 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn serve_prunes_on_its_schedule(db: Db) {
    let env = TestEnv::with(db, &[("COURIER__RETENTION__INTERVAL_SECS", "1")]).await;
    let acme = env.workspace("acme").await;
    let globex = env.workspace("globex").await;
    let receiver = Receiver::start(Behavior::Ok).await;
    let url = receiver.url();
    env.webhook(&acme, &url, &["order.created", "order.canceled"], &[])
        .await;
    env.webhook(&globex, &url, &["order.created"], &[]).await;
    // A disabled webhook of acme's: its deliveries are paused, and an
    // event with one is never pruned.
    let paused: SubscriptionId = env.webhook(&acme, &url, &["order.canceled"], &[]).await.id;
    courier_api::webhooks::update(
        &env.store,
        &acme,
        paused,
        courier_api::webhooks::WebhookPatch {
            active: Some(false),
            ..Default::default()
        },
        courier_api::webhooks::UrlPolicy {
            require_https: false,
        },
    )
    .await
    .unwrap();
    // globex keeps its successes 60 days.
    env.store
        .set_retention_override(
            &globex,
            &RetentionOverride {
                succeeded: Some(60),
                failed: None,
            },
            chrono::Utc::now(),
        )
        .await
        .unwrap();

    let worker = env.start_worker().await;
    let (publisher, _connection) = env.publisher().await;
    let created: Vec<Event> = (0..3)
        .map(|i| order(&acme, EventType::OrderCreated, &format!("a{i}")))
        .collect();
    let canceled = order(&acme, EventType::OrderCanceled, "a-canceled");
    let globex_event = order(&globex, EventType::OrderCreated, "g0");
    for e in created.iter().chain([&canceled, &globex_event]) {
        publisher.publish(e).await.expect("publish confirmed");
    }
    wait_for(
        "every delivery to succeed, or pause",
        Duration::from_secs(30),
        || async {
            env.store.delivery_counts().await.unwrap()
                == [(DeliveryStatus::Paused, 1), (DeliveryStatus::Succeeded, 5)]
        },
    )
    .await;

    // Then, as far as the ledger can tell, 40 days pass; the next round
    // (every second here) prunes.
    age(&env, &acme, 40).await;
    age(&env, &globex, 40).await;
    wait_for(
        "acme's succeeded events to be pruned",
        Duration::from_secs(30),
        || async {
            for e in &created {
                if env.store.get_event(&acme, &e.id).await.unwrap().is_some() {
                    return false;
                }
            }
            true
        },
    )
    .await;
    // The event with a paused delivery stays whole; globex's override
    // keeps its event.
    assert_eq!(
        env.store
            .deliveries_of_event(&acme, &canceled.id)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        env.store
            .get_event(&globex, &globex_event.id)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        env.store.delivery_counts().await.unwrap(),
        [(DeliveryStatus::Paused, 1), (DeliveryStatus::Succeeded, 2)]
    );

    let (status, metrics) = worker.get("/metrics").await;
    assert_eq!(status, 200);
    for (table, n) in [("events", 3.0), ("deliveries", 3.0), ("attempts", 3.0)] {
        let series = format!("courier_retention_pruned_total{{table=\"{table}\"}}");
        assert_eq!(sample(&metrics, &series), n, "{series}\n{metrics}");
    }
    assert!(sample(&metrics, "courier_retention_last_run_timestamp_seconds") > 0.0);
    assert!(sample(&metrics, "courier_retention_runs_total{outcome=\"done\"}") >= 1.0);
    assert_eq!(
        sample(&metrics, "courier_retention_runs_total{outcome=\"failed\"}"),
        0.0,
        "{metrics}"
    );
    worker.stop().await.expect("worker stops cleanly");
}
