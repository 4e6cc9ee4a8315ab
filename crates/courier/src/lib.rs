//! The courier application: configuration, wiring of ledger, broker and
//! worker, and the admin operations the CLI (and later the API) share.
//!
//! `main.rs` only parses arguments and calls into here; tests start the same
//! [`serve`] in-process.

pub mod api_keys;
pub mod app;
pub mod receiver;
pub mod settings;
pub mod webhooks;

pub use app::{App, Roles, connect_amqp, open_store, serve};
pub use settings::Settings;
