//! The command and event handlers: each one a use case, registered by
//! `#[handler]`, with its dependencies injected by type.

use bus_core::{handler, Scoped};

use super::unit_of_work::UnitOfWork;
use super::ServiceError;
use crate::adapters::notifications::Notifications;
use crate::domain::commands::{Allocate, ChangeBatchQuantity, CreateBatch};
use crate::domain::events::{Allocated, Deallocated, OutOfStock};
use crate::domain::model::{Batch, OrderLine, Product};

/// Adds a batch, creating the product on its first batch.
#[handler]
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
    let batch = Batch::new(&cmd.reference, &cmd.sku, cmd.qty, cmd.eta);
    match uow.products().get(&cmd.sku).await? {
        Some(product) => product.add_batch(batch),
        None => {
            uow.products().add(Product::new(&cmd.sku, vec![batch], 0));
        }
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

/// How many times [`reallocate`] tries again after losing an
/// optimistic-concurrency race, so that a deallocated line is not left
/// without a batch because another request changed the product meanwhile.
pub const REALLOCATE_ATTEMPTS: u32 = 5;

/// Allocates again a line that lost its batch.
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
    let mut attempt = 1;
    loop {
        match allocate_line(&mut *uow, line.clone()).await {
            Err(error) if error.is_conflict() && attempt < REALLOCATE_ATTEMPTS => {
                tracing::debug!(attempt, %error, "reallocation lost a race; trying again");
                // Forget what was loaded, so that the next attempt reads afresh.
                uow.rollback().await?;
                attempt += 1;
            }
            outcome => return outcome.map(drop),
        }
    }
}

async fn allocate_line(
    uow: &mut dyn UnitOfWork,
    line: OrderLine,
) -> Result<Option<String>, ServiceError> {
    let Some(product) = uow.products().get(&line.sku).await? else {
        return Err(ServiceError::InvalidSku(line.sku));
    };
    let batchref = product.allocate(line);
    uow.commit().await?;
    Ok(batchref)
}

/// Changes a batch's quantity; lines that no longer fit are deallocated, and
/// their `Deallocated` events reallocate them.
#[handler(releases(Deallocated))]
pub async fn change_batch_quantity(
    cmd: ChangeBatchQuantity,
    mut uow: Scoped<dyn UnitOfWork>,
) -> Result<(), ServiceError> {
    let Some(product) = uow.products().get_by_batchref(&cmd.reference).await? else {
        return Err(ServiceError::UnknownBatch(cmd.reference));
    };
    product.change_batch_quantity(&cmd.reference, cmd.qty);
    uow.commit().await?;
    Ok(())
}

/// Tells the buyers a product ran out.
#[handler]
pub fn send_out_of_stock_notification(event: &OutOfStock, notifications: &dyn Notifications) {
    notifications.send("stock@made.com", &format!("Out of stock for {}", event.sku));
}
