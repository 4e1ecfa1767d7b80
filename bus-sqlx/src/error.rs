//! What can go wrong, by operation.

use arch_events::transport::TransportError;
use arch_events::BoxError;

/// The store could not be opened, or a background round failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database failed.
    #[error("the database failed: {0}")]
    Database(#[from] sqlx::Error),
    /// The store's tables could not be brought up to date.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// The store's timings cannot work (see [`Settings`](crate::Settings)).
    #[error("arch-events-sqlx settings refused: {0}")]
    InvalidSettings(String),
    /// The bus cannot store some of the events it handles: a durable unit
    /// of work would fail to commit them. Names every such event type.
    #[error(
        "these events have handlers but cannot be stored for durable delivery: {}; \
         derive them with `#[event(serde)]` (and serde's `Serialize` and `Deserialize`)",
        .0.join(", ")
    )]
    NotStorable(Vec<&'static str>),
    /// The event store's events carry transaction ids from another
    /// PostgreSQL cluster (a logical dump and restore, or a move by logical
    /// replication): readers of all events would skip what is appended
    /// from now on. The store refuses to open rather than lose events.
    #[error(
        "the event store's events carry transaction ids ahead of this PostgreSQL cluster's \
         (the database was restored from a logical dump or moved by logical replication): \
         catch-up readers would skip new events; see the `SqlEventStore` docs, \
         'Moving the database', for how to renumber"
    )]
    ForeignTransactionIds,
}

/// The store's migrations could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The database failed.
    #[error("applying arch-events-sqlx's migrations failed: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration applied earlier is not the one this version of arch-events-sqlx
    /// has under that number: the database was migrated by another build.
    #[error(
        "arch-events-sqlx migration {version} ({description}) was applied with another content \
         (checksum {applied}, this build has {expected}): the database belongs to another \
         version of arch-events-sqlx"
    )]
    Changed {
        /// The migration's number.
        version: i64,
        /// What it does.
        description: &'static str,
        /// The checksum recorded when it was applied.
        applied: String,
        /// The checksum of this build's migration.
        expected: String,
    },
}

/// What a unit of work's commit could not stage in its transaction; the
/// transaction must be rolled back (drop it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageError {
    /// The inbound message this call handles was handled already (its id is
    /// in the inbox): nothing may be written.
    #[error("message {message_id} was handled already; nothing was written")]
    AlreadyHandled {
        /// The inbound message's id.
        message_id: String,
    },
    /// The stored event this call delivers was handled by this handler
    /// already (an earlier run, or another process): nothing may be
    /// written. The bus treats the call as done, not failed.
    #[error("handler `{handler}` handled event {event} already; nothing was written")]
    Duplicate {
        /// The event's id.
        event: String,
        /// The handler.
        handler: &'static str,
    },
    /// An event cannot be stored: its type is not derived with
    /// `#[event(serde)]`.
    #[error(
        "event `{0}` cannot be stored for durable delivery: derive it with `#[event(serde)]` \
         (and serde's `Serialize` and `Deserialize`)"
    )]
    NotStorable(&'static str),
    /// An event could not be written as JSON.
    #[error("event `{event}` could not be written as JSON: {source}")]
    Encode {
        /// The event's name.
        event: &'static str,
        /// What serde said.
        #[source]
        source: BoxError,
    },
    /// The call is a query handler's (see
    /// [`EventReleaser::accepts_events`](arch_events::EventReleaser::accepts_events)):
    /// a query reads, it never releases events, so none is stored; roll the
    /// transaction back.
    #[error(
        "a query's handler released {events:?}: a query never changes state or releases \
         events; nothing was written"
    )]
    QueryReleases {
        /// The names of the events, in order.
        events: Vec<&'static str>,
    },
    /// The database failed.
    #[error("the database failed: {0}")]
    Database(#[from] sqlx::Error),
}

impl StageError {
    /// Whether the call is a duplicate of one that committed already (an
    /// inbound message or a stored event handled before): not a failure.
    pub fn is_duplicate(&self) -> bool {
        matches!(
            self,
            StageError::AlreadyHandled { .. } | StageError::Duplicate { .. }
        )
    }
}

/// Why a relay round stopped (the relay tries again next round).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The database failed.
    #[error("the outbox could not be read or updated: {0}")]
    Database(#[from] sqlx::Error),
    /// The broker failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}
