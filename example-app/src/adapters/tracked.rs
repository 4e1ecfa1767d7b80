//! A product as a relational database stores it: the rows it was loaded
//! from, and the difference to write back at commit. What an adapter of
//! [`ProductTables`](super::relational::ProductTables) reads and writes.

use std::collections::HashMap;

use chrono::NaiveDate;

use crate::domain::model::{Batch, OrderLine, Product};
use crate::service_layer::unit_of_work::UowError;

/// An allocation row as it was loaded.
#[derive(Debug)]
pub struct StoredLine {
    /// The row's id.
    pub id: i64,
    /// The batch that holds the line.
    pub batchref: String,
    /// The line.
    pub line: OrderLine,
}

/// A batch row as it was loaded.
#[derive(Debug)]
pub struct StoredBatch {
    /// The batch's reference.
    pub reference: String,
    /// Its quantity.
    pub purchased_quantity: i64,
    /// Units allocated to it, by every line.
    pub allocated_quantity: i64,
    /// When it arrives; `None`: in the warehouse.
    pub eta: Option<NaiveDate>,
}

/// What a batch row holds, to tell whether saving must write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    /// The batch's reference.
    pub reference: String,
    /// Its quantity.
    pub purchased_quantity: u32,
    /// Units allocated to it.
    pub allocated_quantity: u64,
    /// When it arrives.
    pub eta: Option<NaiveDate>,
}

impl BatchRow {
    fn of(batch: &Batch) -> BatchRow {
        BatchRow {
            reference: batch.reference.clone(),
            purchased_quantity: batch.purchased_quantity(),
            allocated_quantity: batch.allocated_quantity(),
            eta: batch.eta,
        }
    }
}

/// What saving does with one batch's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchWrite {
    /// A new batch: insert its row.
    Insert,
    /// A loaded batch that changed: update its row.
    Update,
    /// A loaded batch as it was: nothing to write.
    Keep,
}

/// Which allocation rows a load reads besides the product's batches: only
/// what the decision at hand needs, so that a request costs the same after
/// a million allocations as after ten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lines {
    /// None: enough to add a batch.
    None,
    /// Where this line is allocated, if anywhere: enough to allocate it.
    Of(OrderLine),
    /// Every line of this batch: enough to change its quantity.
    InBatch(String),
}

impl Lines {
    /// Whether a load of `self` has every line a load of `other` would.
    pub fn covers(&self, other: &Lines) -> bool {
        *other == Lines::None || self == other
    }
}

/// A product tracked by a unit of work, with what is stored of it.
#[derive(Debug)]
pub struct Tracked {
    /// The product, as the handler changed it.
    pub product: Product,
    /// `None` for a product added by this unit of work.
    pub loaded_version: Option<u64>,
    /// The allocation rows as loaded: saving writes only the difference.
    pub stored: Vec<StoredLine>,
    /// The batch rows as loaded: saving updates those that changed, leaves
    /// the others alone, and inserts the new ones (a reference taken
    /// meanwhile is refused).
    pub stored_batches: Vec<BatchRow>,
    /// Which rows those are; everything for a product added.
    pub lines: Option<Lines>,
}

impl Tracked {
    /// The product stored as `version` and `batches` (in the order they
    /// were added), with the allocation rows `stored` that a load of
    /// `lines` read.
    pub fn loaded(
        sku: &str,
        version: i64,
        lines: Lines,
        stored: Vec<StoredLine>,
        batches: Vec<StoredBatch>,
    ) -> Result<Tracked, UowError> {
        let version = u64::try_from(version)
            .map_err(|_| UowError::Storage(format!("product {sku}: negative version").into()))?;
        let mut lines_by_batch: HashMap<&str, Vec<OrderLine>> = HashMap::new();
        for stored in &stored {
            lines_by_batch
                .entry(stored.batchref.as_str())
                .or_default()
                .push(stored.line.clone());
        }
        let mut restored = Vec::with_capacity(batches.len());
        let mut stored_batches = Vec::with_capacity(batches.len());
        for batch in batches {
            let lines_of = lines_by_batch
                .remove(batch.reference.as_str())
                .unwrap_or_default();
            let qty = to_u32(batch.purchased_quantity)?;
            let allocated = u64::try_from(batch.allocated_quantity).map_err(|_| {
                UowError::Storage(format!("batch {}: negative allocation", batch.reference).into())
            })?;
            let whole =
                matches!(&lines, Lines::InBatch(reference) if *reference == batch.reference);
            let restored_batch = if whole {
                Batch::restore(batch.reference, sku.to_owned(), qty, batch.eta, lines_of)
            } else {
                Batch::restore_partly(
                    batch.reference,
                    sku.to_owned(),
                    qty,
                    batch.eta,
                    allocated,
                    lines_of,
                )
            };
            if restored_batch.allocated_quantity() != allocated {
                return Err(UowError::Storage(
                    format!(
                        "batch {}: its lines add up to {} units, its row says {allocated}",
                        restored_batch.reference,
                        restored_batch.allocated_quantity()
                    )
                    .into(),
                ));
            }
            stored_batches.push(BatchRow::of(&restored_batch));
            restored.push(restored_batch);
        }
        Ok(Tracked {
            product: Product::new(sku, restored, version),
            loaded_version: Some(version),
            stored,
            stored_batches,
            lines: Some(lines),
        })
    }

    /// Whether the load had every line a decision needing `lines` reads.
    pub fn covers(&self, lines: &Lines) -> bool {
        self.lines
            .as_ref()
            .is_none_or(|loaded| loaded.covers(lines))
    }

    /// What saving must do with `batch`'s row: a product change touches
    /// one or two batches, and writing only those keeps a save's cost
    /// independent of how many batches the product has.
    /// `index` is the batch's place in the product: batches keep the order
    /// they were loaded in, new ones come after.
    pub fn batch_write(&self, index: usize, batch: &Batch) -> BatchWrite {
        let stored = self
            .stored_batches
            .get(index)
            .filter(|stored| stored.reference == batch.reference)
            .or_else(|| {
                self.stored_batches
                    .iter()
                    .find(|stored| stored.reference == batch.reference)
            });
        match stored {
            None => BatchWrite::Insert,
            Some(stored) if *stored == BatchRow::of(batch) => BatchWrite::Keep,
            Some(_) => BatchWrite::Update,
        }
    }

    /// Whether the product must be written at commit.
    pub fn changed(&self) -> bool {
        self.loaded_version != Some(self.product.version_number)
    }

    /// The allocation rows to write: the lines to insert (with their
    /// batch), and the ids of the rows to delete. Lines that did not move
    /// keep their rows, and so their order.
    pub fn line_changes(&self) -> (Vec<(&str, &OrderLine)>, Vec<i64>) {
        let mut unmatched: HashMap<(&str, &OrderLine), Vec<i64>> = HashMap::new();
        for stored in &self.stored {
            unmatched
                .entry((stored.batchref.as_str(), &stored.line))
                .or_default()
                .push(stored.id);
        }
        let mut inserted = Vec::new();
        for batch in &self.product.batches {
            for line in batch.allocations() {
                let kept = unmatched
                    .get_mut(&(batch.reference.as_str(), line))
                    .and_then(Vec::pop);
                if kept.is_none() {
                    inserted.push((batch.reference.as_str(), line));
                }
            }
        }
        let mut deleted: Vec<i64> = unmatched.into_values().flatten().collect();
        deleted.sort_unstable();
        (inserted, deleted)
    }
}

/// A quantity read from the database.
pub(crate) fn to_u32(value: i64) -> Result<u32, UowError> {
    u32::try_from(value)
        .map_err(|_| UowError::Storage(format!("quantity {value} out of range").into()))
}

/// A version to write to the database.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
