//! The scheduler's SQL on PostgreSQL: ids in uuid columns, and claims
//! with `FOR UPDATE SKIP LOCKED`, so that processes firing at once never
//! wait on each other nor take one message twice.

use arch_events::schedule::ScheduledMessage;
use sqlx::{PgConnection, Pool, Postgres};

use super::rows::{claimed, due_millis, kind_text, readable, stored_name, Claimed};
use super::sql::SchedulerSql;

/// The columns `scheduled_message` reads, as text and 64-bit integers.
const COLUMNS: &str = "seq, id::text AS id, kind, name, payload, due_at, \
     correlation_id::text AS correlation_id, causation_id::text AS causation_id, saga, saga_id, \
     attempts::int8 AS attempts, last_error, (CASE WHEN parked THEN 1 ELSE 0 END)::int8 AS parked, \
     handler, handler_attempt::int8 AS handler_attempt, event_id::text AS event_id";

#[arch_events::async_trait]
impl SchedulerSql for Postgres {
    async fn load_saga(
        pool: &Pool<Self>,
        saga: &str,
        id: &str,
    ) -> Result<Option<(Option<String>, i64, String)>, sqlx::Error> {
        sqlx::query_as("SELECT state, version, timeouts FROM bus_sagas WHERE saga = $1 AND id = $2")
            .bind(saga)
            .bind(id)
            .fetch_optional(pool)
            .await
    }

    async fn insert_saga(
        connection: &mut PgConnection,
        saga: &str,
        id: &str,
        state: Option<&str>,
        timeouts: &str,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO bus_sagas (saga, id, version, state, timeouts) VALUES ($1, $2, 1, $3, $4) \
             ON CONFLICT (saga, id) DO NOTHING",
        )
        .bind(saga)
        .bind(id)
        .bind(state)
        .bind(timeouts)
        .execute(connection)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn update_saga(
        connection: &mut PgConnection,
        saga: &str,
        id: &str,
        expected: i64,
        state: Option<&str>,
        timeouts: &str,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE bus_sagas SET version = version + 1, state = $4, timeouts = $5, \
             updated_at = now() \
             WHERE saga = $1 AND id = $2 AND version = $3 AND state IS NOT NULL",
        )
        .bind(saga)
        .bind(id)
        .bind(expected)
        .bind(state)
        .bind(timeouts)
        .execute(connection)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_scheduled(
        connection: &mut PgConnection,
        messages: &[ScheduledMessage],
    ) -> Result<(), sqlx::Error> {
        for message in messages {
            sqlx::query(
                "INSERT INTO bus_scheduled (id, kind, name, payload, due_at, correlation_id, \
                 causation_id, saga, saga_id, handler, handler_attempt, event_id) \
                 VALUES ($1::uuid, $2, $3, $4, $5, $6::uuid, $7::uuid, $8, $9, $10, $11, $12::uuid) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(message.id().to_string())
            .bind(kind_text(message.kind()))
            .bind(stored_name(message))
            .bind(message.payload())
            .bind(due_millis(message.due()))
            .bind(message.correlation_id().to_string())
            .bind(message.causation_id().map(|id| id.to_string()))
            .bind(message.saga().map(|saga| saga.saga.as_str()))
            .bind(message.saga().map(|saga| saga.id.as_str()))
            .bind(message.handler_retry().map(|retry| retry.handler.as_str()))
            .bind(message.handler_retry().map(|retry| attempt_column(retry.attempt)))
            .bind(message.handler_retry().map(|retry| retry.event_id.to_string()))
            .execute(&mut *connection)
            .await?;
        }
        Ok(())
    }

    async fn holds_event(connection: &mut PgConnection, event: &str) -> Result<bool, sqlx::Error> {
        let held: i64 = sqlx::query_scalar("SELECT count(*) FROM bus_events WHERE id = $1::uuid")
            .bind(event)
            .fetch_one(connection)
            .await?;
        Ok(held > 0)
    }

    async fn cancel_scheduled(
        connection: &mut PgConnection,
        id: &str,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM bus_scheduled WHERE id = $1::uuid \
             AND (lease_until IS NULL OR lease_until <= $2)",
        )
        .bind(id)
        .bind(now)
        .execute(connection)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn cancel_saga_timeouts(
        connection: &mut PgConnection,
        saga: &str,
        id: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM bus_scheduled WHERE saga = $1 AND saga_id = $2")
            .bind(saga)
            .bind(id)
            .execute(connection)
            .await?;
        Ok(())
    }

    async fn claim_due(
        pool: &Pool<Self>,
        node: &str,
        now: i64,
        lease_until: i64,
        max: u32,
    ) -> Result<Vec<Claimed>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "UPDATE bus_scheduled SET lease_owner = $1::uuid, lease_until = $3 \
             WHERE seq IN (SELECT seq FROM bus_scheduled WHERE NOT parked AND due_at <= $2 \
                 AND (lease_until IS NULL OR lease_until <= $2) ORDER BY due_at, seq LIMIT $4 \
                 FOR UPDATE SKIP LOCKED) \
             RETURNING {COLUMNS}"
        ))
        .bind(node)
        .bind(now)
        .bind(lease_until)
        .bind(i64::from(max))
        .fetch_all(pool)
        .await?;
        claimed(&rows)
    }

    async fn park_unreadable(pool: &Pool<Self>, seq: i64, reason: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE bus_scheduled SET parked = TRUE, last_error = $2, lease_owner = NULL, \
             lease_until = NULL WHERE seq = $1",
        )
        .bind(seq)
        .bind(reason)
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn renew_lease(
        pool: &Pool<Self>,
        id: &str,
        node: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE bus_scheduled SET lease_until = $4 \
             WHERE id = $1::uuid AND lease_owner = $2::uuid AND lease_until > $3",
        )
        .bind(id)
        .bind(node)
        .bind(now)
        .bind(until)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn unpark(pool: &Pool<Self>, id: &str, now: i64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE bus_scheduled SET parked = FALSE, attempts = 0, last_error = NULL, due_at = $2 \
             WHERE id = $1::uuid AND parked",
        )
        .bind(id)
        .bind(now)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn take_claimed(
        connection: &mut PgConnection,
        id: &str,
        node: &str,
    ) -> Result<bool, sqlx::Error> {
        let done =
            sqlx::query("DELETE FROM bus_scheduled WHERE id = $1::uuid AND lease_owner = $2::uuid")
                .bind(id)
                .bind(node)
                .execute(connection)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn put_off(
        pool: &Pool<Self>,
        id: &str,
        node: &str,
        attempts: i64,
        error: &str,
        due: i64,
        parked: bool,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE bus_scheduled SET attempts = $3, last_error = $4, due_at = $5, parked = $6, \
             lease_owner = NULL, lease_until = NULL WHERE id = $1::uuid AND lease_owner = $2::uuid",
        )
        .bind(id)
        .bind(node)
        .bind(attempts)
        .bind(error)
        .bind(due)
        .bind(parked)
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn retry_later(
        pool: &Pool<Self>,
        id: &str,
        node: &str,
        attempt: u32,
        due: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE bus_scheduled SET handler_attempt = $3, due_at = $4, \
             lease_owner = NULL, lease_until = NULL WHERE id = $1::uuid AND lease_owner = $2::uuid",
        )
        .bind(id)
        .bind(node)
        .bind(attempt_column(attempt))
        .bind(due)
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn let_go(pool: &Pool<Self>, id: &str, node: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE bus_scheduled SET lease_owner = NULL, lease_until = NULL \
             WHERE id = $1::uuid AND lease_owner = $2::uuid",
        )
        .bind(id)
        .bind(node)
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn purge_completed(
        pool: &Pool<Self>,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM bus_sagas WHERE state IS NULL AND updated_at <= $1")
            .bind(before)
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn next_due(pool: &Pool<Self>) -> Result<Option<i64>, sqlx::Error> {
        // Two lookups an index serves: the earliest free message, and the
        // earliest end of a lease (or due time after it).
        let free: Option<i64> = sqlx::query_scalar(
            "SELECT due_at FROM bus_scheduled WHERE NOT parked AND lease_until IS NULL \
             ORDER BY due_at LIMIT 1",
        )
        .fetch_optional(pool)
        .await?;
        let leased: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(GREATEST(due_at, lease_until)) FROM bus_scheduled \
             WHERE lease_until IS NOT NULL AND NOT parked",
        )
        .fetch_one(pool)
        .await?;
        Ok(free.into_iter().chain(leased).min())
    }

    async fn scheduled(pool: &Pool<Self>) -> Result<Vec<ScheduledMessage>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM bus_scheduled ORDER BY due_at, seq"
        ))
        .fetch_all(pool)
        .await?;
        Ok(readable(&rows))
    }
}

/// An attempt number as the `INTEGER` column keeps it.
fn attempt_column(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}
