//! The unit of work and repository that handlers use, whatever the storage.
//!
//! Handlers take `Scoped<dyn UnitOfWork>`: bootstrap decides whether that is
//! the SQLite one or the in-memory fake.

use arch_events::{async_trait, BoxError};

use crate::domain::model::{OrderLine, Product};

/// Why a unit of work failed.
#[derive(Debug, thiserror::Error)]
pub enum UowError {
    /// Another unit of work changed the product since it was loaded
    /// (optimistic concurrency): nothing was written; retry the command.
    #[error("product {sku} was changed concurrently; nothing was written, retry")]
    Conflict {
        /// The product.
        sku: String,
    },
    /// The storage failed (unreachable, full, corrupt...).
    #[error("storage failed: {0}")]
    Storage(#[source] BoxError),
    /// The inbound message this unit of work served was handled already
    /// (its id is in the inbox): nothing was written.
    #[error("message {message_id} was handled already; nothing was written")]
    AlreadyHandled {
        /// The message's id.
        message_id: String,
    },
}

/// Products, loaded and added through one unit of work.
///
/// Each getter loads what one kind of decision needs, never every line the
/// product ever allocated (so that a request costs the same however many
/// came before it): the batches with their quantities always, and the lines
/// named below. A product loaded by one getter and asked for again by
/// another is loaded again if the unit of work has not changed it yet, and
/// is a [`UowError::Storage`] if it has (a use case that needs both loads
/// should ask for the larger one first).
///
/// A unit of work that loads a product holds it until it commits or is
/// dropped: the other units of work of this process that load it wait their
/// turn, so that a busy product gets slower, not a stream of conflicts
/// (between processes, optimistic concurrency still decides). A unit of
/// work loads one product.
#[async_trait]
pub trait ProductRepository: Send {
    /// The product with this sku, its batches and none of their lines:
    /// enough to add a batch.
    async fn get(&mut self, sku: &str) -> Result<Option<&mut Product>, UowError>;

    /// The product of `line`, with the line where it is allocated (if it
    /// is): enough to allocate it.
    async fn get_for_line(&mut self, line: &OrderLine) -> Result<Option<&mut Product>, UowError>;

    /// The product that has a batch with this reference, its batches and
    /// none of their lines: enough to raise the batch's quantity, or to
    /// lower it while what is allocated still fits.
    async fn get_by_batchref(&mut self, reference: &str) -> Result<Option<&mut Product>, UowError>;

    /// The product that has a batch with this reference, with every line of
    /// that batch: enough to lower its quantity below what is allocated.
    async fn get_with_batch_lines(
        &mut self,
        reference: &str,
    ) -> Result<Option<&mut Product>, UowError>;

    /// Adds the new product `sku`, with no batch yet, tracked by the unit
    /// of work: give it its first batch with
    /// [`Product::add_batch`]. (It starts empty so that everything it
    /// holds is recorded as its events, which `--storage events` stores.)
    fn add(&mut self, sku: &str) -> &mut Product;
}

/// One transaction over the products: changes are written, and the products'
/// events released, only by [`commit`](arch_events::UnitOfWork::commit).
pub trait UnitOfWork: arch_events::UnitOfWork<Error = UowError> {
    /// The repository of this unit of work.
    fn products(&mut self) -> &mut dyn ProductRepository;
}

/// Makes a fresh unit of work for one handler call, given the call's
/// releaser; bootstrap registers it as a scoped dependency.
pub type UnitOfWorkFactory =
    std::sync::Arc<dyn Fn(&mut arch_events::Scope) -> Box<dyn UnitOfWork> + Send + Sync>;
