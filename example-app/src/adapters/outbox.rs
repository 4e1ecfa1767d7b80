//! The transactional outbox on SQLite: external events are written by the
//! unit of work in its commit's transaction; the relay
//! publishes the unsent ones, oldest first, and marks each one sent once
//! the broker has it. A crash between the commit and the publish loses
//! nothing: the row is still unsent when the relay runs again
//! (at-least-once; each message keeps its id, for the consumers' inboxes).

use std::time::Duration;

use bus_core::transport::{OutboundMessage, Publisher, TransportError};
use bus_core::MessageId;
use chrono::Utc;
use sqlx::{Row, Sqlite, Transaction};

use super::sqlite::SqliteDatabase;

/// Writes one message in the unit of work's transaction.
pub(crate) async fn insert(
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

/// Why the relay stopped this round (it tries again next round).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database failed.
    #[error("the outbox could not be read or updated: {0}")]
    Storage(#[from] sqlx::Error),
    /// The broker failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
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

    /// The messages not yet sent, oldest first (at most `max`).
    pub async fn unsent(&self, max: u32) -> Result<Vec<OutboundMessage>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, stream, name, payload, correlation_id, causation_id FROM outbox \
             WHERE sent_at IS NULL ORDER BY created_at, rowid LIMIT ?",
        )
        .bind(max)
        .fetch_all(self.database.pool())
        .await?;
        read_messages(&rows)
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

    /// Claims the unsent messages (oldest first, those no other relay
    /// holds), publishes them, marking each one sent once the broker has it;
    /// stops at the first failure (its claim lapses after [`CLAIM_LEASE`]).
    /// Returns how many it published.
    pub async fn relay_once(
        &self,
        publisher: &dyn Publisher,
        max: u32,
    ) -> Result<usize, RelayError> {
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

    /// Relays until `stop` resolves: a round every `pause` while the outbox
    /// is empty, at once while it is not; a failure is logged and retried.
    pub async fn run(
        self,
        publisher: std::sync::Arc<dyn Publisher>,
        pause: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let relay = async {
            loop {
                match self.relay_once(&*publisher, 100).await {
                    Ok(0) => tokio::time::sleep(pause).await,
                    Ok(sent) => tracing::debug!(sent, "outbox relayed"),
                    Err(error) => {
                        tracing::error!(%error, "outbox relay failed; trying again");
                        tokio::time::sleep(pause.max(Duration::from_secs(1))).await;
                    }
                }
            }
        };
        tokio::select! {
            () = relay => {}
            () = stop => {}
        }
    }
}

fn read_messages(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<OutboundMessage>, sqlx::Error> {
    let id = |text: String| text.parse::<MessageId>().unwrap_or_default();
    rows.iter()
        .map(|row| {
            Ok(OutboundMessage {
                id: id(row.try_get("id")?),
                stream: row.try_get("stream")?,
                name: row.try_get("name")?,
                payload: row.try_get("payload")?,
                correlation_id: id(row.try_get("correlation_id")?),
                causation_id: row
                    .try_get::<Option<String>, _>("causation_id")?
                    .and_then(|text| text.parse().ok()),
            })
        })
        .collect()
}
