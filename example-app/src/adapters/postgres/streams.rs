//! `--storage events` in PostgreSQL: the [`ProductStreams`] behind
//! [`PostgresEventSourcedUnitOfWork`].

use arch_events::async_trait;
use arch_events_sqlx::{SqlEventStore, Store};
use sqlx::{Postgres, Transaction};

use super::{write_error, PostgresDatabase};
use crate::adapters::event_sourced::{EventSourcedUnitOfWork, ProductStreams};
use crate::adapters::product_locks::ProductLocks;
use crate::service_layer::unit_of_work::UowError;

/// An event-sourced unit of work in PostgreSQL: [`EventSourcedUnitOfWork`]
/// over a [`PostgresDatabase`]. Of two units of work (of any processes)
/// that loaded one product, the second to commit finds the stream moved
/// on: a conflict.
pub type PostgresEventSourcedUnitOfWork = EventSourcedUnitOfWork<PostgresDatabase>;

#[async_trait]
impl ProductStreams for PostgresDatabase {
    type Db = Postgres;

    fn store(&self) -> &Store<Postgres> {
        &self.store
    }

    fn event_store(&self) -> &SqlEventStore<Postgres> {
        &self.events
    }

    fn locks(&self) -> &ProductLocks {
        &self.locks
    }

    async fn product_of_batch(&self, reference: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT sku FROM batch_products WHERE reference = $1")
            .bind(reference)
            .fetch_optional(&self.pool)
            .await
    }

    async fn index_batch(
        &self,
        transaction: &mut Transaction<'static, Postgres>,
        reference: &str,
        sku: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO batch_products (reference, sku) VALUES ($1, $2)")
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
