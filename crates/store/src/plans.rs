//! The reads every worker replica repeats on a timer (held deliveries four
//! times a second, open circuits twice, failing episodes every second, the
//! lifecycle's counts every 15 s) must find their rows through an index:
//! a full scan of a large table there costs in proportion to the ledger,
//! on every replica, forever. Three of them did, unnoticed until a
//! million webhooks (the open circuits' join, the disabled count, the
//! failing episodes). These tests ask each database for its plan of each
//! read on a migrated, empty ledger and fail on a full scan of any table
//! that grows with use.
//!
//! SQLite plans without statistics here, as it does in a ledger courier
//! created (nothing runs ANALYZE), so the plan it shows is the plan it
//! runs. PostgreSQL's plan follows its statistics; with sequential scans
//! disabled it still picks one where no index can serve the read, so what
//! this checks there is that a usable index exists.

use sqlx::{Connection, PgConnection, Row, SqliteConnection};

use crate::circuits::{CircuitSql, OPEN_CIRCUITS};
use crate::dialect::Dialect;
use crate::lifecycle::queries::LifecycleSql;
use crate::scratch::{ScratchDb, pg_admin_url, unique_name};
use crate::{Backend, PgStore, SqliteStore};

/// Tables that grow with the number of webhooks or of events. The open
/// circuits (`webhook_circuits`) are few by design and are read whole.
const GROWING: [&str; 5] = [
    "subscriptions",
    "events",
    "deliveries",
    "attempts",
    "webhook_health",
];

/// What each repeated read is called in a failure, and its SQL.
fn repeated<S: Dialect + CircuitSql + LifecycleSql>() -> [(&'static str, &'static str); 6] {
    [
        ("open circuits", OPEN_CIRCUITS),
        ("held deliveries of open circuits", S::HELD_OF_OPEN_CIRCUITS),
        ("held deliveries due", S::HELD_DUE),
        ("open failing episodes", S::OPEN_EPISODES),
        ("disabled webhooks by reason", S::DISABLED_BY_REASON),
        ("paused deliveries", S::PAUSED_TOTAL),
    ]
}

/// The tables a query reads, by the name its plan gives them: each
/// `FROM t a` or `JOIN t a` as (a, t), and each table as itself.
fn names(sql: &str) -> Vec<(String, String)> {
    const KEYWORDS: [&str; 9] = [
        "WHERE", "JOIN", "ON", "GROUP", "ORDER", "LEFT", "INNER", "LIMIT", "AS",
    ];
    let words: Vec<&str> = sql.split_whitespace().collect();
    let mut names = Vec::new();
    for (i, word) in words.iter().enumerate() {
        if !["FROM", "JOIN"].contains(&word.to_ascii_uppercase().as_str()) {
            continue;
        }
        let Some(table) = words.get(i + 1) else {
            continue;
        };
        names.push(((*table).to_owned(), (*table).to_owned()));
        if let Some(alias) = words.get(i + 2)
            && !KEYWORDS.contains(&alias.to_ascii_uppercase().as_str())
        {
            names.push(((*alias).to_owned(), (*table).to_owned()));
        }
    }
    names
}

/// The full scans of growing tables in a plan of `sql`: SQLite says
/// `SCAN name` without `USING ... INDEX`; PostgreSQL `Seq Scan on table`.
fn full_scans(plan: &[String], sql: &str) -> Vec<String> {
    let names = names(sql);
    let growing = |name: &str| {
        names
            .iter()
            .find(|(alias, _)| alias == name)
            .is_some_and(|(_, table)| GROWING.contains(&table.as_str()))
    };
    plan.iter()
        .filter(|line| {
            let line = line.trim_start_matches(['|', '`', '-', ' ']);
            let sqlite = line
                .strip_prefix("SCAN ")
                .and_then(|rest| rest.split_whitespace().next())
                .is_some_and(|name| growing(name) && !line.contains("INDEX"));
            let postgres = line
                .split_once("Seq Scan on ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(growing);
            sqlite || postgres
        })
        .cloned()
        .collect()
}

async fn scratch(backend: Backend) -> ScratchDb {
    let db = ScratchDb::create(
        backend,
        &unique_name("plans"),
        &pg_admin_url("COURIER_TEST_POSTGRES_URL"),
    )
    .await
    .expect("PostgreSQL reachable for tests");
    let store = db.migrated().await.expect("migrate");
    store.close().await;
    db
}

/// The full scans in the plan of the read called `what`, each named for
/// the failure message.
fn scans_named(what: &str, plan: &[String], sql: &str, on: &str) -> Vec<String> {
    assert!(!plan.is_empty(), "{on} gave no plan for {what}");
    full_scans(plan, sql)
        .iter()
        .map(|scan| format!("{what}: {} (plan: {plan:?})", scan.trim()))
        .collect()
}

/// Closes the connection, removes the database, then fails on any scan
/// `found` on `on`.
async fn finish(db: ScratchDb, conn: impl Connection, found: Vec<String>, on: &str) {
    conn.close().await.ok();
    db.remove().await.expect("remove");
    assert!(
        found.is_empty(),
        "full scans on {on}:\n{}",
        found.join("\n")
    );
}

#[tokio::test]
async fn sqlite_repeated_reads_scan_no_growing_table() {
    let db = scratch(Backend::Sqlite).await;
    let mut conn = SqliteConnection::connect(db.url()).await.expect("connect");
    let mut found = Vec::new();
    for (what, sql) in repeated::<SqliteStore>() {
        let plan: Vec<String> =
            sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .fetch_all(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("plan of {what}: {e}"))
                .iter()
                .map(|row| row.get::<String, _>("detail"))
                .collect();
        found.extend(scans_named(what, &plan, sql, "SQLite"));
    }
    finish(db, conn, found, "SQLite").await;
}

/// A redelivered event's pending deliveries are found by the event's index,
/// not by the workspace's, which holds every delivery of the workspace.
#[tokio::test]
async fn sqlite_finds_a_redelivered_events_deliveries_by_event() {
    let db = scratch(Backend::Sqlite).await;
    let mut conn = SqliteConnection::connect(db.url()).await.expect("connect");
    let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "EXPLAIN QUERY PLAN {}",
        crate::sqlite::PENDING_OF_EVENTS
    )))
    .fetch_all(&mut conn)
    .await
    .expect("plan")
    .iter()
    .map(|row| row.get::<String, _>("detail"))
    .collect();
    let by_event = plan
        .iter()
        .any(|line| line.contains("SEARCH d USING INDEX") && line.contains("(event_id=?)"));
    conn.close().await.ok();
    db.remove().await.expect("remove");
    assert!(
        by_event,
        "a redelivered event's deliveries are not searched by event: {plan:?}"
    );
}

#[tokio::test]
async fn postgres_repeated_reads_have_an_index() {
    let db = scratch(Backend::Postgres).await;
    let mut conn = PgConnection::connect(db.url()).await.expect("connect");
    // A generic plan, as for a prepared statement run many times: it does
    // not depend on the values bound (all NULL here).
    for setting in [
        "SET enable_seqscan = off",
        "SET plan_cache_mode = force_generic_plan",
    ] {
        sqlx::query(setting)
            .execute(&mut conn)
            .await
            .expect(setting);
    }
    let mut found = Vec::new();
    for (i, (what, sql)) in repeated::<PgStore>().into_iter().enumerate() {
        let params = (1..=9).filter(|n| sql.contains(&format!("${n}"))).count();
        let prepare = format!("PREPARE repeated_{i} AS {sql}");
        sqlx::query(sqlx::AssertSqlSafe(prepare))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("prepare {what}: {e}"));
        let nulls = vec!["NULL"; params].join(", ");
        let execute = if params == 0 {
            format!("EXPLAIN EXECUTE repeated_{i}")
        } else {
            format!("EXPLAIN EXECUTE repeated_{i}({nulls})")
        };
        let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(execute))
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("plan of {what}: {e}"))
            .iter()
            .map(|row| row.get::<String, _>(0))
            .collect();
        found.extend(scans_named(what, &plan, sql, "PostgreSQL"));
    }
    finish(db, conn, found, "PostgreSQL").await;
}

#[test]
fn a_full_scan_is_recognised() {
    // The checks above are only as good as this recognition: the plans of
    // two of the reads that scanned before their fix.
    let join = "SELECT c.subscription_id FROM webhook_circuits c \
                JOIN subscriptions s ON s.id = c.subscription_id WHERE s.status = 'enabled'";
    let sqlite = [
        "SCAN s".to_owned(),
        "SEARCH c USING INDEX sqlite_autoindex_webhook_circuits_1 (subscription_id=?)".to_owned(),
    ];
    assert_eq!(full_scans(&sqlite, join), ["SCAN s"]);
    // The circuits themselves are read whole, by design.
    assert!(full_scans(&["SCAN c".to_owned()], join).is_empty());

    let count = "SELECT disabled_reason, COUNT(*) AS n FROM subscriptions \
                 WHERE status = 'disabled' GROUP BY disabled_reason";
    let scanned = [
        "SCAN subscriptions".to_owned(),
        "USE TEMP B-TREE FOR GROUP BY".to_owned(),
    ];
    assert_eq!(full_scans(&scanned, count), ["SCAN subscriptions"]);
    let by_index = ["SCAN subscriptions USING INDEX subscriptions_disabled".to_owned()];
    assert!(full_scans(&by_index, count).is_empty());
    let postgres = [
        "HashAggregate  (cost=10000000000.00..10000000001.00 rows=1 width=40)".to_owned(),
        "  ->  Seq Scan on subscriptions  (cost=10000000000.00..10000000001.00 rows=1 width=32)"
            .to_owned(),
    ];
    assert_eq!(full_scans(&postgres, count).len(), 1);
}
