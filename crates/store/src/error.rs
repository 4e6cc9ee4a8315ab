//! What can go wrong in the ledger, and what an error means to a caller:
//! whether waiting can fix it ([`StoreError::is_transient`]) or the database
//! refused a value it was given ([`StoreError::is_refused_value`]). The
//! database's own error codes are read here and nowhere else, so callers
//! never match sqlx, SQLite or PostgreSQL errors themselves.

use sqlx::error::DatabaseError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database.url {0:?} is not supported; use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("{what} already exists")]
    Conflict { what: &'static str },
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error("attempt of delivery {0}, which is not in the ledger")]
    UnknownDelivery(courier_model::DeliveryId),
    #[error("ledger row is corrupt: {0}")]
    Corrupt(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("ledger writer has stopped")]
    LedgerClosed,
    #[error("batched ledger write failed: {0}")]
    Batch(std::sync::Arc<StoreError>),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// Whether waiting and trying again can fix this: a lost or refused
    /// connection, a timeout, a pool with no connection to spare, a busy or
    /// locked SQLite file, a PostgreSQL server shutting down or failing over.
    /// A constraint violation, a refused value, a corrupt row or a stopped
    /// ledger writer stay as they are however long one waits. A failed batch
    /// is what failed it.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(error) => transient(error),
            StoreError::Batch(inner) => inner.is_transient(),
            _ => false,
        }
    }

    /// Whether the database refused a value it was given (PostgreSQL's "data
    /// exception" class, SQLSTATE `22xxx`), which no retry can change. The
    /// ledger's columns take any event the model accepts (event data is
    /// `json`, which holds what `jsonb` could not); this is for a database
    /// that refuses more, such as one with a trigger an operator added. A
    /// failed batch is what failed it.
    pub fn is_refused_value(&self) -> bool {
        match self {
            StoreError::Database(error) => error
                .as_database_error()
                .filter(|db| {
                    db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                        .is_some()
                })
                .and_then(|db| db.code())
                .is_some_and(|code| code.starts_with("22")),
            StoreError::Batch(inner) => inner.is_refused_value(),
            _ => false,
        }
    }

    /// What an operator can do about a failure to reach the database, when
    /// the error says: nothing listens at the address, the address has no
    /// host, the password is wrong, the database does not exist.
    pub fn connect_hint(&self) -> Option<&'static str> {
        let StoreError::Database(error) = self else {
            return None;
        };
        match error {
            sqlx::Error::Io(io) => match io.kind() {
                std::io::ErrorKind::ConnectionRefused => Some(
                    "nothing accepts connections at that host and port: is PostgreSQL \
                     running there, and is the port in database.url right?",
                ),
                std::io::ErrorKind::TimedOut => {
                    Some("the host did not answer: check the host in database.url and the network")
                }
                _ => None,
            },
            sqlx::Error::Database(db) => match db.code()?.as_ref() {
                // invalid_password, invalid_authorization_specification
                "28P01" | "28000" => Some("check the user and password in database.url"),
                // invalid_catalog_name
                "3D000" => Some("create that database first, or name another in database.url"),
                _ => None,
            },
            _ => None,
        }
    }
}

fn transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            // PostgreSQL's connection exception (08) and operator
            // intervention (57P: shutdown, crash, cannot connect now)
            // classes; SQLite's codes are numbers and never match them.
            sqlite_busy(db.as_ref())
                || db
                    .code()
                    .is_some_and(|code| code.starts_with("08") || code.starts_with("57P"))
        }
        sqlx::Error::RowNotFound
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::Decode(_) => false,
        // I/O, TLS, protocol, pool timeouts and closed pools, a crashed
        // SQLite worker thread: the connection's trouble, not the data's.
        _ => true,
    }
}

/// A write refused by a constraint as the caller's error: a missing
/// workspace (the only foreign key a caller's write can miss) or `what`
/// already existing.
pub(crate) fn refused(error: sqlx::Error, what: &'static str) -> StoreError {
    match error.as_database_error() {
        Some(db) if db.is_foreign_key_violation() => StoreError::NotFound { what: "workspace" },
        Some(db) if db.is_unique_violation() => StoreError::Conflict { what },
        _ => error.into(),
    }
}

pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}

/// Whether SQLite refused for now because another connection holds the
/// file: `SQLITE_BUSY` (5) and `SQLITE_LOCKED` (6), with their extended
/// codes (busy recovery, busy snapshot, locked shared cache, ...).
pub(crate) fn sqlite_busy(db: &dyn DatabaseError) -> bool {
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .and_then(|e| e.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use sqlx::{Connection, Executor, PgConnection, SqliteConnection};

    use super::*;

    fn database(code: &'static str) -> StoreError {
        StoreError::Database(sqlx::Error::Database(Box::new(Coded(code))))
    }

    /// A database error of some driver that has nothing but a code.
    #[derive(Debug)]
    struct Coded(&'static str);

    impl std::fmt::Display for Coded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error {}", self.0)
        }
    }

    impl std::error::Error for Coded {}

    impl DatabaseError for Coded {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn connection_trouble_is_transient() {
        for error in [
            StoreError::Database(sqlx::Error::PoolTimedOut),
            StoreError::Database(sqlx::Error::PoolClosed),
            StoreError::Database(sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            ))),
            StoreError::Database(sqlx::Error::Protocol("unexpected message".to_owned())),
            database("08006"),
            database("57P01"),
            database("57P03"),
        ] {
            assert!(error.is_transient(), "{error:?}");
            assert!(!error.is_refused_value(), "{error:?}");
        }
    }

    #[test]
    fn what_waiting_cannot_fix_is_not_transient() {
        for error in [
            StoreError::Database(sqlx::Error::RowNotFound),
            StoreError::Database(sqlx::Error::ColumnNotFound("id".to_owned())),
            database("23505"),
            database("22P02"),
            StoreError::Corrupt("deliveries.status: unknown".to_owned()),
            StoreError::UnknownDelivery(courier_model::DeliveryId(uuid::Uuid::nil())),
            StoreError::Conflict { what: "workspace" },
            StoreError::NotFound { what: "workspace" },
            StoreError::LedgerClosed,
            StoreError::UnsupportedUrl("mysql://".to_owned()),
        ] {
            assert!(!error.is_transient(), "{error:?}");
        }
    }

    #[test]
    fn a_batch_is_what_failed_it() {
        let timed_out =
            StoreError::Batch(Arc::new(StoreError::Database(sqlx::Error::PoolTimedOut)));
        assert!(timed_out.is_transient());
        let corrupt = StoreError::Batch(Arc::new(StoreError::Corrupt("x".to_owned())));
        assert!(!corrupt.is_transient());
        assert!(!corrupt.is_refused_value());
    }

    #[test]
    fn only_postgresql_data_exceptions_are_refused_values() {
        // The code alone is not enough: it must be PostgreSQL's.
        assert!(!database("22P02").is_refused_value());
        assert!(!StoreError::Database(sqlx::Error::PoolTimedOut).is_refused_value());
    }

    #[tokio::test]
    async fn sqlite_busy_is_transient_and_a_constraint_is_not() {
        let path = std::env::temp_dir().join(format!(
            "courier-store-error-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut holder = SqliteConnection::connect(&url).await.unwrap();
        holder
            .execute("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER UNIQUE)")
            .await
            .unwrap();
        let mut other = SqliteConnection::connect(&url).await.unwrap();
        other.execute("PRAGMA busy_timeout = 0").await.unwrap();

        holder.execute("BEGIN IMMEDIATE").await.unwrap();
        let busy = StoreError::from(other.execute("BEGIN IMMEDIATE").await.unwrap_err());
        assert!(busy.is_transient(), "{busy:?}");
        assert!(!busy.is_refused_value(), "{busy:?}");
        holder
            .execute("INSERT INTO t (x) VALUES (1)")
            .await
            .unwrap();
        holder.execute("COMMIT").await.unwrap();

        let unique = StoreError::from(
            other
                .execute("INSERT INTO t (x) VALUES (1)")
                .await
                .unwrap_err(),
        );
        assert!(!unique.is_transient(), "{unique:?}");
        assert!(!unique.is_refused_value(), "{unique:?}");

        drop((holder, other));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[tokio::test]
    async fn a_postgresql_data_exception_is_a_refused_value() {
        let url = std::env::var("COURIER_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let mut conn = PgConnection::connect(&url)
            .await
            .expect("PostgreSQL reachable for tests");
        let refused = StoreError::from(
            conn.execute("SELECT 'not a number'::int")
                .await
                .unwrap_err(),
        );
        assert!(refused.is_refused_value(), "{refused:?}");
        assert!(!refused.is_transient(), "{refused:?}");
        let batch = StoreError::Batch(Arc::new(refused));
        assert!(batch.is_refused_value());

        let undefined = StoreError::from(
            conn.execute("SELECT * FROM no_such_table_here")
                .await
                .unwrap_err(),
        );
        assert!(!undefined.is_refused_value(), "{undefined:?}");
        assert!(!undefined.is_transient(), "{undefined:?}");
    }

    #[tokio::test]
    async fn failing_to_connect_says_what_to_do() {
        let options = crate::StoreOptions::default();
        // Bind then drop: a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = std::time::Instant::now();
        let refused = crate::Store::connect(&format!("postgres://u@127.0.0.1:{port}/x"), &options)
            .await
            .unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(
            refused
                .connect_hint()
                .unwrap()
                .contains("is PostgreSQL running"),
            "{refused:?}"
        );

        let admin = crate::scratch::pg_admin_url("COURIER_TEST_POSTGRES_URL");
        let (base, _) = admin.rsplit_once('/').unwrap();
        let missing = crate::Store::connect(&format!("{base}/courier_no_such_db"), &options)
            .await
            .unwrap_err();
        assert!(
            missing
                .connect_hint()
                .unwrap()
                .contains("create that database"),
            "{missing:?}"
        );
        assert_eq!(database("23505").connect_hint(), None);
    }
}
