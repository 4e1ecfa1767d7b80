//! The store's SQL on PostgreSQL: several processes on several machines
//! sharing one database. Times are the server's (`now()`), so that the
//! processes' clocks do not matter; a relay round holds its rows' locks
//! (`FOR UPDATE SKIP LOCKED`) until it commits; a handler's transaction
//! locks its event's row while it checks and records its delivery; bulk
//! writes are one statement each (`UNNEST`).

use std::sync::Arc;
use std::time::Duration;

use arch_events::transport::{OutboundMessage, Publisher};
use chrono::{DateTime, Utc};
use sqlx::{Executor, PgConnection, Pool, Postgres, Row, Transaction};

use crate::backend::sql::Sql;
use crate::backend::{publish_within, Deleted, EventRow};
use crate::dead_letters::{DeadLetterRecord, StoredDeadLetter};
use crate::error::{MigrateError, RelayError};
use crate::migrate::{pending, Migration};
use crate::rows::{by_position, dead_letter, event_row, outbound_message};

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "durable messaging",
        sql: include_str!("../migrations/postgres/0001_durable_messaging.sql"),
    },
    Migration {
        version: 2,
        description: "message ids as uuid",
        sql: include_str!("../migrations/postgres/0002_message_ids_as_uuid.sql"),
    },
    Migration {
        version: 3,
        description: "event store",
        sql: include_str!("../migrations/postgres/0003_event_store.sql"),
    },
    Migration {
        version: 4,
        description: "sagas and scheduler",
        sql: include_str!("../migrations/postgres/0004_sagas_and_scheduler.sql"),
    },
    Migration {
        version: 5,
        description: "handler retries",
        sql: include_str!("../migrations/postgres/0005_handler_retries.sql"),
    },
];

/// The columns [`outbound_message`] reads, ids as text (they are uuid
/// columns).
const OUTBOX_COLUMNS: &str = "id::text AS id, stream, name, payload, \
     correlation_id::text AS correlation_id, causation_id::text AS causation_id";

/// The columns [`event_row`] reads, ids as text.
const EVENT_COLUMNS: &str = "id::text AS id, name, payload, \
     correlation_id::text AS correlation_id, causation_id::text AS causation_id, recoveries";

/// The columns [`dead_letter`] reads, ids as text.
const DEAD_LETTER_COLUMNS: &str = "id, message_name, handler, location, error, attempts, \
     failed_at, message_id::text AS message_id, correlation_id::text AS correlation_id, \
     causation_id::text AS causation_id, payload, replayed_at, replay_error";

/// The advisory lock arch-events-sqlx's migrations run under (sqlx's own
/// migrations take another).
const MIGRATION_LOCK: i64 = 0x6275_735f_7371_6c78; // "bus_sqlx" in ASCII

/// The nodes alive now: their heartbeat is younger than the timeout each
/// declared.
const LIVE_NODES: &str =
    "SELECT id FROM bus_nodes WHERE heartbeat_at + timeout_ms * interval '1 millisecond' > now()";

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

#[arch_events::async_trait]
impl Sql for Postgres {
    const MIGRATIONS: &'static [Migration] = MIGRATIONS;
    const ONE_WRITER: bool = false;
    const LABEL: &'static str = "PostgreSQL";

    async fn migrate(pool: &Pool<Self>) -> Result<(), MigrateError> {
        // Under an advisory lock held to the commit: processes starting
        // together apply each migration once, the others wait and find it
        // applied.
        let mut tx = crate::store::begin_on(pool, "BEGIN").await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bus_sqlx_migrations (
                version     BIGINT PRIMARY KEY,
                description TEXT NOT NULL,
                checksum    TEXT NOT NULL,
                applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
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
                "INSERT INTO bus_sqlx_migrations (version, description, checksum) \
                 VALUES ($1, $2, $3)",
            )
            .bind(migration.version)
            .bind(migration.description)
            .bind(migration.checksum())
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
        crate::store::begin_on(pool, "BEGIN").await
    }

    async fn register_node(
        pool: &Pool<Self>,
        node: &str,
        timeout: Duration,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO bus_nodes (id, timeout_ms) VALUES ($1::uuid, $2) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(node)
        .bind(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX))
        .execute(pool)
        .await
        .map(drop)
    }

    async fn heartbeat(pool: &Pool<Self>, node: &str) -> Result<bool, sqlx::Error> {
        let updated = sqlx::query("UPDATE bus_nodes SET heartbeat_at = now() WHERE id = $1::uuid")
            .bind(node)
            .execute(pool)
            .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn remove_node(pool: &Pool<Self>, node: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM bus_nodes WHERE id = $1::uuid")
            .bind(node)
            .execute(pool)
            .await
            .map(drop)
    }

    async fn purge_nodes(pool: &Pool<Self>, stale_for: Duration) -> Result<u64, sqlx::Error> {
        let deleted = sqlx::query(
            "DELETE FROM bus_nodes WHERE heartbeat_at < now() - make_interval(secs => $1)",
        )
        .bind(seconds(stale_for))
        .execute(pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    async fn record_delivery(
        connection: &mut PgConnection,
        event: &str,
        handler: &str,
        settles: bool,
    ) -> Result<bool, sqlx::Error> {
        // The event's row is locked to the commit: the deliveries of one
        // event record themselves one after the other, each seeing what the
        // one before committed (a locked row read after waiting is read
        // again; a unique key sees committed and running inserts alike).
        let recorded: i64 = sqlx::query_scalar(
            "WITH pending AS (SELECT id FROM bus_events WHERE id = $1::uuid FOR UPDATE), \
             recorded AS ( \
                 INSERT INTO bus_handled (event_id, handler) SELECT id, $2 FROM pending \
                 ON CONFLICT DO NOTHING RETURNING 1) \
             SELECT count(*) FROM recorded",
        )
        .bind(event)
        .bind(handler)
        .fetch_one(&mut *connection)
        .await?;
        if recorded != 1 {
            return Ok(false);
        }
        if settles {
            // Its records go with it (ON DELETE CASCADE).
            sqlx::query("DELETE FROM bus_events WHERE id = $1::uuid")
                .bind(event)
                .execute(&mut *connection)
                .await?;
        }
        Ok(true)
    }

    async fn record_replay(
        connection: &mut PgConnection,
        letter: i64,
    ) -> Result<bool, sqlx::Error> {
        let marked = sqlx::query(
            "UPDATE bus_dead_letters SET replayed_at = now(), replay_error = NULL, \
             claimed_until = NULL WHERE id = $1 AND replayed_at IS NULL",
        )
        .bind(letter)
        .execute(&mut *connection)
        .await?;
        Ok(marked.rows_affected() == 1)
    }

    async fn record_inbox(connection: &mut PgConnection, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO bus_inbox (message_id) VALUES ($1::uuid)")
            .bind(id)
            .execute(&mut *connection)
            .await
            .map(drop)
    }

    async fn insert_staged(
        connection: &mut PgConnection,
        events: &[EventRow],
        owner: &str,
        messages: &[OutboundMessage],
    ) -> Result<(), sqlx::Error> {
        let event_column = |f: fn(&EventRow) -> String| events.iter().map(f).collect::<Vec<_>>();
        let message_column =
            |f: fn(&OutboundMessage) -> String| messages.iter().map(f).collect::<Vec<_>>();
        let event_causes: Vec<Option<String>> =
            events.iter().map(|e| e.causation_id.clone()).collect();
        let message_causes: Vec<Option<String>> = messages
            .iter()
            .map(|m| m.causation_id.map(|id| id.to_string()))
            .collect();
        // One statement, one round trip: the events, then their outbox rows.
        sqlx::query(
            "WITH events AS ( \
                 INSERT INTO bus_events (id, name, payload, correlation_id, causation_id, owner) \
                 SELECT id, name, payload, correlation_id, causation_id, $6::uuid \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::uuid[]) \
                     WITH ORDINALITY AS e (id, name, payload, correlation_id, causation_id, n) \
                 ORDER BY n) \
             INSERT INTO bus_outbox (id, stream, name, payload, correlation_id, causation_id) \
             SELECT id, stream, name, payload, correlation_id, causation_id \
             FROM UNNEST($7::uuid[], $8::text[], $9::text[], $10::text[], $11::uuid[], \
                         $12::uuid[]) \
                 WITH ORDINALITY AS m (id, stream, name, payload, correlation_id, causation_id, n) \
             ORDER BY n",
        )
        .bind(event_column(|e| e.id.clone()))
        .bind(event_column(|e| e.name.clone()))
        .bind(event_column(|e| e.payload.clone()))
        .bind(event_column(|e| e.correlation_id.clone()))
        .bind(event_causes)
        .bind(owner)
        .bind(message_column(|m| m.id.to_string()))
        .bind(message_column(|m| m.stream.clone()))
        .bind(message_column(|m| m.name.clone()))
        .bind(message_column(|m| m.payload.clone()))
        .bind(message_column(|m| m.correlation_id.to_string()))
        .bind(message_causes)
        .execute(&mut *connection)
        .await
        .map(drop)
    }

    async fn handled(pool: &Pool<Self>, event: &str, handler: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "WITH pending AS (SELECT id FROM bus_events WHERE id = $1::uuid FOR UPDATE) \
             INSERT INTO bus_handled (event_id, handler) SELECT id, $2 FROM pending \
             ON CONFLICT DO NOTHING",
        )
        .bind(event)
        .bind(handler)
        .execute(pool)
        .await
        .map(drop)
    }

    async fn delivered(pool: &Pool<Self>, event: &str) -> Result<(), sqlx::Error> {
        // Its records go with it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM bus_events WHERE id = $1::uuid")
            .bind(event)
            .execute(pool)
            .await
            .map(drop)
    }

    async fn take_over(
        pool: &Pool<Self>,
        node: &str,
        max: u32,
    ) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "UPDATE bus_events SET owner = $1::uuid \
             WHERE position IN ( \
                 SELECT position FROM bus_events \
                 WHERE owner <> $1::uuid AND owner NOT IN ({LIVE_NODES}) \
                 ORDER BY position LIMIT $2 \
                 FOR UPDATE SKIP LOCKED) \
             RETURNING position, id::text AS id"
        ))
        .bind(node)
        .bind(i64::from(max))
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
            "UPDATE bus_events SET owner = $1::uuid, recoveries = recoveries + 1 \
             WHERE id = $2::uuid AND (owner = $1::uuid OR owner NOT IN ({LIVE_NODES})) \
             RETURNING {EVENT_COLUMNS}"
        ))
        .bind(node)
        .bind(event)
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
        sqlx::query_scalar(
            "SELECT id::text FROM bus_events WHERE owner = $1::uuid \
             AND recorded_at < now() - make_interval(secs => $2) \
             ORDER BY position LIMIT $3",
        )
        .bind(node)
        .bind(seconds(older_than))
        .bind(i64::from(max))
        .fetch_all(pool)
        .await
    }

    async fn give_up(
        pool: &Pool<Self>,
        letters: &[DeadLetterRecord],
        event: &str,
    ) -> Result<(), sqlx::Error> {
        let mut tx = crate::store::begin_on(pool, "BEGIN").await?;
        for letter in letters {
            insert_dead_letter(&mut tx, letter).await?;
        }
        // Its records go with it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM bus_events WHERE id = $1::uuid")
            .bind(event)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    async fn completed(pool: &Pool<Self>, event: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT handler FROM bus_handled WHERE event_id = $1::uuid ORDER BY handler",
        )
        .bind(event)
        .fetch_all(pool)
        .await
    }

    async fn pending_events(
        pool: &Pool<Self>,
    ) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
        sqlx::query_as("SELECT count(*), min(recorded_at) FROM bus_events")
            .fetch_one(pool)
            .await
    }

    async fn relay_round(
        pool: &Pool<Self>,
        _writer: &Arc<tokio::sync::Mutex<()>>,
        _relay: &str,
        max: u32,
        _lease: Duration,
        publisher: &dyn Publisher,
        publish_timeout: Duration,
    ) -> Result<usize, RelayError> {
        // The round's rows stay locked to its commit: another relay skips
        // them instead of waiting, and a relay that dies releases them with
        // its connection.
        let mut tx = crate::store::begin_on(pool, "BEGIN").await?;
        let rows = sqlx::query(&format!(
            "SELECT position, {OUTBOX_COLUMNS} FROM bus_outbox WHERE sent_at IS NULL \
             ORDER BY position LIMIT $1 FOR UPDATE SKIP LOCKED"
        ))
        .bind(i64::from(max))
        .fetch_all(&mut *tx)
        .await?;
        let mut positions = Vec::with_capacity(rows.len());
        let mut messages = Vec::with_capacity(rows.len());
        for row in &rows {
            positions.push(row.try_get::<i64, _>("position")?);
            messages.push(outbound_message(row)?);
        }
        if messages.is_empty() {
            return Ok(0);
        }
        // The rows stay locked while the broker is asked: not for longer
        // than the publish timeout.
        let (published, failure) = publish_within(publisher, &messages, publish_timeout).await;
        if published > 0 {
            sqlx::query("UPDATE bus_outbox SET sent_at = now() WHERE position = ANY($1)")
                .bind(&positions[..published])
                .execute(&mut *tx)
                .await?;
        }
        // What the broker has is marked sent even when the rest failed; if
        // this commit fails, those rows go out again next round
        // (at-least-once: the consumers' inboxes drop the copies).
        tx.commit().await?;
        match failure {
            None => Ok(published),
            Some(error) => Err(error.into()),
        }
    }

    async fn unsent(pool: &Pool<Self>, max: u32) -> Result<Vec<OutboundMessage>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM bus_outbox WHERE sent_at IS NULL \
             ORDER BY position LIMIT $1"
        ))
        .bind(i64::from(max))
        .fetch_all(pool)
        .await?;
        rows.iter().map(outbound_message).collect()
    }

    async fn purge_sent(pool: &Pool<Self>, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        let deleted = sqlx::query("DELETE FROM bus_outbox WHERE sent_at < $1")
            .bind(before)
            .execute(pool)
            .await?;
        Ok(deleted.rows_affected())
    }

    async fn outbox_lag(pool: &Pool<Self>) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
        sqlx::query_as("SELECT count(*), min(created_at) FROM bus_outbox WHERE sent_at IS NULL")
            .fetch_one(pool)
            .await
    }

    async fn inbox_has(pool: &Pool<Self>, id: &str) -> Result<bool, sqlx::Error> {
        let row = sqlx::query("SELECT 1 FROM bus_inbox WHERE message_id = $1::uuid")
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
            "SELECT {DEAD_LETTER_COLUMNS} FROM bus_dead_letters WHERE id = $1"
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
            "UPDATE bus_dead_letters SET claimed_until = now() + make_interval(secs => $2) \
             WHERE id = $1 AND replayed_at IS NULL \
             AND (claimed_until IS NULL OR claimed_until < now())",
        )
        .bind(id)
        .bind(seconds(lease))
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
                "UPDATE bus_dead_letters SET claimed_until = NULL, replayed_at = $1, \
                 replay_error = NULL WHERE id = $2",
            )
            .bind(at),
            Err(error) => sqlx::query(
                "UPDATE bus_dead_letters SET claimed_until = NULL, replay_error = $1 \
                 WHERE id = $2",
            )
            .bind(error),
        };
        query.bind(id).execute(pool).await.map(drop)
    }

    async fn delete_dead_letter(pool: &Pool<Self>, id: i64) -> Result<Deleted, sqlx::Error> {
        let deleted = sqlx::query(
            "DELETE FROM bus_dead_letters WHERE id = $1 \
             AND (claimed_until IS NULL OR claimed_until < now())",
        )
        .bind(id)
        .execute(pool)
        .await?;
        if deleted.rows_affected() == 1 {
            return Ok(Deleted::Yes);
        }
        let exists = sqlx::query("SELECT 1 FROM bus_dead_letters WHERE id = $1")
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
    connection: &mut PgConnection,
    letter: &DeadLetterRecord,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO bus_dead_letters (message_name, handler, location, error, attempts, \
         failed_at, message_id, correlation_id, causation_id, payload) \
         VALUES ($1, $2, $3, $4, $5, $6, $7::uuid, $8::uuid, $9::uuid, $10) RETURNING id",
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
