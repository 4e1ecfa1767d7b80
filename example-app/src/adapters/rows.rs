//! Rows read back the same way from SQLite and PostgreSQL: generic over
//! sqlx's `Row`, so each database's adapter keeps only its SQL.

use chrono::NaiveDate;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::tracked::{to_u32, StoredBatch, StoredLine};
use crate::domain::model::OrderLine;
use crate::service_layer::unit_of_work::UowError;
use crate::views::AllocationRow;

/// Reads an `allocations_view` row (`sku, qty, batchref`).
pub(crate) fn allocation_row<R>(row: &R) -> Result<AllocationRow, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    let qty: i64 = row.try_get("qty")?;
    Ok(AllocationRow {
        sku: row.try_get("sku")?,
        qty: u32::try_from(qty).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
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

/// Reads a `batches` row (`reference, purchased_quantity, allocated_quantity, eta`).
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
        allocated_quantity: row.try_get("allocated_quantity")?,
        eta: row.try_get("eta")?,
    })
}
