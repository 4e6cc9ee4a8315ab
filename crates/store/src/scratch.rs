//! Throwaway ledgers for tests and benchmarks: a database that belongs to
//! one test (or one bench scenario) and is removed afterwards.
//!
//! It lives here because the store knows its backends; nothing in courier's
//! running code uses it. A [`ScratchDb`] is a SQLite file in the temp
//! directory or a fresh PostgreSQL database created through an admin URL,
//! both named `courier_<who>_<token>` (the file with dashes:
//! `courier-<who>-<token>.db`). `tests/sweep.sh` drops PostgreSQL databases
//! left behind by killed runs by those name prefixes.
//!
//! Removal is explicit ([`ScratchDb::remove`]) and also happens on drop, on a
//! thread of its own so that it works inside or outside a runtime and while
//! a test panics.

use std::path::PathBuf;

use sqlx::Connection as _;

use crate::{Backend, Result, Store, StoreOptions};

/// The PostgreSQL admin URL the tests use unless told otherwise (trust auth
/// on the local server).
pub const DEFAULT_PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL in the environment variable `var`, or
/// [`DEFAULT_PG_ADMIN_URL`].
pub fn pg_admin_url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| DEFAULT_PG_ADMIN_URL.to_owned())
}

/// `courier_<who>_<32 hex digits>`: a name no other test or run uses.
pub fn unique_name(who: &str) -> String {
    format!("courier_{who}_{}", uuid::Uuid::new_v4().simple())
}

/// A database of one's own, empty until migrated.
#[derive(Debug)]
pub struct ScratchDb {
    backend: Backend,
    name: String,
    url: String,
    /// What to remove; `None` once removed.
    place: Option<Place>,
}

#[derive(Debug)]
enum Place {
    /// The SQLite file, whose `-wal` and `-shm` go with it.
    File(PathBuf),
    /// A PostgreSQL database and the admin URL it was created through.
    Database { admin_url: String },
}

impl ScratchDb {
    /// A database named `name` on `backend`; `pg_admin_url` is only used
    /// for PostgreSQL. `name` must be lowercase letters, digits and `_`
    /// (see [`unique_name`]): it goes into SQL as it is.
    pub async fn create(backend: Backend, name: &str, pg_admin_url: &str) -> Result<Self> {
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "scratch database name {name:?} is not a plain identifier"
        );
        match backend {
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("{}.db", name.replace('_', "-")));
                Ok(Self {
                    backend,
                    name: name.to_owned(),
                    url: format!("sqlite://{}", path.display()),
                    place: Some(Place::File(path)),
                })
            }
            Backend::Postgres => {
                let mut admin = sqlx::PgConnection::connect(pg_admin_url).await?;
                let created = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await;
                admin.close().await.ok();
                created?;
                let base = pg_admin_url
                    .rsplit_once('/')
                    .map_or(pg_admin_url, |(base, _)| base);
                Ok(Self {
                    backend,
                    name: name.to_owned(),
                    url: format!("{base}/{name}"),
                    place: Some(Place::Database {
                        admin_url: pg_admin_url.to_owned(),
                    }),
                })
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL to connect to (`sqlite://...` or `postgres://...`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A store on it with a small pool (4 connections), not migrated.
    pub async fn connect(&self) -> Result<Store> {
        let options = StoreOptions {
            max_connections: 4,
            ..StoreOptions::default()
        };
        Store::connect(&self.url, &options).await
    }

    /// As [`ScratchDb::connect`], with every migration applied.
    pub async fn migrated(&self) -> Result<Store> {
        let store = self.connect().await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Drops the database (connections still open are ended) or deletes
    /// the file. Close stores on it first where you can.
    pub async fn remove(mut self) -> Result<()> {
        match self.place.take() {
            Some(place) => place.remove(&self.name).await,
            None => Ok(()),
        }
    }
}

impl Place {
    async fn remove(self, name: &str) -> Result<()> {
        match self {
            Place::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
                Ok(())
            }
            Place::Database { admin_url } => {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await;
                admin.close().await.ok();
                dropped?;
                Ok(())
            }
        }
    }
}

impl Drop for ScratchDb {
    /// A scratch database not removed explicitly (a test panicked, a bench
    /// was interrupted) is removed here, best effort.
    fn drop(&mut self) {
        let Some(place) = self.place.take() else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(place.remove(&name)).ok();
            }
        })
        .join()
        .ok();
    }
}
