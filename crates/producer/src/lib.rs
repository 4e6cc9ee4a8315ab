//! Publishing into courier: the RabbitMQ topology every courier process
//! agrees on, and a [`Publisher`] that accepts an event only once the broker
//! has confirmed it.
//!
//! The worker and the API send their own messages (delivery, retry, dead,
//! poison and change notices) as [`Outgoing`]s that [`Topology`] addresses,
//! on a [`ConfirmedChannel`], so all broker names, properties and
//! durability settings live here and nowhere else.
//!
//! Data that arrives as text (a request body, a file) is best published as
//! that text: receivers then get it byte for byte, where going through a
//! `serde_json::Value` would round numbers beyond f64 and reorder keys.
//!
//! ```no_run
//! use courier_model::{Event, EventData, EventType, WorkspaceId};
//! use courier_producer::{DEFAULT_AMQP_URL, Publisher};
//!
//! # async fn publish() -> Result<(), Box<dyn std::error::Error>> {
//! let (publisher, _connection) = Publisher::connect(DEFAULT_AMQP_URL, "courier").await?;
//! let data = EventData::parse(r#"{"order_id": "o-1", "total": 12.50}"#)?;
//! let workspace = WorkspaceId::parse("acme")?;
//! let event = Event::with_data(workspace, EventType::OrderCreated, None, data)?;
//! publisher.publish(&event).await?;
//! # Ok(())
//! # }
//! ```

mod nodes;
pub mod outgoing;
mod publisher;
mod reconnecting;
pub mod topology;

pub use nodes::{BrokerNodes, NodesError};
pub use outgoing::{Outgoing, OutgoingKind};
pub use publisher::{ConfirmedChannel, PublishError, Publisher, redact_url};
pub use reconnecting::ReconnectingPublisher;
pub use topology::Topology;

/// The default broker URL, matching `amqp.url`'s default.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long courier waits for the broker to answer a housekeeping call
/// (cancel a consumer, close a channel or connection, read a queue's depth).
/// lapin waits for such answers without limit, and a broker that drops or
/// never sends one must not keep a worker from shutting down.
pub const BROKER_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a broker call for at most [`BROKER_CALL_TIMEOUT`]; `None` (logged,
/// naming `what`) when it did not answer in time.
pub async fn bounded<F: std::future::Future>(what: &str, call: F) -> Option<F::Output> {
    match tokio::time::timeout(BROKER_CALL_TIMEOUT, call).await {
        Ok(output) => Some(output),
        Err(_) => {
            tracing::warn!(
                call = what,
                timeout_s = BROKER_CALL_TIMEOUT.as_secs(),
                "RabbitMQ did not answer in time; going on without it"
            );
            None
        }
    }
}
