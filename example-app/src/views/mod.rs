//! The read side (CQRS): a denormalized view of allocations, kept up to date
//! by event handlers and read by a query handler, never from the write model.

use std::sync::Arc;

use arch_events::event_store::{EventStoreError, RecordedEvent};
use arch_events::{async_trait, handler, BoxError, Query, Scope, Scoped};
use serde::Serialize;

use crate::domain::events::{Allocated, AllocationReleased, Deallocated};

/// One row of the allocations view: a line of the order, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllocationRow {
    /// The product.
    pub sku: String,
    /// Units.
    pub qty: u32,
    /// The batch that holds it.
    pub batchref: String,
}

/// What an event says about one order line: where it is (`batchref`, or
/// `None` when it was deallocated) as of the product's `version`.
///
/// A line is its order, product and quantity (as the domain's `OrderLine`),
/// and every change to it makes a new version of its product: the view
/// keeps, per line, the change with the highest version. Applying changes in
/// any order, any number of times, leaves the same rows, the write model's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineChange<'a> {
    /// The order.
    pub orderid: &'a str,
    /// The product.
    pub sku: &'a str,
    /// Units.
    pub qty: u32,
    /// The batch that holds the line, `None` when it holds none.
    pub batchref: Option<&'a str>,
    /// The product's version the change made.
    pub version: u64,
}

/// The view kept in `$table` (a literal), by the projection of that name.
macro_rules! view_table {
    ($table:literal) => {
        ViewTable {
            table: $table,
            projection: $table,
            upsert: concat!(
                "INSERT INTO ",
                $table,
                " (orderid, sku, qty, batchref, version) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (orderid, sku, qty) DO UPDATE \
                 SET batchref = excluded.batchref, version = excluded.version \
                 WHERE excluded.version > ",
                $table,
                ".version"
            ),
        }
    };
}

/// A table the allocations view is kept in, and with `--storage events`
/// the projection that keeps it (its checkpoint's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewTable {
    /// The table.
    pub table: &'static str,
    /// The projection.
    pub projection: &'static str,
    upsert: &'static str,
}

impl ViewTable {
    /// The view that queries read.
    pub const LIVE: ViewTable = view_table!("allocations_view");

    /// The view a rebuild fills beside the live one, then swaps in.
    pub const REBUILT: ViewTable = view_table!("allocations_view_next");

    /// The statement that applies a [`LineChange`] to this table unless it
    /// holds a newer one for that line; `$1` to `$5` (SQLite takes them
    /// too) are the order, the product, the units, the batch and the
    /// version.
    pub fn upsert_sql(self) -> &'static str {
        self.upsert
    }
}

/// What a stored event says about one order line, as the projection reads
/// it: [`LineChange`], owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectedLine {
    orderid: String,
    sku: String,
    qty: u32,
    batchref: Option<String>,
    version: u64,
}

impl ProjectedLine {
    /// The line `event` changes: `Some` for an [`Allocated`], a
    /// [`Deallocated`] or an [`AllocationReleased`], `None` for any other event (the view has nothing to
    /// do with it). An event of those types that does not read is an
    /// error: the projection stops there rather than skip it.
    pub fn of(event: &RecordedEvent) -> Result<Option<ProjectedLine>, EventStoreError> {
        let line = if event.is::<Allocated>() {
            let allocated: Allocated = event.decode()?;
            ProjectedLine {
                orderid: allocated.orderid,
                sku: allocated.sku,
                qty: allocated.qty,
                batchref: Some(allocated.batchref),
                version: allocated.version,
            }
        } else if event.is::<AllocationReleased>() {
            let released: AllocationReleased = event.decode()?;
            ProjectedLine {
                orderid: released.orderid,
                sku: released.sku,
                qty: released.qty,
                batchref: None,
                version: released.version,
            }
        } else if event.is::<Deallocated>() {
            let deallocated: Deallocated = event.decode()?;
            ProjectedLine {
                orderid: deallocated.orderid,
                sku: deallocated.sku,
                qty: deallocated.qty,
                batchref: None,
                version: deallocated.version,
            }
        } else {
            return Ok(None);
        };
        Ok(Some(line))
    }

    /// The change, as the view applies it.
    pub fn change(&self) -> LineChange<'_> {
        LineChange {
            orderid: &self.orderid,
            sku: &self.sku,
            qty: self.qty,
            batchref: self.batchref.as_deref(),
            version: self.version,
        }
    }
}

/// Why the view could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("allocations view failed: {0}")]
pub struct ViewError(#[source] pub BoxError);

/// Where the allocations view is stored. Handlers get one per call (a
/// scoped dependency): each write is a transaction of its own that also
/// records the call's delivery of the event it handles (arch-events-sqlx). The
/// writes are idempotent and independent of order anyway ([`LineChange`]):
/// concurrent changes of one product, and redeliveries, never make the view
/// drift from the write model.
#[async_trait]
pub trait AllocationsView: Send + Sync {
    /// Applies `change` unless the view holds a newer one for that line.
    async fn apply(&self, change: LineChange<'_>) -> Result<(), ViewError>;
    /// The order's allocated lines, in the order they were first allocated.
    async fn for_order(&self, orderid: &str) -> Result<Vec<AllocationRow>, ViewError>;
}

/// Makes the view for one handler call, given the call's scope; bootstrap
/// registers it as a scoped dependency.
pub type AllocationsViewFactory = Arc<dyn Fn(&mut Scope) -> Box<dyn AllocationsView> + Send + Sync>;

/// Where are an order's lines allocated?
#[derive(Debug, Clone, PartialEq, Eq, Query)]
#[query(name = "allocation.allocations", output = Vec<AllocationRow>, error = ViewError)]
pub struct Allocations {
    /// The order.
    pub orderid: String,
}

/// Answers [`Allocations`] from the view.
#[handler]
pub async fn allocations(
    query: Allocations,
    view: Scoped<dyn AllocationsView>,
) -> Result<Vec<AllocationRow>, ViewError> {
    view.for_order(&query.orderid).await
}

/// The version of an event stored before events carried one (a dead letter
/// or an undelivered event from before the upgrade). The migration that
/// made the view version-keyed rebuilt it from the write model, which
/// every such event had already changed: the view has its effect, and
/// applying it again could only bring back an older state, so the view's
/// handlers skip it.
pub const UNVERSIONED: u64 = 0;

/// Keeps the view in step with an allocation.
#[handler]
pub async fn add_allocation_to_read_model(
    event: &Allocated,
    view: Scoped<dyn AllocationsView>,
) -> Result<(), ViewError> {
    if event.version == UNVERSIONED {
        return Ok(());
    }
    view.apply(LineChange {
        orderid: &event.orderid,
        sku: &event.sku,
        qty: event.qty,
        batchref: Some(&event.batchref),
        version: event.version,
    })
    .await
}

/// Keeps the view in step with a deallocation.
#[handler]
pub async fn remove_allocation_from_read_model(
    event: &Deallocated,
    view: Scoped<dyn AllocationsView>,
) -> Result<(), ViewError> {
    if event.version == UNVERSIONED {
        return Ok(());
    }
    view.apply(LineChange {
        orderid: &event.orderid,
        sku: &event.sku,
        qty: event.qty,
        batchref: None,
        version: event.version,
    })
    .await
}

/// Keeps the view in step with a released allocation: the line is gone.
#[handler]
pub async fn remove_released_allocation_from_read_model(
    event: &AllocationReleased,
    view: Scoped<dyn AllocationsView>,
) -> Result<(), ViewError> {
    view.apply(LineChange {
        orderid: &event.orderid,
        sku: &event.sku,
        qty: event.qty,
        batchref: None,
        version: event.version,
    })
    .await
}
