//! Test support for courier's end-to-end tests: an isolated environment per
//! test (own RabbitMQ prefix, own database), small real HTTP receivers, an
//! independent Standard Webhooks verifier, and waiting on conditions with a
//! deadline instead of sleeping.

pub mod browser;
pub mod console;
pub mod env;
pub mod private_pg;
pub mod private_rabbit;
pub mod prometheus;
pub mod receiver;
pub mod verify;

pub use env::{Db, InProcessWorker, TestEnv, WorkerProcess, wait_for};
pub use private_pg::PrivatePostgres;
pub use private_rabbit::{PrivateCluster, PrivateRabbit};
pub use prometheus::Prometheus;
pub use receiver::{Behavior, Received, Receiver, RetryAfter};
pub use verify::verify_signature;

/// Sends courier's logs to the test's output when `COURIER_TEST_LOG` is
/// set (a filter such as `courier=debug,lapin=info`), to see what an
/// in-process worker did in a test that failed; nothing otherwise.
pub fn log_if_asked() {
    if let Ok(filter) = std::env::var("COURIER_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// The value of one sample `name{labels} value` of a Prometheus text
/// exposition (labels in the exporter's alphabetical order); 0 when the
/// series is absent, as an unused labelled counter is.
pub fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.parse().expect("a sample value is a number"))
        })
        .unwrap_or(0.0)
}
