//! The inbox on SQLite: the ids of the inbound messages whose effects
//! committed, written by the unit of work in the same transaction, so that a
//! redelivered message is recognised.

use bus_core::transport::{Inbox, TransportError};
use bus_core::MessageId;
use chrono::Utc;
use sqlx::{Sqlite, Transaction};

use super::SqliteDatabase;
use crate::adapters::tracked::inbox_error;
use crate::service_layer::unit_of_work::UowError;

/// Records, in the unit of work's transaction, that the inbound message
/// `id` was handled; [`UowError::AlreadyHandled`] if it was already.
pub(super) async fn record_handled(
    tx: &mut Transaction<'_, Sqlite>,
    id: MessageId,
) -> Result<(), UowError> {
    sqlx::query("INSERT INTO inbox (message_id, handled_at) VALUES (?, ?)")
        .bind(id.to_string())
        .bind(Utc::now())
        .execute(&mut **tx)
        .await
        .map(drop)
        .map_err(|error| inbox_error(error, id))
}

/// The inbox of a SQLite database: the ids of the inbound messages whose
/// effects committed.
#[derive(Debug, Clone)]
pub struct SqliteInbox {
    database: SqliteDatabase,
}

impl SqliteInbox {
    /// The inbox in `database`.
    pub fn new(database: SqliteDatabase) -> Self {
        SqliteInbox { database }
    }
}

#[bus_core::async_trait]
impl Inbox for SqliteInbox {
    async fn handled(&self, id: MessageId) -> Result<bool, TransportError> {
        sqlx::query("SELECT 1 FROM inbox WHERE message_id = ?")
            .bind(id.to_string())
            .fetch_optional(self.database.pool())
            .await
            .map(|row| row.is_some())
            .map_err(|e| TransportError::new("reading the inbox", e))
    }
}
