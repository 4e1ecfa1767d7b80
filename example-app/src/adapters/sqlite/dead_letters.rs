//! The dead letters in SQLite: durable, listed and replayed over HTTP.

use bus_core::async_trait;
use chrono::{DateTime, Utc};

use super::SqliteDatabase;
use crate::adapters::rows::{dead_letter, DEAD_LETTER_COLUMNS};
use crate::service_layer::dead_letters::{
    DeadLetterError, DeadLetterRecord, DeadLetterStore, StoredDeadLetter,
};

/// Dead letters in the `dead_letters` table of the service's database.
#[derive(Debug, Clone)]
pub struct SqliteDeadLetterStore {
    database: SqliteDatabase,
}

impl SqliteDeadLetterStore {
    /// The store in `database` (its migrations created the table).
    pub fn new(database: SqliteDatabase) -> Self {
        SqliteDeadLetterStore { database }
    }
}

fn storage(error: sqlx::Error) -> DeadLetterError {
    DeadLetterError::Storage(error.into())
}

#[async_trait]
impl DeadLetterStore for SqliteDeadLetterStore {
    async fn add(&self, letter: DeadLetterRecord) -> Result<i64, DeadLetterError> {
        let result = sqlx::query(
            "INSERT INTO dead_letters (message_name, handler, location, error, attempts, \
             failed_at, message_id, correlation_id, causation_id, payload) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&letter.message_name)
        .bind(&letter.handler)
        .bind(&letter.location)
        .bind(&letter.error)
        .bind(i64::from(letter.attempts))
        .bind(letter.failed_at)
        .bind(&letter.message_id)
        .bind(&letter.correlation_id)
        .bind(&letter.causation_id)
        .bind(&letter.payload)
        .execute(self.database.pool())
        .await
        .map_err(storage)?;
        Ok(result.last_insert_rowid())
    }

    async fn list(&self, include_replayed: bool) -> Result<Vec<StoredDeadLetter>, DeadLetterError> {
        let filter = if include_replayed {
            ""
        } else {
            "WHERE replayed_at IS NULL"
        };
        let rows = sqlx::query(&format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters {filter} ORDER BY id"
        ))
        .fetch_all(self.database.pool())
        .await
        .map_err(storage)?;
        rows.iter()
            .map(dead_letter)
            .collect::<Result<_, _>>()
            .map_err(storage)
    }

    async fn get(&self, id: i64) -> Result<Option<StoredDeadLetter>, DeadLetterError> {
        let row = sqlx::query(&format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(self.database.pool())
        .await
        .map_err(storage)?;
        row.as_ref().map(dead_letter).transpose().map_err(storage)
    }

    async fn claim(&self, id: i64) -> Result<bool, DeadLetterError> {
        let result = sqlx::query(
            "UPDATE dead_letters SET replaying = 1 \
             WHERE id = ? AND replaying = 0 AND replayed_at IS NULL",
        )
        .bind(id)
        .execute(self.database.pool())
        .await
        .map_err(storage)?;
        Ok(result.rows_affected() == 1)
    }

    async fn settle(
        &self,
        id: i64,
        outcome: Result<DateTime<Utc>, String>,
    ) -> Result<(), DeadLetterError> {
        let query = match outcome {
            Ok(at) => sqlx::query(
                "UPDATE dead_letters SET replaying = 0, replayed_at = ?, replay_error = NULL \
                 WHERE id = ?",
            )
            .bind(at),
            Err(error) => {
                sqlx::query("UPDATE dead_letters SET replaying = 0, replay_error = ? WHERE id = ?")
                    .bind(error)
            }
        };
        query
            .bind(id)
            .execute(self.database.pool())
            .await
            .map_err(storage)?;
        Ok(())
    }
}
