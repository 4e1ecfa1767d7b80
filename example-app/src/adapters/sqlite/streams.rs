//! `--storage events` in SQLite: the [`ProductStreams`] behind
//! [`SqliteEventSourcedUnitOfWork`].

use arch_events::async_trait;
use arch_events_sqlx::{SqlEventStore, Store};
use sqlx::{Sqlite, Transaction};

use super::{write_error, SqliteDatabase};
use crate::adapters::event_sourced::{EventSourcedUnitOfWork, ProductStreams};
use crate::adapters::product_locks::ProductLocks;
use crate::service_layer::unit_of_work::UowError;

/// An event-sourced unit of work in SQLite: [`EventSourcedUnitOfWork`]
/// over a [`SqliteDatabase`]. Its commit is one write transaction of the
/// store (this process's writers take turns), so of two units of work
/// that loaded one product, the second to commit finds the stream moved on:
/// a conflict.
pub type SqliteEventSourcedUnitOfWork = EventSourcedUnitOfWork<SqliteDatabase>;

#[async_trait]
impl ProductStreams for SqliteDatabase {
    type Db = Sqlite;

    fn store(&self) -> &Store<Sqlite> {
        &self.store
    }

    fn event_store(&self) -> &SqlEventStore<Sqlite> {
        &self.events
    }

    fn locks(&self) -> &ProductLocks {
        &self.locks
    }

    async fn product_of_batch(&self, reference: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT sku FROM batch_products WHERE reference = ?")
            .bind(reference)
            .fetch_optional(&self.pool)
            .await
    }

    async fn index_batch(
        &self,
        transaction: &mut Transaction<'static, Sqlite>,
        reference: &str,
        sku: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO batch_products (reference, sku) VALUES (?, ?)")
            .bind(reference)
            .bind(sku)
            .execute(&mut **transaction)
            .await
            .map(drop)
    }

    fn write_error(&self, error: sqlx::Error, sku: &str) -> UowError {
        write_error(error, sku)
    }
}
