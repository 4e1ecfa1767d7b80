//! What each database brings: its SQL for every operation of the store,
//! behind one trait implemented for `sqlx::Sqlite` and `sqlx::Postgres`.
//! The store's logic (staging, delivery, recovery, relaying, dead letters)
//! is written once over it.

use std::time::Duration;

use arch_events::transport::{OutboundMessage, Publisher};
use chrono::{DateTime, Utc};
use sqlx::{Pool, Transaction};

use crate::dead_letters::{DeadLetterRecord, StoredDeadLetter};
use crate::error::{MigrateError, RelayError};

/// A database the store runs on: `sqlx::Sqlite` (feature `sqlite`) or
/// `sqlx::Postgres` (feature `postgres`). Sealed: its methods are the
/// store's SQL, not an API.
pub trait Backend:
    sql::Sql + crate::event_store::sql::EventSql + crate::scheduler::sql::SchedulerSql
{
}

#[cfg(feature = "sqlite")]
impl Backend for sqlx::Sqlite {}

#[cfg(feature = "postgres")]
impl Backend for sqlx::Postgres {}

/// A stored event as the tables hold it.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) payload: String,
    pub(crate) correlation_id: String,
    pub(crate) causation_id: Option<String>,
    pub(crate) recoveries: i64,
}

/// What deleting a dead letter found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Yes,
    NotFound,
    /// A replay holds its claim.
    Claimed,
}

pub(crate) mod sql {
    use super::*;

    /// The store's SQL for one database.
    #[arch_events::async_trait]
    pub trait Sql: sqlx::Database + Sized {
        /// This database's migrations, in order.
        const MIGRATIONS: &'static [crate::migrate::Migration];
        /// Whether a process's writers must take turns (SQLite: one writer
        /// at a time; queueing in the process beats SQLite's busy loop).
        const ONE_WRITER: bool;
        /// The database's name, for logs and errors.
        const LABEL: &'static str;

        async fn migrate(pool: &Pool<Self>) -> Result<(), MigrateError>;

        /// A transaction that writes (SQLite: `BEGIN IMMEDIATE`, so that it
        /// holds the write lock from the start and cannot fail on a stale
        /// snapshot later).
        async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error>;

        // -- nodes --------------------------------------------------------
        /// Registers `node`, which others take for dead once its heartbeat is
        /// older than `timeout`.
        async fn register_node(
            pool: &Pool<Self>,
            node: &str,
            timeout: Duration,
        ) -> Result<(), sqlx::Error>;
        /// `false` when the node's row was gone (others took it for dead).
        async fn heartbeat(pool: &Pool<Self>, node: &str) -> Result<bool, sqlx::Error>;
        async fn remove_node(pool: &Pool<Self>, node: &str) -> Result<(), sqlx::Error>;
        async fn purge_nodes(pool: &Pool<Self>, stale_for: Duration) -> Result<u64, sqlx::Error>;

        // -- staging, in the unit of work's transaction --------------------
        /// Records that `handler` handled the pending `event` (with
        /// `settles`, that its delivery is finished: the event's row and its
        /// records go). `false`, having written nothing, when the event's
        /// delivery finished already or `handler` handled it already (a
        /// duplicate). Two of these for one event run one after the other
        /// (PostgreSQL: the event's row is locked to the commit).
        async fn record_delivery(
            connection: &mut Self::Connection,
            event: &str,
            handler: &str,
            settles: bool,
        ) -> Result<bool, sqlx::Error>;
        /// Marks the dead letter `letter` replayed, in the replay's own
        /// transaction; `false` when it was replayed already (or is gone).
        async fn record_replay(
            connection: &mut Self::Connection,
            letter: i64,
        ) -> Result<bool, sqlx::Error>;
        async fn record_inbox(
            connection: &mut Self::Connection,
            id: &str,
        ) -> Result<(), sqlx::Error>;
        /// Writes the events (owned by `owner`) and the outbox messages.
        async fn insert_staged(
            connection: &mut Self::Connection,
            events: &[EventRow],
            owner: &str,
            messages: &[OutboundMessage],
        ) -> Result<(), sqlx::Error>;

        // -- delivery and recovery ------------------------------------------
        /// Records that `handler` handled `event`, if the event is still
        /// pending (nothing otherwise).
        async fn handled(pool: &Pool<Self>, event: &str, handler: &str) -> Result<(), sqlx::Error>;
        async fn delivered(pool: &Pool<Self>, event: &str) -> Result<(), sqlx::Error>;
        /// Takes over (for `node`) up to `max` events whose owner is dead
        /// (its heartbeat older than the timeout it declared, or no row),
        /// oldest first; returns their ids. (The recovery then takes each
        /// one up with [`reload`](Self::reload), which counts the attempt.)
        async fn take_over(
            pool: &Pool<Self>,
            node: &str,
            max: u32,
        ) -> Result<Vec<String>, sqlx::Error>;
        /// Reads a pending event back for `node`, counting a recovery,
        /// provided `node` owns it or its owner is dead; `None` otherwise,
        /// or once its delivery finished.
        async fn reload(
            pool: &Pool<Self>,
            event: &str,
            node: &str,
        ) -> Result<Option<EventRow>, sqlx::Error>;
        /// The ids of up to `max` pending events `node` owns that were
        /// recorded more than `older_than` ago, oldest first.
        async fn owned_before(
            pool: &Pool<Self>,
            node: &str,
            older_than: Duration,
            max: u32,
        ) -> Result<Vec<String>, sqlx::Error>;
        /// Keeps `letters` and ends `event`'s delivery, in one transaction.
        async fn give_up(
            pool: &Pool<Self>,
            letters: &[DeadLetterRecord],
            event: &str,
        ) -> Result<(), sqlx::Error>;
        /// The handlers that handled `event`.
        async fn completed(pool: &Pool<Self>, event: &str) -> Result<Vec<String>, sqlx::Error>;
        /// How many events wait for delivery, and the oldest one's age.
        async fn pending_events(
            pool: &Pool<Self>,
        ) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error>;

        // -- outbox ---------------------------------------------------------
        /// One relay round: up to `max` unsent rows no other relay holds,
        /// oldest first, published as one batch, and the ones the broker
        /// has marked sent. Returns how many.
        async fn relay_round(
            pool: &Pool<Self>,
            writer: &std::sync::Arc<tokio::sync::Mutex<()>>,
            relay: &str,
            max: u32,
            lease: Duration,
            publisher: &dyn Publisher,
            publish_timeout: Duration,
        ) -> Result<usize, RelayError>;
        async fn unsent(pool: &Pool<Self>, max: u32) -> Result<Vec<OutboundMessage>, sqlx::Error>;
        async fn purge_sent(pool: &Pool<Self>, before: DateTime<Utc>) -> Result<u64, sqlx::Error>;
        /// How many rows are unsent, and when the oldest was written.
        async fn outbox_lag(pool: &Pool<Self>)
            -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error>;

        // -- inbox ----------------------------------------------------------
        async fn inbox_has(pool: &Pool<Self>, id: &str) -> Result<bool, sqlx::Error>;

        // -- dead letters ---------------------------------------------------
        async fn add_dead_letter(
            pool: &Pool<Self>,
            letter: &DeadLetterRecord,
        ) -> Result<i64, sqlx::Error>;
        async fn list_dead_letters(
            pool: &Pool<Self>,
            include_replayed: bool,
        ) -> Result<Vec<StoredDeadLetter>, sqlx::Error>;
        async fn get_dead_letter(
            pool: &Pool<Self>,
            id: i64,
        ) -> Result<Option<StoredDeadLetter>, sqlx::Error>;
        /// Claims the letter for `lease` unless it was replayed or a live
        /// claim holds it.
        async fn claim_dead_letter(
            pool: &Pool<Self>,
            id: i64,
            lease: Duration,
        ) -> Result<bool, sqlx::Error>;
        async fn settle_dead_letter(
            pool: &Pool<Self>,
            id: i64,
            outcome: Result<DateTime<Utc>, String>,
        ) -> Result<(), sqlx::Error>;
        async fn delete_dead_letter(pool: &Pool<Self>, id: i64) -> Result<Deleted, sqlx::Error>;
    }
}

/// Publishes `messages` as one batch, giving up after `limit`: how many the
/// broker has for sure, and the error that stopped the rest.
pub(crate) async fn publish_within(
    publisher: &dyn Publisher,
    messages: &[OutboundMessage],
    limit: Duration,
) -> (usize, Option<arch_events::transport::TransportError>) {
    match tokio::time::timeout(limit, publisher.publish_batch(messages)).await {
        Ok(Ok(())) => (messages.len(), None),
        Ok(Err(error)) => (error.published.min(messages.len()), Some(error.error)),
        Err(_) => (
            0,
            Some(arch_events::transport::TransportError::new(
                "publishing",
                format!("the broker did not answer within {limit:?}"),
            )),
        ),
    }
}

/// Reads a message id stored as text.
pub(crate) fn parse_id(column: &str, text: &str) -> Result<arch_events::MessageId, sqlx::Error> {
    text.parse().map_err(|e| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    })
}
