//! Publishing into courier: the RabbitMQ topology every courier process
//! agrees on, and a [`Publisher`] that accepts an event only once the broker
//! has confirmed it.
//!
//! The worker reuses [`Topology`] and [`ConfirmedChannel`] for its own
//! publishes (delivery, retry, dead and poison messages), so all broker names
//! and durability settings live here and nowhere else.

mod publisher;
pub mod topology;

pub use publisher::{ConfirmedChannel, PublishError, Publisher, redact_url};
pub use topology::Topology;

/// The default broker URL, matching `amqp.url`'s default.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
