//! The unit of work of a relational database, written once: it tracks the
//! products a handler loads or adds, writes the changed ones at commit in
//! one transaction (with the inbound message's inbox row and the outbox
//! rows of the external events), then releases their events. A database
//! brings only its SQL, as [`ProductTables`] (SQLite and PostgreSQL here).

use std::sync::Arc;

use bus_core::transport::OutboundMessage;
use bus_core::{async_trait, Aggregate, EventReleaser, MessageContext, MessageId, PendingEvent};

use super::tracked::Tracked;
use crate::domain::model::Product;
use crate::service_layer::unit_of_work::{
    ProductRepository, UnitOfWork, UnitOfWorkFactory, UowError,
};

/// What a commit writes, in one transaction.
#[derive(Debug)]
pub struct Changes<'a> {
    /// The products to write; each one's version is checked against
    /// [`Tracked::loaded_version`] (of two concurrent changes, one commits).
    pub products: Vec<&'a Tracked>,
    /// The inbound message whose effects these are, for the inbox:
    /// [`UowError::AlreadyHandled`] if it is there already.
    pub handled: Option<MessageId>,
    /// The external events, for the outbox.
    pub outbound: Vec<OutboundMessage>,
}

/// A database's SQL for the unit of work.
#[async_trait]
pub trait ProductTables: Clone + Send + Sync + 'static {
    /// The product with this sku, its batches and allocations, read from
    /// one snapshot.
    async fn load(&self, sku: &str) -> Result<Option<Tracked>, UowError>;

    /// The sku of the product that has a batch with this reference.
    async fn sku_of_batch(&self, reference: &str) -> Result<Option<String>, UowError>;

    /// Writes `changes` in one transaction, or nothing:
    /// [`UowError::Conflict`] when a product changed since it was loaded.
    async fn write(&self, changes: Changes<'_>) -> Result<(), UowError>;
}

/// A factory of units of work over `tables`, for bootstrap.
pub fn unit_of_work_factory<T: ProductTables>(tables: T) -> UnitOfWorkFactory {
    Arc::new(move |scope| {
        Box::new(
            RelationalUnitOfWork::new(tables.clone(), scope.releaser()).in_flow(scope.context()),
        )
    })
}

/// A unit of work over a relational database's [`ProductTables`]. Nothing
/// is written before [`commit`](bus_core::UnitOfWork::commit), and no
/// transaction is held while the handler decides.
pub struct RelationalUnitOfWork<T> {
    tables: T,
    /// The products loaded or added, in that order.
    seen: Vec<Tracked>,
    releaser: EventReleaser,
    /// The message whose handler this unit of work serves: external events
    /// written to the outbox carry its ids.
    flow: Option<MessageContext>,
}

impl<T: ProductTables> RelationalUnitOfWork<T> {
    /// A unit of work over `tables` that releases into `releaser`.
    pub fn new(tables: T, releaser: EventReleaser) -> Self {
        RelationalUnitOfWork {
            tables,
            seen: Vec::new(),
            releaser,
            flow: None,
        }
    }

    /// The same unit of work, serving the handler of the message `context`
    /// describes (its outbox messages continue that flow).
    pub fn in_flow(mut self, context: MessageContext) -> Self {
        self.flow = Some(context);
        self
    }

    fn position(&self, found: impl Fn(&Product) -> bool) -> Option<usize> {
        self.seen.iter().position(|t| found(&t.product))
    }

    fn product_at(&mut self, index: usize) -> Option<&mut Product> {
        self.seen.get_mut(index).map(|t| &mut t.product)
    }

    fn track(&mut self, tracked: Tracked) -> &mut Product {
        self.seen.push(tracked);
        let last = self.seen.len() - 1;
        &mut self.seen[last].product
    }

    /// The external events of the changed products, as outbox messages
    /// continuing `flow`.
    fn outbound(&self, flow: &MessageContext) -> Result<Vec<OutboundMessage>, UowError> {
        let mut messages = Vec::new();
        for tracked in self.seen.iter().filter(|t| t.changed()) {
            for event in tracked.product.recorded().iter() {
                if let Some(message) = OutboundMessage::from_event(event, flow) {
                    messages.push(message.map_err(|e| UowError::Storage(Box::new(e)))?);
                }
            }
        }
        Ok(messages)
    }
}

#[async_trait]
impl<T: ProductTables> ProductRepository for RelationalUnitOfWork<T> {
    async fn get(&mut self, sku: &str) -> Result<Option<&mut Product>, UowError> {
        if let Some(index) = self.position(|p| p.sku == sku) {
            return Ok(self.product_at(index));
        }
        match self.tables.load(sku).await? {
            Some(tracked) => Ok(Some(self.track(tracked))),
            None => Ok(None),
        }
    }

    async fn get_by_batchref(&mut self, reference: &str) -> Result<Option<&mut Product>, UowError> {
        if let Some(index) = self.position(|p| p.batch(reference).is_some()) {
            return Ok(self.product_at(index));
        }
        match self.tables.sku_of_batch(reference).await? {
            Some(sku) => self.get(&sku).await,
            None => Ok(None),
        }
    }

    fn add(&mut self, product: Product) -> &mut Product {
        self.track(Tracked {
            product,
            loaded_version: None,
            stored: Vec::new(),
        })
    }
}

#[async_trait]
impl<T: ProductTables> bus_core::UnitOfWork for RelationalUnitOfWork<T> {
    type Error = UowError;

    async fn commit(&mut self) -> Result<(), UowError> {
        if self.seen.iter().any(Tracked::changed) {
            let flow = self.flow.unwrap_or_default();
            let changes = Changes {
                outbound: self.outbound(&flow)?,
                handled: flow.is_inbound().then(|| flow.message_id()),
                products: self.seen.iter().filter(|t| t.changed()).collect(),
            };
            self.tables.write(changes).await?;
        }
        // The stored rows no longer match what was loaded: forget the
        // products, so that anything loaded after this commit is read afresh.
        let events: Vec<PendingEvent> = self
            .seen
            .drain(..)
            .flat_map(|mut tracked| tracked.product.events().take())
            .collect();
        self.releaser.release_all(events);
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), UowError> {
        // Nothing was written before commit: forgetting what was loaded is
        // the whole rollback.
        self.seen.clear();
        Ok(())
    }
}

impl<T: ProductTables> UnitOfWork for RelationalUnitOfWork<T> {
    fn products(&mut self) -> &mut dyn ProductRepository {
        self
    }
}
