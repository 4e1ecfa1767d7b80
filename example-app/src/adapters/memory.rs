//! In-memory adapters: a fake unit of work over the products and an
//! in-memory allocations view. The unit of work is `bus_core::testing`'s
//! generic one, with the same contract as the SQLite one (optimistic
//! concurrency included), so handler tests run on it; the dead letters of
//! in-memory adapters are `bus_sqlx::InMemoryDeadLetterStore`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bus_core::testing::{self, Entity};
use bus_core::{async_trait, EventReleaser};

use crate::domain::model::Product;
use crate::service_layer::unit_of_work::{
    ProductRepository, UnitOfWork, UnitOfWorkFactory, UowError,
};
use crate::views::{AllocationRow, AllocationsView, AllocationsViewFactory, ViewError};

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
pub struct InMemoryStore {
    products: Arc<testing::InMemoryStore<Product>>,
}

impl InMemoryStore {
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
        Arc::new(move |scope| Box::new(FakeUnitOfWork::new(store.clone(), scope.releaser())))
    }
}

/// A unit of work over an [`InMemoryStore`]: version check at commit,
/// events released only after it.
pub struct FakeUnitOfWork(testing::FakeUnitOfWork<Product>);

impl FakeUnitOfWork {
    /// A unit of work that releases into `releaser`.
    pub fn new(store: Arc<InMemoryStore>, releaser: EventReleaser) -> Self {
        FakeUnitOfWork(testing::FakeUnitOfWork::new(
            store.products.clone(),
            releaser,
        ))
    }
}

#[async_trait]
impl bus_core::UnitOfWork for FakeUnitOfWork {
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

impl UnitOfWork for FakeUnitOfWork {
    fn products(&mut self) -> &mut dyn ProductRepository {
        self
    }
}

#[async_trait]
impl ProductRepository for FakeUnitOfWork {
    async fn get(&mut self, sku: &str) -> Result<Option<&mut Product>, UowError> {
        Ok(self.0.repository().get(&sku.to_owned()))
    }

    async fn get_by_batchref(&mut self, reference: &str) -> Result<Option<&mut Product>, UowError> {
        Ok(self
            .0
            .repository()
            .find(|product| product.batch(reference).is_some()))
    }

    fn add(&mut self, product: Product) -> &mut Product {
        self.0.repository().add(product)
    }
}

/// The allocations view in memory; its clones share the rows.
#[derive(Debug, Clone, Default)]
pub struct InMemoryAllocationsView {
    rows: Arc<Mutex<Vec<(String, AllocationRow)>>>,
}

impl InMemoryAllocationsView {
    fn rows(&self) -> MutexGuard<'_, Vec<(String, AllocationRow)>> {
        self.rows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A factory of handles on this view, for bootstrap.
    pub fn factory(&self) -> AllocationsViewFactory {
        let view = self.clone();
        Arc::new(move |_| Box::new(view.clone()))
    }
}

#[async_trait]
impl AllocationsView for InMemoryAllocationsView {
    async fn add(&self, orderid: &str, sku: &str, batchref: &str) -> Result<(), ViewError> {
        self.rows().push((
            orderid.to_owned(),
            AllocationRow {
                sku: sku.to_owned(),
                batchref: batchref.to_owned(),
            },
        ));
        Ok(())
    }

    async fn remove(&self, orderid: &str, sku: &str) -> Result<(), ViewError> {
        self.rows()
            .retain(|(order, row)| !(order == orderid && row.sku == sku));
        Ok(())
    }

    async fn for_order(&self, orderid: &str) -> Result<Vec<AllocationRow>, ViewError> {
        Ok(self
            .rows()
            .iter()
            .filter(|(order, _)| order == orderid)
            .map(|(_, row)| row.clone())
            .collect())
    }
}
