//! SQLite, the embedded default: one file, one machine. The unit of work and
//! repository of the write model, the allocations view, the outbox, the
//! inbox and the dead letters, all in one database.

mod dead_letters;
mod inbox;
mod outbox;
mod unit_of_work;
mod views;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::Mutex;

pub use dead_letters::SqliteDeadLetterStore;
pub use inbox::SqliteInbox;
pub use outbox::{SqliteOutbox, CLAIM_LEASE};
pub use unit_of_work::SqliteUnitOfWork;
pub use views::SqliteAllocationsView;

use crate::service_layer::unit_of_work::UowError;

/// An open SQLite database: its connection pool, and the turn that this
/// process's writers take one after the other.
///
/// SQLite allows one writer at a time. Writers of this process queue here,
/// in order, instead of polling SQLite's lock in its busy handler; writers of
/// other processes still wait on SQLite's lock, up to the busy timeout.
#[derive(Debug, Clone)]
pub struct SqliteDatabase {
    pool: SqlitePool,
    writer: Arc<Mutex<()>>,
}

impl SqliteDatabase {
    /// The connection pool (for the read model, or a health check).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection, once what runs on them finished.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Waits for this process's turn to write.
    async fn writer_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writer.lock().await
    }
}

/// Opens (creating it when missing) the database at `url`, such as
/// `sqlite://allocation.db`, and brings its schema up to date.
///
/// WAL journaling with `synchronous = NORMAL`: a commit survives the process
/// crashing or being killed; only a power loss can take back the last
/// commits, the usual trade for SQLite in WAL mode.
pub async fn connect(url: &str) -> Result<SqliteDatabase, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new().connect_with(options).await?;
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    Ok(SqliteDatabase {
        pool,
        writer: Arc::new(Mutex::new(())),
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
