//! End-to-end tests: real RabbitMQ, real HTTP receivers on 127.0.0.1, and
//! every scenario on both ledgers (SQLite and PostgreSQL).

mod crash;
mod delivery;
mod deploy;
mod fast_path;
mod operations;
mod poison;
mod recovery;
mod replicas;
mod retries;

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
