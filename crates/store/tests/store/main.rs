//! The ledger's behaviour, run unchanged against SQLite and PostgreSQL: one
//! test binary, a module per area, the harness in `common`.
//!
//! Every test gets a database of its own (a temp file, or a fresh PostgreSQL
//! database dropped afterwards), so tests run in parallel. PostgreSQL is
//! reached at `COURIER_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, trust auth).

mod common;

mod circuits;
mod console;
mod delivery_log;
mod events;
mod fan_out;
mod held;
mod ledger;
mod lifecycle;
mod retention;
mod subscriptions;
