//! Dead-letter stores: the SQLite table (durable) and an in-memory fake.

use std::sync::{Mutex, PoisonError};

use bus_core::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::sqlite::SqliteDatabase;
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

fn read_row(row: &sqlx::sqlite::SqliteRow) -> Result<StoredDeadLetter, sqlx::Error> {
    let attempts: i64 = row.try_get("attempts")?;
    Ok(StoredDeadLetter {
        id: row.try_get("id")?,
        record: DeadLetterRecord {
            message_name: row.try_get("message_name")?,
            handler: row.try_get("handler")?,
            location: row.try_get("location")?,
            error: row.try_get("error")?,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            failed_at: row.try_get("failed_at")?,
            message_id: row.try_get("message_id")?,
            correlation_id: row.try_get("correlation_id")?,
            causation_id: row.try_get("causation_id")?,
            payload: row.try_get("payload")?,
        },
        replayed_at: row.try_get("replayed_at")?,
        replay_error: row.try_get("replay_error")?,
    })
}

const COLUMNS: &str = "id, message_name, handler, location, error, attempts, failed_at, \
     message_id, correlation_id, causation_id, payload, replayed_at, replay_error";

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
            "SELECT {COLUMNS} FROM dead_letters {filter} ORDER BY id"
        ))
        .fetch_all(self.database.pool())
        .await
        .map_err(storage)?;
        rows.iter()
            .map(read_row)
            .collect::<Result<_, _>>()
            .map_err(storage)
    }

    async fn get(&self, id: i64) -> Result<Option<StoredDeadLetter>, DeadLetterError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM dead_letters WHERE id = ?"))
            .bind(id)
            .fetch_optional(self.database.pool())
            .await
            .map_err(storage)?;
        row.as_ref().map(read_row).transpose().map_err(storage)
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

/// Dead letters in memory, for tests and demos.
#[derive(Debug, Default)]
pub struct InMemoryDeadLetterStore {
    letters: Mutex<Vec<(StoredDeadLetter, bool)>>,
}

impl InMemoryDeadLetterStore {
    fn letters(&self) -> std::sync::MutexGuard<'_, Vec<(StoredDeadLetter, bool)>> {
        // Every change below is one assignment or push: a poisoned lock's
        // data is whole.
        self.letters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl DeadLetterStore for InMemoryDeadLetterStore {
    async fn add(&self, letter: DeadLetterRecord) -> Result<i64, DeadLetterError> {
        let mut letters = self.letters();
        let id = letters.len() as i64 + 1;
        letters.push((
            StoredDeadLetter {
                id,
                record: letter,
                replayed_at: None,
                replay_error: None,
            },
            false,
        ));
        Ok(id)
    }

    async fn list(&self, include_replayed: bool) -> Result<Vec<StoredDeadLetter>, DeadLetterError> {
        Ok(self
            .letters()
            .iter()
            .filter(|(letter, _)| include_replayed || letter.replayed_at.is_none())
            .map(|(letter, _)| letter.clone())
            .collect())
    }

    async fn get(&self, id: i64) -> Result<Option<StoredDeadLetter>, DeadLetterError> {
        Ok(self
            .letters()
            .iter()
            .find(|(letter, _)| letter.id == id)
            .map(|(letter, _)| letter.clone()))
    }

    async fn claim(&self, id: i64) -> Result<bool, DeadLetterError> {
        let mut letters = self.letters();
        match letters.iter_mut().find(|(letter, _)| letter.id == id) {
            Some((letter, replaying)) if !*replaying && letter.replayed_at.is_none() => {
                *replaying = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn settle(
        &self,
        id: i64,
        outcome: Result<DateTime<Utc>, String>,
    ) -> Result<(), DeadLetterError> {
        let mut letters = self.letters();
        let (letter, replaying) = letters
            .iter_mut()
            .find(|(letter, _)| letter.id == id)
            .ok_or(DeadLetterError::NotFound(id))?;
        *replaying = false;
        match outcome {
            Ok(at) => {
                letter.replayed_at = Some(at);
                letter.replay_error = None;
            }
            Err(error) => letter.replay_error = Some(error),
        }
        Ok(())
    }
}
