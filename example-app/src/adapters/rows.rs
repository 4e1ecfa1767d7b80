//! Rows read back the same way from SQLite and PostgreSQL: generic over
//! sqlx's `Row`, so each database's adapter keeps only its SQL.

use bus_core::transport::OutboundMessage;
use bus_core::MessageId;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::tracked::{to_u32, StoredBatch, StoredLine};
use crate::domain::model::OrderLine;
use crate::service_layer::dead_letters::{DeadLetterRecord, StoredDeadLetter};
use crate::service_layer::unit_of_work::UowError;
use crate::views::AllocationRow;

/// Reads an outbox row (`id, stream, name, payload, correlation_id,
/// causation_id`, ids as text) back into its message.
pub(crate) fn outbound_message<R>(row: &R) -> Result<OutboundMessage, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    let id = |column: &str| -> Result<MessageId, sqlx::Error> {
        let text: String = row.try_get(column)?;
        text.parse().map_err(|e| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(e),
        })
    };
    Ok(OutboundMessage {
        id: id("id")?,
        stream: row.try_get("stream")?,
        name: row.try_get("name")?,
        payload: row.try_get("payload")?,
        correlation_id: id("correlation_id")?,
        causation_id: row
            .try_get::<Option<String>, _>("causation_id")?
            .and_then(|text| text.parse().ok()),
    })
}

/// Reads a `dead_letters` row (every column but `replaying`).
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

/// The columns [`dead_letter`] reads.
pub(crate) const DEAD_LETTER_COLUMNS: &str = "id, message_name, handler, location, error, \
     attempts, failed_at, message_id, correlation_id, causation_id, payload, replayed_at, \
     replay_error";

/// Reads an `allocations_view` row (`sku, batchref`).
pub(crate) fn allocation_row<R>(row: &R) -> Result<AllocationRow, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    Ok(AllocationRow {
        sku: row.try_get("sku")?,
        batchref: row.try_get("batchref")?,
    })
}

/// Reads an `allocations` row (`id, batchref, orderid, qty`) of `sku`.
pub(crate) fn stored_line<R>(row: &R, sku: &str) -> Result<StoredLine, UowError>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    let storage = |e: sqlx::Error| UowError::Storage(Box::new(e));
    Ok(StoredLine {
        id: row.try_get("id").map_err(storage)?,
        batchref: row.try_get("batchref").map_err(storage)?,
        line: OrderLine {
            orderid: row.try_get("orderid").map_err(storage)?,
            sku: sku.to_owned(),
            qty: to_u32(row.try_get("qty").map_err(storage)?)?,
        },
    })
}

/// Reads a `batches` row (`reference, purchased_quantity, eta`).
pub(crate) fn stored_batch<R>(row: &R) -> Result<StoredBatch, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> NaiveDate: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    Ok(StoredBatch {
        reference: row.try_get("reference")?,
        purchased_quantity: row.try_get("purchased_quantity")?,
        eta: row.try_get("eta")?,
    })
}
