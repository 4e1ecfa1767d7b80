//! The aggregate: a `Product` and its `Batch`es of stock.

use std::cmp::Ordering;

use arch_events::{Aggregate, EventRecorder};
use chrono::NaiveDate;

use super::events::{Allocated, Deallocated, OutOfStock};

/// One line of a customer's order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

    fn deallocate_one(&mut self) -> Option<OrderLine> {
        let line = self.allocations.pop()?;
        self.allocated_quantity -= u64::from(line.qty);
        Some(line)
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
#[derive(Debug, Clone)]
pub struct Product {
    /// The product.
    pub sku: String,
    /// Its batches.
    pub batches: Vec<Batch>,
    /// Incremented by every change; a unit of work checks it at commit.
    pub version_number: u64,
    events: EventRecorder,
}

impl Aggregate for Product {
    fn events(&mut self) -> &mut EventRecorder {
        &mut self.events
    }
}

impl Product {
    /// A product with the given batches.
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

    /// Adds a batch; `false` (and nothing changed) when the product has a
    /// batch with its reference already.
    pub fn add_batch(&mut self, batch: Batch) -> bool {
        if self.batch(&batch.reference).is_some() {
            return false;
        }
        self.batches.push(batch);
        self.version_number += 1;
        true
    }

    /// Allocates the line to the preferred batch that can take it and returns
    /// that batch's reference. A line already allocated stays where it is.
    /// When no batch can take it, records `OutOfStock` and returns `None`.
    pub fn allocate(&mut self, line: OrderLine) -> Option<String> {
        if let Some(batch) = self.batches.iter().find(|b| b.holds(&line)) {
            return Some(batch.reference.clone());
        }
        let mut candidates: Vec<&mut Batch> = self
            .batches
            .iter_mut()
            .filter(|b| b.can_allocate(&line))
            .collect();
        candidates.sort_by(|a, b| a.preference(b));
        let Some(batch) = candidates.into_iter().next() else {
            self.events.record(OutOfStock {
                sku: line.sku.clone(),
            });
            return None;
        };
        let reference = batch.reference.clone();
        let version = self.version_number + 1;
        self.events.record(Allocated {
            orderid: line.orderid.clone(),
            sku: line.sku.clone(),
            qty: line.qty,
            batchref: reference.clone(),
            version,
        });
        batch.allocate(line);
        self.version_number = version;
        Some(reference)
    }

    /// Sets a batch's purchased quantity, deallocating its most recent lines
    /// until the rest fit; records `Deallocated` for each.
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
        let Some(batch) = self.batches.iter_mut().find(|b| b.reference == reference) else {
            return Err(ChangeQuantityError::UnknownBatch(reference.to_owned()));
        };
        if !batch.all_loaded && batch.allocated_quantity > u64::from(qty) {
            return Err(ChangeQuantityError::LinesNotLoaded(reference.to_owned()));
        }
        let version = self.version_number + 1;
        batch.purchased_quantity = qty;
        while batch.available_quantity() < 0 {
            let Some(line) = batch.deallocate_one() else {
                break;
            };
            self.events.record(Deallocated {
                orderid: line.orderid,
                sku: line.sku,
                qty: line.qty,
                version,
            });
        }
        self.version_number = version;
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
    use crate::domain::events::{Allocated, Deallocated, OutOfStock};
    use arch_events::testing::given;
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
            .then_events(&[Deallocated {
                orderid: "o2".into(),
                sku: "RUG".into(),
                qty: 20,
                version: 3,
            }])
            .then(|product, changed| {
                assert_eq!(*changed, Ok(()));
                let batch = product.batch("b1").unwrap();
                assert_eq!(batch.allocations(), [line("o1", "RUG", 20)]);
                assert_eq!(batch.available_quantity(), 5);
            });
    }

    #[test]
    fn a_batch_is_added_once() {
        let mut product = Product::new("RUG", vec![Batch::new("b1", "RUG", 5, None)], 2);
        assert!(!product.add_batch(Batch::new("b1", "RUG", 50, None)));
        assert_eq!(product.version_number, 2);
        assert_eq!(product.batch("b1").unwrap().purchased_quantity(), 5);
        assert!(product.add_batch(Batch::new("b2", "RUG", 50, None)));
        assert_eq!(product.version_number, 3);
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
