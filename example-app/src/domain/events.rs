//! Events: what happened in the domain.
//!
//! `serde` lets a failed event handler's event be stored as a dead letter
//! and replayed later.

use arch_events::Event;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// A batch of stock was added to a product. It is how a product's stream
/// starts (`--storage events`) and grows; nothing else reacts to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "allocation.batch_added", serde)]
pub struct BatchAdded {
    /// The batch's reference.
    pub reference: String,
    /// The product.
    pub sku: String,
    /// Units purchased.
    pub qty: u32,
    /// When it arrives; `None` when it is in the warehouse.
    pub eta: Option<NaiveDate>,
    /// The product's version this addition made.
    pub version: u64,
}

/// A batch's purchased quantity was set. The lines that no longer fit
/// follow as [`Deallocated`] events, with the same version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "allocation.batch_quantity_changed", serde)]
pub struct BatchQuantityChanged {
    /// The batch's reference.
    pub reference: String,
    /// Its new purchased quantity.
    pub qty: u32,
    /// The product's version this change made.
    pub version: u64,
}

/// An order line was allocated to a batch. External: published (through the
/// outbox) to the stream `line_allocated` as
/// `{"orderid","sku","qty","batchref","version"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "allocation.allocated", external = "line_allocated")]
pub struct Allocated {
    /// The order.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// Units allocated.
    pub qty: u32,
    /// The batch that holds them.
    pub batchref: String,
    /// The product's version this allocation made: of two events about
    /// one line, the one with the higher version is the newer. (0 in an
    /// event stored before events carried it, which the read model skips:
    /// see [`UNVERSIONED`](crate::views::UNVERSIONED).)
    #[serde(default)]
    pub version: u64,
}

/// An order line was taken off its batch and needs a new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "allocation.deallocated", serde)]
pub struct Deallocated {
    /// The order.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// Units to allocate again.
    pub qty: u32,
    /// The product's version this deallocation made: of two events about
    /// one line, the one with the higher version is the newer. (0 in an
    /// event stored before events carried it, which the read model skips:
    /// see [`UNVERSIONED`](crate::views::UNVERSIONED).)
    #[serde(default)]
    pub version: u64,
}

/// An order line was taken off its batch for good, its units returned to
/// the batch: its order was not shipped in time (see
/// [`ShipmentWatch`](crate::service_layer::shipment::ShipmentWatch)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "allocation.allocation_released", serde)]
pub struct AllocationReleased {
    /// The order.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// Units returned.
    pub qty: u32,
    /// The batch that held them.
    pub batchref: String,
    /// The product's version this release made.
    pub version: u64,
}

/// An order's shipment is overdue: the timeout its
/// [`ShipmentWatch`](crate::service_layer::shipment::ShipmentWatch) asks
/// for when its first line is allocated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "allocation.shipment_overdue", serde)]
pub struct ShipmentOverdue {
    /// The order.
    pub orderid: String,
}

/// No batch could take an order line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "allocation.out_of_stock", serde)]
pub struct OutOfStock {
    /// The product.
    pub sku: String,
}
