//! A small warehouse: stock is added, orders are allocated, and the events
//! that causes are printed. It shows the whole loop of arch-events in one
//! file: messages, handlers with injected dependencies, a unit of work that
//! releases events on commit, and a bootstrap that builds the bus.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bus_core::{
    handler, Aggregate, BuildError, Bus, Command, Dependencies, Event, EventRecorder,
    EventReleaser, Scoped,
};

/// Adds stock of a product.
#[derive(Debug, Command)]
pub struct AddStock {
    /// The product.
    pub sku: String,
    /// How many units arrive.
    pub qty: u32,
}

/// Reserves stock for an order line.
#[derive(Debug, Command)]
#[command(output = u32, error = AllocationError)]
pub struct Allocate {
    /// The order.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// How many units.
    pub qty: u32,
}

/// Why an allocation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocationError {
    /// No stock of that product was ever added.
    #[error("Invalid sku {0}")]
    InvalidSku(String),
}

/// Stock was reserved for an order.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
pub struct Allocated {
    /// The order.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// How many units.
    pub qty: u32,
}

/// A product ran out.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
pub struct OutOfStock {
    /// The product.
    pub sku: String,
}

/// One product's stock: the aggregate.
#[derive(Debug, Clone, Default)]
pub struct Product {
    /// Units available.
    pub available: u32,
    events: EventRecorder,
}

impl Aggregate for Product {
    fn events(&mut self) -> &mut EventRecorder {
        &mut self.events
    }
}

impl Product {
    /// Reserves up to `qty` units; records `Allocated`, or `OutOfStock` when
    /// there is not enough.
    pub fn allocate(&mut self, orderid: &str, sku: &str, qty: u32) -> u32 {
        if qty > self.available {
            self.events.record(OutOfStock {
                sku: sku.to_owned(),
            });
            return self.available;
        }
        self.available -= qty;
        self.events.record(Allocated {
            orderid: orderid.to_owned(),
            sku: sku.to_owned(),
            qty,
        });
        self.available
    }
}

/// The products, in memory.
#[derive(Debug, Default)]
pub struct Warehouse(Mutex<BTreeMap<String, Product>>);

impl Warehouse {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Product>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A unit of work over the warehouse: changes and events take effect on commit.
pub struct UnitOfWork {
    warehouse: Arc<Warehouse>,
    seen: BTreeMap<String, Product>,
    releaser: EventReleaser,
}

impl UnitOfWork {
    /// Loads a product into the unit of work.
    pub fn get(&mut self, sku: &str) -> Option<&mut Product> {
        if !self.seen.contains_key(sku) {
            let product = self.warehouse.lock().get(sku).cloned()?;
            self.seen.insert(sku.to_owned(), product);
        }
        self.seen.get_mut(sku)
    }

    /// Loads a product, creating it when it does not exist yet.
    pub fn get_or_create(&mut self, sku: &str) -> &mut Product {
        let stored = self.warehouse.lock().get(sku).cloned();
        self.seen
            .entry(sku.to_owned())
            .or_insert_with(|| stored.unwrap_or_default())
    }

    /// Writes every product it saw, then releases their events.
    pub fn commit(&mut self) {
        // Take the events first, so the stored copies do not carry them.
        let events: Vec<_> = self
            .seen
            .values_mut()
            .flat_map(|product| product.events().take())
            .collect();
        let mut warehouse = self.warehouse.lock();
        for (sku, product) in &self.seen {
            warehouse.insert(sku.clone(), product.clone());
        }
        drop(warehouse);
        self.releaser.release_all(events);
    }
}

/// Where the app reports what happened (a fake can record it in tests).
pub trait Notifications: Send + Sync {
    /// Sends one line.
    fn send(&self, line: String);
}

/// Prints notifications to standard output.
#[derive(Debug, Default)]
pub struct StdoutNotifications;

impl Notifications for StdoutNotifications {
    fn send(&self, line: String) {
        println!("{line}");
    }
}

/// Handles [`AddStock`].
#[handler]
pub fn add_stock(
    cmd: AddStock,
    mut uow: Scoped<UnitOfWork>,
) -> Result<(), std::convert::Infallible> {
    uow.get_or_create(&cmd.sku).available += cmd.qty;
    uow.commit();
    Ok(())
}

/// Handles [`Allocate`]: returns the units left.
#[handler(releases(Allocated, OutOfStock))]
pub fn allocate(cmd: Allocate, mut uow: Scoped<UnitOfWork>) -> Result<u32, AllocationError> {
    let product = uow
        .get(&cmd.sku)
        .ok_or_else(|| AllocationError::InvalidSku(cmd.sku.clone()))?;
    let left = product.allocate(&cmd.orderid, &cmd.sku, cmd.qty);
    uow.commit();
    Ok(left)
}

/// Reports each allocation.
#[handler]
pub fn report_allocated(event: &Allocated, notifications: &dyn Notifications) {
    notifications.send(format!(
        "allocated {} x {} to order {}",
        event.qty, event.sku, event.orderid
    ));
}

/// Reports a shortage.
#[handler]
pub fn report_out_of_stock(event: &OutOfStock, notifications: &dyn Notifications) {
    notifications.send(format!("out of stock: {}", event.sku));
}

/// Builds the bus: the one place where dependencies are chosen. Tests pass a
/// fake `Notifications`.
pub fn bootstrap(
    warehouse: Arc<Warehouse>,
    notifications: Arc<dyn Notifications>,
) -> Result<Bus, BuildError> {
    Bus::builder()
        .dependencies(
            Dependencies::new()
                .shared_arc(notifications)
                .scoped(move |scope| UnitOfWork {
                    warehouse: warehouse.clone(),
                    seen: BTreeMap::new(),
                    releaser: scope.releaser(),
                }),
        )
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorded(Mutex<Vec<String>>);

    impl Notifications for Recorded {
        fn send(&self, line: String) {
            self.0.lock().unwrap().push(line);
        }
    }

    #[test]
    fn allocating_reports_what_happened_and_invalid_skus_are_typed_errors() {
        let recorded = Arc::new(Recorded::default());
        let bus = bootstrap(Arc::default(), recorded.clone()).unwrap();
        bus.dispatch_blocking(AddStock {
            sku: "LAMP".into(),
            qty: 10,
        })
        .unwrap();
        let left = bus
            .dispatch_blocking(Allocate {
                orderid: "o1".into(),
                sku: "LAMP".into(),
                qty: 4,
            })
            .unwrap();
        assert_eq!(left, 6);
        bus.dispatch_blocking(Allocate {
            orderid: "o2".into(),
            sku: "LAMP".into(),
            qty: 9,
        })
        .unwrap();
        let error = bus
            .dispatch_blocking(Allocate {
                orderid: "o3".into(),
                sku: "SOFA".into(),
                qty: 1,
            })
            .unwrap_err();
        assert_eq!(
            error.handler_error(),
            Some(&AllocationError::InvalidSku("SOFA".into()))
        );
        assert_eq!(
            *recorded.0.lock().unwrap(),
            ["allocated 4 x LAMP to order o1", "out of stock: LAMP"]
        );
    }
}
