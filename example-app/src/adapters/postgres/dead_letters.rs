//! The dead letters in PostgreSQL: durable, listed and replayed over HTTP
//! by any of the processes sharing the database.

use bus_core::async_trait;
use chrono::{DateTime, Utc};

use super::PostgresDatabase;
use crate::adapters::rows::{dead_letter, DEAD_LETTER_COLUMNS};
use crate::service_layer::dead_letters::{
    DeadLetterError, DeadLetterRecord, DeadLetterStore, StoredDeadLetter,
};

/// Dead letters in the `dead_letters` table of the service's database.
#[derive(Debug, Clone)]
pub struct PostgresDeadLetterStore {
    database: PostgresDatabase,
}

impl PostgresDeadLetterStore {
    /// The store in `database` (its migrations created the table).
    pub fn new(database: PostgresDatabase) -> Self {
        PostgresDeadLetterStore { database }
    }
}

fn storage(error: sqlx::Error) -> DeadLetterError {
    DeadLetterError::Storage(error.into())
}

#[async_trait]
impl DeadLetterStore for PostgresDeadLetterStore {
    async fn add(&self, letter: DeadLetterRecord) -> Result<i64, DeadLetterError> {
        sqlx::query_scalar(
            "INSERT INTO dead_letters (message_name, handler, location, error, attempts, \
             failed_at, message_id, correlation_id, causation_id, payload) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
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
        .fetch_one(self.database.pool())
        .await
        .map_err(storage)
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
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.database.pool())
        .await
        .map_err(storage)?;
        row.as_ref().map(dead_letter).transpose().map_err(storage)
    }

    async fn claim(&self, id: i64) -> Result<bool, DeadLetterError> {
        let result = sqlx::query(
            "UPDATE dead_letters SET replaying = TRUE \
             WHERE id = $1 AND NOT replaying AND replayed_at IS NULL",
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
                "UPDATE dead_letters SET replaying = FALSE, replayed_at = $1, replay_error = NULL \
                 WHERE id = $2",
            )
            .bind(at),
            Err(error) => sqlx::query(
                "UPDATE dead_letters SET replaying = FALSE, replay_error = $1 WHERE id = $2",
            )
            .bind(error),
        };
        query
            .bind(id)
            .execute(self.database.pool())
            .await
            .map_err(storage)?;
        Ok(())
    }
}
