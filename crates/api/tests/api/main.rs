//! The management API over real HTTP on 127.0.0.1, against SQLite and
//! PostgreSQL (every scenario runs on both), real receivers for test sends,
//! and RabbitMQ for ingest and redelivery: one test binary, a module per
//! area, the harness in `common`.
//!
//! Each test gets its own database (a temp file, or `courier_api_<hex>` on
//! the local PostgreSQL, dropped afterwards even on panic) and, when it
//! needs the broker, its own `atest-<hex>` prefix whose queues and
//! exchanges are deleted at the end. Nothing sleeps: every wait is on a
//! response or a condition.

mod common;

mod admin;
mod deliveries;
mod graphql;
mod input;
mod openapi;
mod portal;
mod retention;
mod settings;
mod tenancy;
mod test_sends;
mod webhooks;
