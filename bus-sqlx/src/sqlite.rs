//! The store's SQL on SQLite: one file, one writer at a time. A process's
//! writers take turns on an async mutex (the store's), every write
//! transaction is `BEGIN IMMEDIATE`, leases and heartbeats are Unix
//! milliseconds, and the other timestamps chrono's text.

use std::sync::Arc;
use std::time::Duration;

use arch_events::transport::{OutboundMessage, Publisher};
use chrono::{DateTime, Utc};
use sqlx::{Executor, Pool, QueryBuilder, Row, Sqlite, SqliteConnection, Transaction};

use crate::backend::sql::Sql;
use crate::backend::{publish_within, Deleted, EventRow};
use crate::dead_letters::{DeadLetterRecord, StoredDeadLetter};
use crate::error::{MigrateError, RelayError};
use crate::migrate::{pending, Migration};
use crate::rows::{
    by_position, dead_letter, event_row, outbound_message, DEAD_LETTER_COLUMNS, EVENT_COLUMNS,
    OUTBOX_COLUMNS,
};

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "durable messaging",
        sql: include_str!("../migrations/sqlite/0001_durable_messaging.sql"),
    },
    Migration {
        version: 2,
        description: "event store",
        sql: include_str!("../migrations/sqlite/0002_event_store.sql"),
    },
    Migration {
        version: 3,
        description: "sagas and scheduler",
        sql: include_str!("../migrations/sqlite/0003_sagas_and_scheduler.sql"),
    },
    Migration {
        version: 4,
        description: "handler retries",
        sql: include_str!("../migrations/sqlite/0004_handler_retries.sql"),
    },
];

/// The nodes alive at the bound Unix time (milliseconds): their heartbeat
/// is younger than the timeout each declared.
const LIVE_NODES: &str = "SELECT id FROM bus_nodes WHERE heartbeat_at + timeout_ms > ?";

/// Rows per multi-row `INSERT` (SQLite takes at most 32,766 bound values).
const INSERT_CHUNK: usize = 500;

/// A duration in milliseconds, for SQL.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn after(duration: Duration) -> i64 {
    now_ms().saturating_add(millis(duration))
}

#[arch_events::async_trait]
impl Sql for Sqlite {
    const MIGRATIONS: &'static [Migration] = MIGRATIONS;
    const ONE_WRITER: bool = true;
    const LABEL: &'static str = "SQLite";

    async fn migrate(pool: &Pool<Self>) -> Result<(), MigrateError> {
        // One IMMEDIATE transaction: processes starting together apply each
        // migration once, the others wait and find it applied.
        let mut tx = crate::store::begin_on(pool, "BEGIN IMMEDIATE").await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bus_sqlx_migrations (
                version     INTEGER PRIMARY KEY NOT NULL,
                description TEXT NOT NULL,
                checksum    TEXT NOT NULL,
                applied_at  TEXT NOT NULL
            )",
        )
        .execute(&mut *tx)
        .await?;
        let applied: Vec<(i64, String)> =
            sqlx::query_as("SELECT version, checksum FROM bus_sqlx_migrations ORDER BY version")
                .fetch_all(&mut *tx)
                .await?;
        for migration in pending(MIGRATIONS, &applied)? {
            tx.execute(sqlx::raw_sql(migration.sql)).await?;
            sqlx::query(
                "INSERT INTO bus_sqlx_migrations (version, description, checksum, applied_at) \
                 VALUES (?, ?, ?, ?)",
            )
            .bind(migration.version)
            .bind(migration.description)
            .bind(migration.checksum())
            .bind(Utc::now())
            .execute(&mut *tx)
            .await?;
            tracing::info!(
                version = migration.version,
                "arch-events-sqlx: migration applied"
            );
        }
        tx.commit().await?;
        Ok(())
    }

    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        crate::store::begin_on(pool, "BEGIN IMMEDIATE").await
    }

    async fn register_node(
        pool: &Pool<Self>,
        node: &str,
        timeout: Duration,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO bus_nodes (id, started_at, heartbeat_at, timeout_ms) VALUES (?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(node)
        .bind(Utc::now())
        .bind(now_ms())
        .bind(millis(timeout))
        .execute(pool)
        .await
        .map(drop)
    }

    async fn heartbeat(pool: &Pool<Self>, node: &str) -> Result<bool, sqlx::Error> {
        let updated = sqlx::query("UPDATE bus_nodes SET heartbeat_at = ? WHERE id = ?")
            .bind(now_ms())
            .bind(node)
            .execute(pool)
            .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn remove_node(pool: &Pool<Self>, node: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM bus_nodes WHERE id = ?")
            .bind(node)
            .execute(pool)
            .await
            .map(drop)
    }

    async fn purge_nodes(pool: &Pool<Self>, stale_for: Duration) -> Result<u64, sqlx::Error> {
        let deleted = sqlx::query("DELETE FROM bus_nodes WHERE heartbeat_at < ?")
            .bind(now_ms() - millis(stale_for))
            .execute(pool)
            .await?;
        Ok(deleted.rows_affected())
    }

    async fn record_delivery(
        connection: &mut SqliteConnection,
        event: &str,
        handler: &str,
        settles: bool,
    ) -> Result<bool, sqlx::Error> {
        // A write transaction of SQLite holds the database's one write lock:
        // two of these never interleave.
        if settles {
            let settled = sqlx::query(
                "DELETE FROM bus_events WHERE id = ? AND NOT EXISTS \
                 (SELECT 1 FROM bus_handled WHERE event_id = ? AND handler = ?)",
            )
            .bind(event)
            .bind(event)
            .bind(handler)
            .execute(&mut *connection)
            .await?;
            if settled.rows_affected() == 0 {
                return Ok(false);
            }
            sqlx::query("DELETE FROM bus_handled WHERE event_id = ?")
                .bind(event)
                .execute(&mut *connection)
                .await?;
            return Ok(true);
        }
        let recorded = sqlx::query(
            "INSERT INTO bus_handled (event_id, handler, handled_at) \
             SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM bus_events WHERE id = ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(event)
        .bind(handler)
        .bind(Utc::now())
        .bind(event)
        .execute(&mut *connection)
        .await?;
        Ok(recorded.rows_affected() == 1)
    }

    async fn record_replay(
        connection: &mut SqliteConnection,
        letter: i64,
    ) -> Result<bool, sqlx::Error> {
        let marked = sqlx::query(
            "UPDATE bus_dead_letters SET replayed_at = ?, replay_error = NULL, \
             claimed_until = NULL WHERE id = ? AND replayed_at IS NULL",
        )
        .bind(Utc::now())
        .bind(letter)
        .execute(&mut *connection)
        .await?;
        Ok(marked.rows_affected() == 1)
    }

    async fn record_inbox(connection: &mut SqliteConnection, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO bus_inbox (message_id, handled_at) VALUES (?, ?)")
            .bind(id)
            .bind(Utc::now())
            .execute(&mut *connection)
            .await
            .map(drop)
    }

    async fn insert_staged(
        connection: &mut SqliteConnection,
        events: &[EventRow],
        owner: &str,
        messages: &[OutboundMessage],
    ) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        for chunk in events.chunks(INSERT_CHUNK) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO bus_events \
                 (id, name, payload, correlation_id, causation_id, recorded_at, owner) ",
            );
            insert.push_values(chunk, |mut row, event| {
                row.push_bind(&event.id)
                    .push_bind(&event.name)
                    .push_bind(&event.payload)
                    .push_bind(&event.correlation_id)
                    .push_bind(&event.causation_id)
                    .push_bind(now)
                    .push_bind(owner);
            });
            insert.build().execute(&mut *connection).await?;
        }
        for chunk in messages.chunks(INSERT_CHUNK) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO bus_outbox \
                 (id, stream, name, payload, correlation_id, causation_id, created_at) ",
            );
            insert.push_values(chunk, |mut row, message| {
                row.push_bind(message.id.to_string())
                    .push_bind(&message.stream)
                    .push_bind(&message.name)
                    .push_bind(&message.payload)
                    .push_bind(message.correlation_id.to_string())
                    .push_bind(message.causation_id.map(|id| id.to_string()))
                    .push_bind(now);
            });
            insert.build().execute(&mut *connection).await?;
        }
        Ok(())
    }

    async fn handled(pool: &Pool<Self>, event: &str, handler: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO bus_handled (event_id, handler, handled_at) \
             SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM bus_events WHERE id = ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(event)
        .bind(handler)
        .bind(Utc::now())
        .bind(event)
        .execute(pool)
        .await
        .map(drop)
    }

    async fn delivered(pool: &Pool<Self>, event: &str) -> Result<(), sqlx::Error> {
        let mut tx = crate::store::begin_on(pool, "BEGIN IMMEDIATE").await?;
        for statement in [
            "DELETE FROM bus_handled WHERE event_id = ?",
            "DELETE FROM bus_events WHERE id = ?",
        ] {
            sqlx::query(statement).bind(event).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    async fn take_over(
        pool: &Pool<Self>,
        node: &str,
        max: u32,
    ) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "UPDATE bus_events SET owner = ? \
             WHERE position IN ( \
                 SELECT position FROM bus_events \
                 WHERE owner <> ? AND owner NOT IN ({LIVE_NODES}) \
                 ORDER BY position LIMIT ?) \
             RETURNING position, id"
        ))
        .bind(node)
        .bind(node)
        .bind(now_ms())
        .bind(max)
        .fetch_all(pool)
        .await?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            ids.push((row.try_get::<i64, _>("position")?, row.try_get("id")?));
        }
        Ok(by_position(ids))
    }

    async fn reload(
        pool: &Pool<Self>,
        event: &str,
        node: &str,
    ) -> Result<Option<EventRow>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "UPDATE bus_events SET owner = ?, recoveries = recoveries + 1 WHERE id = ? \
             AND (owner = ? OR owner NOT IN ({LIVE_NODES})) \
             RETURNING {EVENT_COLUMNS}"
        ))
        .bind(node)
        .bind(event)
        .bind(node)
        .bind(now_ms())
        .fetch_optional(pool)
        .await?;
        row.as_ref().map(event_row).transpose()
    }

    async fn owned_before(
        pool: &Pool<Self>,
        node: &str,
        older_than: Duration,
        max: u32,
    ) -> Result<Vec<String>, sqlx::Error> {
        let before = Utc::now() - chrono::Duration::from_std(older_than).unwrap_or_default();
        sqlx::query_scalar(
            "SELECT id FROM bus_events WHERE owner = ? AND recorded_at < ? \
             ORDER BY position LIMIT ?",
        )
        .bind(node)
        .bind(before)
        .bind(max)
        .fetch_all(pool)
        .await
    }

    async fn give_up(
        pool: &Pool<Self>,
        letters: &[DeadLetterRecord],
        event: &str,
    ) -> Result<(), sqlx::Error> {
        let mut tx = crate::store::begin_on(pool, "BEGIN IMMEDIATE").await?;
        for letter in letters {
            insert_dead_letter(&mut tx, letter).await?;
        }
        for statement in [
            "DELETE FROM bus_handled WHERE event_id = ?",
            "DELETE FROM bus_events WHERE id = ?",
        ] {
            sqlx::query(statement).bind(event).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    async fn completed(pool: &Pool<Self>, event: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT handler FROM bus_handled WHERE event_id = ? ORDER BY handler")
            .bind(event)
            .fetch_all(pool)
            .await
    }

    async fn pending_events(
        pool: &Pool<Self>,
    ) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM bus_events")
            .fetch_one(pool)
            .await?;
        let oldest =
            sqlx::query_scalar("SELECT recorded_at FROM bus_events ORDER BY position LIMIT 1")
                .fetch_optional(pool)
                .await?;
        Ok((count, oldest))
    }

    async fn relay_round(
        pool: &Pool<Self>,
        writer: &Arc<tokio::sync::Mutex<()>>,
        relay: &str,
        max: u32,
        lease: Duration,
        publisher: &dyn Publisher,
        publish_timeout: Duration,
    ) -> Result<usize, RelayError> {
        // Claim the oldest rows that no live claim holds, in one statement:
        // two relays never claim one row.
        let claimed = {
            let _turn = writer.lock().await;
            sqlx::query(&format!(
                "UPDATE bus_outbox SET claimed_by = ?, claimed_until = ? WHERE position IN ( \
                     SELECT position FROM bus_outbox WHERE sent_at IS NULL \
                     AND (claimed_until IS NULL OR claimed_until < ?) \
                     ORDER BY position LIMIT ?) \
                 RETURNING position, {OUTBOX_COLUMNS}"
            ))
            .bind(relay)
            .bind(after(lease))
            .bind(now_ms())
            .bind(max)
            .fetch_all(pool)
            .await?
        };
        let mut rows = Vec::with_capacity(claimed.len());
        for row in &claimed {
            rows.push((row.try_get::<i64, _>("position")?, outbound_message(row)?));
        }
        rows.sort_by_key(|(position, _)| *position);
        let (positions, messages): (Vec<i64>, Vec<OutboundMessage>) = rows.into_iter().unzip();
        if messages.is_empty() {
            return Ok(0);
        }
        let (published, failure) = publish_within(publisher, &messages, publish_timeout).await;
        let _turn = writer.lock().await;
        if published > 0 {
            let mut mark = QueryBuilder::<Sqlite>::new("UPDATE bus_outbox SET sent_at = ");
            mark.push_bind(Utc::now())
                .push(", claimed_by = NULL, claimed_until = NULL WHERE claimed_by = ")
                .push_bind(relay)
                .push(" AND position IN (");
            let mut list = mark.separated(", ");
            for position in &positions[..published] {
                list.push_bind(*position);
            }
            mark.push(")");
            mark.build().execute(pool).await?;
        }
        match failure {
            None => Ok(published),
            Some(error) => {
                // The rest waits for the next round, not for the lease.
                sqlx::query(
                    "UPDATE bus_outbox SET claimed_by = NULL, claimed_until = NULL \
                     WHERE claimed_by = ? AND sent_at IS NULL",
                )
                .bind(relay)
                .execute(pool)
                .await?;
                Err(error.into())
            }
        }
    }

    async fn unsent(pool: &Pool<Self>, max: u32) -> Result<Vec<OutboundMessage>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM bus_outbox WHERE sent_at IS NULL \
             ORDER BY position LIMIT ?"
        ))
        .bind(max)
        .fetch_all(pool)
        .await?;
        rows.iter().map(outbound_message).collect()
    }

    async fn purge_sent(pool: &Pool<Self>, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        let deleted =
            sqlx::query("DELETE FROM bus_outbox WHERE sent_at IS NOT NULL AND sent_at < ?")
                .bind(before)
                .execute(pool)
                .await?;
        Ok(deleted.rows_affected())
    }

    async fn outbox_lag(pool: &Pool<Self>) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM bus_outbox WHERE sent_at IS NULL")
                .fetch_one(pool)
                .await?;
        let oldest = sqlx::query_scalar(
            "SELECT created_at FROM bus_outbox WHERE sent_at IS NULL ORDER BY position LIMIT 1",
        )
        .fetch_optional(pool)
        .await?;
        Ok((count, oldest))
    }

    async fn inbox_has(pool: &Pool<Self>, id: &str) -> Result<bool, sqlx::Error> {
        let row = sqlx::query("SELECT 1 FROM bus_inbox WHERE message_id = ?")
            .bind(id)
            .fetch_optional(pool)
            .await?;
        Ok(row.is_some())
    }

    async fn add_dead_letter(
        pool: &Pool<Self>,
        letter: &DeadLetterRecord,
    ) -> Result<i64, sqlx::Error> {
        let mut connection = pool.acquire().await?;
        insert_dead_letter(&mut connection, letter).await
    }

    async fn list_dead_letters(
        pool: &Pool<Self>,
        include_replayed: bool,
    ) -> Result<Vec<StoredDeadLetter>, sqlx::Error> {
        let filter = if include_replayed {
            ""
        } else {
            "WHERE replayed_at IS NULL"
        };
        let rows = sqlx::query(&format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM bus_dead_letters {filter} ORDER BY id"
        ))
        .fetch_all(pool)
        .await?;
        rows.iter().map(dead_letter).collect()
    }

    async fn get_dead_letter(
        pool: &Pool<Self>,
        id: i64,
    ) -> Result<Option<StoredDeadLetter>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM bus_dead_letters WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await?;
        row.as_ref().map(dead_letter).transpose()
    }

    async fn claim_dead_letter(
        pool: &Pool<Self>,
        id: i64,
        lease: Duration,
    ) -> Result<bool, sqlx::Error> {
        let claimed = sqlx::query(
            "UPDATE bus_dead_letters SET claimed_until = ? \
             WHERE id = ? AND replayed_at IS NULL \
             AND (claimed_until IS NULL OR claimed_until < ?)",
        )
        .bind(after(lease))
        .bind(id)
        .bind(now_ms())
        .execute(pool)
        .await?;
        Ok(claimed.rows_affected() == 1)
    }

    async fn settle_dead_letter(
        pool: &Pool<Self>,
        id: i64,
        outcome: Result<DateTime<Utc>, String>,
    ) -> Result<(), sqlx::Error> {
        let query = match outcome {
            Ok(at) => sqlx::query(
                "UPDATE bus_dead_letters SET claimed_until = NULL, replayed_at = ?, \
                 replay_error = NULL WHERE id = ?",
            )
            .bind(at),
            Err(error) => sqlx::query(
                "UPDATE bus_dead_letters SET claimed_until = NULL, replay_error = ? WHERE id = ?",
            )
            .bind(error),
        };
        query.bind(id).execute(pool).await.map(drop)
    }

    async fn delete_dead_letter(pool: &Pool<Self>, id: i64) -> Result<Deleted, sqlx::Error> {
        let deleted = sqlx::query(
            "DELETE FROM bus_dead_letters WHERE id = ? \
             AND (claimed_until IS NULL OR claimed_until < ?)",
        )
        .bind(id)
        .bind(now_ms())
        .execute(pool)
        .await?;
        if deleted.rows_affected() == 1 {
            return Ok(Deleted::Yes);
        }
        let exists = sqlx::query("SELECT 1 FROM bus_dead_letters WHERE id = ?")
            .bind(id)
            .fetch_optional(pool)
            .await?;
        Ok(if exists.is_some() {
            Deleted::Claimed
        } else {
            Deleted::NotFound
        })
    }
}

/// Keeps one dead letter; returns its id.
async fn insert_dead_letter(
    connection: &mut SqliteConnection,
    letter: &DeadLetterRecord,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO bus_dead_letters (message_name, handler, location, error, attempts, \
         failed_at, message_id, correlation_id, causation_id, payload) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
    .fetch_one(&mut *connection)
    .await
}
