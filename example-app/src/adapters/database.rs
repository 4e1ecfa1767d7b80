//! The service's database, chosen by URL: SQLite (`sqlite://<file>`, the
//! embedded default) or PostgreSQL (`postgres://...`, for several processes
//! sharing it). Each holds the allocation tables and arch-events-sqlx's store (the
//! outbox, the inbox, durable delivery of events, the dead letters, the
//! event store), and keeps its products as rows or as streams of events:
//! its [`Storage`], chosen when it is created.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arch_events::event_store::Position;
use arch_events::transport::{Inbox, Publisher};
use arch_events::{BoxError, Bus, EventReleaser};
use arch_events_sqlx::{DeadLetterStore, Recovery, RunningProjection, RunningScheduler, Settings};

use super::event_sourced::EventSourcedUnitOfWork;
use super::postgres::{self, PostgresDatabase};
use super::projected_view::AllocationsProjection;
use super::relational::RelationalUnitOfWork;
use super::sqlite::{self, SqliteDatabase};
use super::storage::Storage;
use crate::service_layer::unit_of_work::UnitOfWork;
use crate::views::ViewTable;

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The URL names no database this service runs on.
    #[error(
        "unsupported database URL {url:?}: use sqlite://<file> (the embedded default) \
         or postgres://<user>@<host>:<port>/<database>"
    )]
    Unsupported {
        /// The URL, its password hidden.
        url: String,
    },
    /// The database is unreachable, refused the connection, or its schema
    /// could not be brought up to date.
    #[error("cannot open the database {url}: {source}")]
    Open {
        /// The URL, its password hidden.
        url: String,
        /// What the driver or the store said.
        #[source]
        source: BoxError,
    },
    /// The database keeps its products in another way than asked for.
    #[error(
        "the database {url} keeps its products as {stored} (it was created with \
         --storage {stored}): start with --storage {stored}, or give a new database \
         for --storage {requested}"
    )]
    StorageMismatch {
        /// The URL, its password hidden.
        url: String,
        /// How it keeps them.
        stored: Storage,
        /// How the settings asked.
        requested: Storage,
    },
}

/// An open database.
#[derive(Debug, Clone)]
pub enum Database {
    /// One SQLite file.
    Sqlite(SqliteDatabase),
    /// A PostgreSQL database.
    Postgres(PostgresDatabase),
}

impl Database {
    /// Opens the database at `url` (`sqlite:` or `postgres:`/`postgresql:`)
    /// and brings its schema up to date.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use example_app::adapters::database::{Database, DatabaseError};
    ///
    /// let error = Database::connect("mysql://root:secret@db/allocation").await.unwrap_err();
    /// assert!(matches!(error, DatabaseError::Unsupported { .. }));
    /// assert!(!error.to_string().contains("secret"), "{error}");
    /// # }
    /// ```
    pub async fn connect(url: &str) -> Result<Database, DatabaseError> {
        Self::connect_with(url, Settings::default()).await
    }

    /// [`connect`](Self::connect), with the store's timings. The database
    /// keeps its products as it was created to; one that has no setting
    /// yet is read as rows, and given no setting (the serving process,
    /// [`open`](Self::open), chooses it).
    pub async fn connect_with(url: &str, settings: Settings) -> Result<Database, DatabaseError> {
        Self::open_as(url, settings, None).await
    }

    /// [`connect_with`](Self::connect_with) for the process that serves:
    /// keeps the products as `storage` asks, and a new database is created
    /// so for good (as rows when `None`). A database that keeps them
    /// otherwise is a [`DatabaseError::StorageMismatch`] (its schema is
    /// brought up to date all the same).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use arch_events_sqlx::Settings;
    /// use example_app::adapters::database::{Database, DatabaseError};
    /// use example_app::adapters::storage::Storage;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let url = format!("sqlite://{}", dir.path().join("allocation.db").display());
    /// let database = Database::open(&url, Settings::default(), Some(Storage::Events)).await.unwrap();
    /// database.close().await;
    ///
    /// // Opened again without a setting, it keeps its products as it did;
    /// let database = Database::connect(&url).await.unwrap();
    /// assert_eq!(database.storage(), Storage::Events);
    /// database.close().await;
    /// // asked for the other storage, it refuses.
    /// let refused = Database::open(&url, Settings::default(), Some(Storage::State)).await;
    /// assert!(matches!(refused, Err(DatabaseError::StorageMismatch { .. })));
    /// # }
    /// ```
    pub async fn open(
        url: &str,
        settings: Settings,
        storage: Option<Storage>,
    ) -> Result<Database, DatabaseError> {
        let database = Self::open_as(url, settings, Some(storage.unwrap_or_default())).await?;
        match storage {
            Some(requested) if requested != database.storage() => {
                database.close().await;
                Err(DatabaseError::StorageMismatch {
                    url: redacted(url),
                    stored: database.storage(),
                    requested,
                })
            }
            _ => Ok(database),
        }
    }

    /// Opens the database, writing `new` as its storage if it has none.
    async fn open_as(
        url: &str,
        settings: Settings,
        new: Option<Storage>,
    ) -> Result<Database, DatabaseError> {
        let open = |source| DatabaseError::Open {
            url: redacted(url),
            source,
        };
        let database = match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => sqlite::connect(url, settings, new)
                .await
                .map(Database::Sqlite)
                .map_err(open)?,
            Some("postgres" | "postgresql") => postgres::connect(url, settings, new)
                .await
                .map(Database::Postgres)
                .map_err(open)?,
            _ => return Err(DatabaseError::Unsupported { url: redacted(url) }),
        };
        Ok(database)
    }

    /// How this database keeps its products.
    pub fn storage(&self) -> Storage {
        match self {
            Database::Sqlite(database) => database.storage(),
            Database::Postgres(database) => database.storage(),
        }
    }

    /// A unit of work that releases into `releaser`, outside any dispatch
    /// (for tests and scripts).
    pub fn unit_of_work(&self, releaser: EventReleaser) -> Box<dyn UnitOfWork> {
        match (self, self.storage()) {
            (Database::Sqlite(database), Storage::State) => {
                Box::new(RelationalUnitOfWork::new(database.clone(), releaser))
            }
            (Database::Sqlite(database), Storage::Events) => {
                Box::new(EventSourcedUnitOfWork::new(database.clone(), releaser))
            }
            (Database::Postgres(database), Storage::State) => {
                Box::new(RelationalUnitOfWork::new(database.clone(), releaser))
            }
            (Database::Postgres(database), Storage::Events) => {
                Box::new(EventSourcedUnitOfWork::new(database.clone(), releaser))
            }
        }
    }

    /// With `--storage events`, starts keeping the allocations view from
    /// the products' streams, in the background, until
    /// [`RunningProjection::stop`]: the events committed by any process
    /// reach it, one batch at a time, each once. `None` with rows, whose
    /// view is written by event handlers.
    pub fn start_projection(&self) -> Option<RunningProjection> {
        if self.storage() != Storage::Events {
            return None;
        }
        Some(match self {
            Database::Sqlite(database) => database
                .event_store()
                .start_projection(AllocationsProjection(ViewTable::LIVE), PROJECTION_POLL),
            Database::Postgres(database) => database
                .event_store()
                .start_projection(AllocationsProjection(ViewTable::LIVE), PROJECTION_POLL),
        })
    }

    /// The dead letters.
    pub fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        match self {
            Database::Sqlite(database) => Arc::new(database.store().dead_letters()),
            Database::Postgres(database) => Arc::new(database.store().dead_letters()),
        }
    }

    /// The inbox, for a consumer.
    pub fn inbox(&self) -> Arc<dyn Inbox> {
        match self {
            Database::Sqlite(database) => Arc::new(database.store().inbox()),
            Database::Postgres(database) => Arc::new(database.store().inbox()),
        }
    }

    /// Starts delivering again, in the background, the events this process
    /// or a dead one left undelivered.
    pub fn start_recovery(&self, bus: &Bus) -> Result<Recovery, arch_events_sqlx::Error> {
        match self {
            Database::Sqlite(database) => database.store().start_recovery(bus),
            Database::Postgres(database) => database.store().start_recovery(bus),
        }
    }

    /// Starts firing, in the background, the scheduled messages that fall
    /// due (the shipment deadlines, and what the sagas send), whichever
    /// process scheduled them: one process fires each.
    pub fn start_scheduler(&self, bus: &Bus) -> RunningScheduler {
        match self {
            Database::Sqlite(database) => database.scheduler().start(bus),
            Database::Postgres(database) => database.scheduler().start(bus),
        }
    }

    /// With `--storage events`, rebuilds the allocations view from the
    /// streams, and returns how many events it applied. The view is built
    /// in a table beside the live one ([`ViewTable::REBUILT`]) while the
    /// live one serves; once it holds every event the live one does, the
    /// two are swapped in one transaction (which waits for a batch of the
    /// live projection in progress, and holds the next ones off). No event
    /// handler runs again. An error with rows, whose view is written by
    /// event handlers.
    pub async fn rebuild_view(&self) -> Result<usize, BoxError> {
        match self {
            _ if self.storage() != Storage::Events => Err(
                "the database keeps its products as rows: its view is written by event \
                 handlers, and there are no streams to rebuild it from"
                    .into(),
            ),
            Database::Sqlite(database) => {
                // The live table's own definition, under the new name.
                let live: String = sqlx::query_scalar(
                    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = $1",
                )
                .bind(ViewTable::LIVE.table)
                .fetch_one(database.pool())
                .await?;
                let create = live.replacen(ViewTable::LIVE.table, ViewTable::REBUILT.table, 1);
                rebuild(
                    database.store(),
                    database.event_store(),
                    [
                        AllocationsProjection(ViewTable::LIVE),
                        AllocationsProjection(ViewTable::REBUILT),
                    ],
                    &create,
                )
                .await
            }
            Database::Postgres(database) => {
                let create = format!(
                    "CREATE TABLE {} (LIKE {} INCLUDING ALL)",
                    ViewTable::REBUILT.table,
                    ViewTable::LIVE.table
                );
                rebuild(
                    database.store(),
                    database.event_store(),
                    [
                        AllocationsProjection(ViewTable::LIVE),
                        AllocationsProjection(ViewTable::REBUILT),
                    ],
                    &create,
                )
                .await
            }
        }
    }

    /// Relays the outbox to `publisher` until `stop` resolves.
    pub async fn relay(&self, publisher: Arc<dyn Publisher>, stop: impl Future<Output = ()>) {
        match self {
            Database::Sqlite(database) => database.store().outbox().run(publisher, stop).await,
            Database::Postgres(database) => database.store().outbox().run(publisher, stop).await,
        }
    }

    /// Leaves the processes sharing the database (another takes over at
    /// once what this one left undelivered), then closes every connection.
    pub async fn close(&self) {
        match self {
            Database::Sqlite(database) => database.close().await,
            Database::Postgres(database) => database.close().await,
        }
    }
}

/// How many times a rebuild tries to swap its table in before it gives up
/// (each time the live view had moved on, it catches up again).
const SWAP_ATTEMPTS: usize = 100;

/// Rebuilds the allocations view that `live` keeps in `events`: `create`
/// makes an empty table for `rebuilt` beside it, `rebuilt` applies every
/// event to it, then the tables and checkpoints are swapped in one
/// transaction of `store`, once `rebuilt` has reached where `live` stands.
async fn rebuild<DB, P>(
    store: &arch_events_sqlx::Store<DB>,
    events: &arch_events_sqlx::SqlEventStore<DB>,
    [live, rebuilt]: [P; 2],
    create: &str,
) -> Result<usize, BoxError>
where
    DB: arch_events_sqlx::Backend,
    P: arch_events_sqlx::Projection<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let (live_table, rebuilt_table) = (ViewTable::LIVE.table, ViewTable::REBUILT.table);
    let mut tx = store.begin().await?;
    sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {rebuilt_table}"))
        .execute(&mut **tx)
        .await?;
    sqlx::raw_sql(create).execute(&mut **tx).await?;
    events
        .set_checkpoint_in(&mut tx, rebuilt.name(), Position::START)
        .await?;
    tx.commit().await?;
    let mut applied = events.catch_up(&rebuilt).await?;
    for _ in 0..SWAP_ATTEMPTS {
        let mut tx = store.begin().await?;
        // Held to the commit: no batch of the live view meanwhile.
        let live_at = events.checkpoint_in(&mut tx, live.name()).await?;
        let rebuilt_at = events.checkpoint_in(&mut tx, rebuilt.name()).await?;
        if rebuilt_at >= live_at {
            sqlx::raw_sql(&format!(
                "DROP TABLE {live_table}; ALTER TABLE {rebuilt_table} RENAME TO {live_table}"
            ))
            .execute(&mut **tx)
            .await?;
            events
                .set_checkpoint_in(&mut tx, live.name(), rebuilt_at)
                .await?;
            tx.commit().await?;
            return Ok(applied);
        }
        drop(tx);
        applied += events.catch_up(&rebuilt).await?;
    }
    Err(format!(
        "the live view moved on {SWAP_ATTEMPTS} times before the rebuilt one caught up: \
         try again when the service is less busy"
    )
    .into())
}

/// How often a running projection looks for new events when it has none.
/// A read of the view catches it up first anyway (see
/// [`ProjectedAllocationsView`](super::projected_view::ProjectedAllocationsView)):
/// this is how stale the view's table may get between reads.
pub const PROJECTION_POLL: Duration = Duration::from_millis(500);

/// `url` with its password (if any) replaced by `***`, for logs and errors.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn a_password_never_shows() {
        assert_eq!(
            redacted("postgres://app:s3cret@db:5432/allocation"),
            "postgres://app:***@db:5432/allocation"
        );
        assert_eq!(
            redacted("postgres://app@db/allocation"),
            "postgres://app@db/allocation"
        );
        assert_eq!(redacted("sqlite://allocation.db"), "sqlite://allocation.db");
        assert_eq!(redacted("not a url"), "not a url");
    }
}
