//! In-memory adapters: a fake unit of work over the products and an
//! in-memory allocations view. The unit of work is `arch_events::testing`'s
//! generic one, with the same contract as the SQLite one (optimistic
//! concurrency included), so handler tests run on it; the dead letters of
//! in-memory adapters are `arch_events_sqlx::InMemoryDeadLetterStore`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arch_events::testing::{self, Entity};
use arch_events::{async_trait, EventReleaser};

use crate::domain::model::{OrderLine, Product};
use crate::service_layer::unit_of_work::{
    ProductRepository, UnitOfWork, UnitOfWorkFactory, UowError,
};
use crate::views::{AllocationRow, AllocationsView, AllocationsViewFactory, LineChange, ViewError};

impl Entity for Product {
    type Key = String;

    fn key(&self) -> String {
        self.sku.clone()
    }

    fn version(&self) -> u64 {
        self.version_number
    }
}

/// The products, shared by every in-memory unit of work of one app.
#[derive(Debug, Default)]
pub struct InMemoryProducts {
    products: Arc<testing::InMemoryStore<Product>>,
}

impl InMemoryProducts {
    /// A copy of the stored product.
    pub fn product(&self, sku: &str) -> Option<Product> {
        self.products.get(&sku.to_owned())
    }

    /// How many units of work committed.
    pub fn commits(&self) -> usize {
        self.products.commits()
    }

    /// A factory of units of work over this store, for bootstrap.
    pub fn unit_of_work_factory(self: &Arc<Self>) -> UnitOfWorkFactory {
        let store = self.clone();
        Arc::new(move |scope| Box::new(InMemoryUnitOfWork::new(store.clone(), scope.releaser())))
    }
}

/// A unit of work over an [`InMemoryProducts`]: version check at commit,
/// events released only after it.
pub struct InMemoryUnitOfWork(testing::FakeUnitOfWork<Product>);

impl InMemoryUnitOfWork {
    /// A unit of work that releases into `releaser`.
    pub fn new(store: Arc<InMemoryProducts>, releaser: EventReleaser) -> Self {
        InMemoryUnitOfWork(testing::FakeUnitOfWork::new(
            store.products.clone(),
            releaser,
        ))
    }
}

#[async_trait]
impl arch_events::UnitOfWork for InMemoryUnitOfWork {
    type Error = UowError;

    async fn commit(&mut self) -> Result<(), UowError> {
        self.0
            .commit()
            .await
            .map_err(|conflict| UowError::Conflict { sku: conflict.key })
    }

    async fn rollback(&mut self) -> Result<(), UowError> {
        self.0
            .rollback()
            .await
            .map_err(|conflict| UowError::Conflict { sku: conflict.key })
    }
}

impl UnitOfWork for InMemoryUnitOfWork {
    fn products(&mut self) -> &mut dyn ProductRepository {
        self
    }
}

#[async_trait]
impl ProductRepository for InMemoryUnitOfWork {
    async fn get(&mut self, sku: &str) -> Result<Option<&mut Product>, UowError> {
        Ok(self.0.repository().get(&sku.to_owned()))
    }

    async fn get_for_line(&mut self, line: &OrderLine) -> Result<Option<&mut Product>, UowError> {
        self.get(&line.sku).await
    }

    async fn get_with_batch_lines(
        &mut self,
        reference: &str,
    ) -> Result<Option<&mut Product>, UowError> {
        self.get_by_batchref(reference).await
    }

    async fn get_by_batchref(&mut self, reference: &str) -> Result<Option<&mut Product>, UowError> {
        Ok(self
            .0
            .repository()
            .find(|product| product.batch(reference).is_some()))
    }

    fn add(&mut self, sku: &str) -> &mut Product {
        self.0.repository().add(Product::new(sku, Vec::new(), 0))
    }
}

/// One line in the in-memory view: `(orderid, sku, qty)`, where it is,
/// and the version that put it there.
#[derive(Debug, Clone)]
struct ViewLine {
    orderid: String,
    sku: String,
    qty: u32,
    batchref: Option<String>,
    version: u64,
}

/// The allocations view in memory; its clones share the rows. Like the SQL
/// ones, it keeps the newest change per line ([`LineChange`]).
#[derive(Debug, Clone, Default)]
pub struct InMemoryAllocationsView {
    lines: Arc<Mutex<Vec<ViewLine>>>,
}

impl InMemoryAllocationsView {
    fn lines(&self) -> MutexGuard<'_, Vec<ViewLine>> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A factory of handles on this view, for bootstrap.
    pub fn factory(&self) -> AllocationsViewFactory {
        let view = self.clone();
        Arc::new(move |_| Box::new(view.clone()))
    }
}

#[async_trait]
impl AllocationsView for InMemoryAllocationsView {
    async fn apply(&self, change: LineChange<'_>) -> Result<(), ViewError> {
        let mut lines = self.lines();
        let batchref = change.batchref.map(str::to_owned);
        match lines.iter_mut().find(|line| {
            line.orderid == change.orderid && line.sku == change.sku && line.qty == change.qty
        }) {
            Some(line) if line.version < change.version => {
                line.batchref = batchref;
                line.version = change.version;
            }
            Some(_) => {}
            None => lines.push(ViewLine {
                orderid: change.orderid.to_owned(),
                sku: change.sku.to_owned(),
                qty: change.qty,
                batchref,
                version: change.version,
            }),
        }
        Ok(())
    }

    async fn for_order(&self, orderid: &str) -> Result<Vec<AllocationRow>, ViewError> {
        Ok(self
            .lines()
            .iter()
            .filter(|line| line.orderid == orderid)
            .filter_map(|line| {
                Some(AllocationRow {
                    sku: line.sku.clone(),
                    qty: line.qty,
                    batchref: line.batchref.clone()?,
                })
            })
            .collect())
    }
}
