//! The SQLite adapters: the unit of work and repository of the write model,
//! and the allocations view of the read model.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bus_core::transport::OutboundMessage;
use bus_core::{async_trait, Aggregate, EventReleaser, MessageContext};
use chrono::NaiveDate;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use tokio::sync::Mutex;

use super::{inbox, outbox};
use crate::domain::model::{Batch, OrderLine, Product};
use crate::service_layer::unit_of_work::{
    ProductRepository, UnitOfWork, UnitOfWorkFactory, UowError,
};
use crate::views::{AllocationRow, AllocationsView, ViewError};

/// An open SQLite database: its connection pool, and the turn that this
/// process's writers take one after the other.
///
/// SQLite allows one writer at a time. Writers of this process queue here,
/// in order, instead of polling SQLite's lock in its busy handler; writers of
/// other processes still wait on SQLite's lock, up to the busy timeout.
#[derive(Debug, Clone)]
pub struct SqliteDatabase {
    pool: SqlitePool,
    writer: Arc<Mutex<()>>,
}

impl SqliteDatabase {
    /// The connection pool (for the read model, or a health check).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection, once what runs on them finished.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Opens (creating it when missing) the database at `url`, such as
/// `sqlite://allocation.db`, and brings its schema up to date.
///
/// WAL journaling with `synchronous = NORMAL`: a commit survives the process
/// crashing or being killed; only a power loss can take back the last
/// commits, the usual trade for SQLite in WAL mode.
pub async fn connect(url: &str) -> Result<SqliteDatabase, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new().connect_with(options).await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(SqliteDatabase {
        pool,
        writer: Arc::new(Mutex::new(())),
    })
}

/// A factory of SQLite units of work over `database`, for bootstrap.
pub fn unit_of_work_factory(database: SqliteDatabase) -> UnitOfWorkFactory {
    Arc::new(move |scope| {
        Box::new(SqliteUnitOfWork::new(database.clone(), scope.releaser()).in_flow(scope.context()))
    })
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

/// An allocation row as it was loaded.
struct StoredLine {
    id: i64,
    batchref: String,
    line: OrderLine,
}

struct Tracked {
    product: Product,
    loaded_version: Option<u64>,
    /// The allocation rows as loaded: saving writes only the difference.
    stored: Vec<StoredLine>,
}

/// Products in SQLite.
///
/// Each product is read in a short transaction of its own (a consistent
/// snapshot), and the changes are written at commit in one `BEGIN IMMEDIATE`
/// transaction that checks every product's version. Holding no transaction
/// between the read and the write matters on SQLite: its conflicts are
/// database-wide, so a read transaction kept open would lose to *any* other
/// write, while the version check makes only a change to the same product a
/// conflict.
pub struct SqliteRepository {
    database: SqliteDatabase,
    seen: Vec<Tracked>,
}

impl SqliteRepository {
    async fn load(&self, sku: &str) -> Result<Option<Tracked>, UowError> {
        let mut tx = self.database.pool.begin().await.map_err(storage)?;
        let product = Self::load_in(&mut tx, sku).await?;
        tx.commit().await.map_err(storage)?;
        Ok(product)
    }

    async fn load_in(
        tx: &mut Transaction<'static, Sqlite>,
        sku: &str,
    ) -> Result<Option<Tracked>, UowError> {
        let Some(product) = sqlx::query("SELECT version_number FROM products WHERE sku = ?")
            .bind(sku)
            .fetch_optional(&mut **tx)
            .await
            .map_err(storage)?
        else {
            return Ok(None);
        };
        let version: i64 = product.try_get("version_number").map_err(storage)?;
        let version = u64::try_from(version)
            .map_err(|_| UowError::Storage(format!("product {sku}: negative version").into()))?;

        let mut stored = Vec::new();
        let mut lines_by_batch: HashMap<String, Vec<OrderLine>> = HashMap::new();
        let rows = sqlx::query(
            "SELECT id, batchref, orderid, qty FROM allocations WHERE sku = ? ORDER BY id",
        )
        .bind(sku)
        .fetch_all(&mut **tx)
        .await
        .map_err(storage)?;
        for row in rows {
            let line = OrderLine {
                orderid: row.try_get("orderid").map_err(storage)?,
                sku: sku.to_owned(),
                qty: to_u32(row.try_get("qty").map_err(storage)?)?,
            };
            let batchref: String = row.try_get("batchref").map_err(storage)?;
            lines_by_batch
                .entry(batchref.clone())
                .or_default()
                .push(line.clone());
            stored.push(StoredLine {
                id: row.try_get("id").map_err(storage)?,
                batchref,
                line,
            });
        }

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
            let lines = lines_by_batch.remove(&reference).unwrap_or_default();
            batches.push(Batch::restore(
                reference,
                sku.to_owned(),
                to_u32(qty)?,
                eta,
                lines,
            ));
        }
        Ok(Some(Tracked {
            product: Product::new(sku, batches, version),
            loaded_version: Some(version),
            stored,
        }))
    }

    fn track(&mut self, tracked: Tracked) -> Option<&mut Product> {
        self.seen.push(tracked);
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
        // Write only what changed: new lines are inserted, lines gone are
        // deleted, the rest stays as it is.
        let mut unmatched: HashMap<(&str, &OrderLine), Vec<i64>> = HashMap::new();
        for stored in &tracked.stored {
            unmatched
                .entry((stored.batchref.as_str(), &stored.line))
                .or_default()
                .push(stored.id);
        }
        for batch in &product.batches {
            for line in batch.allocations() {
                let kept = unmatched
                    .get_mut(&(batch.reference.as_str(), line))
                    .and_then(Vec::pop);
                if kept.is_some() {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO allocations (batchref, orderid, sku, qty) VALUES (?, ?, ?, ?)",
                )
                .bind(&batch.reference)
                .bind(&line.orderid)
                .bind(sku)
                .bind(i64::from(line.qty))
                .execute(&mut **tx)
                .await
                .map_err(|e| write_error(e, sku))?;
            }
        }
        for id in unmatched.into_values().flatten() {
            sqlx::query("DELETE FROM allocations WHERE id = ?")
                .bind(id)
                .execute(&mut **tx)
                .await
                .map_err(|e| write_error(e, sku))?;
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
            Some(tracked) => Ok(self.track(tracked)),
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
        let sku: Option<String> = sqlx::query_scalar("SELECT sku FROM batches WHERE reference = ?")
            .bind(reference)
            .fetch_optional(&self.database.pool)
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
            stored: Vec::new(),
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
    /// The message whose handler this unit of work serves: external events
    /// written to the outbox carry its ids.
    flow: Option<MessageContext>,
}

impl SqliteUnitOfWork {
    /// A unit of work over `database` that releases into `releaser`.
    pub fn new(database: SqliteDatabase, releaser: EventReleaser) -> Self {
        SqliteUnitOfWork {
            repository: SqliteRepository {
                database,
                seen: Vec::new(),
            },
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
}

#[async_trait]
impl bus_core::UnitOfWork for SqliteUnitOfWork {
    type Error = UowError;

    async fn commit(&mut self) -> Result<(), UowError> {
        let repository = &mut self.repository;
        let changed = |t: &&Tracked| t.loaded_version != Some(t.product.version_number);
        if let Some(first) = repository.seen.iter().find(changed) {
            let sku = first.product.sku.clone();
            let _turn = repository.database.writer.lock().await;
            // IMMEDIATE takes the write lock now (waiting up to the busy
            // timeout), so the writes below cannot fail on a stale snapshot.
            let mut tx = repository
                .database
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(|e| write_error(e, &sku))?;
            for tracked in repository.seen.iter().filter(changed) {
                SqliteRepository::save(&mut tx, tracked).await?;
            }
            // The external events go to the outbox in the same transaction:
            // they leave (by the relay) if and only if the change committed.
            // An inbound message's id goes to the inbox in it too: a
            // redelivery then finds it, and a second commit fails.
            let flow = self.flow.unwrap_or_default();
            if flow.is_inbound() {
                let id = flow.message_id().to_string();
                inbox::record_handled(&mut tx, &id)
                    .await
                    .map_err(|error| match error {
                        sqlx::Error::Database(e) if e.is_unique_violation() => {
                            UowError::AlreadyHandled {
                                message_id: id.clone(),
                            }
                        }
                        other => storage(other),
                    })?;
            }
            for tracked in repository.seen.iter().filter(changed) {
                for event in tracked.product.recorded().iter() {
                    if let Some(message) = OutboundMessage::from_event(event, &flow) {
                        let message = message.map_err(|e| UowError::Storage(Box::new(e)))?;
                        outbox::insert(&mut tx, &message).await.map_err(storage)?;
                    }
                }
            }
            tx.commit().await.map_err(|e| write_error(e, &sku))?;
        }
        // The stored rows no longer match what was loaded: forget the products,
        // so that anything loaded after this commit is read afresh.
        let events: Vec<_> = repository
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
        self.repository.seen.clear();
        Ok(())
    }
}

impl UnitOfWork for SqliteUnitOfWork {
    fn products(&mut self) -> &mut dyn ProductRepository {
        &mut self.repository
    }
}

/// The allocations view in SQLite; its writes take the database's writer
/// turn like the units of work do.
#[derive(Debug, Clone)]
pub struct SqliteAllocationsView {
    database: SqliteDatabase,
}

impl SqliteAllocationsView {
    /// The view in `database`.
    pub fn new(database: SqliteDatabase) -> Self {
        SqliteAllocationsView { database }
    }
}

fn view_error(error: sqlx::Error) -> ViewError {
    ViewError(Box::new(error))
}

#[async_trait]
impl AllocationsView for SqliteAllocationsView {
    async fn add(&self, orderid: &str, sku: &str, batchref: &str) -> Result<(), ViewError> {
        let _turn = self.database.writer.lock().await;
        sqlx::query("INSERT INTO allocations_view (orderid, sku, batchref) VALUES (?, ?, ?)")
            .bind(orderid)
            .bind(sku)
            .bind(batchref)
            .execute(&self.database.pool)
            .await
            .map_err(view_error)?;
        Ok(())
    }

    async fn remove(&self, orderid: &str, sku: &str) -> Result<(), ViewError> {
        let _turn = self.database.writer.lock().await;
        sqlx::query("DELETE FROM allocations_view WHERE orderid = ? AND sku = ?")
            .bind(orderid)
            .bind(sku)
            .execute(&self.database.pool)
            .await
            .map_err(view_error)?;
        Ok(())
    }

    async fn for_order(&self, orderid: &str) -> Result<Vec<AllocationRow>, ViewError> {
        let rows = sqlx::query(
            "SELECT sku, batchref FROM allocations_view WHERE orderid = ? ORDER BY rowid",
        )
        .bind(orderid)
        .fetch_all(&self.database.pool)
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
