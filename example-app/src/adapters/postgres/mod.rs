//! PostgreSQL, for several processes on several machines sharing one
//! database: the unit of work and repository of the write model and the
//! allocations view; arch-events-sqlx's store keeps the outbox (relayed with
//! `FOR UPDATE SKIP LOCKED`), the inbox, the pending events and the dead
//! letters in the same database.

mod migrations;
mod streams;
mod unit_of_work;
mod views;

use std::str::FromStr;
use std::time::Duration;

use arch_events::BoxError;
use arch_events_sqlx::{Settings, SqlEventStore, SqlScheduler, Store};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres};

pub use streams::PostgresEventSourcedUnitOfWork;
pub use unit_of_work::PostgresUnitOfWork;
pub use views::PostgresAllocationsView;

use crate::adapters::product_locks::ProductLocks;
use crate::adapters::storage::{self, Storage};
use crate::service_layer::unit_of_work::UowError;

/// How many connections one process keeps to PostgreSQL at most.
pub const MAX_CONNECTIONS: u32 = 16;

/// How long a unit of work waits for a free connection before it fails.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server lets a session sit idle inside a transaction before
/// it ends it (PostgreSQL's `idle_in_transaction_session_timeout`).
pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "10s";

/// An open PostgreSQL database: its connection pool, and the store on it.
#[derive(Debug, Clone)]
pub struct PostgresDatabase {
    pool: PgPool,
    store: Store<Postgres>,
    /// The event store on it (`--storage events`).
    events: SqlEventStore<Postgres>,
    /// The products this process's units of work hold.
    locks: ProductLocks,
    /// How it keeps the products.
    storage: Storage,
    /// The durable scheduler and sagas' store on it.
    scheduler: SqlScheduler<Postgres>,
}

impl PostgresDatabase {
    /// The connection pool (for the read model, or a health check).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The durable messaging store on this database.
    pub fn store(&self) -> &Store<Postgres> {
        &self.store
    }

    /// The durable scheduler and sagas' store on this database (one per
    /// process: what it schedules wakes its own loop).
    pub fn scheduler(&self) -> &SqlScheduler<Postgres> {
        &self.scheduler
    }

    /// The event store on this database, where `--storage events` keeps
    /// the products.
    pub fn event_store(&self) -> &SqlEventStore<Postgres> {
        &self.events
    }

    /// How this database keeps the products.
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Leaves the processes sharing the database, then closes every
    /// connection, once what runs on them finished.
    pub async fn close(&self) {
        self.store.close().await;
        self.pool.close().await;
    }
}

/// Connects to the database at `url`, such as
/// `postgres://postgres@127.0.0.1:5432/allocation`, and brings its schema up
/// to date: arch-events-sqlx's tables, then the service's own (both under advisory
/// locks: processes starting together apply each migration once).
///
/// `storage` is how a new database keeps its products (written for good;
/// `None` writes nothing); one that has a setting keeps it: `storage()`
/// says which.
pub async fn connect(
    url: &str,
    settings: Settings,
    storage: Option<Storage>,
) -> Result<PostgresDatabase, BoxError> {
    // A process frozen in a transaction (SIGSTOP, a paused VM) would hold
    // its locks for as long as its connection lives: the server ends such
    // a session after a while, and its transaction rolls back.
    let options = PgConnectOptions::from_str(url)?.options([(
        "idle_in_transaction_session_timeout",
        IDLE_IN_TRANSACTION_TIMEOUT,
    )]);
    // One connection first: an unreachable server or a refused login is then
    // reported as such (the pool would only say it timed out).
    PgConnection::connect_with(&options).await?.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await?;
    let store = Store::open_with(pool.clone(), settings).await?;
    migrations::run(&pool).await?;
    let storage = storage::stored(&pool, storage).await?;
    Ok(PostgresDatabase {
        pool,
        events: store.event_store(),
        scheduler: store.scheduler(),
        store,
        locks: ProductLocks::default(),
        storage,
    })
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
