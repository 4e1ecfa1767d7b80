//! The read side (CQRS): a denormalized view of allocations, kept up to date
//! by event handlers and read by a query handler, never from the write model.

use std::sync::Arc;

use bus_core::{async_trait, handler, BoxError, Query, Scope, Scoped};
use serde::Serialize;

use crate::domain::events::{Allocated, Deallocated};

/// One row of the allocations view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllocationRow {
    /// The product.
    pub sku: String,
    /// The batch that holds it.
    pub batchref: String,
}

/// Why the view could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("allocations view failed: {0}")]
pub struct ViewError(#[source] pub BoxError);

/// Where the allocations view is stored. Handlers get one per call (a
/// scoped dependency): each write is a transaction of its own that also
/// records the call's delivery of the event it handles (bus-sqlx), so that
/// a redelivered event never writes the view twice.
#[async_trait]
pub trait AllocationsView: Send + Sync {
    /// Records that the order's line of `sku` sits in `batchref`.
    async fn add(&self, orderid: &str, sku: &str, batchref: &str) -> Result<(), ViewError>;
    /// Forgets the order's line of `sku`.
    async fn remove(&self, orderid: &str, sku: &str) -> Result<(), ViewError>;
    /// The order's allocations.
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

/// Keeps the view in step with an allocation.
#[handler]
pub async fn add_allocation_to_read_model(
    event: &Allocated,
    view: Scoped<dyn AllocationsView>,
) -> Result<(), ViewError> {
    view.add(&event.orderid, &event.sku, &event.batchref).await
}

/// Keeps the view in step with a deallocation.
#[handler]
pub async fn remove_allocation_from_read_model(
    event: &Deallocated,
    view: Scoped<dyn AllocationsView>,
) -> Result<(), ViewError> {
    view.remove(&event.orderid, &event.sku).await
}
