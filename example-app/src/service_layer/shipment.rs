//! Allocations wait for their shipment: an order whose shipment is not
//! confirmed in time ([`ShipmentDeadline`]) has its lines released, their
//! units returned to their batches. A saga ([`ShipmentWatch`]) per order,
//! started by its first `Allocated`, completed by `ConfirmShipment`,
//! timing out into a `ReleaseAllocation` per line; the releases are sent
//! through the durable scheduler, so they happen even if the process dies
//! right after the timeout. A released order's watch stays, released: a
//! confirmation that comes later is refused (its stock may be someone
//! else's by now); the same order allocated again is watched again.

use std::time::Duration;

use arch_events::saga::{saga, SagaContext};
use arch_events::{handler, Scoped};
use serde::{Deserialize, Serialize};

use super::unit_of_work::UnitOfWork;
use super::ServiceError;
use crate::domain::commands::{ConfirmShipment, ReleaseAllocation};
use crate::domain::events::{Allocated, AllocationReleased, ShipmentOverdue};
use crate::domain::model::OrderLine;

/// How long an order's allocations wait for its shipment, from its first
/// allocation: a setting of the sagas' runtime
/// ([`Sagas::with`](arch_events::saga::Sagas::with)); two days when unset,
/// and no watch at all when zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShipmentDeadline(pub Duration);

impl Default for ShipmentDeadline {
    fn default() -> Self {
        ShipmentDeadline(Duration::from_secs(2 * 24 * 60 * 60))
    }
}

/// One order's allocations, waiting for its shipment.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShipmentWatch {
    /// The order.
    pub orderid: String,
    /// Its lines, as last allocated, one per product.
    pub lines: Vec<WatchedLine>,
    /// Set once its deadline passed and its lines were released.
    pub released: bool,
}

/// A line the watch releases if the order is not shipped in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchedLine {
    /// The product.
    pub sku: String,
    /// Units allocated.
    pub qty: u32,
}

/// A shipment confirmed after the order's lines were released.
#[derive(Debug, thiserror::Error)]
#[error("order {0} was not shipped in time: its allocations were released")]
pub struct ShippedTooLate(pub String);

#[saga(name = "allocation.shipment_watch")]
impl ShipmentWatch {
    /// A line of the order was allocated (or allocated again, after its
    /// batch shrank): watched. The first one starts the clock; one after
    /// a release starts a new watch.
    #[starts(by = orderid)]
    fn allocated(&mut self, event: &Allocated, saga: &mut SagaContext) {
        if deadline(saga).is_zero() {
            // The watch is off: no order is watched. (The bootstrap's
            // runtime starts none then, `Sagas::no_new`; this is for a
            // runtime wired otherwise.)
            saga.decline();
            return;
        }
        if self.released {
            // Allocated again after it was released: a new watch.
            self.released = false;
            self.lines.clear();
        }
        if self.lines.is_empty() {
            self.orderid.clone_from(&event.orderid);
            saga.request_timeout(
                deadline(saga),
                &ShipmentOverdue {
                    orderid: event.orderid.clone(),
                },
            );
        }
        let line = WatchedLine {
            sku: event.sku.clone(),
            qty: event.qty,
        };
        match self
            .lines
            .iter_mut()
            .find(|watched| watched.sku == line.sku)
        {
            Some(watched) => *watched = line,
            None => self.lines.push(line),
        }
    }

    /// Shipped: the allocations stay, the timeout goes. Too late once they
    /// were released.
    #[handles(by = orderid, not_found = error)]
    fn shipped(
        &mut self,
        _: &ConfirmShipment,
        saga: &mut SagaContext,
    ) -> Result<(), ShippedTooLate> {
        if self.released {
            return Err(ShippedTooLate(self.orderid.clone()));
        }
        saga.mark_completed();
        Ok(())
    }

    /// Not shipped in time: every line is released; the watch stays, to
    /// refuse a late confirmation.
    #[timeout(by = orderid)]
    fn overdue(&mut self, _: &ShipmentOverdue, saga: &mut SagaContext) {
        tracing::info!(orderid = %self.orderid, lines = self.lines.len(), "shipment overdue: releasing the order's allocations");
        for line in &self.lines {
            saga.send(&ReleaseAllocation {
                orderid: self.orderid.clone(),
                sku: line.sku.clone(),
                qty: line.qty,
            });
        }
        self.released = true;
    }
}

/// The configured deadline.
fn deadline(saga: &SagaContext) -> Duration {
    saga.setting::<ShipmentDeadline>()
        .copied()
        .unwrap_or_default()
        .0
}

/// Releases a line whose order was not shipped in time. A line no batch
/// holds (it was never reallocated after its batch shrank, or released
/// already) is left alone.
#[handler(releases(AllocationReleased))]
pub async fn release_allocation(
    cmd: ReleaseAllocation,
    mut uow: Scoped<dyn UnitOfWork>,
) -> Result<(), ServiceError> {
    let line = OrderLine {
        orderid: cmd.orderid,
        sku: cmd.sku,
        qty: cmd.qty,
    };
    let Some(product) = uow.products().get_for_line(&line).await? else {
        return Ok(());
    };
    if product.release(&line) {
        uow.commit().await?;
    }
    Ok(())
}
