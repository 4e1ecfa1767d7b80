//! The aggregate: a `Product` and its `Batch`es of stock.
//!
//! Every change is an event: a method decides, then records what happened,
//! and the event's `apply` is the only code that changes the state. So the
//! same model is stored either way the service offers: as rows of its
//! current state (`--storage state`), or as its stream of events
//! (`--storage events`), rebuilt by applying them.

use std::cmp::Ordering;

use arch_events::event_store::{Apply, EventSourced, EventTypes, Snapshotted};
use arch_events::{Aggregate, EventRecorder};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::events::{
    Allocated, AllocationReleased, BatchAdded, BatchQuantityChanged, Deallocated, OutOfStock,
};

/// One line of a customer's order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OrderLine {
    /// The order.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// Units.
    pub qty: u32,
}

/// Stock of one product that is in the warehouse (`eta: None`) or on its way.
///
/// A batch always knows how many units it has allocated; it holds only the
/// lines its repository loaded (see
/// [`ProductRepository`](crate::service_layer::unit_of_work::ProductRepository)):
/// a decision never needs every line ever allocated, and loading them all
/// would make every request cost more than the one before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Unique reference.
    pub reference: String,
    /// The product.
    pub sku: String,
    /// When it arrives; `None` when it is in the warehouse.
    pub eta: Option<NaiveDate>,
    purchased_quantity: u32,
    /// Units allocated, by every line (loaded or not).
    allocated_quantity: u64,
    /// The lines loaded, oldest first.
    allocations: Vec<OrderLine>,
    /// Whether `allocations` holds every line of the batch.
    all_loaded: bool,
}

impl Batch {
    /// A batch with nothing allocated.
    pub fn new(reference: &str, sku: &str, qty: u32, eta: Option<NaiveDate>) -> Self {
        Batch {
            reference: reference.to_owned(),
            sku: sku.to_owned(),
            eta,
            purchased_quantity: qty,
            allocated_quantity: 0,
            allocations: Vec::new(),
            all_loaded: true,
        }
    }

    /// A batch as stored, with every allocation, in the order they were made.
    pub fn restore(
        reference: String,
        sku: String,
        qty: u32,
        eta: Option<NaiveDate>,
        allocations: Vec<OrderLine>,
    ) -> Self {
        let allocated_quantity = allocations.iter().map(|l| u64::from(l.qty)).sum();
        Batch {
            all_loaded: true,
            ..Batch::restore_partly(reference, sku, qty, eta, allocated_quantity, allocations)
        }
    }

    /// A batch as stored, with `allocated_quantity` units allocated and only
    /// some of its lines loaded (`loaded`, oldest first): enough to allocate
    /// to it, and to know whether those lines are in it, not to change its
    /// quantity.
    pub fn restore_partly(
        reference: String,
        sku: String,
        qty: u32,
        eta: Option<NaiveDate>,
        allocated_quantity: u64,
        loaded: Vec<OrderLine>,
    ) -> Self {
        Batch {
            reference,
            sku,
            eta,
            purchased_quantity: qty,
            allocated_quantity,
            allocations: loaded,
            all_loaded: false,
        }
    }

    /// Whether every line of the batch is loaded.
    pub fn all_loaded(&self) -> bool {
        self.all_loaded
    }

    /// Units purchased.
    pub fn purchased_quantity(&self) -> u32 {
        self.purchased_quantity
    }

    /// The lines allocated to it that are loaded, oldest first: all of them
    /// when [`all_loaded`](Self::all_loaded).
    pub fn allocations(&self) -> &[OrderLine] {
        &self.allocations
    }

    /// Units allocated.
    pub fn allocated_quantity(&self) -> u64 {
        self.allocated_quantity
    }

    /// Units still free; negative after its quantity was reduced too far.
    pub fn available_quantity(&self) -> i64 {
        i64::from(self.purchased_quantity) - self.allocated_quantity() as i64
    }

    /// Whether the line is allocated to this batch (among the lines loaded).
    pub fn holds(&self, line: &OrderLine) -> bool {
        self.allocations.contains(line)
    }

    /// Whether the line fits: same product, enough stock.
    pub fn can_allocate(&self, line: &OrderLine) -> bool {
        self.sku == line.sku && self.available_quantity() >= i64::from(line.qty)
    }

    fn allocate(&mut self, line: OrderLine) {
        if !self.holds(&line) {
            self.allocated_quantity += u64::from(line.qty);
            self.allocations.push(line);
        }
    }

    /// Takes `line` off the batch; `false` when the batch does not hold it.
    fn deallocate(&mut self, line: &OrderLine) -> bool {
        let Some(at) = self.allocations.iter().rposition(|held| held == line) else {
            return false;
        };
        self.allocations.remove(at);
        self.allocated_quantity = self.allocated_quantity.saturating_sub(u64::from(line.qty));
        true
    }

    /// The lines to take off, most recent first, for `qty` units to hold
    /// what stays.
    fn lines_beyond(&self, qty: u32) -> Vec<OrderLine> {
        let mut allocated = self.allocated_quantity;
        let mut going = Vec::new();
        for line in self.allocations.iter().rev() {
            if allocated <= u64::from(qty) {
                break;
            }
            allocated -= u64::from(line.qty);
            going.push(line.clone());
        }
        going
    }

    /// Warehouse stock first, then the earliest arrival.
    fn preference(&self, other: &Batch) -> Ordering {
        match (self.eta, other.eta) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(a), Some(b)) => a.cmp(&b),
        }
    }
}

/// The aggregate: all batches of one product, changed together and versioned
/// for optimistic concurrency.
///
/// Its state changes only by the events it records (see the module's
/// documentation): [`Product::default`] and its stream's events rebuild it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Product {
    /// The product.
    pub sku: String,
    /// Its batches.
    pub batches: Vec<Batch>,
    /// Incremented by every change (a command's, whatever the number of
    /// events it records); a unit of work checks it at commit.
    pub version_number: u64,
    #[serde(skip)]
    events: EventRecorder,
}

impl Aggregate for Product {
    fn events(&mut self) -> &mut EventRecorder {
        &mut self.events
    }
}

/// A product's stream, `product-<sku>`, holds these events.
impl EventSourced for Product {
    const KIND: &'static str = "product";

    fn event_types(types: EventTypes<Self>) -> EventTypes<Self> {
        types
            .event::<BatchAdded>()
            .event::<Allocated>()
            .event::<BatchQuantityChanged>()
            .event::<Deallocated>()
            .event::<AllocationReleased>()
            // Released for the buyers' sake, never stored: running out
            // changes nothing, and a refused request grows no stream.
            .released::<OutOfStock>()
    }
}

/// A product is loaded from its latest snapshot and the events after it.
impl Snapshotted for Product {
    /// Bump it when the shape of `Product`, `Batch` or `OrderLine`
    /// changes: older snapshots are then ignored, and rebuilt.
    const STATE_VERSION: u32 = 1;
    const SNAPSHOT_EVERY: u64 = 25;
}

impl Apply<BatchAdded> for Product {
    fn apply(&mut self, event: &BatchAdded) {
        if self.sku.is_empty() {
            self.sku.clone_from(&event.sku);
        }
        self.batches.push(Batch::new(
            &event.reference,
            &event.sku,
            event.qty,
            event.eta,
        ));
        self.version_number = event.version;
    }
}

impl Apply<Allocated> for Product {
    fn apply(&mut self, event: &Allocated) {
        if let Some(batch) = self.batch_mut(&event.batchref) {
            batch.allocate(OrderLine {
                orderid: event.orderid.clone(),
                sku: event.sku.clone(),
                qty: event.qty,
            });
        }
        self.version_number = event.version;
    }
}

impl Apply<BatchQuantityChanged> for Product {
    fn apply(&mut self, event: &BatchQuantityChanged) {
        if let Some(batch) = self.batch_mut(&event.reference) {
            batch.purchased_quantity = event.qty;
        }
        self.version_number = event.version;
    }
}

impl Apply<Deallocated> for Product {
    fn apply(&mut self, event: &Deallocated) {
        let line = OrderLine {
            orderid: event.orderid.clone(),
            sku: event.sku.clone(),
            qty: event.qty,
        };
        // A line is held by one batch at most: `allocate` never allocates a
        // line the product holds.
        for batch in &mut self.batches {
            if batch.deallocate(&line) {
                break;
            }
        }
        self.version_number = event.version;
    }
}

impl Apply<AllocationReleased> for Product {
    fn apply(&mut self, event: &AllocationReleased) {
        let line = OrderLine {
            orderid: event.orderid.clone(),
            sku: event.sku.clone(),
            qty: event.qty,
        };
        if let Some(batch) = self.batch_mut(&event.batchref) {
            batch.deallocate(&line);
        }
        self.version_number = event.version;
    }
}

impl Product {
    /// A product as stored, with the given batches: a repository's
    /// restore. A new product is [`Product::default`] given its first batch
    /// by [`add_batch`](Self::add_batch).
    pub fn new(sku: &str, batches: Vec<Batch>, version_number: u64) -> Self {
        Product {
            sku: sku.to_owned(),
            batches,
            version_number,
            events: EventRecorder::default(),
        }
    }

    /// The events recorded and not yet released.
    pub fn recorded(&self) -> &EventRecorder {
        &self.events
    }

    /// The batch with this reference.
    pub fn batch(&self, reference: &str) -> Option<&Batch> {
        self.batches.iter().find(|b| b.reference == reference)
    }

    fn batch_mut(&mut self, reference: &str) -> Option<&mut Batch> {
        self.batches.iter_mut().find(|b| b.reference == reference)
    }

    /// Adds a batch of `sku` (a product with no batch yet takes the sku of
    /// its first); `false` (and nothing changed) when the product has a
    /// batch with this reference already.
    pub fn add_batch(
        &mut self,
        reference: &str,
        sku: &str,
        qty: u32,
        eta: Option<NaiveDate>,
    ) -> bool {
        if self.batch(reference).is_some() {
            return false;
        }
        let version = self.version_number + 1;
        self.record(BatchAdded {
            reference: reference.to_owned(),
            sku: sku.to_owned(),
            qty,
            eta,
            version,
        });
        true
    }

    /// Allocates the line to the preferred batch that can take it and returns
    /// that batch's reference. A line already allocated stays where it is.
    /// When no batch can take it, records `OutOfStock` and returns `None`.
    pub fn allocate(&mut self, line: OrderLine) -> Option<String> {
        if let Some(batch) = self.batches.iter().find(|b| b.holds(&line)) {
            return Some(batch.reference.clone());
        }
        let preferred = self
            .batches
            .iter()
            .filter(|b| b.can_allocate(&line))
            .min_by(|a, b| a.preference(b));
        let Some(batch) = preferred else {
            // It changes nothing: no `Apply`, released and never stored.
            self.events.record(OutOfStock { sku: line.sku });
            return None;
        };
        let batchref = batch.reference.clone();
        let version = self.version_number + 1;
        self.record(Allocated {
            orderid: line.orderid,
            sku: line.sku,
            qty: line.qty,
            batchref: batchref.clone(),
            version,
        });
        Some(batchref)
    }

    /// Takes `line` off its batch for good, returning its units, and
    /// records `AllocationReleased`; `false` (and nothing changed) when no
    /// batch holds it.
    pub fn release(&mut self, line: &OrderLine) -> bool {
        let Some(batch) = self.batches.iter().find(|b| b.holds(line)) else {
            return false;
        };
        let batchref = batch.reference.clone();
        let version = self.version_number + 1;
        self.record(AllocationReleased {
            orderid: line.orderid.clone(),
            sku: line.sku.clone(),
            qty: line.qty,
            batchref,
            version,
        });
        true
    }

    /// Sets a batch's purchased quantity, deallocating its most recent lines
    /// until the rest fit; records `BatchQuantityChanged`, then
    /// `Deallocated` for each line taken off.
    ///
    /// # Errors
    /// [`ChangeQuantityError::UnknownBatch`] when the product has no such
    /// batch; [`ChangeQuantityError::LinesNotLoaded`] when lines must be
    /// deallocated and the batch was loaded without all of them (the
    /// repository loaded it for another decision). Nothing changed then.
    pub fn change_batch_quantity(
        &mut self,
        reference: &str,
        qty: u32,
    ) -> Result<(), ChangeQuantityError> {
        let Some(batch) = self.batch(reference) else {
            return Err(ChangeQuantityError::UnknownBatch(reference.to_owned()));
        };
        if !batch.all_loaded && batch.allocated_quantity > u64::from(qty) {
            return Err(ChangeQuantityError::LinesNotLoaded(reference.to_owned()));
        }
        let going = batch.lines_beyond(qty);
        let version = self.version_number + 1;
        self.record(BatchQuantityChanged {
            reference: reference.to_owned(),
            qty,
            version,
        });
        for line in going {
            self.record(Deallocated {
                orderid: line.orderid,
                sku: line.sku,
                qty: line.qty,
                version,
            });
        }
        Ok(())
    }
}

/// Why a batch's quantity could not be changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeQuantityError {
    /// The product has no batch with this reference.
    #[error("the product has no batch {0}")]
    UnknownBatch(String),
    /// Lines must be deallocated, and not all of them were loaded.
    #[error("batch {0} was loaded without all its lines: load it by its reference")]
    LinesNotLoaded(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::{
        Allocated, BatchAdded, BatchQuantityChanged, Deallocated, OutOfStock,
    };
    use arch_events::testing::{given, given_events};
    use chrono::Days;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 26).unwrap()
    }

    fn line(orderid: &str, sku: &str, qty: u32) -> OrderLine {
        OrderLine {
            orderid: orderid.into(),
            sku: sku.into(),
            qty,
        }
    }

    #[test]
    fn allocating_reduces_the_available_quantity() {
        let mut product = Product::new(
            "SMALL-TABLE",
            vec![Batch::new("b1", "SMALL-TABLE", 20, None)],
            0,
        );
        assert_eq!(
            product.allocate(line("o1", "SMALL-TABLE", 2)).as_deref(),
            Some("b1")
        );
        assert_eq!(product.batch("b1").unwrap().available_quantity(), 18);
    }

    #[test]
    fn can_allocate_when_available_is_greater_or_equal_but_not_smaller() {
        let batch = Batch::new("b1", "LAMP", 2, None);
        assert!(batch.can_allocate(&line("o", "LAMP", 1)));
        assert!(batch.can_allocate(&line("o", "LAMP", 2)));
        assert!(!batch.can_allocate(&line("o", "LAMP", 3)));
        assert!(
            !batch.can_allocate(&line("o", "OTHER", 1)),
            "another sku never fits"
        );
    }

    #[test]
    fn warehouse_stock_is_preferred_to_shipments() {
        let mut product = Product::new(
            "CLOCK",
            vec![
                Batch::new("shipment", "CLOCK", 100, Some(today() + Days::new(1))),
                Batch::new("in-stock", "CLOCK", 100, None),
            ],
            0,
        );
        assert_eq!(
            product.allocate(line("o1", "CLOCK", 10)).as_deref(),
            Some("in-stock")
        );
        assert_eq!(product.batch("in-stock").unwrap().available_quantity(), 90);
        assert_eq!(product.batch("shipment").unwrap().available_quantity(), 100);
    }

    #[test]
    fn the_earliest_shipment_is_preferred() {
        let mut product = Product::new(
            "SPOON",
            vec![
                Batch::new("slow", "SPOON", 100, Some(today() + Days::new(10))),
                Batch::new("medium", "SPOON", 100, Some(today() + Days::new(5))),
                Batch::new("speedy", "SPOON", 100, Some(today())),
            ],
            0,
        );
        assert_eq!(
            product.allocate(line("o1", "SPOON", 10)).as_deref(),
            Some("speedy")
        );
    }

    #[test]
    fn allocation_skips_batches_that_cannot_take_the_line() {
        let mut product = Product::new(
            "FORK",
            vec![
                Batch::new("in-stock", "FORK", 5, None),
                Batch::new("shipment", "FORK", 100, Some(today())),
            ],
            0,
        );
        assert_eq!(
            product.allocate(line("o1", "FORK", 10)).as_deref(),
            Some("shipment")
        );
    }

    #[test]
    fn allocation_is_idempotent() {
        let mut product = Product::new("DESK", vec![Batch::new("b1", "DESK", 20, None)], 0);
        let order = line("o1", "DESK", 2);
        assert_eq!(product.allocate(order.clone()).as_deref(), Some("b1"));
        let version = product.version_number;
        assert_eq!(product.allocate(order).as_deref(), Some("b1"));
        assert_eq!(product.batch("b1").unwrap().available_quantity(), 18);
        assert_eq!(
            product.version_number, version,
            "nothing changed the second time"
        );
        assert_eq!(product.recorded().len(), 1, "one Allocated event only");
    }

    #[test]
    fn allocation_records_allocated_and_bumps_the_version() {
        given(Product::new(
            "BED",
            vec![Batch::new("b1", "BED", 20, None)],
            7,
        ))
        .when(|product| product.allocate(line("o1", "BED", 3)))
        .then_events(&[Allocated {
            orderid: "o1".into(),
            sku: "BED".into(),
            qty: 3,
            batchref: "b1".into(),
            version: 8,
        }])
        .then(|product, batchref| {
            assert_eq!(batchref.as_deref(), Some("b1"));
            assert_eq!(product.version_number, 8);
        });
    }

    #[test]
    fn out_of_stock_records_an_event_and_changes_nothing() {
        let mut product = Product::new("SOFA", vec![Batch::new("b1", "SOFA", 10, None)], 3);
        product.allocate(line("o1", "SOFA", 10));
        given(product)
            .when(|product| product.allocate(line("o2", "SOFA", 1)))
            .then_events(&[OutOfStock { sku: "SOFA".into() }])
            .then(|product, batchref| {
                assert_eq!(*batchref, None);
                assert_eq!(product.version_number, 4, "no allocation, no new version");
            });
    }

    #[test]
    fn reducing_a_batch_below_its_allocations_deallocates_until_it_fits() {
        let mut product = Product::new("RUG", vec![Batch::new("b1", "RUG", 50, None)], 0);
        product.allocate(line("o1", "RUG", 20));
        product.allocate(line("o2", "RUG", 20));
        given(product)
            .when(|product| product.change_batch_quantity("b1", 25))
            .then_event_names(&[
                "allocation.batch_quantity_changed",
                "allocation.deallocated",
            ])
            .then(|product, changed| {
                assert_eq!(*changed, Ok(()));
                assert_eq!(product.version_number, 3, "one version for the command");
                let batch = product.batch("b1").unwrap();
                assert_eq!(batch.allocations(), [line("o1", "RUG", 20)]);
                assert_eq!(batch.available_quantity(), 5);
            });
    }

    /// The stream of a product rebuilds the state its commands left.
    #[test]
    fn a_product_is_rebuilt_from_its_events() {
        given_events::<Product>()
            .event(BatchAdded {
                reference: "b1".into(),
                sku: "RUG".into(),
                qty: 50,
                eta: None,
                version: 1,
            })
            .event(Allocated {
                orderid: "o1".into(),
                sku: "RUG".into(),
                qty: 20,
                batchref: "b1".into(),
                version: 2,
            })
            .event(Allocated {
                orderid: "o2".into(),
                sku: "RUG".into(),
                qty: 20,
                batchref: "b1".into(),
                version: 3,
            })
            .when(|product| product.change_batch_quantity("b1", 15))
            .then(|product, changed| {
                assert_eq!(*changed, Ok(()));
                assert_eq!(product.sku, "RUG");
                assert_eq!(product.version_number, 4);
                let batch = product.batch("b1").unwrap();
                assert!(batch.allocations().is_empty(), "both lines went");
                assert_eq!(batch.purchased_quantity(), 15);
            })
            .then_event_names(&[
                "allocation.batch_quantity_changed",
                "allocation.deallocated",
                "allocation.deallocated",
            ]);
    }

    #[test]
    fn a_quantity_change_records_the_new_quantity_first() {
        given(Product::new(
            "RUG",
            vec![Batch::new("b1", "RUG", 5, None)],
            2,
        ))
        .when(|product| product.change_batch_quantity("b1", 9))
        .then_events(&[BatchQuantityChanged {
            reference: "b1".into(),
            qty: 9,
            version: 3,
        }]);
    }

    #[test]
    fn a_deallocation_takes_off_the_line_it_names() {
        let mut product = Product::new("RUG", vec![Batch::new("b1", "RUG", 50, None)], 0);
        product.allocate(line("o1", "RUG", 1));
        product.allocate(line("o2", "RUG", 2));
        product.allocate(line("o3", "RUG", 3));
        given(product)
            .when(|product| {
                product.record(Deallocated {
                    orderid: "o2".into(),
                    sku: "RUG".into(),
                    qty: 2,
                    version: 4,
                })
            })
            .then(|product, ()| {
                let batch = product.batch("b1").unwrap();
                assert_eq!(
                    batch.allocations(),
                    [line("o1", "RUG", 1), line("o3", "RUG", 3)]
                );
                assert_eq!(batch.allocated_quantity(), 4);
            });
    }

    #[test]
    fn a_batch_is_added_once() {
        let mut product = Product::new("RUG", vec![Batch::new("b1", "RUG", 5, None)], 2);
        assert!(!product.add_batch("b1", "RUG", 50, None));
        assert_eq!(product.version_number, 2);
        assert_eq!(product.batch("b1").unwrap().purchased_quantity(), 5);
        assert!(product.add_batch("b2", "RUG", 50, None));
        assert_eq!(product.version_number, 3);
        assert_eq!(product.recorded().len(), 1, "one BatchAdded");
    }

    #[test]
    fn changing_an_unknown_batch_reports_it() {
        let mut product = Product::new("RUG", vec![], 0);
        assert_eq!(
            product.change_batch_quantity("nope", 1),
            Err(ChangeQuantityError::UnknownBatch("nope".into()))
        );
        assert_eq!(product.version_number, 0);
    }

    #[test]
    fn a_partly_loaded_batch_is_never_reduced_below_its_allocations() {
        let batch = Batch::restore_partly("b1".into(), "RUG".into(), 50, None, 40, vec![]);
        let mut product = Product::new("RUG", vec![batch], 4);
        assert_eq!(
            product.change_batch_quantity("b1", 30),
            Err(ChangeQuantityError::LinesNotLoaded("b1".into()))
        );
        assert_eq!(product.version_number, 4, "nothing changed");
        assert_eq!(product.batch("b1").unwrap().purchased_quantity(), 50);
        assert_eq!(
            product.change_batch_quantity("b1", 45),
            Ok(()),
            "no line to move"
        );
        assert_eq!(product.batch("b1").unwrap().available_quantity(), 5);
    }

    #[test]
    fn a_partly_loaded_batch_counts_the_lines_it_did_not_load() {
        let batch = Batch::restore_partly("b1".into(), "RUG".into(), 10, None, 9, vec![]);
        let mut product = Product::new("RUG", vec![batch], 1);
        assert_eq!(
            product.allocate(line("o9", "RUG", 2)),
            None,
            "one unit is free"
        );
        assert_eq!(
            product.allocate(line("o9", "RUG", 1)).as_deref(),
            Some("b1")
        );
        assert_eq!(product.batch("b1").unwrap().allocated_quantity(), 10);
    }
}
