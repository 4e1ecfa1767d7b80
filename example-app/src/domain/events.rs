//! Events: what happened in the domain.

use bus_core::Event;

/// An order line was allocated to a batch.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
#[event(name = "allocation.allocated")]
pub struct Allocated {
    /// The order.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// Units allocated.
    pub qty: u32,
    /// The batch that holds them.
    pub batchref: String,
}

/// An order line was taken off its batch and needs a new one.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
#[event(name = "allocation.deallocated")]
pub struct Deallocated {
    /// The order.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// Units to allocate again.
    pub qty: u32,
}

/// No batch could take an order line.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
#[event(name = "allocation.out_of_stock")]
pub struct OutOfStock {
    /// The product.
    pub sku: String,
}
