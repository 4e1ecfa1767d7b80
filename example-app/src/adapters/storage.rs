//! How a database keeps its products: as rows of their current state, or
//! as streams of their events. Chosen when the database is created, and
//! kept for good: the setting is the database's, not the process's, so two
//! processes on one database always agree.

use std::fmt;
use std::str::FromStr;

use arch_events::BoxError;
use sqlx::{Encode, Executor, IntoArguments, Pool, Type};

/// Where the products are kept.
///
/// ```
/// use example_app::adapters::storage::Storage;
///
/// assert_eq!("events".parse::<Storage>(), Ok(Storage::Events));
/// assert_eq!(Storage::default().to_string(), "state");
/// let error = "rows".parse::<Storage>().unwrap_err();
/// assert_eq!(error.to_string(), "unknown storage \"rows\": use state or events");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// As rows of their current state (`products`, `batches`,
    /// `allocations`); the allocations view is written by event handlers.
    #[default]
    State,
    /// As a stream of events per product, in arch-events-sqlx's event
    /// store; the allocations view is a catch-up projection of them.
    Events,
}

impl Storage {
    /// Its name, as the setting and the database spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Storage::State => "state",
            Storage::Events => "events",
        }
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no [`Storage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown storage {0:?}: use state or events")]
pub struct UnknownStorage(pub String);

impl FromStr for Storage {
    type Err = UnknownStorage;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "state" => Ok(Storage::State),
            "events" => Ok(Storage::Events),
            other => Err(UnknownStorage(other.to_owned())),
        }
    }
}

/// How the database behind `pool` keeps its products: as it was created,
/// else `new` (a new database), which is then written for good (of
/// processes starting together, the first to write wins). Without `new`
/// nothing is written, and a database with no setting yet keeps its
/// products as rows for this process only.
pub(super) async fn stored<DB>(pool: &Pool<DB>, new: Option<Storage>) -> Result<Storage, BoxError>
where
    DB: sqlx::Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    (String,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    if let Some(new) = new {
        // `$1`: SQLite takes it too.
        sqlx::query(
            "INSERT INTO service_storage (id, storage) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        )
        .bind(new.as_str())
        .execute(pool)
        .await?;
    }
    let stored: Option<String> =
        sqlx::query_scalar("SELECT storage FROM service_storage WHERE id = 1")
            .fetch_optional(pool)
            .await?;
    Ok(match stored {
        Some(stored) => stored.parse()?,
        None => Storage::default(),
    })
}
