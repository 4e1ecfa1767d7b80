//! Where sagas' state is kept: the [`SagaStore`] contract, what it loads
//! ([`SagaRecord`]) and what one handled message changes ([`SagaChange`]).

use std::time::SystemTime;

use crate::context::MessageContext;
use crate::error::BoxError;
use crate::events::{EventReleaser, PendingEvent};
use crate::schedule::{ScheduledMessage, SchedulerError};
use crate::MessageId;

/// A saga instance as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaRecord {
    /// Running: its state as JSON, its version (1 when it started, one
    /// more with each change), and the timeouts it waits for.
    Active {
        /// The state, as JSON.
        state: String,
        /// Its version.
        version: u64,
        /// The ids of the timeouts it requested and has not had, nor
        /// cancelled: a timeout message with another id is not one it
        /// waits for (cancelled while it was being fired), and is ignored.
        timeouts: Vec<MessageId>,
    },
    /// Completed: its state is gone, its id is remembered, so that a late
    /// message is recognised as late.
    Completed {
        /// Its version when it completed.
        version: u64,
    },
}

impl SagaRecord {
    /// The record's version.
    pub fn version(&self) -> u64 {
        match self {
            SagaRecord::Active { version, .. } | SagaRecord::Completed { version } => *version,
        }
    }
}

/// What handling one message changed in one saga instance, committed at
/// once by [`SagaStore::commit`].
#[derive(Debug)]
#[non_exhaustive]
pub struct SagaChange {
    /// The saga type's name.
    pub saga: &'static str,
    /// The instance's id (the correlated value).
    pub id: String,
    /// The version the change was made on: `None` for a saga that starts
    /// (it must not exist yet).
    pub expected: Option<u64>,
    /// The new state as JSON; `None` once the saga completed (the state is
    /// deleted, its waiting timeouts cancelled).
    pub state: Option<String>,
    /// The timeouts it waits for after this change (none once completed).
    pub timeouts: Vec<MessageId>,
    /// The events it publishes: stored and released with the commit.
    pub events: Vec<PendingEvent>,
    /// The messages it sends and the timeouts it requests.
    pub scheduled: Vec<ScheduledMessage>,
    /// The timeouts it cancels.
    pub cancelled: Vec<MessageId>,
}

/// Why a saga's message was not handled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// Another message changed the saga first (the version moved, or a
    /// racing start created it): handled again with the fresh state, up to
    /// a bound, by the saga's runtime.
    #[error("saga `{saga}` `{id}` was changed by another message first")]
    Conflict {
        /// The saga type's name.
        saga: &'static str,
        /// The instance's id.
        id: String,
    },
    /// A message declared `not_found = error` or `not_found = dead_letter`
    /// found no saga with its id.
    #[error("no saga `{saga}` has the id `{id}` that `{message}` correlates to")]
    NotFound {
        /// The saga type's name.
        saga: &'static str,
        /// The id the message carried.
        id: String,
        /// The message's name.
        message: &'static str,
    },
    /// The stored state does not read back as the saga's type (its shape
    /// changed without a default for the new fields, say). Permanent
    /// ([`is_permanent`](crate::is_permanent)): trying again cannot help,
    /// so an event's handler is dead-lettered at once.
    #[error("the stored state of saga `{saga}` `{id}` does not read back: {error}")]
    Decode {
        /// The saga type's name.
        saga: &'static str,
        /// The instance's id.
        id: String,
        /// What serde said.
        #[source]
        error: BoxError,
    },
    /// The state could not be written as JSON.
    #[error("the state of saga `{saga}` could not be written as JSON: {error}")]
    Encode {
        /// The saga type's name.
        saga: &'static str,
        /// What serde said.
        #[source]
        error: BoxError,
    },
    /// A message it sends or a timeout it requests cannot be scheduled.
    #[error(transparent)]
    Schedule(#[from] SchedulerError),
    /// The saga's handler returned an error: nothing was stored.
    #[error("saga `{saga}` failed: {error}")]
    Handler {
        /// The saga type's name.
        saga: &'static str,
        /// The handler's error.
        #[source]
        error: BoxError,
    },
    /// The delivery this call serves was recorded already (a redelivered
    /// event): nothing was written, and the bus takes it as done.
    #[error("saga `{saga}` handled this delivery already")]
    Duplicate {
        /// The saga type's name.
        saga: &'static str,
    },
    /// Still conflicting after this many attempts.
    #[error("saga `{saga}` `{id}` kept being changed by other messages: gave up after {attempts} attempts")]
    Contended {
        /// The saga type's name.
        saga: &'static str,
        /// The instance's id.
        id: String,
        /// How many.
        attempts: u32,
    },
    /// The store failed.
    #[error("the saga store failed: {0}")]
    Store(#[source] BoxError),
}

/// A place that keeps sagas' state, with optimistic concurrency: each
/// commit names the version it was made on, and fails with
/// [`SagaError::Conflict`] when another came first.
///
/// Implemented by [`InMemoryScheduler`](crate::schedule::InMemoryScheduler)
/// and by arch-events-sqlx's `SqlScheduler`: the scheduler keeps the
/// sagas, because a saga's timeouts change with it, in one commit.
#[crate::async_trait]
pub trait SagaStore: Send + Sync + 'static {
    /// The instance `id` of the saga `saga`, if it ever started.
    async fn load(&self, saga: &'static str, id: &str) -> Result<Option<SagaRecord>, SagaError>;

    /// Stores `change` at once: the state (inserted when
    /// [`expected`](SagaChange::expected) is `None`, else updated if still
    /// at that version; deleted once completed, with the saga's waiting
    /// timeouts), the messages it schedules and cancels, and the events it
    /// publishes, with whatever the call owes the bus (the record of the
    /// delivery it serves, the inbox row of an inbound message). Then hands
    /// the events to `releaser`.
    async fn commit(
        &self,
        change: SagaChange,
        releaser: &EventReleaser,
        flow: &MessageContext,
    ) -> Result<(), SagaError>;

    /// The store's time: what a saga's timeouts are counted from.
    fn now(&self) -> SystemTime;
}
