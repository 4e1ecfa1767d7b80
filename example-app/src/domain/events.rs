//! Events: what happened in the domain.
//!
//! `serde` lets a failed event handler's event be stored as a dead letter
//! and replayed later.

use arch_events::Event;
use serde::{Deserialize, Serialize};

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

/// No batch could take an order line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "allocation.out_of_stock", serde)]
pub struct OutOfStock {
    /// The product.
    pub sku: String,
}
