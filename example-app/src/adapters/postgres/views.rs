//! The allocations view (the read model) in PostgreSQL.

use arch_events::{async_trait, EventReleaser};

use super::PostgresDatabase;
use crate::adapters::projected_view::upsert;
use crate::adapters::relational::write_once;
use crate::adapters::rows::allocation_row;
use crate::views::{AllocationRow, AllocationsView, LineChange, ViewError, ViewTable};

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
    async fn apply(&self, change: LineChange<'_>) -> Result<(), ViewError> {
        let query = upsert(ViewTable::LIVE, change);
        write_once(self.database.store(), &self.releaser, query)
            .await
            .map_err(ViewError)
    }

    async fn for_order(&self, orderid: &str) -> Result<Vec<AllocationRow>, ViewError> {
        let rows = sqlx::query(
            "SELECT sku, qty, batchref FROM allocations_view \
             WHERE orderid = $1 AND batchref IS NOT NULL ORDER BY id",
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
