//! The SQLite adapters: the unit of work and repository of the write model,
//! and the allocations view of the read model.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bus_core::{async_trait, Aggregate, EventReleaser};
use chrono::NaiveDate;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Row, Sqlite, Transaction};

use crate::domain::model::{Batch, OrderLine, Product};
use crate::service_layer::unit_of_work::{
    ProductRepository, UnitOfWork, UnitOfWorkFactory, UowError,
};
use crate::views::{AllocationRow, AllocationsView, ViewError};

/// Opens (creating it when missing) the database at `url`, such as
/// `sqlite://allocation.db`, and brings its schema up to date.
pub async fn connect(url: &str) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new().connect_with(options).await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// A factory of SQLite units of work over `pool`, for bootstrap.
pub fn unit_of_work_factory(pool: SqlitePool) -> UnitOfWorkFactory {
    Arc::new(move |releaser| Box::new(SqliteUnitOfWork::new(pool.clone(), releaser)))
}

fn storage(error: sqlx::Error) -> UowError {
    UowError::Storage(Box::new(error))
}

/// Maps a failed write: SQLite's "busy"/"locked" answers and a lost race to
/// insert the same product mean another transaction got there first.
fn write_error(error: sqlx::Error, sku: &str) -> UowError {
    if let sqlx::Error::Database(db) = &error {
        let code = db.code();
        let busy = matches!(code.as_deref(), Some("5" | "6" | "261" | "262" | "517"))
            || db.message().contains("database is locked");
        if busy || db.is_unique_violation() {
            return UowError::Conflict {
                sku: sku.to_owned(),
            };
        }
    }
    storage(error)
}

struct Tracked {
    product: Product,
    loaded_version: Option<u64>,
}

/// Products in SQLite, read and written in the unit of work's transaction.
pub struct SqliteRepository {
    pool: SqlitePool,
    tx: Option<Transaction<'static, Sqlite>>,
    seen: Vec<Tracked>,
}

impl SqliteRepository {
    /// The transaction, begun on first use.
    async fn tx(&mut self) -> Result<&mut Transaction<'static, Sqlite>, UowError> {
        if self.tx.is_none() {
            self.tx = Some(self.pool.begin().await.map_err(storage)?);
        }
        self.tx
            .as_mut()
            .ok_or_else(|| UowError::Storage("no transaction".into()))
    }

    async fn load(&mut self, sku: &str) -> Result<Option<Product>, UowError> {
        let tx = self.tx().await?;
        let Some(product) = sqlx::query("SELECT version_number FROM products WHERE sku = ?")
            .bind(sku)
            .fetch_optional(&mut **tx)
            .await
            .map_err(storage)?
        else {
            return Ok(None);
        };
        let version: i64 = product.try_get("version_number").map_err(storage)?;
        let allocations = sqlx::query(
            "SELECT batchref, orderid, qty FROM allocations WHERE sku = ? ORDER BY batchref, position",
        )
        .bind(sku)
        .fetch_all(&mut **tx)
        .await
        .map_err(storage)?;
        let rows = sqlx::query(
            "SELECT reference, purchased_quantity, eta FROM batches WHERE sku = ? ORDER BY rowid",
        )
        .bind(sku)
        .fetch_all(&mut **tx)
        .await
        .map_err(storage)?;
        let mut batches = Vec::with_capacity(rows.len());
        for row in rows {
            let reference: String = row.try_get("reference").map_err(storage)?;
            let qty: i64 = row.try_get("purchased_quantity").map_err(storage)?;
            let eta: Option<String> = row.try_get("eta").map_err(storage)?;
            let eta = eta
                .map(|text| NaiveDate::parse_from_str(&text, "%Y-%m-%d"))
                .transpose()
                .map_err(|e| {
                    UowError::Storage(format!("batch {reference}: bad eta: {e}").into())
                })?;
            let mut lines = Vec::new();
            for allocation in allocations.iter().filter(|a| {
                a.try_get::<String, _>("batchref")
                    .map(|r| r == reference)
                    .unwrap_or(false)
            }) {
                let qty: i64 = allocation.try_get("qty").map_err(storage)?;
                lines.push(OrderLine {
                    orderid: allocation.try_get("orderid").map_err(storage)?,
                    sku: sku.to_owned(),
                    qty: to_u32(qty)?,
                });
            }
            batches.push(Batch::restore(
                reference,
                sku.to_owned(),
                to_u32(qty)?,
                eta,
                lines,
            ));
        }
        let version = u64::try_from(version)
            .map_err(|_| UowError::Storage(format!("product {sku}: negative version").into()))?;
        Ok(Some(Product::new(sku, batches, version)))
    }

    fn track(&mut self, product: Product, loaded_version: Option<u64>) -> Option<&mut Product> {
        self.seen.push(Tracked {
            product,
            loaded_version,
        });
        self.seen.last_mut().map(|t| &mut t.product)
    }

    /// Writes one changed product, checking its version.
    async fn save(
        tx: &mut Transaction<'static, Sqlite>,
        tracked: &Tracked,
    ) -> Result<(), UowError> {
        let product = &tracked.product;
        let sku = product.sku.as_str();
        let version = to_i64(product.version_number);
        match tracked.loaded_version {
            None => {
                sqlx::query("INSERT INTO products (sku, version_number) VALUES (?, ?)")
                    .bind(sku)
                    .bind(version)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| write_error(e, sku))?;
            }
            Some(loaded) => {
                let updated = sqlx::query(
                    "UPDATE products SET version_number = ? WHERE sku = ? AND version_number = ?",
                )
                .bind(version)
                .bind(sku)
                .bind(to_i64(loaded))
                .execute(&mut **tx)
                .await
                .map_err(|e| write_error(e, sku))?;
                if updated.rows_affected() != 1 {
                    return Err(UowError::Conflict {
                        sku: sku.to_owned(),
                    });
                }
            }
        }
        for batch in &product.batches {
            let written = sqlx::query(
                "INSERT INTO batches (reference, sku, purchased_quantity, eta) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (reference) DO UPDATE SET purchased_quantity = excluded.purchased_quantity, \
                 eta = excluded.eta WHERE batches.sku = excluded.sku",
            )
            .bind(&batch.reference)
            .bind(sku)
            .bind(i64::from(batch.purchased_quantity()))
            .bind(batch.eta.map(|d| d.format("%Y-%m-%d").to_string()))
            .execute(&mut **tx)
            .await
            .map_err(|e| write_error(e, sku))?;
            if written.rows_affected() != 1 {
                // The reference was taken by another product meanwhile.
                return Err(UowError::Conflict {
                    sku: sku.to_owned(),
                });
            }
        }
        sqlx::query("DELETE FROM allocations WHERE sku = ?")
            .bind(sku)
            .execute(&mut **tx)
            .await
            .map_err(|e| write_error(e, sku))?;
        for batch in &product.batches {
            for (position, line) in batch.allocations().iter().enumerate() {
                sqlx::query(
                    "INSERT INTO allocations (batchref, position, orderid, sku, qty) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(&batch.reference)
                .bind(position as i64)
                .bind(&line.orderid)
                .bind(sku)
                .bind(i64::from(line.qty))
                .execute(&mut **tx)
                .await
                .map_err(|e| write_error(e, sku))?;
            }
        }
        Ok(())
    }
}

fn to_u32(value: i64) -> Result<u32, UowError> {
    u32::try_from(value)
        .map_err(|_| UowError::Storage(format!("quantity {value} out of range").into()))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[async_trait]
impl ProductRepository for SqliteRepository {
    async fn get(&mut self, sku: &str) -> Result<Option<&mut Product>, UowError> {
        if let Some(index) = self.seen.iter().position(|t| t.product.sku == sku) {
            return Ok(self.seen.get_mut(index).map(|t| &mut t.product));
        }
        match self.load(sku).await? {
            Some(product) => {
                let version = product.version_number;
                Ok(self.track(product, Some(version)))
            }
            None => Ok(None),
        }
    }

    async fn get_by_batchref(&mut self, reference: &str) -> Result<Option<&mut Product>, UowError> {
        if let Some(index) = self
            .seen
            .iter()
            .position(|t| t.product.batch(reference).is_some())
        {
            return Ok(self.seen.get_mut(index).map(|t| &mut t.product));
        }
        let tx = self.tx().await?;
        let sku: Option<String> = sqlx::query_scalar("SELECT sku FROM batches WHERE reference = ?")
            .bind(reference)
            .fetch_optional(&mut **tx)
            .await
            .map_err(storage)?;
        match sku {
            Some(sku) => self.get(&sku).await,
            None => Ok(None),
        }
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

/// A unit of work in one SQLite transaction; a product's version is checked
/// when it is written, so of two concurrent changes only one commits.
pub struct SqliteUnitOfWork {
    repository: SqliteRepository,
    releaser: EventReleaser,
}

impl SqliteUnitOfWork {
    /// A unit of work over `pool` that releases into `releaser`.
    pub fn new(pool: SqlitePool, releaser: EventReleaser) -> Self {
        SqliteUnitOfWork {
            repository: SqliteRepository {
                pool,
                tx: None,
                seen: Vec::new(),
            },
            releaser,
        }
    }
}

#[async_trait]
impl bus_core::UnitOfWork for SqliteUnitOfWork {
    type Error = UowError;

    async fn commit(&mut self) -> Result<(), UowError> {
        let repository = &mut self.repository;
        let mut events = Vec::new();
        let changed = |t: &&Tracked| t.loaded_version != Some(t.product.version_number);
        if repository.seen.iter().any(|t| changed(&t)) {
            repository.tx().await?;
            if let Some(tx) = repository.tx.as_mut() {
                for tracked in repository.seen.iter().filter(changed) {
                    SqliteRepository::save(tx, tracked).await?;
                }
            }
        }
        if let Some(tx) = repository.tx.take() {
            let sku = repository
                .seen
                .first()
                .map(|t| t.product.sku.clone())
                .unwrap_or_default();
            tx.commit().await.map_err(|e| write_error(e, &sku))?;
        }
        for tracked in &mut repository.seen {
            events.extend(tracked.product.events().take());
            tracked.loaded_version = Some(tracked.product.version_number);
        }
        self.releaser.release_all(events);
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), UowError> {
        self.repository.seen.clear();
        if let Some(tx) = self.repository.tx.take() {
            tx.rollback().await.map_err(storage)?;
        }
        Ok(())
    }
}

impl UnitOfWork for SqliteUnitOfWork {
    fn products(&mut self) -> &mut dyn ProductRepository {
        &mut self.repository
    }
}

/// The allocations view in SQLite.
#[derive(Debug, Clone)]
pub struct SqliteAllocationsView {
    pool: SqlitePool,
}

impl SqliteAllocationsView {
    /// The view over `pool`.
    pub fn new(pool: SqlitePool) -> Self {
        SqliteAllocationsView { pool }
    }
}

fn view_error(error: sqlx::Error) -> ViewError {
    ViewError(Box::new(error))
}

#[async_trait]
impl AllocationsView for SqliteAllocationsView {
    async fn add(&self, orderid: &str, sku: &str, batchref: &str) -> Result<(), ViewError> {
        sqlx::query("INSERT INTO allocations_view (orderid, sku, batchref) VALUES (?, ?, ?)")
            .bind(orderid)
            .bind(sku)
            .bind(batchref)
            .execute(&self.pool)
            .await
            .map_err(view_error)?;
        Ok(())
    }

    async fn remove(&self, orderid: &str, sku: &str) -> Result<(), ViewError> {
        sqlx::query("DELETE FROM allocations_view WHERE orderid = ? AND sku = ?")
            .bind(orderid)
            .bind(sku)
            .execute(&self.pool)
            .await
            .map_err(view_error)?;
        Ok(())
    }

    async fn for_order(&self, orderid: &str) -> Result<Vec<AllocationRow>, ViewError> {
        let rows = sqlx::query(
            "SELECT sku, batchref FROM allocations_view WHERE orderid = ? ORDER BY rowid",
        )
        .bind(orderid)
        .fetch_all(&self.pool)
        .await
        .map_err(view_error)?;
        rows.into_iter()
            .map(|row| {
                Ok(AllocationRow {
                    sku: row.try_get("sku").map_err(view_error)?,
                    batchref: row.try_get("batchref").map_err(view_error)?,
                })
            })
            .collect()
    }
}
