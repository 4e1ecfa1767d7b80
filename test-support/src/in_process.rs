//! The example app in the test's own process, on a fresh SQLite file, its
//! durable scheduler on a virtual clock: what the tests of its sagas and
//! retries drive (no test sleeps for a deadline or a retry).

use std::sync::Arc;

use arch_events::schedule::VirtualClock;
use arch_events::Bus;
use arch_events_sqlx::{Settings, SqlScheduler};
use example_app::adapters::database::Database;
use example_app::adapters::storage::Storage;
use example_app::{bootstrap, Adapters};
use sqlx::Sqlite;

use crate::server::{fresh_sqlite, FreshSqlite};

/// The service: its bus, its scheduler and that scheduler's clock, its
/// database, and the file that database lives in.
pub struct InProcess {
    pub bus: Bus,
    pub scheduler: Arc<SqlScheduler<Sqlite>>,
    pub clock: VirtualClock,
    pub database: Database,
    pub file: FreshSqlite,
}

/// The service on a fresh SQLite file kept as `storage` says, built from
/// the database's real adapters as `adapt` changes them, its scheduler on
/// a virtual clock.
pub async fn on_sqlite(storage: Storage, adapt: impl FnOnce(Adapters) -> Adapters) -> InProcess {
    let file = fresh_sqlite().await;
    let database = Database::open(&file.url, Settings::default(), Some(storage))
        .await
        .expect("the database opens");
    let Database::Sqlite(sqlite) = &database else {
        unreachable!("a SQLite URL")
    };
    let clock = VirtualClock::new();
    let scheduler = Arc::new(sqlite.scheduler().clone().with_clock(clock.clone()));
    let bus = bootstrap(adapt(Adapters {
        scheduler: scheduler.clone(),
        ..Adapters::for_database(&database)
    }))
    .expect("wiring");
    InProcess {
        bus,
        scheduler,
        clock,
        database,
        file,
    }
}
