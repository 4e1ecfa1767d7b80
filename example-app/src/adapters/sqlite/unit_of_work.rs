//! The write model's SQL in SQLite: the [`ProductTables`] behind
//! [`SqliteUnitOfWork`].

use arch_events::async_trait;
use arch_events_sqlx::Store;
use sqlx::{Sqlite, Transaction};

use super::{storage, write_error, SqliteDatabase};
use crate::adapters::product_locks::ProductLocks;
use crate::adapters::relational::{ProductTables, RelationalUnitOfWork};
use crate::adapters::rows::{stored_batch, stored_line};
use crate::adapters::tracked::{to_i64, BatchWrite, Lines, Tracked};
use crate::service_layer::unit_of_work::UowError;

/// A unit of work in SQLite: [`RelationalUnitOfWork`] over a
/// [`SqliteDatabase`].
///
/// Each product is read in a short transaction of its own (a consistent
/// snapshot), and the changes are written at commit in one `BEGIN IMMEDIATE`
/// transaction that checks every product's version. Holding no transaction
/// between the read and the write matters on SQLite: its conflicts are
/// database-wide, so a read transaction kept open would lose to *any* other
/// write, while the version check makes only a change to the same product a
/// conflict.
pub type SqliteUnitOfWork = RelationalUnitOfWork<SqliteDatabase>;

impl SqliteDatabase {
    async fn load_in(
        tx: &mut Transaction<'static, Sqlite>,
        sku: &str,
        lines: Lines,
    ) -> Result<Option<Tracked>, UowError> {
        let Some(version) =
            sqlx::query_scalar::<_, i64>("SELECT version_number FROM products WHERE sku = ?")
                .bind(sku)
                .fetch_optional(&mut **tx)
                .await
                .map_err(storage)?
        else {
            return Ok(None);
        };
        let rows = match &lines {
            Lines::None => Vec::new(),
            Lines::Of(line) => sqlx::query(
                "SELECT id, batchref, orderid, qty FROM allocations \
                 WHERE sku = ? AND orderid = ? AND qty = ? ORDER BY id",
            )
            .bind(sku)
            .bind(&line.orderid)
            .bind(i64::from(line.qty))
            .fetch_all(&mut **tx)
            .await
            .map_err(storage)?,
            Lines::InBatch(reference) => sqlx::query(
                "SELECT id, batchref, orderid, qty FROM allocations \
                 WHERE batchref = ? AND sku = ? ORDER BY id",
            )
            .bind(reference)
            .bind(sku)
            .fetch_all(&mut **tx)
            .await
            .map_err(storage)?,
        };
        let stored = rows
            .iter()
            .map(|row| stored_line(row, sku))
            .collect::<Result<_, _>>()?;
        let rows = sqlx::query(
            "SELECT reference, purchased_quantity, allocated_quantity, eta FROM batches \
             WHERE sku = ? ORDER BY rowid",
        )
        .bind(sku)
        .fetch_all(&mut **tx)
        .await
        .map_err(storage)?;
        let batches = rows
            .iter()
            .map(stored_batch)
            .collect::<Result<_, _>>()
            .map_err(storage)?;
        Tracked::loaded(sku, version, lines, stored, batches).map(Some)
    }

    /// Writes one changed product, checking its version.
    async fn save_in(
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
        for (index, batch) in product.batches.iter().enumerate() {
            let write = tracked.batch_write(index, batch);
            if write == BatchWrite::Keep {
                continue;
            }
            let written = if write == BatchWrite::Update {
                sqlx::query(
                    "UPDATE batches SET purchased_quantity = ?, allocated_quantity = ?, \
                     eta = ? WHERE reference = ? AND sku = ?",
                )
                .bind(i64::from(batch.purchased_quantity()))
                .bind(to_i64(batch.allocated_quantity()))
                .bind(batch.eta)
                .bind(&batch.reference)
                .bind(sku)
                .execute(&mut **tx)
                .await
            } else {
                // A reference taken meanwhile, by this product or another,
                // is a unique violation: a conflict, retried.
                sqlx::query(
                    "INSERT INTO batches (reference, sku, purchased_quantity, allocated_quantity, eta) \
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(&batch.reference)
                .bind(sku)
                .bind(i64::from(batch.purchased_quantity()))
                .bind(to_i64(batch.allocated_quantity()))
                .bind(batch.eta)
                .execute(&mut **tx)
                .await
            }
            .map_err(|e| write_error(e, sku))?;
            if written.rows_affected() != 1 {
                return Err(UowError::Conflict {
                    sku: sku.to_owned(),
                });
            }
        }
        let (inserted, deleted) = tracked.line_changes();
        for (batchref, line) in inserted {
            sqlx::query(
                "INSERT INTO allocations (batchref, orderid, sku, qty) VALUES (?, ?, ?, ?)",
            )
            .bind(batchref)
            .bind(&line.orderid)
            .bind(sku)
            .bind(i64::from(line.qty))
            .execute(&mut **tx)
            .await
            .map_err(|e| write_error(e, sku))?;
        }
        for id in deleted {
            sqlx::query("DELETE FROM allocations WHERE id = ?")
                .bind(id)
                .execute(&mut **tx)
                .await
                .map_err(|e| write_error(e, sku))?;
        }
        Ok(())
    }
}

#[async_trait]
impl ProductTables for SqliteDatabase {
    type Db = Sqlite;

    fn store(&self) -> &Store<Sqlite> {
        &self.store
    }

    fn locks(&self) -> &ProductLocks {
        &self.locks
    }

    async fn load(&self, sku: &str, lines: Lines) -> Result<Option<Tracked>, UowError> {
        let mut tx = arch_events_sqlx::begin_on(&self.pool, "BEGIN")
            .await
            .map_err(storage)?;
        let product = Self::load_in(&mut tx, sku, lines).await?;
        tx.commit().await.map_err(storage)?;
        Ok(product)
    }

    async fn sku_of_batch(&self, reference: &str) -> Result<Option<String>, UowError> {
        sqlx::query_scalar("SELECT sku FROM batches WHERE reference = ?")
            .bind(reference)
            .fetch_optional(&self.pool)
            .await
            .map_err(storage)
    }

    async fn save(
        &self,
        transaction: &mut Transaction<'static, Sqlite>,
        tracked: &Tracked,
    ) -> Result<(), UowError> {
        Self::save_in(transaction, tracked).await
    }

    fn write_error(&self, error: sqlx::Error, sku: &str) -> UowError {
        write_error(error, sku)
    }
}
