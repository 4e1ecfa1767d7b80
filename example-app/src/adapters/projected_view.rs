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

use arch_events::async_trait;
use arch_events_sqlx::{Backend, Projection, SqlEventStore};

use crate::views::{AllocationRow, AllocationsView, LineChange, ViewError};

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
