//! Stored events read back the same way from SQLite and PostgreSQL: each
//! database selects the same columns, as text and 64-bit integers.

use arch_events::event_store::{Position, RecordedEvent, StoredAt, StreamId};
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::unsigned;
use crate::backend::parse_id;

/// Reads a stored event: columns `event_id`, `stream_kind`, `stream_id`,
/// `version`, `commit_key`, `position`, `name`, `schema_version`,
/// `payload`, `metadata`, `correlation_id`, `causation_id`,
/// `recorded_at`.
pub(crate) fn recorded_event<R>(row: &R) -> Result<RecordedEvent, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    let metadata = match row.try_get::<Option<String>, _>("metadata")? {
        Some(text) => serde_json::from_str(&text).map_err(|error| sqlx::Error::ColumnDecode {
            index: "metadata".into(),
            source: Box::new(error),
        })?,
        None => serde_json::Value::Null,
    };
    let causation_id = match row.try_get::<Option<String>, _>("causation_id")? {
        Some(text) => Some(parse_id("causation_id", &text)?),
        None => None,
    };
    let recorded_at: DateTime<Utc> = row.try_get("recorded_at")?;
    let schema_version: i64 = row.try_get("schema_version")?;
    Ok(RecordedEvent {
        id: parse_id("event_id", &row.try_get::<String, _>("event_id")?)?,
        stream: StreamId::new(
            row.try_get::<String, _>("stream_kind")?,
            row.try_get::<String, _>("stream_id")?,
        ),
        version: unsigned(row.try_get("version")?),
        position: position(row)?,
        name: row.try_get("name")?,
        schema_version: u32::try_from(schema_version).unwrap_or(u32::MAX),
        payload: row.try_get("payload")?,
        recorded_at: recorded_at.into(),
        correlation_id: parse_id(
            "correlation_id",
            &row.try_get::<String, _>("correlation_id")?,
        )?,
        causation_id,
        metadata,
    })
}

/// Where an id is stored: columns `event_id`, `stream_kind`, `stream_id`,
/// `version`, `commit_key`, `position`.
pub(crate) fn found<R>(row: &R) -> Result<StoredAt, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    Ok(StoredAt {
        id: parse_id("event_id", &row.try_get::<String, _>("event_id")?)?,
        stream: StreamId::new(
            row.try_get::<String, _>("stream_kind")?,
            row.try_get::<String, _>("stream_id")?,
        ),
        version: unsigned(row.try_get("version")?),
        position: position(row)?,
    })
}

/// The columns `commit_key` and `position`.
pub(crate) fn position<R>(row: &R) -> Result<Position, sqlx::Error>
where
    R: Row,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    Ok(Position::new(
        unsigned(row.try_get("commit_key")?),
        unsigned(row.try_get("position")?),
    ))
}
