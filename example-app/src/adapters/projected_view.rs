//! The allocations view of `--storage events`: written only by its
//! catch-up projection, from the products' streams.
//!
//! The view's event handlers still run after each command (they are
//! registered whatever the storage): here their write is to catch the
//! projection up, so that the command's caller, whose dispatch waits for
//! them, reads its own write, as with rows. What they would write is in
//! the stream already, which the projection applies in order, each event
//! once; the projection running in the background
//! ([`Database::start_projection`](super::database::Database::start_projection))
//! brings the events of other processes.

use std::sync::Arc;
use std::time::Duration;

use arch_events::async_trait;
use arch_events_sqlx::{Backend, Projection, SqlEventStore};

use crate::views::{AllocationRow, AllocationsView, LineChange, ViewError};

/// How long a handler waits for the projection to reach the events
/// committed before it: then it fails, and is retried by its policy.
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
    /// Applies every event committed so far, `change`'s among them.
    async fn apply(&self, _change: LineChange<'_>) -> Result<(), ViewError> {
        match tokio::time::timeout(CATCH_UP_WITHIN, self.events.catch_up(&*self.projection)).await {
            Ok(Ok(_applied)) => Ok(()),
            Ok(Err(error)) => Err(ViewError(Box::new(error))),
            Err(_elapsed) => Err(ViewError(
                format!(
                    "the projection {} did not catch up within {CATCH_UP_WITHIN:?}",
                    self.projection.name()
                )
                .into(),
            )),
        }
    }

    async fn for_order(&self, orderid: &str) -> Result<Vec<AllocationRow>, ViewError> {
        self.reads.for_order(orderid).await
    }
}
