//! Dead letters: event-handler calls that failed for good (retries
//! exhausted, or a permanent error), kept durable so that an operator can
//! list them and replay them once the fault is gone.
//!
//! The bus hands each dead letter to [`StoreSink`], which keeps it in the
//! application's [`DeadLetterStore`]; [`replay`] reads one back and calls
//! the one handler that failed on it again.

use std::sync::Arc;

use bus_core::{
    async_trait, BoxError, Bus, DeadLetter, DeadLetterSink, MessageContext, ReplayError,
};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// A dead letter as the store keeps it: the record, its id, and how its
/// replays went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredDeadLetter {
    /// The store's id for it.
    pub id: i64,
    /// What the bus handed over.
    #[serde(flatten)]
    pub record: DeadLetterRecord,
    /// When a replay succeeded.
    pub replayed_at: Option<DateTime<Utc>>,
    /// The error of the last failed replay.
    pub replay_error: Option<String>,
}

/// One event-handler call that failed for good, as the service stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterRecord {
    /// The event's name (`allocation.out_of_stock`).
    pub message_name: String,
    /// The handler that failed on it.
    pub handler: String,
    /// Where that handler is defined (`file:line`).
    pub location: String,
    /// The last attempt's error.
    pub error: String,
    /// How many times the handler was called.
    pub attempts: u32,
    /// When the last attempt failed.
    pub failed_at: DateTime<Utc>,
    /// The event's id.
    pub message_id: String,
    /// The id of the dispatch it belongs to.
    pub correlation_id: String,
    /// The id of the message that caused it.
    pub causation_id: Option<String>,
    /// The event as JSON (`None` when its type cannot be written as JSON).
    pub payload: Option<String>,
}

impl DeadLetterRecord {
    /// What the bus handed over, ready to store.
    pub fn from_letter(letter: &DeadLetter) -> Self {
        let context = letter.context();
        let payload = match letter.event().to_json() {
            Some(Ok(json)) => Some(json),
            Some(Err(error)) => {
                tracing::error!(%error, "a dead letter's event could not be written as JSON");
                None
            }
            None => None,
        };
        DeadLetterRecord {
            message_name: letter.message_name().to_owned(),
            handler: letter.handler().to_owned(),
            location: letter.location().to_string(),
            error: letter.error().to_owned(),
            attempts: letter.attempts(),
            failed_at: DateTime::<Utc>::from(letter.failed_at()),
            message_id: context.message_id().to_string(),
            correlation_id: context.correlation_id().to_string(),
            causation_id: context.causation_id().map(|id| id.to_string()),
            payload,
        }
    }
}

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// No dead letter has this id.
    #[error("no dead letter {0}")]
    NotFound(i64),
    /// It was replayed already, or a replay of it is running.
    #[error("dead letter {0} was replayed already, or is being replayed")]
    AlreadyReplayed(i64),
    /// It cannot be replayed at all.
    #[error("dead letter {id} cannot be replayed: {reason}")]
    NotReplayable {
        /// The letter.
        id: i64,
        /// Why.
        reason: String,
    },
    /// The handler failed again; the letter stays, with this error.
    #[error("the replay of dead letter {id} failed: {source}")]
    StillFailing {
        /// The letter.
        id: i64,
        /// What the bus said.
        source: ReplayError,
    },
    /// The store itself failed.
    #[error("the dead-letter store failed: {0}")]
    Storage(#[source] BoxError),
}

/// Where the service keeps its dead letters.
#[async_trait]
pub trait DeadLetterStore: Send + Sync + 'static {
    /// Keeps a new dead letter; returns its id.
    async fn add(&self, letter: DeadLetterRecord) -> Result<i64, DeadLetterError>;

    /// Every dead letter, oldest first; the replayed ones too when
    /// `include_replayed`.
    async fn list(&self, include_replayed: bool) -> Result<Vec<StoredDeadLetter>, DeadLetterError>;

    /// One dead letter.
    async fn get(&self, id: i64) -> Result<Option<StoredDeadLetter>, DeadLetterError>;

    /// Marks the letter as being replayed, unless it was replayed already or
    /// is being replayed: `false` then. Makes two concurrent replays of one
    /// letter impossible.
    async fn claim(&self, id: i64) -> Result<bool, DeadLetterError>;

    /// Ends a claim: replayed at `at` (`Ok`), or failed again with this error.
    async fn settle(
        &self,
        id: i64,
        outcome: Result<DateTime<Utc>, String>,
    ) -> Result<(), DeadLetterError>;
}

/// The bus's sink, writing to a [`DeadLetterStore`].
pub struct StoreSink(pub Arc<dyn DeadLetterStore>);

#[async_trait]
impl DeadLetterSink for StoreSink {
    async fn store(&self, letter: &DeadLetter) -> Result<(), BoxError> {
        let id = self.0.add(DeadLetterRecord::from_letter(letter)).await?;
        tracing::warn!(
            id,
            handler = letter.handler(),
            message_name = letter.message_name(),
            "dead letter stored: list with GET /dead_letters, replay with POST /dead_letters/{id}/replay"
        );
        Ok(())
    }
}

/// Calls the handler that failed on dead letter `id` again, on its stored
/// event and with its original ids; marks it replayed when that succeeds.
pub async fn replay(
    bus: &Bus,
    store: &dyn DeadLetterStore,
    id: i64,
) -> Result<StoredDeadLetter, DeadLetterError> {
    let letter = store.get(id).await?.ok_or(DeadLetterError::NotFound(id))?;
    if letter.replayed_at.is_some() {
        return Err(DeadLetterError::AlreadyReplayed(id));
    }
    let record = &letter.record;
    let Some(payload) = &record.payload else {
        return Err(DeadLetterError::NotReplayable {
            id,
            reason: format!(
                "its event `{}` was not stored (derive it with `#[event(serde)]`)",
                record.message_name
            ),
        });
    };
    let event = bus
        .decode_event(&record.message_name, payload)
        .map_err(|error| DeadLetterError::NotReplayable {
            id,
            reason: error.to_string(),
        })?;
    if !store.claim(id).await? {
        return Err(DeadLetterError::AlreadyReplayed(id));
    }
    let context = match (record.message_id.parse(), record.correlation_id.parse()) {
        (Ok(message_id), Ok(correlation_id)) => MessageContext::restored(
            message_id,
            correlation_id,
            record
                .causation_id
                .as_deref()
                .and_then(|id| id.parse().ok()),
        ),
        _ => MessageContext::root(),
    };
    match bus.replay(&record.handler, event, context).await {
        Ok(()) => {
            store.settle(id, Ok(Utc::now())).await?;
            store.get(id).await?.ok_or(DeadLetterError::NotFound(id))
        }
        Err(source) => {
            store.settle(id, Err(source.to_string())).await?;
            Err(DeadLetterError::StillFailing { id, source })
        }
    }
}
