//! In-memory adapters: a fake unit of work over the products, an
//! in-memory allocations view and dead-letter store. The unit of work is `bus_core::testing`'s
//! generic one, with the same contract as the SQLite one (optimistic
//! concurrency included), so handler tests run on it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bus_core::testing::{self, Entity};
use bus_core::{async_trait, EventReleaser};
use chrono::{DateTime, Utc};

use crate::domain::model::Product;
use crate::service_layer::dead_letters::{
    DeadLetterError, DeadLetterRecord, DeadLetterStore, StoredDeadLetter,
};
use crate::service_layer::unit_of_work::{
    ProductRepository, UnitOfWork, UnitOfWorkFactory, UowError,
};
use crate::views::{AllocationRow, AllocationsView, ViewError};

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

/// Dead letters in memory, for tests and demos.
#[derive(Debug, Default)]
pub struct InMemoryDeadLetterStore {
    letters: Mutex<Vec<(StoredDeadLetter, bool)>>,
}

impl InMemoryDeadLetterStore {
    fn letters(&self) -> std::sync::MutexGuard<'_, Vec<(StoredDeadLetter, bool)>> {
        // Every change below is one assignment or push: a poisoned lock's
        // data is whole.
        self.letters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl DeadLetterStore for InMemoryDeadLetterStore {
    async fn add(&self, letter: DeadLetterRecord) -> Result<i64, DeadLetterError> {
        let mut letters = self.letters();
        let id = letters.len() as i64 + 1;
        letters.push((
            StoredDeadLetter {
                id,
                record: letter,
                replayed_at: None,
                replay_error: None,
            },
            false,
        ));
        Ok(id)
    }

    async fn list(&self, include_replayed: bool) -> Result<Vec<StoredDeadLetter>, DeadLetterError> {
        Ok(self
            .letters()
            .iter()
            .filter(|(letter, _)| include_replayed || letter.replayed_at.is_none())
            .map(|(letter, _)| letter.clone())
            .collect())
    }

    async fn get(&self, id: i64) -> Result<Option<StoredDeadLetter>, DeadLetterError> {
        Ok(self
            .letters()
            .iter()
            .find(|(letter, _)| letter.id == id)
            .map(|(letter, _)| letter.clone()))
    }

    async fn claim(&self, id: i64) -> Result<bool, DeadLetterError> {
        let mut letters = self.letters();
        match letters.iter_mut().find(|(letter, _)| letter.id == id) {
            Some((letter, replaying)) if !*replaying && letter.replayed_at.is_none() => {
                *replaying = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn settle(
        &self,
        id: i64,
        outcome: Result<DateTime<Utc>, String>,
    ) -> Result<(), DeadLetterError> {
        let mut letters = self.letters();
        let (letter, replaying) = letters
            .iter_mut()
            .find(|(letter, _)| letter.id == id)
            .ok_or(DeadLetterError::NotFound(id))?;
        *replaying = false;
        match outcome {
            Ok(at) => {
                letter.replayed_at = Some(at);
                letter.replay_error = None;
            }
            Err(error) => letter.replay_error = Some(error),
        }
        Ok(())
    }
}
