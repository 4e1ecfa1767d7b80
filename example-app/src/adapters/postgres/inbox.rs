//! The inbox on PostgreSQL: the ids of the inbound messages whose effects
//! committed, written by the unit of work in the same transaction. Of two
//! deliveries of one message handled at once, the second insert waits for
//! the first transaction, then fails: only one commits.

use bus_core::transport::{Inbox, TransportError};
use bus_core::MessageId;
use sqlx::{Postgres, Transaction};

use super::PostgresDatabase;
use crate::adapters::tracked::inbox_error;
use crate::service_layer::unit_of_work::UowError;

/// Records, in the unit of work's transaction, that the inbound message
/// `id` was handled; [`UowError::AlreadyHandled`] if it was already.
pub(super) async fn record_handled(
    tx: &mut Transaction<'_, Postgres>,
    id: MessageId,
) -> Result<(), UowError> {
    sqlx::query("INSERT INTO inbox (message_id) VALUES ($1)")
        .bind(id.to_string())
        .execute(&mut **tx)
        .await
        .map(drop)
        .map_err(|error| inbox_error(error, id))
}

/// The inbox of a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresInbox {
    database: PostgresDatabase,
}

impl PostgresInbox {
    /// The inbox in `database`.
    pub fn new(database: PostgresDatabase) -> Self {
        PostgresInbox { database }
    }
}

#[bus_core::async_trait]
impl Inbox for PostgresInbox {
    async fn handled(&self, id: MessageId) -> Result<bool, TransportError> {
        sqlx::query("SELECT 1 FROM inbox WHERE message_id = $1")
            .bind(id.to_string())
            .fetch_optional(self.database.pool())
            .await
            .map(|row| row.is_some())
            .map_err(|e| TransportError::new("reading the inbox", e))
    }
}
