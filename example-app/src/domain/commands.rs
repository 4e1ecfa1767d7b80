//! Commands: what the outside world asks the service to do.

use bus_core::Command;
use chrono::NaiveDate;
use serde::Deserialize;

use crate::service_layer::ServiceError;

/// Adds a batch of stock (creating its product when it is new).
#[derive(Debug, Clone, PartialEq, Eq, Command)]
#[command(name = "allocation.create_batch", error = ServiceError)]
pub struct CreateBatch {
    /// The batch's reference, unique across products.
    pub reference: String,
    /// The product.
    pub sku: String,
    /// Units purchased.
    pub qty: u32,
    /// When it arrives; `None` for stock already in the warehouse.
    pub eta: Option<NaiveDate>,
}

/// Allocates an order line to a batch. Returns the batch's reference, or
/// `None` when the product is out of stock (an `OutOfStock` event follows).
#[derive(Debug, Clone, PartialEq, Eq, Command)]
#[command(name = "allocation.allocate", output = Option<String>, error = ServiceError)]
pub struct Allocate {
    /// The order.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// Units ordered.
    pub qty: u32,
}

/// Changes a batch's purchased quantity, deallocating lines that no longer fit.
/// External: also read from the stream `change_batch_quantity` as
/// `{"batchref","qty"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Command)]
#[command(
    name = "allocation.change_batch_quantity",
    error = ServiceError,
    external = "change_batch_quantity"
)]
#[serde(deny_unknown_fields)]
pub struct ChangeBatchQuantity {
    /// The batch.
    #[serde(rename = "batchref")]
    pub reference: String,
    /// The new purchased quantity.
    pub qty: u32,
}
