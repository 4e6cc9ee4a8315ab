//! The courier application: configuration, and the wiring of ledger,
//! broker, worker and management API. The admin operations the CLI shares
//! with the API (webhooks, API keys) live in `courier_api`.
//!
//! `main.rs` only parses arguments and calls into here; tests start the same
//! [`serve`] in-process.

pub mod app;
pub mod receiver;
pub mod settings;

pub use app::{App, CommandNotices, Roles, connect_amqp, open_store, serve};
pub use settings::Settings;
