//! What the relational units of work (SQLite, PostgreSQL) share: the
//! products a unit of work loaded or added, as they were loaded, and the
//! difference to write back at commit. Only the SQL differs between them.

use std::collections::HashMap;

use bus_core::transport::OutboundMessage;
use bus_core::{Aggregate, MessageContext};
use chrono::NaiveDate;

use crate::domain::model::{Batch, OrderLine, Product};
use crate::service_layer::unit_of_work::UowError;

/// An allocation row as it was loaded.
#[derive(Debug)]
pub(crate) struct StoredLine {
    /// The row's id.
    pub id: i64,
    /// The batch that holds the line.
    pub batchref: String,
    /// The line.
    pub line: OrderLine,
}

/// A batch row as it was loaded.
#[derive(Debug)]
pub(crate) struct StoredBatch {
    pub reference: String,
    pub purchased_quantity: i64,
    pub eta: Option<NaiveDate>,
}

/// A product tracked by a unit of work, with what is stored of it.
#[derive(Debug)]
pub(crate) struct Tracked {
    pub product: Product,
    /// `None` for a product added by this unit of work.
    pub loaded_version: Option<u64>,
    /// The allocation rows as loaded: saving writes only the difference.
    pub stored: Vec<StoredLine>,
}

impl Tracked {
    /// The product stored as `version`, `lines` and `batches` (in the order
    /// they were added).
    pub fn loaded(
        sku: &str,
        version: i64,
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
        for batch in batches {
            let lines = lines_by_batch
                .remove(batch.reference.as_str())
                .unwrap_or_default();
            let qty = to_u32(batch.purchased_quantity)?;
            restored.push(Batch::restore(
                batch.reference,
                sku.to_owned(),
                qty,
                batch.eta,
                lines,
            ));
        }
        Ok(Tracked {
            product: Product::new(sku, restored, version),
            loaded_version: Some(version),
            stored,
        })
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

/// The products one unit of work loaded or added, in that order.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    seen: Vec<Tracked>,
}

impl Tracker {
    /// The tracked product with this sku.
    pub fn by_sku(&mut self, sku: &str) -> Option<&mut Product> {
        self.seen
            .iter_mut()
            .find(|t| t.product.sku == sku)
            .map(|t| &mut t.product)
    }

    /// The tracked product that has a batch with this reference.
    pub fn by_batchref(&mut self, reference: &str) -> Option<&mut Product> {
        self.seen
            .iter_mut()
            .find(|t| t.product.batch(reference).is_some())
            .map(|t| &mut t.product)
    }

    /// Tracks a loaded product.
    pub fn track(&mut self, tracked: Tracked) -> &mut Product {
        self.seen.push(tracked);
        let last = self.seen.len() - 1;
        &mut self.seen[last].product
    }

    /// Tracks a new product.
    pub fn add(&mut self, product: Product) -> &mut Product {
        self.track(Tracked {
            product,
            loaded_version: None,
            stored: Vec::new(),
        })
    }

    /// The sku of the first product to write, if any is to be written.
    pub fn first_changed(&self) -> Option<&str> {
        self.changed().next().map(|t| t.product.sku.as_str())
    }

    /// The products to write at commit.
    pub fn changed(&self) -> impl Iterator<Item = &Tracked> {
        self.seen.iter().filter(|t| t.changed())
    }

    /// The external events of the products to write, as outbox messages
    /// continuing `flow` (the message whose handler this unit of work
    /// serves).
    pub fn outbound(&self, flow: &MessageContext) -> Result<Vec<OutboundMessage>, UowError> {
        let mut messages = Vec::new();
        for tracked in self.changed() {
            for event in tracked.product.recorded().iter() {
                if let Some(message) = OutboundMessage::from_event(event, flow) {
                    messages.push(message.map_err(|e| UowError::Storage(Box::new(e)))?);
                }
            }
        }
        Ok(messages)
    }

    /// Forgets every product, and hands over the events they raised.
    ///
    /// Called once a commit went through: the stored rows no longer match
    /// what was loaded, so anything loaded after it is read afresh.
    pub fn take_events(&mut self) -> Vec<bus_core::PendingEvent> {
        self.seen
            .drain(..)
            .flat_map(|mut tracked| tracked.product.events().take())
            .collect()
    }

    /// Forgets every product (the rollback of a unit of work that writes
    /// nothing before its commit).
    pub fn clear(&mut self) {
        self.seen.clear();
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

/// Maps a failed write of an inbound message's id to the inbox: a unique
/// violation means the message was handled already.
pub(crate) fn inbox_error(error: sqlx::Error, message_id: bus_core::MessageId) -> UowError {
    match error {
        sqlx::Error::Database(e) if e.is_unique_violation() => UowError::AlreadyHandled {
            message_id: message_id.to_string(),
        },
        other => UowError::Storage(Box::new(other)),
    }
}
