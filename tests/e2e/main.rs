//! End-to-end tests: real RabbitMQ, real HTTP receivers on 127.0.0.1, and
//! every scenario on both ledgers (SQLite and PostgreSQL).

mod api_keys;
mod broker_errors;
mod browser;
mod circuit;
mod cluster;
mod console;
mod crash;
mod delivery;
mod deploy;
mod fast_path;
mod held;
mod ingest;
mod lifecycle;
mod openapi;
mod operations;
mod poison;
mod rate_limit;
mod read_your_writes;
mod recovery;
mod replicas;
mod retention;
mod retries;
mod tenancy;
mod traces;

/// Generates `<name>::sqlite` and `<name>::postgres` tests from one
/// `async fn name(db: Db)`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(courier_tests::Db::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(courier_tests::Db::Postgres).await
                }
            }
        )*
    };
}

/// Subscribes each receiver to every order.created event of `ws`.
pub(crate) async fn subscribe_to_orders(
    env: &courier_tests::TestEnv,
    ws: &courier_model::WorkspaceId,
    receivers: &[&courier_tests::Receiver],
) {
    for receiver in receivers {
        env.webhook(ws, &receiver.url(), &["order.created"], &[])
            .await;
    }
}

/// Publishes `n` order.created events to `ws`, each confirmed.
pub(crate) async fn publish_orders(
    env: &courier_tests::TestEnv,
    ws: &courier_model::WorkspaceId,
    n: usize,
) {
    let (publisher, _connection) = env.publisher().await;
    for seq in 0..n {
        let event = courier_model::Event::new(
            ws.clone(),
            courier_model::EventType::OrderCreated,
            None,
            serde_json::json!({"seq": seq}),
        );
        publisher.publish(&event.unwrap()).await.unwrap();
    }
}

/// Deliveries the ledger holds, due or not.
pub(crate) async fn held(env: &courier_tests::TestEnv) -> usize {
    let far = chrono::Utc::now() + chrono::Duration::days(365);
    let due = env.store.held_due(far).await.unwrap();
    due.iter().map(|d| d.due as usize).sum()
}

/// Waits until the ledger's deliveries are exactly `counts` (by status).
pub(crate) async fn wait_for_ledger(
    env: &courier_tests::TestEnv,
    what: &str,
    timeout: std::time::Duration,
    counts: &[(courier_model::DeliveryStatus, u64)],
) {
    courier_tests::wait_for(what, timeout, || async {
        env.store.delivery_counts().await.unwrap() == counts
    })
    .await;
}

/// Every event reached the receiver and the ledger says so.
pub(crate) async fn all_delivered(
    env: &courier_tests::TestEnv,
    receiver: &courier_tests::Receiver,
    events: usize,
) {
    courier_tests::wait_for(
        "every delivery after the failure",
        std::time::Duration::from_secs(90),
        || async { receiver.distinct() == events },
    )
    .await;
    courier_tests::wait_for(
        "the ledger to record them",
        std::time::Duration::from_secs(60),
        || async {
            env.store.delivery_counts().await.ok()
                == Some(vec![(
                    courier_model::DeliveryStatus::Succeeded,
                    events as u64,
                )])
        },
    )
    .await;
}
