//! The unit of work of a relational database, written once: it tracks the
//! products a handler loads or adds, and at commit writes the changed ones
//! and stages their events (arch-events-sqlx: durable delivery, the outbox, the
//! inbox, the delivery it serves) in one transaction, then releases the
//! events. A database brings only its SQL, as [`ProductTables`] (SQLite
//! and PostgreSQL here).

use std::sync::Arc;

use arch_events::{async_trait, Aggregate, BoxError, EventReleaser, MessageContext, PendingEvent};
use arch_events_sqlx::{Backend, StageError, Store};
use sqlx::{Executor, IntoArguments, Transaction};

use super::product_locks::{ProductGuard, ProductLocks};
use super::tracked::{Lines, Tracked};
use crate::domain::model::{OrderLine, Product};
use crate::service_layer::unit_of_work::{
    ProductRepository, UnitOfWork, UnitOfWorkFactory, UowError,
};

/// A database's SQL for the unit of work.
#[async_trait]
pub trait ProductTables: Clone + Send + Sync + 'static {
    /// The database.
    type Db: Backend;

    /// The durable messaging store on it.
    fn store(&self) -> &Store<Self::Db>;

    /// The units of work of this process that hold a product.
    fn locks(&self) -> &ProductLocks;

    /// The product with this sku, its batches and the allocation rows
    /// `lines` names, read from one snapshot.
    async fn load(&self, sku: &str, lines: Lines) -> Result<Option<Tracked>, UowError>;

    /// The sku of the product that has a batch with this reference.
    async fn sku_of_batch(&self, reference: &str) -> Result<Option<String>, UowError>;

    /// Writes one changed product in `transaction`:
    /// [`UowError::Conflict`] when it changed since it was loaded (of two
    /// concurrent changes, one commits).
    async fn save(
        &self,
        transaction: &mut Transaction<'static, Self::Db>,
        tracked: &Tracked,
    ) -> Result<(), UowError>;

    /// What a failed write of the product `sku` means: a lost race is a
    /// [`UowError::Conflict`], anything else [`UowError::Storage`].
    fn write_error(&self, error: sqlx::Error, sku: &str) -> UowError;
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
/// is written before [`commit`](arch_events::UnitOfWork::commit), and no
/// transaction is held while the handler decides.
pub struct RelationalUnitOfWork<T> {
    tables: T,
    /// The products loaded or added, in that order.
    seen: Vec<Tracked>,
    releaser: EventReleaser,
    /// The message whose handler this unit of work serves: the events it
    /// stages are caused by it, and an inbound one goes to the inbox.
    flow: Option<MessageContext>,
    /// The product this unit of work holds (the first it loaded), until it
    /// commits, rolls back or is dropped.
    held: Option<ProductGuard>,
    /// A commit failed after the products handed over their events: the
    /// unit of work cannot commit them any more.
    failed: bool,
}

impl<T: ProductTables> RelationalUnitOfWork<T> {
    /// A unit of work over `tables` that releases into `releaser`.
    pub fn new(tables: T, releaser: EventReleaser) -> Self {
        RelationalUnitOfWork {
            tables,
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

    fn position(&self, found: impl Fn(&Product) -> bool) -> Option<usize> {
        self.seen.iter().position(|t| found(&t.product))
    }

    /// The product `sku` with the rows `lines` names: the one tracked when
    /// it has them, else loaded (again, when it is tracked unchanged).
    async fn load(&mut self, sku: &str, lines: Lines) -> Result<Option<&mut Product>, UowError> {
        if let Some(index) = self.position(|p| p.sku == sku) {
            let tracked = &self.seen[index];
            if tracked.covers(&lines) {
                return Ok(Some(&mut self.seen[index].product));
            }
            if tracked.changed() || !tracked.product.recorded().is_empty() {
                return Err(UowError::Storage(
                    format!(
                        "product {sku} was changed after a load of {:?}, then asked for {lines:?}: \
                         load what the use case needs first",
                        tracked.lines
                    )
                    .into(),
                ));
            }
            self.seen.remove(index);
        }
        if self.held.is_none() {
            self.held = Some(self.tables.locks().lock(sku).await);
        }
        match self.tables.load(sku, lines).await? {
            Some(tracked) => Ok(Some(self.track(tracked))),
            None => Ok(None),
        }
    }

    fn track(&mut self, tracked: Tracked) -> &mut Product {
        self.seen.push(tracked);
        let last = self.seen.len() - 1;
        &mut self.seen[last].product
    }
}

#[async_trait]
impl<T: ProductTables> ProductRepository for RelationalUnitOfWork<T> {
    async fn get(&mut self, sku: &str) -> Result<Option<&mut Product>, UowError> {
        self.load(sku, Lines::None).await
    }

    async fn get_for_line(&mut self, line: &OrderLine) -> Result<Option<&mut Product>, UowError> {
        self.load(&line.sku, Lines::Of(line.clone())).await
    }

    async fn get_by_batchref(&mut self, reference: &str) -> Result<Option<&mut Product>, UowError> {
        self.load_by_batchref(reference, Lines::None).await
    }

    async fn get_with_batch_lines(
        &mut self,
        reference: &str,
    ) -> Result<Option<&mut Product>, UowError> {
        self.load_by_batchref(reference, Lines::InBatch(reference.to_owned()))
            .await
    }

    fn add(&mut self, sku: &str) -> &mut Product {
        self.track(Tracked {
            product: Product::new(sku, Vec::new(), 0),
            loaded_version: None,
            stored: Vec::new(),
            stored_batches: Vec::new(),
            lines: None,
        })
    }
}

impl<T: ProductTables> RelationalUnitOfWork<T> {
    /// The product that has a batch with this reference, with `lines`.
    async fn load_by_batchref(
        &mut self,
        reference: &str,
        lines: Lines,
    ) -> Result<Option<&mut Product>, UowError> {
        let sku = match self.position(|p| p.batch(reference).is_some()) {
            Some(index) => self.seen[index].product.sku.clone(),
            None => match self.tables.sku_of_batch(reference).await? {
                Some(sku) => sku,
                None => return Ok(None),
            },
        };
        // A batch never moves to another product: the sku read before the
        // product is held is still its product's.
        self.load(&sku, lines).await
    }
}

#[async_trait]
impl<T: ProductTables> arch_events::UnitOfWork for RelationalUnitOfWork<T> {
    type Error = UowError;

    async fn commit(&mut self) -> Result<(), UowError> {
        if self.failed {
            return Err(failed_already());
        }
        let written = self.write().await;
        self.failed = written.is_err();
        written
    }

    async fn rollback(&mut self) -> Result<(), UowError> {
        // Nothing was written before commit: forgetting what was loaded is
        // the whole rollback.
        self.seen.clear();
        self.held = None;
        self.failed = false;
        Ok(())
    }
}

impl<T: ProductTables> RelationalUnitOfWork<T> {
    /// The commit: the changed products and their events, in one
    /// transaction, then the events released.
    async fn write(&mut self) -> Result<(), UowError> {
        let events: Vec<PendingEvent> = self
            .seen
            .iter_mut()
            .flat_map(|tracked| tracked.product.events().take())
            .collect();
        let changed: Vec<&Tracked> = self.seen.iter().filter(|t| t.changed()).collect();
        if changed.is_empty() && events.is_empty() {
            self.seen.clear();
            self.held = None;
            return Ok(());
        }
        // The product named in a conflict or storage error.
        let sku = changed
            .first()
            .map_or(&self.seen[0], |tracked| *tracked)
            .product
            .sku
            .clone();
        let store = self.tables.store();
        let mut tx = store
            .begin()
            .await
            .map_err(|e| self.tables.write_error(e, &sku))?;
        for tracked in changed {
            self.tables.save(&mut tx, tracked).await?;
        }
        // The events (for their handlers, again after a crash; external ones
        // for the outbox), the inbound message's inbox row, and the record
        // of the delivery this call serves: in the same transaction, so they
        // exist if and only if the change committed.
        let flow = self.flow.unwrap_or_default();
        let staged = store
            .stage(&mut tx, &self.releaser, &flow, events)
            .await
            .map_err(|e| stage_error(e, |e| self.tables.write_error(e, &sku)))?;
        tx.commit()
            .await
            .map_err(|e| self.tables.write_error(e, &sku))?;
        // The stored rows no longer match what was loaded: forget the
        // products, so that anything loaded after this commit is read afresh,
        // and let the next unit of work have the product.
        self.seen.clear();
        self.held = None;
        staged.release();
        Ok(())
    }
}

/// A unit of work dropped without commit or rollback while it held
/// changes says so: when its handler returns `Ok` all the same, the bus
/// warns (nothing was stored) and a test's recorder fails.
impl<T> Drop for RelationalUnitOfWork<T> {
    fn drop(&mut self) {
        let changed = self.seen.iter().filter(|t| t.changed()).count();
        let events = self.seen.iter().map(|t| t.product.recorded().len()).sum();
        self.releaser.dropped_uncommitted(changed, events);
    }
}

impl<T: ProductTables> UnitOfWork for RelationalUnitOfWork<T> {
    fn products(&mut self) -> &mut dyn ProductRepository {
        self
    }
}

/// What a unit of work whose commit failed answers to another commit: the
/// events it handed over are gone with the failed transaction, and
/// committing its changes without them would lose them for good.
pub fn failed_already() -> UowError {
    UowError::Storage(
        "a commit of this unit of work failed already: run the use case again, with a new one"
            .into(),
    )
}

/// What a failed staging of a unit of work's events means; `write_error`
/// says what a failed statement means for its product.
pub fn stage_error(
    error: StageError,
    write_error: impl FnOnce(sqlx::Error) -> UowError,
) -> UowError {
    match error {
        StageError::AlreadyHandled { message_id } => UowError::AlreadyHandled { message_id },
        StageError::Duplicate { event, .. } => UowError::AlreadyHandled { message_id: event },
        StageError::Database(error) => write_error(error),
        other => UowError::Storage(Box::new(other)),
    }
}

/// Runs one statement of a read model's (`query`) in a transaction of its
/// own that also records the delivery the call of `releaser` serves: a
/// redelivered event never writes the read model twice.
pub async fn write_once<'q, DB>(
    store: &Store<DB>,
    releaser: &EventReleaser,
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
) -> Result<(), BoxError>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    <DB as sqlx::Database>::Arguments<'q>: IntoArguments<'q, DB>,
{
    let mut tx = store.begin().await?;
    query.execute(&mut **tx).await?;
    let staged = store.stage_delivery(&mut tx, releaser).await?;
    tx.commit().await?;
    staged.release();
    Ok(())
}
