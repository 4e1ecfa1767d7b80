//! The allocations view (the read model) in SQLite.

use bus_core::async_trait;

use super::SqliteDatabase;
use crate::adapters::rows::allocation_row;
use crate::views::{AllocationRow, AllocationsView, ViewError};

/// The allocations view in SQLite; its writes take the database's writer
/// turn like the units of work do.
#[derive(Debug, Clone)]
pub struct SqliteAllocationsView {
    database: SqliteDatabase,
}

impl SqliteAllocationsView {
    /// The view in `database`.
    pub fn new(database: SqliteDatabase) -> Self {
        SqliteAllocationsView { database }
    }
}

fn view_error(error: sqlx::Error) -> ViewError {
    ViewError(Box::new(error))
}

#[async_trait]
impl AllocationsView for SqliteAllocationsView {
    async fn add(&self, orderid: &str, sku: &str, batchref: &str) -> Result<(), ViewError> {
        let _turn = self.database.writer_turn().await;
        sqlx::query("INSERT INTO allocations_view (orderid, sku, batchref) VALUES (?, ?, ?)")
            .bind(orderid)
            .bind(sku)
            .bind(batchref)
            .execute(&self.database.pool)
            .await
            .map_err(view_error)?;
        Ok(())
    }

    async fn remove(&self, orderid: &str, sku: &str) -> Result<(), ViewError> {
        let _turn = self.database.writer_turn().await;
        sqlx::query("DELETE FROM allocations_view WHERE orderid = ? AND sku = ?")
            .bind(orderid)
            .bind(sku)
            .execute(&self.database.pool)
            .await
            .map_err(view_error)?;
        Ok(())
    }

    async fn for_order(&self, orderid: &str) -> Result<Vec<AllocationRow>, ViewError> {
        let rows = sqlx::query(
            "SELECT sku, batchref FROM allocations_view WHERE orderid = ? ORDER BY rowid",
        )
        .bind(orderid)
        .fetch_all(&self.database.pool)
        .await
        .map_err(view_error)?;
        rows.iter()
            .map(allocation_row)
            .collect::<Result<_, _>>()
            .map_err(view_error)
    }
}
