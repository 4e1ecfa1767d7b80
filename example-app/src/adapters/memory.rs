//! In-memory adapters: a fake unit of work, its repository, and an in-memory
//! allocations view. They keep the same contract as the SQLite ones
//! (optimistic concurrency included), so handler tests run on them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bus_core::{async_trait, Aggregate, EventReleaser};

use crate::domain::model::Product;
use crate::service_layer::unit_of_work::{
    ProductRepository, UnitOfWork, UnitOfWorkFactory, UowError,
};
use crate::views::{AllocationRow, AllocationsView, ViewError};

/// The products, shared by every in-memory unit of work of one app.
#[derive(Debug, Default)]
pub struct InMemoryStore {
    products: Mutex<HashMap<String, Product>>,
    commits: AtomicUsize,
}

impl InMemoryStore {
    fn products(&self) -> MutexGuard<'_, HashMap<String, Product>> {
        self.products.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the stored product.
    pub fn product(&self, sku: &str) -> Option<Product> {
        self.products().get(sku).cloned()
    }

    /// How many units of work committed.
    pub fn commits(&self) -> usize {
        self.commits.load(Ordering::SeqCst)
    }

    /// A factory of units of work over this store, for bootstrap.
    pub fn unit_of_work_factory(self: &Arc<Self>) -> UnitOfWorkFactory {
        let store = self.clone();
        Arc::new(move |releaser| Box::new(FakeUnitOfWork::new(store.clone(), releaser)))
    }
}

/// A product loaded or added by a unit of work.
struct Tracked {
    product: Product,
    /// The version it had when loaded; `None` when it was added.
    loaded_version: Option<u64>,
}

/// The repository of a [`FakeUnitOfWork`].
pub struct InMemoryRepository {
    store: Arc<InMemoryStore>,
    seen: Vec<Tracked>,
}

impl InMemoryRepository {
    fn track(&mut self, product: Product, loaded_version: Option<u64>) -> Option<&mut Product> {
        self.seen.push(Tracked {
            product,
            loaded_version,
        });
        self.seen.last_mut().map(|tracked| &mut tracked.product)
    }
}

#[async_trait]
impl ProductRepository for InMemoryRepository {
    async fn get(&mut self, sku: &str) -> Result<Option<&mut Product>, UowError> {
        if let Some(index) = self.seen.iter().position(|t| t.product.sku == sku) {
            return Ok(self.seen.get_mut(index).map(|t| &mut t.product));
        }
        let Some(product) = self.store.product(sku) else {
            return Ok(None);
        };
        let version = product.version_number;
        Ok(self.track(product, Some(version)))
    }

    async fn get_by_batchref(&mut self, reference: &str) -> Result<Option<&mut Product>, UowError> {
        let seen = self
            .seen
            .iter()
            .position(|t| t.product.batch(reference).is_some());
        if let Some(index) = seen {
            return Ok(self.seen.get_mut(index).map(|t| &mut t.product));
        }
        let stored = self
            .store
            .products()
            .values()
            .find(|p| p.batch(reference).is_some())
            .cloned();
        let Some(product) = stored else {
            return Ok(None);
        };
        let version = product.version_number;
        Ok(self.track(product, Some(version)))
    }

    fn add(&mut self, product: Product) -> &mut Product {
        self.seen.push(Tracked {
            product,
            loaded_version: None,
        });
        let last = self.seen.len() - 1;
        &mut self.seen[last].product
    }
}

/// A unit of work over an [`InMemoryStore`], with the real one's contract:
/// version check at commit, events released only after it.
pub struct FakeUnitOfWork {
    repository: InMemoryRepository,
    releaser: EventReleaser,
}

impl FakeUnitOfWork {
    /// A unit of work that releases into `releaser`.
    pub fn new(store: Arc<InMemoryStore>, releaser: EventReleaser) -> Self {
        FakeUnitOfWork {
            repository: InMemoryRepository {
                store,
                seen: Vec::new(),
            },
            releaser,
        }
    }
}

#[async_trait]
impl bus_core::UnitOfWork for FakeUnitOfWork {
    type Error = UowError;

    async fn commit(&mut self) -> Result<(), UowError> {
        let store = self.repository.store.clone();
        let mut products = store.products();
        for tracked in &self.repository.seen {
            let stored = products.get(&tracked.product.sku).map(|p| p.version_number);
            if stored != tracked.loaded_version {
                return Err(UowError::Conflict {
                    sku: tracked.product.sku.clone(),
                });
            }
        }
        let mut events = Vec::new();
        for tracked in &mut self.repository.seen {
            events.extend(tracked.product.events().take());
            tracked.loaded_version = Some(tracked.product.version_number);
            products.insert(tracked.product.sku.clone(), tracked.product.clone());
        }
        drop(products);
        store.commits.fetch_add(1, Ordering::SeqCst);
        self.releaser.release_all(events);
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), UowError> {
        self.repository.seen.clear();
        Ok(())
    }
}

impl UnitOfWork for FakeUnitOfWork {
    fn products(&mut self) -> &mut dyn ProductRepository {
        &mut self.repository
    }
}

/// The allocations view in memory.
#[derive(Debug, Default)]
pub struct InMemoryAllocationsView {
    rows: Mutex<Vec<(String, AllocationRow)>>,
}

impl InMemoryAllocationsView {
    fn rows(&self) -> MutexGuard<'_, Vec<(String, AllocationRow)>> {
        self.rows.lock().unwrap_or_else(PoisonError::into_inner)
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
