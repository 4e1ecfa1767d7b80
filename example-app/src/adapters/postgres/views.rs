//! The allocations view (the read model) in PostgreSQL.

use bus_core::{async_trait, EventReleaser};

use super::PostgresDatabase;
use crate::adapters::relational::write_once;
use crate::adapters::rows::allocation_row;
use crate::views::{AllocationRow, AllocationsView, ViewError};

/// The allocations view in PostgreSQL, for one handler call: each write is
/// a transaction that also records the call's delivery.
#[derive(Debug, Clone)]
pub struct PostgresAllocationsView {
    database: PostgresDatabase,
    releaser: EventReleaser,
}

impl PostgresAllocationsView {
    /// The view in `database`, for the call whose releaser is `releaser`.
    pub fn new(database: PostgresDatabase, releaser: EventReleaser) -> Self {
        PostgresAllocationsView { database, releaser }
    }
}

fn view_error(error: sqlx::Error) -> ViewError {
    ViewError(Box::new(error))
}

#[async_trait]
impl AllocationsView for PostgresAllocationsView {
    async fn add(&self, orderid: &str, sku: &str, batchref: &str) -> Result<(), ViewError> {
        write_once(
            self.database.store(),
            &self.releaser,
            "INSERT INTO allocations_view (orderid, sku, batchref) VALUES ($1, $2, $3)",
            &[orderid, sku, batchref],
        )
        .await
        .map_err(ViewError)
    }

    async fn remove(&self, orderid: &str, sku: &str) -> Result<(), ViewError> {
        write_once(
            self.database.store(),
            &self.releaser,
            "DELETE FROM allocations_view WHERE orderid = $1 AND sku = $2",
            &[orderid, sku],
        )
        .await
        .map_err(ViewError)
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
