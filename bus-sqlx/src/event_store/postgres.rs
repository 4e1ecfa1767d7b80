//! The event store's SQL on PostgreSQL: a global order that never skips,
//! without a timer.
//!
//! Concurrent transactions take positions from the identity in one order
//! and commit in another. Each event therefore also records its
//! transaction's id (`xid`, a 64-bit `xid8` that never wraps around),
//! events are ordered by `(xid, position)`, and [`read_all`] reads only
//! events of transactions older than the oldest one still running:
//!
//! - every transaction with an id below `pg_snapshot_xmin(pg_current_snapshot())`
//!   has ended, so every event below that line that will ever be visible is
//!   visible now, in the reading statement's own snapshot;
//! - a transaction that starts writing later takes a larger id, so no
//!   event can ever appear at or before a `(xid, position)` a reader has
//!   gone past: a reader that goes on after the last one it saw never
//!   misses one and never sees one twice;
//! - a stream's versions follow this order: an append from a transaction
//!   whose id is smaller than the one that last appended to the stream is
//!   refused ([`EventStoreError::Raced`]; a rerun takes a new, larger id).
//!
//! The price: a transaction held open (any transaction with an id, in any
//! database of the cluster, and prepared ones) holds every reader of all
//! events back until it ends; [`held_back_by`] lists them.
//!
//! [`read_all`]: EventSql::read_all
//! [`held_back_by`]: EventSql::held_back_by

use arch_events::event_store::{
    earlier_append, Appended, EventStoreError, ExpectedVersion, NewEvent, Position, ReadAll,
    RecordedEvent, StoredSnapshot, StreamId,
};
use sqlx::{PgConnection, Pool, Postgres, Row};

use super::rows::{found, position, recorded_event};
use super::sql::EventSql;
use super::{signed, stored_position, unsigned, HeldBy};

const COLUMNS: &str = "event_id::text AS event_id, stream_kind, stream_id, version, \
     xid::text::bigint AS commit_key, position, name, schema_version::bigint AS schema_version, \
     payload::text AS payload, metadata::text AS metadata, correlation_id::text AS correlation_id, \
     causation_id::text AS causation_id, recorded_at";

/// The SQLSTATEs of a transaction that lost a race it can win on a rerun:
/// serialization failure, deadlock, and a unique violation (two runs of
/// one append at once: the rerun finds the other's events and is a retry).
fn raced(stream: &StreamId, error: sqlx::Error) -> EventStoreError {
    if let sqlx::Error::Database(database) = &error {
        if matches!(
            database.code().as_deref(),
            Some("40001" | "40P01" | "23505")
        ) {
            return EventStoreError::Raced {
                stream: stream.clone(),
                reason: database.message().to_owned(),
            };
        }
    }
    EventStoreError::backend(error)
}

/// The outcome of an earlier run of this append, when its ids (`ids`, the
/// events' as text) are stored already: see [`earlier_append`].
async fn retried(
    connection: &mut PgConnection,
    stream: &StreamId,
    events: &[NewEvent],
    ids: &[String],
) -> Result<Option<Appended>, EventStoreError> {
    if events.is_empty() {
        return Ok(None);
    }
    let rows = sqlx::query(
        "SELECT event_id::text AS event_id, stream_kind, stream_id, version, \
         xid::text::bigint AS commit_key, position \
         FROM bus_stream_events WHERE event_id = ANY($1::text[]::uuid[])",
    )
    .bind(ids)
    .fetch_all(&mut *connection)
    .await
    .map_err(|error| raced(stream, error))?;
    let found = rows
        .iter()
        .map(found)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| raced(stream, error))?;
    earlier_append(stream, events, &found)
}

#[arch_events::async_trait]
impl EventSql for Postgres {
    async fn append(
        connection: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Appended, EventStoreError> {
        let fail = |error| raced(stream, error);
        let ids: Vec<String> = events.iter().map(|event| event.id.to_string()).collect();
        if let Some(appended) = retried(connection, stream, events, &ids).await? {
            return Ok(appended);
        }
        let count = events.len() as u64;
        // Moves the stream's version by `count` if the check passes and this
        // transaction is not older than the stream's last appender; the row
        // stays locked to the commit, so appends to one stream take turns.
        let moved: Option<i64> = if events.is_empty() {
            None
        } else {
            match expected {
                ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => sqlx::query_scalar(
                    "INSERT INTO bus_streams (kind, id, version, last_xid) \
                     VALUES ($1, $2, $3, pg_current_xact_id()) \
                     ON CONFLICT (kind, id) DO NOTHING RETURNING 0::bigint",
                )
                .bind(stream.kind())
                .bind(stream.id())
                .bind(signed(count))
                .fetch_optional(&mut *connection)
                .await
                .map_err(fail)?,
                ExpectedVersion::Exact(version) => sqlx::query_scalar(
                    "UPDATE bus_streams SET version = version + $3, last_xid = pg_current_xact_id() \
                     WHERE kind = $1 AND id = $2 AND version = $4 \
                       AND last_xid <= pg_current_xact_id() \
                     RETURNING version - $3",
                )
                .bind(stream.kind())
                .bind(stream.id())
                .bind(signed(count))
                .bind(signed(version))
                .fetch_optional(&mut *connection)
                .await
                .map_err(fail)?,
                ExpectedVersion::Any => sqlx::query_scalar(
                    "INSERT INTO bus_streams AS s (kind, id, version, last_xid) \
                     VALUES ($1, $2, $3, pg_current_xact_id()) \
                     ON CONFLICT (kind, id) DO UPDATE \
                       SET version = s.version + excluded.version, last_xid = excluded.last_xid \
                       WHERE s.last_xid <= excluded.last_xid \
                     RETURNING version - $3",
                )
                .bind(stream.kind())
                .bind(stream.id())
                .bind(signed(count))
                .fetch_optional(&mut *connection)
                .await
                .map_err(fail)?,
            }
        };
        let Some(from) = moved.map(unsigned) else {
            // Another run of this same append may have committed while this
            // one waited for the stream's lock: then this is a retry, not a
            // conflict.
            if let Some(appended) = retried(connection, stream, events, &ids).await? {
                return Ok(appended);
            }
            // Nothing moved: say why, from the stream's row as it is now
            // (an empty append takes no transaction id to ask).
            let row: Option<(i64, bool)> = sqlx::query_as(
                "SELECT version, \
                   last_xid <= coalesce(pg_current_xact_id_if_assigned(), last_xid) \
                 FROM bus_streams WHERE kind = $1 AND id = $2",
            )
            .bind(stream.kind())
            .bind(stream.id())
            .fetch_optional(&mut *connection)
            .await
            .map_err(fail)?;
            let (actual, in_order) = row.map_or((0, true), |(version, in_order)| {
                (unsigned(version), in_order)
            });
            if !expected.admits(actual) {
                return Err(EventStoreError::Conflict {
                    stream: stream.clone(),
                    expected,
                    actual,
                });
            }
            if !in_order && !events.is_empty() {
                return Err(EventStoreError::Raced {
                    stream: stream.clone(),
                    reason: "a transaction that began later appended to it first".into(),
                });
            }
            // Nothing to append, and the check passes.
            let position: Option<(i64, i64)> = sqlx::query_as(
                "SELECT xid::text::bigint, position FROM bus_stream_events \
                 WHERE stream_kind = $1 AND stream_id = $2 ORDER BY version DESC LIMIT 1",
            )
            .bind(stream.kind())
            .bind(stream.id())
            .fetch_optional(&mut *connection)
            .await
            .map_err(fail)?;
            let position = position.map_or(Position::START, stored_position);
            return Ok(Appended {
                from_version: actual,
                to_version: actual,
                position,
                written: false,
            });
        };
        let names: Vec<&str> = events.iter().map(|event| event.name.as_str()).collect();
        let schema_versions: Vec<i32> = events
            .iter()
            .map(|event| i32::try_from(event.schema_version).unwrap_or(i32::MAX))
            .collect();
        let payloads: Vec<&str> = events.iter().map(|event| event.payload.as_str()).collect();
        let metadata: Vec<Option<String>> = events
            .iter()
            .map(|event| (!event.metadata.is_null()).then(|| event.metadata.to_string()))
            .collect();
        let correlations: Vec<String> = events
            .iter()
            .map(|event| event.correlation_id.to_string())
            .collect();
        let causations: Vec<Option<String>> = events
            .iter()
            .map(|event| event.causation_id.map(|id| id.to_string()))
            .collect();
        let rows = sqlx::query(
            "INSERT INTO bus_stream_events (event_id, stream_kind, stream_id, version, name, \
               schema_version, payload, metadata, correlation_id, causation_id) \
             SELECT e.id::uuid, $2, $3, $4 + e.n, e.name, e.schema_version, e.payload::jsonb, \
               e.metadata::jsonb, e.correlation_id::uuid, e.causation_id::uuid \
             FROM UNNEST($1::text[], $5::text[], $6::int4[], $7::text[], $8::text[], $9::text[], \
               $10::text[]) WITH ORDINALITY \
               AS e(id, name, schema_version, payload, metadata, correlation_id, causation_id, n) \
             ORDER BY e.n \
             RETURNING xid::text::bigint AS commit_key, position",
        )
        .bind(&ids)
        .bind(stream.kind())
        .bind(stream.id())
        .bind(signed(from))
        .bind(&names)
        .bind(&schema_versions)
        .bind(&payloads)
        .bind(&metadata)
        .bind(&correlations)
        .bind(&causations)
        .fetch_all(&mut *connection)
        .await
        .map_err(fail)?;
        let last = rows
            .iter()
            .map(position)
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?
            .into_iter()
            .max()
            .unwrap_or(Position::START);
        Ok(Appended {
            from_version: from,
            to_version: from + count,
            position: last,
            written: true,
        })
    }

    async fn read_stream(
        pool: &Pool<Self>,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM bus_stream_events \
             WHERE stream_kind = $1 AND stream_id = $2 AND version >= $3 \
             ORDER BY version LIMIT $4"
        ))
        .bind(stream.kind())
        .bind(stream.id())
        .bind(signed(from))
        .bind(signed(limit as u64))
        .fetch_all(pool)
        .await?;
        rows.iter().map(recorded_event).collect()
    }

    async fn read_all(
        pool: &Pool<Self>,
        read: &ReadAll,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let mut connection = pool.acquire().await?;
        Self::read_all_on(&mut connection, read).await
    }

    async fn read_all_on(
        connection: &mut PgConnection,
        read: &ReadAll,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        // One statement, one snapshot: the line and the rows below it are
        // read in the same one.
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM bus_stream_events \
             WHERE (xid, position) > ($1::bigint::text::xid8, $2) \
               AND xid < pg_snapshot_xmin(pg_current_snapshot()) \
               AND (cardinality($4::text[]) = 0 OR name = ANY($4::text[])) \
             ORDER BY xid, position LIMIT $3"
        ))
        .bind(signed(read.after.commit()))
        .bind(signed(read.after.sequence()))
        .bind(signed(read.limit.max(1) as u64))
        .bind(&read.types)
        .fetch_all(&mut *connection)
        .await?;
        rows.iter().map(recorded_event).collect()
    }

    async fn lock_checkpoint(
        connection: &mut PgConnection,
        name: &str,
    ) -> Result<Option<Position>, sqlx::Error> {
        sqlx::query("INSERT INTO bus_projections (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .execute(&mut *connection)
            .await?;
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT commit_key, position FROM bus_projections WHERE name = $1 \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(name)
        .fetch_optional(&mut *connection)
        .await?;
        Ok(row.map(stored_position))
    }

    async fn wait_for_checkpoint(
        connection: &mut PgConnection,
        name: &str,
    ) -> Result<Position, sqlx::Error> {
        sqlx::query("INSERT INTO bus_projections (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .execute(&mut *connection)
            .await?;
        let row: (i64, i64) = sqlx::query_as(
            "SELECT commit_key, position FROM bus_projections WHERE name = $1 FOR UPDATE",
        )
        .bind(name)
        .fetch_one(&mut *connection)
        .await?;
        Ok(stored_position(row))
    }

    async fn save_checkpoint(
        connection: &mut PgConnection,
        name: &str,
        position: Position,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE bus_projections SET commit_key = $2, position = $3, updated_at = now() \
             WHERE name = $1",
        )
        .bind(name)
        .bind(signed(position.commit()))
        .bind(signed(position.sequence()))
        .execute(&mut *connection)
        .await
        .map(drop)
    }

    async fn checkpoint(pool: &Pool<Self>, name: &str) -> Result<Position, sqlx::Error> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT commit_key, position FROM bus_projections WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?;
        Ok(row.map_or(Position::START, stored_position))
    }

    async fn stream_version(pool: &Pool<Self>, stream: &StreamId) -> Result<u64, sqlx::Error> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM bus_streams WHERE kind = $1 AND id = $2")
                .bind(stream.kind())
                .bind(stream.id())
                .fetch_optional(pool)
                .await?;
        Ok(version.map_or(0, unsigned))
    }

    async fn head(pool: &Pool<Self>) -> Result<Position, sqlx::Error> {
        let last: Option<(i64, i64)> = sqlx::query_as(
            "SELECT xid::text::bigint, position FROM bus_stream_events \
             ORDER BY xid DESC, position DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await?;
        Ok(last.map_or(Position::START, stored_position))
    }

    async fn load_snapshot(
        pool: &Pool<Self>,
        stream: &StreamId,
    ) -> Result<Option<StoredSnapshot>, sqlx::Error> {
        let row: Option<(i64, i32, String)> = sqlx::query_as(
            "SELECT version, state_version, state::text FROM bus_snapshots \
             WHERE kind = $1 AND id = $2",
        )
        .bind(stream.kind())
        .bind(stream.id())
        .fetch_optional(pool)
        .await?;
        Ok(row.map(|(version, state_version, state)| StoredSnapshot {
            version: unsigned(version),
            state_version: u32::try_from(state_version).unwrap_or(u32::MAX),
            state,
        }))
    }

    async fn save_snapshot(
        connection: &mut PgConnection,
        stream: &StreamId,
        snapshot: &StoredSnapshot,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO bus_snapshots AS s (kind, id, version, state_version, state) \
             VALUES ($1, $2, $3, $4, $5::jsonb) \
             ON CONFLICT (kind, id) DO UPDATE SET version = excluded.version, \
               state_version = excluded.state_version, state = excluded.state, taken_at = now() \
             WHERE excluded.version > s.version",
        )
        .bind(stream.kind())
        .bind(stream.id())
        .bind(signed(snapshot.version))
        .bind(i32::try_from(snapshot.state_version).unwrap_or(i32::MAX))
        .bind(snapshot.state.as_str())
        .execute(&mut *connection)
        .await
        .map(drop)
    }

    async fn subject_key(
        connection: &mut PgConnection,
        subject: &str,
    ) -> Result<Option<Vec<u8>>, sqlx::Error> {
        sqlx::query_scalar("SELECT key FROM bus_subject_keys WHERE subject = $1")
            .bind(subject)
            .fetch_optional(&mut *connection)
            .await
    }

    async fn insert_subject_key(
        connection: &mut PgConnection,
        subject: &str,
        key: &[u8],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO bus_subject_keys (subject, key) VALUES ($1, $2) \
             ON CONFLICT (subject) DO NOTHING",
        )
        .bind(subject)
        .bind(key)
        .execute(&mut *connection)
        .await
        .map(drop)
    }

    async fn delete_subject_key(pool: &Pool<Self>, subject: &str) -> Result<bool, sqlx::Error> {
        let deleted = sqlx::query("DELETE FROM bus_subject_keys WHERE subject = $1")
            .bind(subject)
            .execute(pool)
            .await?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn transaction_ids_are_ours(pool: &Pool<Self>) -> Result<bool, sqlx::Error> {
        // The next id this cluster will give out is above every stored one,
        // unless the rows came from another cluster. (The primary key's
        // index answers without a scan.)
        let foreign: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM bus_stream_events \
             WHERE xid >= pg_snapshot_xmax(pg_current_snapshot()))",
        )
        .fetch_one(pool)
        .await?;
        Ok(!foreign)
    }

    async fn held_back_by(pool: &Pool<Self>) -> Result<Vec<HeldBy>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT pid::text AS holder, \
               EXTRACT(EPOCH FROM now() - xact_start)::float8 AS open_for, \
               coalesce(query, '') AS query \
             FROM pg_stat_activity \
             WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() \
             UNION ALL \
             SELECT gid, EXTRACT(EPOCH FROM now() - prepared)::float8, 'PREPARE TRANSACTION' \
             FROM pg_prepared_xacts \
             ORDER BY open_for DESC",
        )
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|row| {
                let seconds: Option<f64> = row.try_get("open_for")?;
                Ok(HeldBy {
                    holder: row.try_get("holder")?,
                    open_for: std::time::Duration::from_secs_f64(seconds.unwrap_or(0.0).max(0.0)),
                    query: row.try_get("query")?,
                })
            })
            .collect()
    }
}
