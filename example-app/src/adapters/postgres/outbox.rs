//! The transactional outbox on PostgreSQL (see [`crate::adapters::relay`]).
//! A relay round runs in one transaction that locks the rows it publishes
//! (`FOR UPDATE SKIP LOCKED`): another relay skips them instead of waiting,
//! and a relay that dies mid-round releases them with its connection, so
//! another one publishes them at once (no lease to wait out).

use bus_core::async_trait;
use bus_core::transport::{OutboundMessage, Publisher};
use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::PostgresDatabase;
use crate::adapters::relay::{Outbox, RelayError};
use crate::adapters::rows::outbound_message;

/// Writes one message in the unit of work's transaction.
pub(super) async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    message: &OutboundMessage,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (id, stream, name, payload, correlation_id, causation_id) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(message.id.to_string())
    .bind(&message.stream)
    .bind(&message.name)
    .bind(&message.payload)
    .bind(message.correlation_id.to_string())
    .bind(message.causation_id.map(|id| id.to_string()))
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// The outbox of a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresOutbox {
    database: PostgresDatabase,
}

impl PostgresOutbox {
    /// The outbox in `database`.
    pub fn new(database: PostgresDatabase) -> Self {
        PostgresOutbox { database }
    }
}

const COLUMNS: &str = "id, stream, name, payload, correlation_id, causation_id";

#[async_trait]
impl Outbox for PostgresOutbox {
    async fn unsent(&self, max: u32) -> Result<Vec<OutboundMessage>, RelayError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM outbox WHERE sent_at IS NULL ORDER BY position LIMIT $1"
        ))
        .bind(i64::from(max))
        .fetch_all(self.database.pool())
        .await?;
        Ok(rows
            .iter()
            .map(outbound_message)
            .collect::<Result<_, _>>()?)
    }

    async fn relay_once(&self, publisher: &dyn Publisher, max: u32) -> Result<usize, RelayError> {
        let mut tx = self.database.pool().begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM outbox WHERE sent_at IS NULL ORDER BY position LIMIT $1 \
             FOR UPDATE SKIP LOCKED"
        ))
        .bind(i64::from(max))
        .fetch_all(&mut *tx)
        .await?;
        let mut sent = 0;
        let mut failure = None;
        for row in &rows {
            let message = outbound_message(row)?;
            if let Err(error) = publisher.publish(&message).await {
                failure = Some(error);
                break;
            }
            sqlx::query("UPDATE outbox SET sent_at = now() WHERE id = $1")
                .bind(message.id.to_string())
                .execute(&mut *tx)
                .await?;
            sent += 1;
        }
        // What the broker has is marked sent even when a later publish
        // failed; if this commit fails, those rows go out again next round
        // (at-least-once: the consumers' inboxes drop the copies).
        tx.commit().await?;
        match failure {
            Some(error) => Err(error.into()),
            None => Ok(sent),
        }
    }

    async fn purge_sent(&self, before: DateTime<Utc>) -> Result<u64, RelayError> {
        let deleted = sqlx::query("DELETE FROM outbox WHERE sent_at < $1")
            .bind(before)
            .execute(self.database.pool())
            .await?;
        Ok(deleted.rows_affected())
    }
}
