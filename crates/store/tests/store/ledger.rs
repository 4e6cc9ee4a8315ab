//! The ledger writer (group commit): concurrent writes, a bad request among
//! good ones, shutdown, two writers on one SQLite file, SQLite's commit
//! interval.
//!
//! Nothing here sleeps: where a test needs writes to be queued behind a busy
//! writer, it holds the database's write lock itself and enqueues each write
//! by polling its future once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use courier_model::{DeliveryId, DeliveryStatus, Event, EventId, SubscriptionId, WorkspaceId};
use courier_store::{Ledger, LedgerOptions, Store, StoreError, StoreOptions, WriteOp, WriteResult};

use crate::common::{
    TestDb, counts, event, failed_attempt, fan_out, is_unknown_delivery, run, succeeded_attempt,
    workspace,
};
use crate::on_both_backends;

on_both_backends!(
    ledger_commits_concurrent_writes,
    ledger_fails_only_the_bad_request,
    ledger_shutdown_flushes_queued_writes,
);

/// Polls a future once, which for a ledger write means: enqueued.
fn poll_once<F: Future>(fut: &mut Pin<Box<F>>) -> Poll<F::Output> {
    fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

async fn ledger_commits_concurrent_writes(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let sub = SubscriptionId::generate();
    let ledger = Ledger::start(store.clone(), LedgerOptions::default());

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..500 {
        let ledger = ledger.clone();
        let event = event(&ws);
        tasks.spawn(async move {
            let (op, deliveries) = fan_out(&event, &[sub]);
            let result = ledger.write(op).await.unwrap();
            assert_eq!(
                result,
                WriteResult::FanOut {
                    to_publish: deliveries.clone()
                }
            );
            deliveries[0].0
        });
    }
    let mut ids = Vec::new();
    while let Some(id) = tasks.join_next().await {
        ids.push(id.unwrap());
    }
    assert_eq!(ids.len(), 500);
    assert_eq!(
        counts(store.delivery_counts().await.unwrap()),
        HashMap::from([(DeliveryStatus::Pending, 500)])
    );

    // Then an attempt for each, concurrently, through write_many in pairs.
    let mut tasks = tokio::task::JoinSet::new();
    for pair in ids.chunks(2) {
        let ledger = ledger.clone();
        let ops: Vec<_> = pair
            .iter()
            .map(|&id| WriteOp::Attempt(succeeded_attempt(id, 1)))
            .collect();
        tasks.spawn(async move { ledger.write_many(ops).await.unwrap() });
    }
    while let Some(results) = tasks.join_next().await {
        assert_eq!(
            results.unwrap(),
            vec![WriteResult::Attempt { recorded: true }; 2]
        );
    }
    assert_eq!(
        counts(store.delivery_counts().await.unwrap()),
        HashMap::from([(DeliveryStatus::Succeeded, 500)])
    );
    for id in ids.iter().step_by(50) {
        assert_eq!(store.list_attempts(*id).await.unwrap().len(), 1);
    }
    ledger.shutdown().await;
}

async fn ledger_fails_only_the_bad_request(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let ledger = Ledger::start(store.clone(), LedgerOptions::default());
    let sub = SubscriptionId::generate();
    let events: Vec<Event> = (0..4).map(|_| event(&ws)).collect();
    let missing = DeliveryId::derive(&EventId::generate(), sub);

    // With the write lock held elsewhere, the writer stalls on its first
    // batch and every later request queues: they commit together after.
    let lock = db.hold_write_lock().await;
    let mut writes = Vec::new();
    for (i, event) in events.iter().enumerate() {
        if i == 2 {
            let bad = WriteOp::Attempt(failed_attempt(missing, 1));
            writes.push(Box::pin(ledger.write(bad)));
        }
        writes.push(Box::pin(ledger.write(fan_out(event, &[sub]).0)));
    }
    for write in &mut writes {
        assert!(poll_once(write).is_pending());
    }
    lock.release().await;

    let mut results = Vec::new();
    for write in writes {
        results.push(write.await);
    }
    assert_eq!(results.len(), 5);
    let err = results.remove(2).unwrap_err();
    assert!(is_unknown_delivery(&err), "{err:?}");
    for (result, event) in results.into_iter().zip(&events) {
        assert_eq!(
            result.unwrap(),
            WriteResult::FanOut {
                to_publish: vec![(DeliveryId::derive(&event.id, sub), sub)]
            }
        );
        assert_eq!(
            store
                .deliveries_of_event(&event.workspace_id, &event.id)
                .await
                .unwrap()
                .len(),
            1
        );
    }
    assert!(store.list_attempts(missing).await.unwrap().is_empty());

    // The ledger keeps going afterwards.
    let next = event(&ws);
    assert!(ledger.write(fan_out(&next, &[sub]).0).await.is_ok());
    ledger.shutdown().await;
}

async fn ledger_shutdown_flushes_queued_writes(db: TestDb) {
    let store = &db.store;
    let ws = workspace(store).await;
    let ledger = Ledger::start(
        store.clone(),
        LedgerOptions {
            max_batch: 8,
            sqlite_max_batch: 8,
            ..LedgerOptions::default()
        },
    );
    let handle = ledger.clone();
    let sub = SubscriptionId::generate();
    let events: Vec<Event> = (0..20).map(|_| event(&ws)).collect();

    let lock = db.hold_write_lock().await;
    let mut writes: Vec<_> = events
        .iter()
        .map(|e| Box::pin(handle.write(fan_out(e, &[sub]).0)))
        .collect();
    for write in &mut writes {
        assert!(poll_once(write).is_pending());
    }
    let mut shutdown = Box::pin(ledger.shutdown());
    assert!(poll_once(&mut shutdown).is_pending());
    lock.release().await;
    shutdown.await;

    // Everything queued before shutdown is committed and answered.
    for write in writes {
        assert!(matches!(write.await, Ok(WriteResult::FanOut { .. })));
    }
    assert_eq!(
        counts(store.delivery_counts().await.unwrap()),
        HashMap::from([(DeliveryStatus::Pending, 20)])
    );

    // After shutdown, every handle refuses.
    let late = handle.write(fan_out(&event(&ws), &[sub]).0).await;
    assert!(matches!(late, Err(StoreError::LedgerClosed)), "{late:?}");
    handle.shutdown().await;
}

/// Two stores on one SQLite file stand in for two worker processes: their
/// writers contend for the file's lock and both must get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_file_shared_by_two_stores() {
    run(TestDb::sqlite().await, |db: TestDb| async move {
        let other = Store::connect(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        other.migrate().await.unwrap();
        let ws = workspace(&db.store).await;
        let sub = SubscriptionId::generate();
        let ledgers = [
            Ledger::start(db.store.clone(), LedgerOptions::default()),
            Ledger::start(other.clone(), LedgerOptions::default()),
        ];
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..400 {
            let ledger = ledgers[i % 2].clone();
            let event = event(&ws);
            tasks.spawn(async move { ledger.write(fan_out(&event, &[sub]).0).await });
        }
        while let Some(result) = tasks.join_next().await {
            assert!(matches!(result.unwrap(), Ok(WriteResult::FanOut { .. })));
        }
        for ledger in ledgers {
            ledger.shutdown().await;
        }
        assert_eq!(
            counts(other.delivery_counts().await.unwrap()),
            HashMap::from([(DeliveryStatus::Pending, 400)])
        );
        other.close().await;
    })
    .await;
}

/// A ledger that reports the ops of every batch it commits.
fn ledger_reporting_batches(store: &Store, interval: Duration) -> (Ledger, Arc<Mutex<Vec<usize>>>) {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&batches);
    let ledger = Ledger::start(
        store.clone(),
        LedgerOptions {
            sqlite_commit_interval: interval,
            on_batch: Some(Arc::new(move |ops| seen.lock().unwrap().push(ops))),
            ..LedgerOptions::default()
        },
    );
    (ledger, batches)
}

/// Records one new event's fan-out through `ledger`, and checks it was.
async fn fan_out_one(ledger: &Ledger, ws: &WorkspaceId, sub: SubscriptionId) {
    let write = ledger.write(fan_out(&event(ws), &[sub]).0).await;
    assert!(matches!(write, Ok(WriteResult::FanOut { .. })), "{write:?}");
}

/// On SQLite, writes that arrive after a commit wait until the commit
/// interval since its start is over, and then share one commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_writes_wait_out_the_commit_interval_and_share_a_commit() {
    run(TestDb::sqlite().await, |db: TestDb| async move {
        let store = &db.store;
        let ws = workspace(store).await;
        let sub = SubscriptionId::generate();
        let interval = Duration::from_millis(300);
        let (ledger, batches) = ledger_reporting_batches(store, interval);

        // The first write finds no commit before it and goes at once.
        let started = Instant::now();
        fan_out_one(&ledger, &ws, sub).await;
        futures_util::future::join_all((0..3).map(|_| fan_out_one(&ledger, &ws, sub))).await;
        // The second commit could not start before the interval was over.
        assert!(started.elapsed() >= interval, "{:?}", started.elapsed());
        assert_eq!(*batches.lock().unwrap(), vec![1, 3]);
        ledger.shutdown().await;
    })
    .await;
}

/// Shutting down commits what waits for the interval at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_shutdown_does_not_wait_out_the_commit_interval() {
    run(TestDb::sqlite().await, |db: TestDb| async move {
        let store = &db.store;
        let ws = workspace(store).await;
        let sub = SubscriptionId::generate();
        // Longer than any test runs: only shutdown can end the wait.
        let (ledger, batches) = ledger_reporting_batches(store, Duration::from_secs(3600));
        fan_out_one(&ledger, &ws, sub).await;

        let handle = ledger.clone();
        let events: Vec<Event> = (0..3).map(|_| event(&ws)).collect();
        let mut writes: Vec<_> = events
            .iter()
            .map(|e| Box::pin(handle.write(fan_out(e, &[sub]).0)))
            .collect();
        for write in &mut writes {
            assert!(poll_once(write).is_pending());
        }
        tokio::time::timeout(Duration::from_secs(60), ledger.shutdown())
            .await
            .expect("shutdown waited for the commit interval");
        for write in writes {
            assert!(matches!(write.await, Ok(WriteResult::FanOut { .. })));
        }
        assert_eq!(batches.lock().unwrap().iter().sum::<usize>(), 4);
        assert_eq!(
            counts(store.delivery_counts().await.unwrap()),
            HashMap::from([(DeliveryStatus::Pending, 4)])
        );
    })
    .await;
}

/// PostgreSQL takes no commit interval: every write commits at once, however
/// long SQLite's interval is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_commits_without_an_interval() {
    run(TestDb::postgres().await, |db: TestDb| async move {
        let store = &db.store;
        let ws = workspace(store).await;
        let sub = SubscriptionId::generate();
        let (ledger, batches) = ledger_reporting_batches(store, Duration::from_secs(3600));
        let writes = async {
            for _ in 0..3 {
                fan_out_one(&ledger, &ws, sub).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), writes)
            .await
            .expect("a write on PostgreSQL waited for SQLite's commit interval");
        assert_eq!(*batches.lock().unwrap(), vec![1, 1, 1]);
        ledger.shutdown().await;
    })
    .await;
}
