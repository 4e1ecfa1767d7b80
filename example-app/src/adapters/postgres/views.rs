//! The allocations view (the read model) in PostgreSQL.

use bus_core::async_trait;

use super::PostgresDatabase;
use crate::adapters::rows::allocation_row;
use crate::views::{AllocationRow, AllocationsView, ViewError};

/// The allocations view in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresAllocationsView {
    database: PostgresDatabase,
}

impl PostgresAllocationsView {
    /// The view in `database`.
    pub fn new(database: PostgresDatabase) -> Self {
        PostgresAllocationsView { database }
    }
}

fn view_error(error: sqlx::Error) -> ViewError {
    ViewError(Box::new(error))
}

#[async_trait]
impl AllocationsView for PostgresAllocationsView {
    async fn add(&self, orderid: &str, sku: &str, batchref: &str) -> Result<(), ViewError> {
        sqlx::query("INSERT INTO allocations_view (orderid, sku, batchref) VALUES ($1, $2, $3)")
            .bind(orderid)
            .bind(sku)
            .bind(batchref)
            .execute(self.database.pool())
            .await
            .map_err(view_error)?;
        Ok(())
    }

    async fn remove(&self, orderid: &str, sku: &str) -> Result<(), ViewError> {
        sqlx::query("DELETE FROM allocations_view WHERE orderid = $1 AND sku = $2")
            .bind(orderid)
            .bind(sku)
            .execute(self.database.pool())
            .await
            .map_err(view_error)?;
        Ok(())
    }

    async fn for_order(&self, orderid: &str) -> Result<Vec<AllocationRow>, ViewError> {
        let rows = sqlx::query(
            "SELECT sku, batchref FROM allocations_view WHERE orderid = $1 ORDER BY id",
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
