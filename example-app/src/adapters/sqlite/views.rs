//! The allocations view (the read model) in SQLite.

use arch_events::event_store::RecordedEvent;
use arch_events::{async_trait, BoxError, EventReleaser};
use arch_events_sqlx::Projection;
use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Sqlite, SqliteConnection};

use super::SqliteDatabase;
use crate::adapters::relational::write_once;
use crate::adapters::rows::allocation_row;
use crate::adapters::tracked::to_i64;
use crate::views::{
    AllocationRow, AllocationsView, LineChange, ProjectedLine, ViewError, ViewTable,
};

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

/// `sql` ([`ViewTable::upsert_sql`]) with `change` bound.
fn upsert<'q>(sql: &'q str, change: LineChange<'q>) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    sqlx::query(sql)
        .bind(change.orderid)
        .bind(change.sku)
        .bind(i64::from(change.qty))
        .bind(change.batchref)
        .bind(to_i64(change.version))
}

/// The allocations view kept from the products' streams (`--storage
/// events`) in one of its tables: a catch-up projection, each event
/// applied once, in the transaction that moves its checkpoint.
#[derive(Debug, Clone)]
pub struct SqliteAllocationsProjection {
    view: ViewTable,
    upsert: String,
}

impl SqliteAllocationsProjection {
    /// The projection that keeps `view`.
    pub fn new(view: ViewTable) -> Self {
        SqliteAllocationsProjection {
            view,
            upsert: view.upsert_sql(),
        }
    }
}

#[async_trait]
impl Projection<Sqlite> for SqliteAllocationsProjection {
    fn name(&self) -> &str {
        self.view.projection
    }

    async fn apply(
        &self,
        connection: &mut SqliteConnection,
        event: &RecordedEvent,
    ) -> Result<(), BoxError> {
        if let Some(line) = ProjectedLine::of(event)? {
            upsert(&self.upsert, line.change())
                .execute(connection)
                .await?;
        }
        Ok(())
    }
}

fn view_error(error: sqlx::Error) -> ViewError {
    ViewError(Box::new(error))
}

#[async_trait]
impl AllocationsView for SqliteAllocationsView {
    async fn apply(&self, change: LineChange<'_>) -> Result<(), ViewError> {
        let sql = ViewTable::LIVE.upsert_sql();
        let query = upsert(&sql, change);
        write_once(self.database.store(), &self.releaser, query)
            .await
            .map_err(ViewError)
    }

    async fn for_order(&self, orderid: &str) -> Result<Vec<AllocationRow>, ViewError> {
        let rows = sqlx::query(
            "SELECT sku, qty, batchref FROM allocations_view \
             WHERE orderid = ? AND batchref IS NOT NULL ORDER BY id",
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
