//! Commands: what the outside world asks the service to do.

use arch_events::saga::SagaError;
use arch_events::Command;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::validation::{self, InvalidField};
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

impl CreateBatch {
    /// The command, from what a client sent: each field checked by
    /// [`validation`].
    pub fn new(
        reference: String,
        sku: String,
        qty: i64,
        eta: Option<String>,
    ) -> Result<Self, InvalidField> {
        Ok(CreateBatch {
            reference: validation::identifier("ref", reference)?,
            sku: validation::identifier("sku", sku)?,
            qty: validation::quantity("qty", qty)?,
            eta: validation::date("eta", eta)?,
        })
    }
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

impl Allocate {
    /// The command, from what a client sent: each field checked by
    /// [`validation`].
    pub fn new(orderid: String, sku: String, qty: i64) -> Result<Self, InvalidField> {
        Ok(Allocate {
            orderid: validation::identifier("orderid", orderid)?,
            sku: validation::identifier("sku", sku)?,
            qty: validation::quantity("qty", qty)?,
        })
    }
}

/// Changes a batch's purchased quantity, deallocating lines that no longer fit.
/// External: also read from the stream `change_batch_quantity` as
/// `{"batchref","qty"}`, checked as over HTTP (a message that fails is
/// dead-lettered with the reason).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Command)]
#[command(
    name = "allocation.change_batch_quantity",
    error = ServiceError,
    external = "change_batch_quantity"
)]
#[serde(try_from = "ChangeBatchQuantityMessage")]
pub struct ChangeBatchQuantity {
    /// The batch.
    pub reference: String,
    /// The new purchased quantity.
    pub qty: u32,
}

impl ChangeBatchQuantity {
    /// The command, from what a client sent: each field checked by
    /// [`validation`]; `field` names the reference as the client spells it
    /// (`ref` over HTTP, `batchref` on the stream).
    pub fn new(field: &'static str, reference: String, qty: i64) -> Result<Self, InvalidField> {
        Ok(ChangeBatchQuantity {
            reference: validation::identifier(field, reference)?,
            qty: validation::quantity("qty", qty)?,
        })
    }
}

/// [`ChangeBatchQuantity`] as it comes from the stream, before its check.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeBatchQuantityMessage {
    batchref: String,
    qty: i64,
}

impl TryFrom<ChangeBatchQuantityMessage> for ChangeBatchQuantity {
    type Error = InvalidField;

    fn try_from(message: ChangeBatchQuantityMessage) -> Result<Self, InvalidField> {
        ChangeBatchQuantity::new("batchref", message.batchref, message.qty)
    }
}

/// Confirms that an order was shipped: its allocations stay. External:
/// also read from the stream `shipment_confirmed` as `{"orderid"}`.
/// Handled by the order's
/// [`ShipmentWatch`](crate::service_layer::shipment::ShipmentWatch): an
/// order with no allocation waiting for its shipment is an error
/// ([`SagaError::NotFound`]), one confirmed already is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(
    name = "allocation.confirm_shipment",
    error = SagaError,
    external = "shipment_confirmed"
)]
#[serde(try_from = "ConfirmShipmentMessage")]
pub struct ConfirmShipment {
    /// The order.
    pub orderid: String,
}

impl ConfirmShipment {
    /// The command, from what a client sent: the order checked by
    /// [`validation`].
    pub fn new(orderid: String) -> Result<Self, InvalidField> {
        Ok(ConfirmShipment {
            orderid: validation::identifier("orderid", orderid)?,
        })
    }
}

/// [`ConfirmShipment`] as it comes from the stream, before its check.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmShipmentMessage {
    orderid: String,
}

impl TryFrom<ConfirmShipmentMessage> for ConfirmShipment {
    type Error = InvalidField;

    fn try_from(message: ConfirmShipmentMessage) -> Result<Self, InvalidField> {
        ConfirmShipment::new(message.orderid)
    }
}

/// Takes an order line off its batch for good, returning its units: sent
/// by an order's
/// [`ShipmentWatch`](crate::service_layer::shipment::ShipmentWatch) when
/// its shipment is overdue. A line that is not allocated (any more) is
/// left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(name = "allocation.release_allocation", serde, error = ServiceError)]
pub struct ReleaseAllocation {
    /// The order.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// Units allocated.
    pub qty: u32,
}
