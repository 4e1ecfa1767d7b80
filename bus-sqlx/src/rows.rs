//! Rows read back the same way from SQLite and PostgreSQL: generic over
//! sqlx's `Row`, so that each database keeps only its SQL.

use arch_events::transport::OutboundMessage;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::backend::{parse_id, EventRow};
use crate::dead_letters::{DeadLetterRecord, StoredDeadLetter};

/// The columns [`outbound_message`] reads.
pub(crate) const OUTBOX_COLUMNS: &str = "id, stream, name, payload, correlation_id, causation_id";

/// Reads an outbox row back into its message.
pub(crate) fn outbound_message<R>(row: &R) -> Result<OutboundMessage, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    let text = |column: &str| -> Result<String, sqlx::Error> { row.try_get(column) };
    Ok(OutboundMessage {
        id: parse_id("id", &text("id")?)?,
        stream: text("stream")?,
        name: text("name")?,
        payload: text("payload")?,
        correlation_id: parse_id("correlation_id", &text("correlation_id")?)?,
        causation_id: row
            .try_get::<Option<String>, _>("causation_id")?
            .and_then(|text| text.parse().ok()),
    })
}

/// The columns [`event_row`] reads.
pub(crate) const EVENT_COLUMNS: &str =
    "id, name, payload, correlation_id, causation_id, recoveries";

/// Reads a `bus_events` row.
pub(crate) fn event_row<R>(row: &R) -> Result<EventRow, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    Ok(EventRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        payload: row.try_get("payload")?,
        correlation_id: row.try_get("correlation_id")?,
        causation_id: row.try_get("causation_id")?,
        recoveries: i64::from(row.try_get::<i32, _>("recoveries")?),
    })
}

/// The columns [`dead_letter`] reads.
pub(crate) const DEAD_LETTER_COLUMNS: &str = "id, message_name, handler, location, error, \
     attempts, failed_at, message_id, correlation_id, causation_id, payload, replayed_at, \
     replay_error";

/// Reads a `bus_dead_letters` row.
pub(crate) fn dead_letter<R>(row: &R) -> Result<StoredDeadLetter, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
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

/// Sorts rows read with `RETURNING` (which gives no order) by position.
pub(crate) fn by_position<T>(mut rows: Vec<(i64, T)>) -> Vec<T> {
    rows.sort_by_key(|(position, _)| *position);
    rows.into_iter().map(|(_, row)| row).collect()
}
