//! The event store's SQL on SQLite. Writers take turns (`BEGIN IMMEDIATE`,
//! the store's writer queue), so positions are taken in commit order and a
//! reader needs no more than `position > last seen`.

use arch_events::event_store::{
    earlier_append, Appended, EventStoreError, ExpectedVersion, NewEvent, Position, ReadAll,
    RecordedEvent, StoredSnapshot, StreamId,
};
use chrono::Utc;
use sqlx::{Pool, QueryBuilder, Sqlite, SqliteConnection};

use super::rows::{found, recorded_event};
use super::sql::EventSql;
use super::{signed, stored_position, unsigned, HeldBy};

const COLUMNS: &str = "event_id, stream_kind, stream_id, version, position AS commit_key, \
     position, name, schema_version, payload, metadata, correlation_id, causation_id, recorded_at";

/// Rows per multi-row `INSERT` (11 values each; SQLite takes at most
/// 32,766 bound values).
const INSERT_CHUNK: usize = 1000;

fn backend(error: sqlx::Error) -> EventStoreError {
    EventStoreError::backend(error)
}

async fn current_version(
    connection: &mut SqliteConnection,
    stream: &StreamId,
) -> Result<u64, sqlx::Error> {
    let version: Option<i64> =
        sqlx::query_scalar("SELECT version FROM bus_streams WHERE kind = ? AND id = ?")
            .bind(stream.kind())
            .bind(stream.id())
            .fetch_optional(&mut *connection)
            .await?;
    Ok(version.map_or(0, unsigned))
}

async fn last_position(
    connection: &mut SqliteConnection,
    stream: &StreamId,
) -> Result<Position, sqlx::Error> {
    let position: Option<i64> = sqlx::query_scalar(
        "SELECT max(position) FROM bus_stream_events WHERE stream_kind = ? AND stream_id = ?",
    )
    .bind(stream.kind())
    .bind(stream.id())
    .fetch_one(&mut *connection)
    .await?;
    let position = position.map_or(0, unsigned);
    Ok(Position::new(position, position))
}

#[arch_events::async_trait]
impl EventSql for Sqlite {
    async fn append(
        connection: &mut SqliteConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Appended, EventStoreError> {
        if !events.is_empty() {
            let mut found_rows = Vec::new();
            for chunk in events.chunks(INSERT_CHUNK) {
                let mut query = QueryBuilder::<Sqlite>::new(
                    "SELECT event_id, stream_kind, stream_id, version, position AS commit_key, \
                     position FROM bus_stream_events WHERE event_id IN (",
                );
                let mut ids = query.separated(", ");
                for event in chunk {
                    ids.push_bind(event.id.to_string());
                }
                query.push(")");
                let rows = query
                    .build()
                    .fetch_all(&mut *connection)
                    .await
                    .map_err(backend)?;
                for row in &rows {
                    found_rows.push(found(row).map_err(backend)?);
                }
            }
            if let Some(appended) = earlier_append(stream, events, &found_rows)? {
                return Ok(appended);
            }
        }
        let current = current_version(connection, stream).await.map_err(backend)?;
        if !expected.admits(current) {
            return Err(EventStoreError::Conflict {
                stream: stream.clone(),
                expected,
                actual: current,
            });
        }
        if events.is_empty() {
            let position = last_position(connection, stream).await.map_err(backend)?;
            return Ok(Appended {
                from_version: current,
                to_version: current,
                position,
                written: false,
            });
        }
        let to_version = current + events.len() as u64;
        sqlx::query(
            "INSERT INTO bus_streams (kind, id, version) VALUES (?, ?, ?) \
             ON CONFLICT (kind, id) DO UPDATE SET version = excluded.version",
        )
        .bind(stream.kind())
        .bind(stream.id())
        .bind(signed(to_version))
        .execute(&mut *connection)
        .await
        .map_err(backend)?;
        let recorded_at = Utc::now();
        let mut last = 0;
        for (chunk_index, chunk) in events.chunks(INSERT_CHUNK).enumerate() {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO bus_stream_events (event_id, stream_kind, stream_id, version, name, \
                 schema_version, payload, metadata, correlation_id, causation_id, recorded_at) ",
            );
            let first_version = current + (chunk_index * INSERT_CHUNK) as u64 + 1;
            insert.push_values(chunk.iter().enumerate(), |mut row, (offset, event)| {
                row.push_bind(event.id.to_string())
                    .push_bind(stream.kind())
                    .push_bind(stream.id())
                    .push_bind(signed(first_version + offset as u64))
                    .push_bind(event.name.as_str())
                    .push_bind(i64::from(event.schema_version))
                    .push_bind(event.payload.as_str())
                    .push_bind((!event.metadata.is_null()).then(|| event.metadata.to_string()))
                    .push_bind(event.correlation_id.to_string())
                    .push_bind(event.causation_id.map(|id| id.to_string()))
                    .push_bind(recorded_at);
            });
            insert.push(" RETURNING position");
            let positions: Vec<i64> = insert
                .build_query_scalar()
                .fetch_all(&mut *connection)
                .await
                .map_err(backend)?;
            last = positions.into_iter().max().unwrap_or(last).max(last);
        }
        let last = unsigned(last);
        Ok(Appended {
            from_version: current,
            to_version,
            position: Position::new(last, last),
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
             WHERE stream_kind = ? AND stream_id = ? AND version >= ? \
             ORDER BY version LIMIT ?"
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
        connection: &mut SqliteConnection,
        read: &ReadAll,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let mut query = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {COLUMNS} FROM bus_stream_events WHERE position > "
        ));
        query.push_bind(signed(read.after.sequence()));
        if !read.types.is_empty() {
            query.push(" AND name IN (");
            let mut names = query.separated(", ");
            for name in &read.types {
                names.push_bind(name.as_str());
            }
            query.push(")");
        }
        query.push(" ORDER BY position LIMIT ");
        query.push_bind(signed(read.limit.max(1) as u64));
        let rows = query.build().fetch_all(&mut *connection).await?;
        rows.iter().map(recorded_event).collect()
    }

    async fn lock_checkpoint(
        connection: &mut SqliteConnection,
        name: &str,
    ) -> Result<Option<Position>, sqlx::Error> {
        // The write transaction (`BEGIN IMMEDIATE`) is the lock: one
        // writer at a time.
        sqlx::query(
            "INSERT INTO bus_projections (name, updated_at) VALUES (?, ?) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(Utc::now())
        .execute(&mut *connection)
        .await?;
        let (commit, sequence): (i64, i64) =
            sqlx::query_as("SELECT commit_key, position FROM bus_projections WHERE name = ?")
                .bind(name)
                .fetch_one(&mut *connection)
                .await?;
        Ok(Some(stored_position((commit, sequence))))
    }

    async fn wait_for_checkpoint(
        connection: &mut SqliteConnection,
        name: &str,
    ) -> Result<Position, sqlx::Error> {
        // The write transaction is the lock, taken when it began.
        let locked = Self::lock_checkpoint(connection, name).await?;
        Ok(locked.unwrap_or(Position::START))
    }

    async fn save_checkpoint(
        connection: &mut SqliteConnection,
        name: &str,
        position: Position,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE bus_projections SET commit_key = ?, position = ?, updated_at = ? WHERE name = ?",
        )
        .bind(signed(position.commit()))
        .bind(signed(position.sequence()))
        .bind(Utc::now())
        .bind(name)
        .execute(&mut *connection)
        .await
        .map(drop)
    }

    async fn checkpoint(pool: &Pool<Self>, name: &str) -> Result<Position, sqlx::Error> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT commit_key, position FROM bus_projections WHERE name = ?")
                .bind(name)
                .fetch_optional(pool)
                .await?;
        Ok(row.map_or(Position::START, stored_position))
    }

    async fn stream_version(pool: &Pool<Self>, stream: &StreamId) -> Result<u64, sqlx::Error> {
        let mut connection = pool.acquire().await?;
        current_version(&mut connection, stream).await
    }

    async fn head(pool: &Pool<Self>) -> Result<Position, sqlx::Error> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT max(position) FROM bus_stream_events")
                .fetch_one(pool)
                .await?;
        let position = position.map_or(0, unsigned);
        Ok(Position::new(position, position))
    }

    async fn load_snapshot(
        pool: &Pool<Self>,
        stream: &StreamId,
    ) -> Result<Option<StoredSnapshot>, sqlx::Error> {
        let row: Option<(i64, i64, String)> = sqlx::query_as(
            "SELECT version, state_version, state FROM bus_snapshots WHERE kind = ? AND id = ?",
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
        connection: &mut SqliteConnection,
        stream: &StreamId,
        snapshot: &StoredSnapshot,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO bus_snapshots (kind, id, version, state_version, state, taken_at) \
             VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (kind, id) DO UPDATE SET version = excluded.version, \
               state_version = excluded.state_version, state = excluded.state, \
               taken_at = excluded.taken_at \
             WHERE excluded.version > bus_snapshots.version",
        )
        .bind(stream.kind())
        .bind(stream.id())
        .bind(signed(snapshot.version))
        .bind(i64::from(snapshot.state_version))
        .bind(snapshot.state.as_str())
        .bind(Utc::now())
        .execute(&mut *connection)
        .await
        .map(drop)
    }

    async fn subject_key(
        connection: &mut SqliteConnection,
        subject: &str,
    ) -> Result<Option<Vec<u8>>, sqlx::Error> {
        sqlx::query_scalar("SELECT key FROM bus_subject_keys WHERE subject = ?")
            .bind(subject)
            .fetch_optional(&mut *connection)
            .await
    }

    async fn insert_subject_key(
        connection: &mut SqliteConnection,
        subject: &str,
        key: &[u8],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO bus_subject_keys (subject, key, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (subject) DO NOTHING",
        )
        .bind(subject)
        .bind(key)
        .bind(Utc::now())
        .execute(&mut *connection)
        .await
        .map(drop)
    }

    async fn delete_subject_key(pool: &Pool<Self>, subject: &str) -> Result<bool, sqlx::Error> {
        let deleted = sqlx::query("DELETE FROM bus_subject_keys WHERE subject = ?")
            .bind(subject)
            .execute(pool)
            .await?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn transaction_ids_are_ours(_: &Pool<Self>) -> Result<bool, sqlx::Error> {
        // Positions are the order; nothing records a transaction id.
        Ok(true)
    }

    async fn held_back_by(_: &Pool<Self>) -> Result<Vec<HeldBy>, sqlx::Error> {
        // One writer at a time, positions in commit order: readers never
        // wait for a transaction.
        Ok(Vec::new())
    }
}
