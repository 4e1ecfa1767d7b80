//! What a command handler can fail with; the HTTP layer maps each variant to
//! a status code.

use super::unit_of_work::UowError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No product with this sku exists.
    #[error("Invalid sku {0}")]
    InvalidSku(String),
    /// No batch with this reference exists.
    #[error("Invalid batch reference {0}")]
    UnknownBatch(String),
    /// A batch with this reference exists already.
    #[error("Batch {0} already exists")]
    DuplicateBatch(String),
    /// The unit of work failed: a concurrent update, or storage.
    #[error(transparent)]
    Uow(#[from] UowError),
}

impl ServiceError {
    /// Whether retrying the command may succeed (an optimistic-concurrency
    /// conflict: another request changed the same product first).
    pub fn is_conflict(&self) -> bool {
        matches!(self, ServiceError::Uow(UowError::Conflict { .. }))
    }

    /// Whether another attempt may succeed: a conflict or a storage fault;
    /// not a rule broken by the input (an unknown sku or batch, a duplicate).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ServiceError::Uow(UowError::Conflict { .. } | UowError::Storage(_))
        )
    }
}
