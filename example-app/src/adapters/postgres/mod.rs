//! PostgreSQL, for several processes on several machines sharing one
//! database: the unit of work and repository of the write model, the
//! allocations view, the outbox (relayed with `FOR UPDATE SKIP LOCKED`),
//! the inbox and the dead letters.

mod dead_letters;
mod inbox;
mod outbox;
mod unit_of_work;
mod views;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;

pub use dead_letters::PostgresDeadLetterStore;
pub use inbox::PostgresInbox;
pub use outbox::PostgresOutbox;
pub use unit_of_work::PostgresUnitOfWork;
pub use views::PostgresAllocationsView;

use crate::service_layer::unit_of_work::UowError;

/// How many connections one process keeps to PostgreSQL at most.
pub const MAX_CONNECTIONS: u32 = 16;

/// How long a unit of work waits for a free connection before it fails.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// An open PostgreSQL database: its connection pool.
#[derive(Debug, Clone)]
pub struct PostgresDatabase {
    pool: PgPool,
}

impl PostgresDatabase {
    /// The connection pool (for the read model, or a health check).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes every connection, once what runs on them finished.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Connects to the database at `url`, such as
/// `postgres://postgres@127.0.0.1:5432/allocation`, and brings its schema up
/// to date (the migrations take an advisory lock: processes starting
/// together apply each one once).
pub async fn connect(url: &str) -> Result<PostgresDatabase, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    // One connection first: an unreachable server or a refused login is then
    // reported as such (the pool would only say it timed out).
    PgConnection::connect_with(&options).await?.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    Ok(PostgresDatabase { pool })
}

fn storage(error: sqlx::Error) -> UowError {
    UowError::Storage(Box::new(error))
}

/// Maps a failed write: a serialization failure, a deadlock, and a lost
/// race to insert the same product or batch mean another transaction got
/// there first.
fn write_error(error: sqlx::Error, sku: &str) -> UowError {
    if let sqlx::Error::Database(db) = &error {
        let lost = matches!(db.code().as_deref(), Some("40001" | "40P01"));
        if lost || db.is_unique_violation() {
            return UowError::Conflict {
                sku: sku.to_owned(),
            };
        }
    }
    storage(error)
}
