//! The transactional outbox on SQLite (see [`crate::adapters::relay`]).
//! SQLite has no row locks: a relay claims the rows it is about to publish
//! for a lease, in one statement.

use std::time::Duration;

use bus_core::async_trait;
use bus_core::transport::{OutboundMessage, Publisher};
use bus_core::MessageId;
use chrono::{DateTime, Utc};
use sqlx::{Row, Sqlite, Transaction};

use super::SqliteDatabase;
use crate::adapters::relay::{Outbox, RelayError};
use crate::adapters::rows::outbound_message;

/// Writes one message in the unit of work's transaction.
pub(super) async fn insert(
    tx: &mut Transaction<'_, Sqlite>,
    message: &OutboundMessage,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (id, stream, name, payload, correlation_id, causation_id, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(message.id.to_string())
    .bind(&message.stream)
    .bind(&message.name)
    .bind(&message.payload)
    .bind(message.correlation_id.to_string())
    .bind(message.causation_id.map(|id| id.to_string()))
    .bind(Utc::now())
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// How long a relay's claim on outbox rows lasts: after that (the relay
/// died), another relay may publish them.
pub const CLAIM_LEASE: Duration = Duration::from_secs(30);

/// The outbox of a SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteOutbox {
    database: SqliteDatabase,
    /// This relay's name in its claims.
    relay: String,
}

impl SqliteOutbox {
    /// The outbox in `database`.
    pub fn new(database: SqliteDatabase) -> Self {
        SqliteOutbox {
            database,
            relay: MessageId::new().to_string(),
        }
    }

    /// Claims up to `max` unsent rows that no live claim holds, oldest
    /// first, for [`CLAIM_LEASE`]: one statement, so two relays never
    /// claim one row.
    async fn claim(&self, max: u32) -> Result<Vec<OutboundMessage>, sqlx::Error> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(CLAIM_LEASE).unwrap_or_default();
        let rows = sqlx::query(
            "UPDATE outbox SET claimed_by = ?, claimed_until = ? WHERE id IN ( \
                 SELECT id FROM outbox WHERE sent_at IS NULL \
                 AND (claimed_until IS NULL OR claimed_until < ?) \
                 ORDER BY created_at, rowid LIMIT ?) \
             RETURNING id, stream, name, payload, correlation_id, causation_id, created_at",
        )
        .bind(&self.relay)
        .bind(until)
        .bind(now)
        .bind(max)
        .fetch_all(self.database.pool())
        .await?;
        // RETURNING gives no order: oldest first again.
        let mut messages: Vec<(String, OutboundMessage)> = Vec::with_capacity(rows.len());
        for (row, message) in rows.iter().zip(read_messages(&rows)?) {
            messages.push((row.try_get("created_at")?, message));
        }
        messages.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(messages.into_iter().map(|(_, message)| message).collect())
    }
}

#[async_trait]
impl Outbox for SqliteOutbox {
    async fn unsent(&self, max: u32) -> Result<Vec<OutboundMessage>, RelayError> {
        let rows = sqlx::query(
            "SELECT id, stream, name, payload, correlation_id, causation_id FROM outbox \
             WHERE sent_at IS NULL ORDER BY created_at, rowid LIMIT ?",
        )
        .bind(max)
        .fetch_all(self.database.pool())
        .await?;
        Ok(read_messages(&rows)?)
    }

    async fn relay_once(&self, publisher: &dyn Publisher, max: u32) -> Result<usize, RelayError> {
        let messages = self.claim(max).await?;
        for message in &messages {
            publisher.publish(message).await?;
            sqlx::query("UPDATE outbox SET sent_at = ? WHERE id = ?")
                .bind(Utc::now())
                .bind(message.id.to_string())
                .execute(self.database.pool())
                .await?;
        }
        Ok(messages.len())
    }

    async fn purge_sent(&self, before: DateTime<Utc>) -> Result<u64, RelayError> {
        let deleted = sqlx::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?")
            .bind(before)
            .execute(self.database.pool())
            .await?;
        Ok(deleted.rows_affected())
    }
}

fn read_messages(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<OutboundMessage>, sqlx::Error> {
    rows.iter().map(outbound_message).collect()
}
