//! The service's database, chosen by URL: SQLite (`sqlite://<file>`, the
//! embedded default) or PostgreSQL (`postgres://...`, for several processes
//! sharing it). Each gives every storage adapter the service needs.

use std::sync::Arc;

use bus_core::transport::Inbox;
use bus_core::EventReleaser;

use super::postgres::{self, PostgresDatabase};
use super::relay::Outbox;
use super::sqlite::{self, SqliteDatabase};
use crate::service_layer::unit_of_work::UnitOfWork;

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
        /// What the driver said.
        #[source]
        source: sqlx::Error,
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
        let open = |source| DatabaseError::Open {
            url: redacted(url),
            source,
        };
        match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => sqlite::connect(url)
                .await
                .map(Database::Sqlite)
                .map_err(open),
            Some("postgres" | "postgresql") => postgres::connect(url)
                .await
                .map(Database::Postgres)
                .map_err(open),
            _ => Err(DatabaseError::Unsupported { url: redacted(url) }),
        }
    }

    /// A unit of work that releases into `releaser`, outside any dispatch
    /// (for tests and scripts).
    pub fn unit_of_work(&self, releaser: EventReleaser) -> Box<dyn UnitOfWork> {
        match self {
            Database::Sqlite(database) => {
                Box::new(sqlite::SqliteUnitOfWork::new(database.clone(), releaser))
            }
            Database::Postgres(database) => Box::new(postgres::PostgresUnitOfWork::new(
                database.clone(),
                releaser,
            )),
        }
    }

    /// The outbox, for a relay.
    pub fn outbox(&self) -> Arc<dyn Outbox> {
        match self {
            Database::Sqlite(database) => Arc::new(sqlite::SqliteOutbox::new(database.clone())),
            Database::Postgres(database) => {
                Arc::new(postgres::PostgresOutbox::new(database.clone()))
            }
        }
    }

    /// The inbox, for a consumer.
    pub fn inbox(&self) -> Arc<dyn Inbox> {
        match self {
            Database::Sqlite(database) => Arc::new(sqlite::SqliteInbox::new(database.clone())),
            Database::Postgres(database) => {
                Arc::new(postgres::PostgresInbox::new(database.clone()))
            }
        }
    }

    /// Closes every connection, once what runs on them finished.
    pub async fn close(&self) {
        match self {
            Database::Sqlite(database) => database.close().await,
            Database::Postgres(database) => database.close().await,
        }
    }
}

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
