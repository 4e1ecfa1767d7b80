//! The allocations view of `--storage events`: written only by its
//! catch-up projection, from the products' streams.
//!
//! The projection runs in the background
//! ([`Database::start_projection`](super::database::Database::start_projection)),
//! applying the events of every process in batches, each once. A read
//! first catches it up with everything committed before it (usually
//! nothing is left, and that costs two short queries): a command's caller
//! reads its own write, as with rows. The view's event handlers still run
//! after each command (they are registered whatever the storage), and have
//! nothing to write: what they would write is in the stream already.

use std::sync::Arc;
use std::time::Duration;

use arch_events::event_store::RecordedEvent;
use arch_events::{async_trait, BoxError};
use arch_events_sqlx::{Backend, Projection, SqlEventStore};
use sqlx::{Encode, Executor, IntoArguments, Type};

use crate::adapters::tracked::to_i64;
use crate::views::{
    AllocationRow, AllocationsView, LineChange, ProjectedLine, ViewError, ViewTable,
};

/// How long a read waits for the projection to reach the events committed
/// before it (on PostgreSQL, for the transactions older than them to end):
/// then it reads what the view has, and says so in the log.
pub const CATCH_UP_WITHIN: Duration = Duration::from_secs(5);

/// The view kept by the projection `P`, read through `reads`.
pub struct ProjectedAllocationsView<DB: Backend, P> {
    events: SqlEventStore<DB>,
    projection: Arc<P>,
    reads: Box<dyn AllocationsView>,
}

impl<DB: Backend, P: Projection<DB>> ProjectedAllocationsView<DB, P> {
    /// The view that `projection` keeps in `events`' database, read (never
    /// written) through `reads`, the view on the same table.
    pub fn new(
        events: SqlEventStore<DB>,
        projection: Arc<P>,
        reads: Box<dyn AllocationsView>,
    ) -> Self {
        ProjectedAllocationsView {
            events,
            projection,
            reads,
        }
    }
}

#[async_trait]
impl<DB: Backend, P: Projection<DB>> AllocationsView for ProjectedAllocationsView<DB, P> {
    /// Nothing: the projection applies `change`'s event from the stream.
    async fn apply(&self, _change: LineChange<'_>) -> Result<(), ViewError> {
        Ok(())
    }

    async fn for_order(&self, orderid: &str) -> Result<Vec<AllocationRow>, ViewError> {
        let caught_up = self.events.catch_up(&*self.projection);
        match tokio::time::timeout(CATCH_UP_WITHIN, caught_up).await {
            Ok(Ok(_applied)) => {}
            Ok(Err(error)) => return Err(ViewError(Box::new(error))),
            Err(_elapsed) => tracing::warn!(
                projection = self.projection.name(),
                within = ?CATCH_UP_WITHIN,
                "the view is read before its projection caught up (a transaction held open \
                 stalls it: see SqlEventStore::held_back_by)"
            ),
        }
        self.reads.for_order(orderid).await
    }
}

/// The allocations view kept from the products' streams in one of its
/// tables ([`ViewTable`]), on either database: a catch-up projection, each
/// event applied once, in the transaction that moves its checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct AllocationsProjection(pub ViewTable);

#[async_trait]
impl<DB> Projection<DB> for AllocationsProjection
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    fn name(&self) -> &str {
        self.0.projection
    }

    async fn apply(
        &self,
        connection: &mut DB::Connection,
        event: &RecordedEvent,
    ) -> Result<(), BoxError> {
        if let Some(line) = ProjectedLine::of(event)? {
            upsert(self.0, line.change())
                .execute(&mut *connection)
                .await?;
        }
        Ok(())
    }
}

/// The statement that applies `change` to `view`'s table unless it holds a
/// newer one for that line: the projection's write, and with rows the
/// view's event handlers'.
pub fn upsert<'q, DB>(
    view: ViewTable,
    change: LineChange<'q>,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    &'q str: Encode<'q, DB> + Type<DB>,
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(view.upsert_sql())
        .bind(change.orderid)
        .bind(change.sku)
        .bind(i64::from(change.qty))
        .bind(change.batchref)
        .bind(to_i64(change.version))
}
