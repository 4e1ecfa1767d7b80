//! The allocations view (the read model) in SQLite.

use bus_core::{async_trait, EventReleaser};

use super::SqliteDatabase;
use crate::adapters::relational::write_once;
use crate::adapters::rows::allocation_row;
use crate::views::{AllocationRow, AllocationsView, ViewError};

/// The allocations view in SQLite, for one handler call: each write is a
/// transaction of the store (this process's writers take turns) that also
/// records the call's delivery.
#[derive(Debug, Clone)]
pub struct SqliteAllocationsView {
    database: SqliteDatabase,
    releaser: EventReleaser,
}

impl SqliteAllocationsView {
    /// The view in `database`, for the call whose releaser is `releaser`.
    pub fn new(database: SqliteDatabase, releaser: EventReleaser) -> Self {
        SqliteAllocationsView { database, releaser }
    }
}

fn view_error(error: sqlx::Error) -> ViewError {
    ViewError(Box::new(error))
}

#[async_trait]
impl AllocationsView for SqliteAllocationsView {
    async fn add(&self, orderid: &str, sku: &str, batchref: &str) -> Result<(), ViewError> {
        write_once(
            self.database.store(),
            &self.releaser,
            "INSERT INTO allocations_view (orderid, sku, batchref) VALUES (?, ?, ?)",
            &[orderid, sku, batchref],
        )
        .await
        .map_err(ViewError)
    }

    async fn remove(&self, orderid: &str, sku: &str) -> Result<(), ViewError> {
        write_once(
            self.database.store(),
            &self.releaser,
            "DELETE FROM allocations_view WHERE orderid = ? AND sku = ?",
            &[orderid, sku],
        )
        .await
        .map_err(ViewError)
    }

    async fn for_order(&self, orderid: &str) -> Result<Vec<AllocationRow>, ViewError> {
        let rows = sqlx::query(
            "SELECT sku, batchref FROM allocations_view WHERE orderid = ? ORDER BY rowid",
        )
        .bind(orderid)
        .fetch_all(self.database.pool())
        .await
        .map_err(view_error)?;
        rows.iter()
            .map(allocation_row)
            .collect::<Result<_, _>>()
            .map_err(view_error)
    }
}
