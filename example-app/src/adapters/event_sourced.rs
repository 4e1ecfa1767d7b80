//! The unit of work of `--storage events`: each product is a stream in
//! arch-events-sqlx's event store, rebuilt from its latest snapshot and the
//! events after it; a commit appends what the product recorded, at the
//! version it was loaded at, and stages the events for their handlers (and
//! the outbox) in the same transaction, with the product's snapshot when
//! one is due. A database brings only its SQL, as
//! [`ProductStreams`] (SQLite and PostgreSQL here).

use arch_events::event_store::{EventStoreError, Loaded};
use arch_events::{async_trait, EventReleaser, MessageContext, PendingEvent};
use arch_events_sqlx::{Backend, SqlEventStore, Staged, Store};
use sqlx::Transaction;

use super::product_locks::{ProductGuard, ProductLocks};
use super::relational::{failed_already, stage_error};
use crate::domain::events::BatchAdded;
use crate::domain::model::{OrderLine, Product};
use crate::service_layer::unit_of_work::{
    ProductRepository, UnitOfWork, UnitOfWorkFactory, UowError,
};

/// A database's SQL for the event-sourced unit of work: the store, and the
/// index of batch references (an inline projection, written with the
/// append).
#[async_trait]
pub trait ProductStreams: Clone + Send + Sync + 'static {
    /// The database.
    type Db: Backend;

    /// The durable messaging store on it.
    fn store(&self) -> &Store<Self::Db>;

    /// The event store on it.
    fn event_store(&self) -> &SqlEventStore<Self::Db>;

    /// The units of work of this process that hold a product.
    fn locks(&self) -> &ProductLocks;

    /// The sku of the product whose stream added the batch `reference`.
    async fn product_of_batch(&self, reference: &str) -> Result<Option<String>, sqlx::Error>;

    /// Records, in `transaction`, that the batch `reference` is the
    /// product `sku`'s: a reference taken already is a unique violation.
    async fn index_batch(
        &self,
        transaction: &mut Transaction<'static, Self::Db>,
        reference: &str,
        sku: &str,
    ) -> Result<(), sqlx::Error>;

    /// What a failed write of the product `sku` means: a lost race is a
    /// [`UowError::Conflict`], anything else [`UowError::Storage`].
    fn write_error(&self, error: sqlx::Error, sku: &str) -> UowError;
}

/// A factory of event-sourced units of work over `streams`, for bootstrap.
pub fn unit_of_work_factory<T: ProductStreams>(streams: T) -> UnitOfWorkFactory {
    std::sync::Arc::new(move |scope| {
        Box::new(
            EventSourcedUnitOfWork::new(streams.clone(), scope.releaser()).in_flow(scope.context()),
        )
    })
}

/// A unit of work whose products are their streams. Nothing is written
/// before [`commit`](arch_events::UnitOfWork::commit), and no transaction
/// is held while the handler decides.
///
/// Every load has every line of the product (its state is its whole
/// history), so each getter of [`ProductRepository`] loads the same
/// thing; a product is read once per unit of work.
pub struct EventSourcedUnitOfWork<T> {
    streams: T,
    /// The products loaded or added, in that order.
    seen: Vec<Loaded<Product>>,
    releaser: EventReleaser,
    /// The message whose handler this unit of work serves.
    flow: Option<MessageContext>,
    /// The product this unit of work holds (the first it loaded).
    held: Option<ProductGuard>,
    /// A commit failed after the products handed over their events: the
    /// unit of work cannot commit them any more.
    failed: bool,
}

impl<T: ProductStreams> EventSourcedUnitOfWork<T> {
    /// A unit of work over `streams` that releases into `releaser`.
    pub fn new(streams: T, releaser: EventReleaser) -> Self {
        EventSourcedUnitOfWork {
            streams,
            seen: Vec::new(),
            releaser,
            flow: None,
            held: None,
            failed: false,
        }
    }

    /// The same unit of work, serving the handler of the message `context`
    /// describes.
    pub fn in_flow(mut self, context: MessageContext) -> Self {
        self.flow = Some(context);
        self
    }

    /// The product `sku`: the one tracked, else loaded from its stream;
    /// `None` when it has no stream.
    async fn load(&mut self, sku: &str) -> Result<Option<&mut Product>, UowError> {
        let found = self.seen.iter().position(|p| p.stream().id() == sku);
        let index = match found {
            Some(index) => index,
            None => {
                if self.held.is_none() {
                    self.held = Some(self.streams.locks().lock(sku).await);
                }
                let loaded = Loaded::<Product>::load_snapshotted(self.streams.event_store(), sku)
                    .await
                    .map_err(storage)?;
                if loaded.version() == 0 {
                    return Ok(None);
                }
                self.seen.push(loaded);
                self.seen.len() - 1
            }
        };
        Ok(Some(&mut *self.seen[index]))
    }

    async fn load_by_batchref(
        &mut self,
        reference: &str,
    ) -> Result<Option<&mut Product>, UowError> {
        let sku = match self.seen.iter().find(|p| p.batch(reference).is_some()) {
            Some(product) => product.sku.clone(),
            None => match self
                .streams
                .product_of_batch(reference)
                .await
                .map_err(storage_sql)?
            {
                Some(sku) => sku,
                None => return Ok(None),
            },
        };
        self.load(&sku).await
    }

    /// Appends every product's new events and stages them, in one
    /// transaction; the events to release, `None` when there were none.
    async fn append(&mut self, flow: &MessageContext) -> Result<Option<Staged<T::Db>>, UowError> {
        let Some(first) = self.seen.iter().find(|p| !p.recorded().is_empty()) else {
            return Ok(None);
        };
        let sku = first.stream().id().to_owned();
        let streams = &self.streams;
        let mut tx = streams
            .store()
            .begin()
            .await
            .map_err(|e| streams.write_error(e, &sku))?;
        let mut released = Vec::new();
        for product in &mut self.seen {
            let sku = product.stream().id().to_owned();
            let events = streams
                .event_store()
                .save_in(&mut tx, product, flow)
                .await
                .map_err(|error| append_error(error, &sku))?;
            // A snapshot every so many events, with the events it follows.
            if let Some(snapshot) = product.snapshot_if_due().map_err(storage)? {
                streams
                    .event_store()
                    .save_snapshot_in(&mut tx, product.stream(), &snapshot)
                    .await
                    .map_err(storage)?;
            }
            for added in events
                .iter()
                .filter_map(PendingEvent::downcast_ref::<BatchAdded>)
            {
                streams
                    .index_batch(&mut tx, &added.reference, &sku)
                    .await
                    .map_err(|e| streams.write_error(e, &sku))?;
            }
            released.extend(events);
        }
        // The events for their handlers (again after a crash; external ones
        // for the outbox), the inbound message's inbox row and the record
        // of the delivery this call serves: with the append, or not at all.
        let staged = streams
            .store()
            .stage(&mut tx, &self.releaser, flow, released)
            .await
            .map_err(|e| stage_error(e, |e| streams.write_error(e, &sku)))?;
        tx.commit()
            .await
            .map_err(|e| streams.write_error(e, &sku))?;
        Ok(Some(staged))
    }
}

fn storage(error: EventStoreError) -> UowError {
    UowError::Storage(Box::new(error))
}

fn storage_sql(error: sqlx::Error) -> UowError {
    UowError::Storage(Box::new(error))
}

/// A lost race for the stream is the product's conflict.
fn append_error(error: EventStoreError, sku: &str) -> UowError {
    if error.is_conflict() {
        UowError::Conflict {
            sku: sku.to_owned(),
        }
    } else {
        storage(error)
    }
}

#[async_trait]
impl<T: ProductStreams> ProductRepository for EventSourcedUnitOfWork<T> {
    async fn get(&mut self, sku: &str) -> Result<Option<&mut Product>, UowError> {
        self.load(sku).await
    }

    async fn get_for_line(&mut self, line: &OrderLine) -> Result<Option<&mut Product>, UowError> {
        self.load(&line.sku).await
    }

    async fn get_by_batchref(&mut self, reference: &str) -> Result<Option<&mut Product>, UowError> {
        self.load_by_batchref(reference).await
    }

    async fn get_with_batch_lines(
        &mut self,
        reference: &str,
    ) -> Result<Option<&mut Product>, UowError> {
        self.load_by_batchref(reference).await
    }

    fn add(&mut self, sku: &str) -> &mut Product {
        // Its stream must not exist: if another unit of work created the
        // product meanwhile, the commit is a conflict.
        let mut product = Loaded::<Product>::new(sku);
        product.sku = sku.to_owned();
        self.seen.push(product);
        let last = self.seen.len() - 1;
        &mut self.seen[last]
    }
}

#[async_trait]
impl<T: ProductStreams> arch_events::UnitOfWork for EventSourcedUnitOfWork<T> {
    type Error = UowError;

    async fn commit(&mut self) -> Result<(), UowError> {
        if self.failed {
            return Err(failed_already());
        }
        let flow = self.flow.unwrap_or_default();
        match self.append(&flow).await {
            Ok(staged) => {
                // The next unit of work may have the product, and the
                // events go to their handlers.
                self.held = None;
                if let Some(staged) = staged {
                    staged.release();
                }
                // Anything loaded after this commit is read afresh.
                self.seen.clear();
                Ok(())
            }
            Err(error) => {
                self.failed = true;
                Err(error)
            }
        }
    }

    async fn rollback(&mut self) -> Result<(), UowError> {
        self.seen.clear();
        self.held = None;
        self.failed = false;
        Ok(())
    }
}

/// A unit of work dropped without commit or rollback while its products
/// held events says so (see the relational one).
impl<T> Drop for EventSourcedUnitOfWork<T> {
    fn drop(&mut self) {
        let changed = self.seen.iter().filter(|p| !p.recorded().is_empty());
        let events = changed.clone().map(|p| p.recorded().len()).sum();
        self.releaser.dropped_uncommitted(changed.count(), events);
    }
}

impl<T: ProductStreams> UnitOfWork for EventSourcedUnitOfWork<T> {
    fn products(&mut self) -> &mut dyn ProductRepository {
        self
    }
}
