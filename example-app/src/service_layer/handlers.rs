//! The command and event handlers: each one a use case, registered by
//! `#[handler]`, with its dependencies injected by type.

use arch_events::{handler, Scoped};

use super::unit_of_work::{UnitOfWork, UowError};
use super::ServiceError;
use crate::adapters::notifications::{NotificationError, Notifications};
use crate::domain::commands::{Allocate, ChangeBatchQuantity, CreateBatch};
use crate::domain::events::{Allocated, BatchAdded, BatchQuantityChanged, Deallocated, OutOfStock};
use crate::domain::model::{ChangeQuantityError, OrderLine};

/// Adds a batch, creating the product on its first batch.
///
/// A reference is unique across products: the check below sees the batches
/// committed so far, and the database refuses a second row for the same
/// reference (two adds at once: one commits, the other is a conflict, which
/// the bus retries, and the retry finds the batch).
#[handler(releases(BatchAdded))]
pub async fn add_batch(
    cmd: CreateBatch,
    mut uow: Scoped<dyn UnitOfWork>,
) -> Result<(), ServiceError> {
    if uow
        .products()
        .get_by_batchref(&cmd.reference)
        .await?
        .is_some()
    {
        return Err(ServiceError::DuplicateBatch(cmd.reference));
    }
    let product = match uow.products().get(&cmd.sku).await? {
        Some(product) => product,
        None => uow.products().add(&cmd.sku),
    };
    if !product.add_batch(&cmd.reference, &cmd.sku, cmd.qty, cmd.eta) {
        return Err(ServiceError::DuplicateBatch(cmd.reference));
    }
    uow.commit().await?;
    Ok(())
}

/// Allocates an order line; `None` when out of stock.
#[handler(releases(Allocated, OutOfStock))]
pub async fn allocate(
    cmd: Allocate,
    mut uow: Scoped<dyn UnitOfWork>,
) -> Result<Option<String>, ServiceError> {
    let line = OrderLine {
        orderid: cmd.orderid,
        sku: cmd.sku,
        qty: cmd.qty,
    };
    allocate_line(&mut *uow, line).await
}

/// Allocates again a line that lost its batch.
///
/// When it loses an optimistic-concurrency race, its retry policy (see
/// [`bootstrap`](crate::bootstrap())) calls it again with a fresh unit of
/// work; an unknown product is [`Permanent`](arch_events::Permanent).
#[handler(releases(Allocated, OutOfStock))]
pub async fn reallocate(
    event: Deallocated,
    mut uow: Scoped<dyn UnitOfWork>,
) -> Result<(), ServiceError> {
    let line = OrderLine {
        orderid: event.orderid,
        sku: event.sku,
        qty: event.qty,
    };
    allocate_line(&mut *uow, line).await.map(drop)
}

async fn allocate_line(
    uow: &mut dyn UnitOfWork,
    line: OrderLine,
) -> Result<Option<String>, ServiceError> {
    let Some(product) = uow.products().get_for_line(&line).await? else {
        return Err(ServiceError::InvalidSku(line.sku));
    };
    let batchref = product.allocate(line);
    uow.commit().await?;
    Ok(batchref)
}

/// Changes a batch's quantity; lines that no longer fit are deallocated, and
/// their `Deallocated` events reallocate them. The batch's lines are loaded
/// only when some must go (the new quantity is below what is allocated).
#[handler(releases(BatchQuantityChanged, Deallocated))]
pub async fn change_batch_quantity(
    cmd: ChangeBatchQuantity,
    mut uow: Scoped<dyn UnitOfWork>,
) -> Result<(), ServiceError> {
    let unknown = || ServiceError::UnknownBatch(cmd.reference.clone());
    let product = uow
        .products()
        .get_by_batchref(&cmd.reference)
        .await?
        .ok_or_else(unknown)?;
    match product.change_batch_quantity(&cmd.reference, cmd.qty) {
        Ok(()) => {}
        Err(ChangeQuantityError::LinesNotLoaded(_)) => {
            // Nothing changed: load the batch again, with its lines.
            uow.products()
                .get_with_batch_lines(&cmd.reference)
                .await?
                .ok_or_else(unknown)?
                .change_batch_quantity(&cmd.reference, cmd.qty)
                .map_err(|error| UowError::Storage(Box::new(error)))?;
        }
        Err(ChangeQuantityError::UnknownBatch(_)) => return Err(unknown()),
    }
    uow.commit().await?;
    Ok(())
}

/// Tells the buyers a product ran out. A notifier that is down fails the
/// call; the bus retries it, then keeps it as a dead letter to replay.
#[handler]
pub fn send_out_of_stock_notification(
    event: &OutOfStock,
    notifications: &dyn Notifications,
) -> Result<(), NotificationError> {
    notifications.send("stock@made.com", &format!("Out of stock for {}", event.sku))
}
