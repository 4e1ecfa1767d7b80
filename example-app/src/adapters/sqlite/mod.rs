//! SQLite, the embedded default: one file, one machine. The unit of work and
//! repository of the write model and the allocations view; arch-events-sqlx's store
//! keeps the outbox, the inbox, the pending events and the dead letters in
//! the same file.

mod streams;
mod unit_of_work;
mod views;

use std::str::FromStr;
use std::time::Duration;

use arch_events::BoxError;
use arch_events_sqlx::{Settings, SqlEventStore, SqlScheduler, Store};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Sqlite;

pub use streams::SqliteEventSourcedUnitOfWork;
pub use unit_of_work::SqliteUnitOfWork;
pub use views::SqliteAllocationsView;

use crate::adapters::product_locks::ProductLocks;
use crate::adapters::storage::{self, Storage};
use crate::service_layer::unit_of_work::UowError;

/// An open SQLite database: its connection pool, and the store on it (whose
/// write transactions take this process's writers one after the other:
/// SQLite allows one writer at a time, and queueing in the process beats
/// polling SQLite's lock; writers of other processes still wait on SQLite's
/// lock, up to the busy timeout).
#[derive(Debug, Clone)]
pub struct SqliteDatabase {
    pool: SqlitePool,
    store: Store<Sqlite>,
    /// The event store on it (`--storage events`).
    events: SqlEventStore<Sqlite>,
    /// The products this process's units of work hold.
    locks: ProductLocks,
    /// How it keeps the products.
    storage: Storage,
    /// The durable scheduler and sagas' store on it.
    scheduler: SqlScheduler<Sqlite>,
}

impl SqliteDatabase {
    /// The connection pool (for the read model, or a health check).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The durable messaging store on this database.
    pub fn store(&self) -> &Store<Sqlite> {
        &self.store
    }

    /// The durable scheduler and sagas' store on this database (one per
    /// process: what it schedules wakes its own loop).
    pub fn scheduler(&self) -> &SqlScheduler<Sqlite> {
        &self.scheduler
    }

    /// The event store on this database, where `--storage events` keeps
    /// the products.
    pub fn event_store(&self) -> &SqlEventStore<Sqlite> {
        &self.events
    }

    /// How this database keeps the products.
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Leaves the processes sharing the file, then closes every connection.
    pub async fn close(&self) {
        self.store.close().await;
        self.pool.close().await;
    }
}

/// Opens (creating it when missing) the database at `url`, such as
/// `sqlite://allocation.db`, and brings its schema up to date: arch-events-sqlx's
/// tables, then the service's own.
///
/// WAL journaling with `synchronous = NORMAL`: a commit survives the process
/// crashing or being killed; only a power loss can take back the last
/// commits, the usual trade for SQLite in WAL mode.
///
/// `storage` is how a new database keeps its products (written for good;
/// `None` writes nothing); one that has a setting keeps it: `storage()`
/// says which.
pub async fn connect(
    url: &str,
    settings: Settings,
    storage: Option<Storage>,
) -> Result<SqliteDatabase, BoxError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new().connect_with(options).await?;
    let store = Store::open_with(pool.clone(), settings).await?;
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    let storage = storage::stored(&pool, storage).await?;
    Ok(SqliteDatabase {
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

/// Maps a failed write: SQLite's "busy"/"locked" answers and a lost race to
/// insert the same product mean another transaction got there first.
fn write_error(error: sqlx::Error, sku: &str) -> UowError {
    if let sqlx::Error::Database(db) = &error {
        let code = db.code();
        let busy = matches!(code.as_deref(), Some("5" | "6" | "261" | "262" | "517"))
            || db.message().contains("database is locked");
        if busy || db.is_unique_violation() {
            return UowError::Conflict {
                sku: sku.to_owned(),
            };
        }
    }
    storage(error)
}
