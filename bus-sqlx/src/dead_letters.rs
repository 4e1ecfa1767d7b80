//! Dead letters: event-handler calls that failed for good (retries
//! exhausted, or a permanent error), kept durable so that an operator can
//! list them, replay them once the fault is gone, or delete the ones given
//! up on.
//!
//! [`DeadLetters`] is the bus's [`DeadLetterSink`] (give it to
//! [`BusBuilder::dead_letters`](arch_events::BusBuilder::dead_letters)) and a
//! [`DeadLetterStore`]; [`replay`] reads a letter back and calls the one
//! handler that failed on it again. A replay claims its letter for a while
//! ([`Settings::dead_letter_claim`](crate::Settings::dead_letter_claim)), so
//! two replays of one letter never run at once, and a replay whose process
//! died frees its letter when the claim runs out.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arch_events::dead_letter::{DeadLetter, DeadLetterSink};
use arch_events::delivery::DeliveryLog;
use arch_events::{async_trait, BoxError, Bus, MessageContext, ReplayError};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Pool;

use crate::backend::{Backend, Deleted};
use crate::store::Store;

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

/// One event-handler call that failed for good, as the store keeps it.
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
    /// The id of the flow it belongs to.
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
#[non_exhaustive]
pub enum DeadLetterError {
    /// No dead letter has this id.
    #[error("no dead letter {0}")]
    NotFound(i64),
    /// It was replayed already, or a replay of it is running.
    #[error("dead letter {0} was replayed already, or is being replayed")]
    AlreadyReplayed(i64),
    /// A replay of it is running: it cannot be deleted now.
    #[error("dead letter {0} is being replayed")]
    BeingReplayed(i64),
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

/// Where a service keeps its dead letters: [`DeadLetters`] in the
/// database, or [`InMemoryDeadLetterStore`] in tests.
#[async_trait]
pub trait DeadLetterStore: Send + Sync + 'static {
    /// Keeps a new dead letter; returns its id.
    async fn add(&self, letter: DeadLetterRecord) -> Result<i64, DeadLetterError>;

    /// Every dead letter, oldest first; the replayed ones too when
    /// `include_replayed`.
    async fn list(&self, include_replayed: bool) -> Result<Vec<StoredDeadLetter>, DeadLetterError>;

    /// One dead letter.
    async fn get(&self, id: i64) -> Result<Option<StoredDeadLetter>, DeadLetterError>;

    /// Claims the letter for a replay, unless it was replayed already or a
    /// replay holds a live claim on it: `false` then. Makes two concurrent
    /// replays of one letter impossible; a claim whose replay died runs out
    /// ([`Settings::dead_letter_claim`](crate::Settings::dead_letter_claim),
    /// 5 min: a replay that takes longer may find a second one beside it).
    async fn claim(&self, id: i64) -> Result<bool, DeadLetterError>;

    /// Ends a claim: replayed at `at` (`Ok`), or failed again with this error.
    async fn settle(
        &self,
        id: i64,
        outcome: Result<DateTime<Utc>, String>,
    ) -> Result<(), DeadLetterError>;

    /// Deletes a letter given up on; [`DeadLetterError::BeingReplayed`]
    /// while a replay holds it.
    async fn delete(&self, id: i64) -> Result<(), DeadLetterError>;

    /// The log of the store the letters are in, when a replay's unit of
    /// work can mark its letter replayed in its own transaction
    /// ([`Bus::replay_letter`]): then a replay's effect happens once.
    fn delivery_log(&self) -> Option<Arc<dyn DeliveryLog>> {
        None
    }
}

/// The dead letters in the store's database (`bus_dead_letters`).
pub struct DeadLetters<DB: Backend> {
    pool: Pool<DB>,
    store: Store<DB>,
    claim: Duration,
}

impl<DB: Backend> Clone for DeadLetters<DB> {
    fn clone(&self) -> Self {
        DeadLetters {
            pool: self.pool.clone(),
            store: self.store.clone(),
            claim: self.claim,
        }
    }
}

impl<DB: Backend> std::fmt::Debug for DeadLetters<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("database", &DB::LABEL)
            .field("claim", &self.claim)
            .finish()
    }
}

impl<DB: Backend> DeadLetters<DB> {
    pub(crate) fn new(store: Store<DB>) -> Self {
        DeadLetters {
            pool: store.pool().clone(),
            claim: store.settings().dead_letter_claim,
            store,
        }
    }
}

fn storage(error: sqlx::Error) -> DeadLetterError {
    DeadLetterError::Storage(error.into())
}

#[async_trait]
impl<DB: Backend> DeadLetterStore for DeadLetters<DB> {
    async fn add(&self, letter: DeadLetterRecord) -> Result<i64, DeadLetterError> {
        let _turn = self.store.writer_turn().await;
        DB::add_dead_letter(&self.pool, &letter)
            .await
            .map_err(storage)
    }

    async fn list(&self, include_replayed: bool) -> Result<Vec<StoredDeadLetter>, DeadLetterError> {
        DB::list_dead_letters(&self.pool, include_replayed)
            .await
            .map_err(storage)
    }

    async fn get(&self, id: i64) -> Result<Option<StoredDeadLetter>, DeadLetterError> {
        DB::get_dead_letter(&self.pool, id).await.map_err(storage)
    }

    async fn claim(&self, id: i64) -> Result<bool, DeadLetterError> {
        let _turn = self.store.writer_turn().await;
        DB::claim_dead_letter(&self.pool, id, self.claim)
            .await
            .map_err(storage)
    }

    async fn settle(
        &self,
        id: i64,
        outcome: Result<DateTime<Utc>, String>,
    ) -> Result<(), DeadLetterError> {
        let _turn = self.store.writer_turn().await;
        DB::settle_dead_letter(&self.pool, id, outcome)
            .await
            .map_err(storage)
    }

    async fn delete(&self, id: i64) -> Result<(), DeadLetterError> {
        let _turn = self.store.writer_turn().await;
        match DB::delete_dead_letter(&self.pool, id)
            .await
            .map_err(storage)?
        {
            Deleted::Yes => Ok(()),
            Deleted::NotFound => Err(DeadLetterError::NotFound(id)),
            Deleted::Claimed => Err(DeadLetterError::BeingReplayed(id)),
        }
    }

    fn delivery_log(&self) -> Option<Arc<dyn DeliveryLog>> {
        Some(self.store.delivery_log())
    }
}

#[async_trait]
impl<DB: Backend> DeadLetterSink for DeadLetters<DB> {
    async fn store(&self, letter: &DeadLetter) -> Result<(), BoxError> {
        store_letter(self, letter).await
    }
}

/// The bus's sink over any [`DeadLetterStore`] (a fake in tests).
pub struct StoreSink(pub Arc<dyn DeadLetterStore>);

impl std::fmt::Debug for StoreSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreSink")
    }
}

#[async_trait]
impl DeadLetterSink for StoreSink {
    async fn store(&self, letter: &DeadLetter) -> Result<(), BoxError> {
        store_letter(&*self.0, letter).await
    }
}

async fn store_letter(store: &dyn DeadLetterStore, letter: &DeadLetter) -> Result<(), BoxError> {
    let id = store.add(DeadLetterRecord::from_letter(letter)).await?;
    tracing::warn!(
        id,
        handler = letter.handler(),
        message_name = letter.message_name(),
        "dead letter stored: list, replay or delete it (arch_events_sqlx::DeadLetterStore)"
    );
    Ok(())
}

/// Calls the handler that failed on dead letter `id` again, on its stored
/// event and with its original ids, under a claim; marks it replayed when
/// that succeeds, or keeps the new error when it fails.
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
        // Deleted meanwhile, or replayed, or being replayed.
        return Err(match store.get(id).await? {
            None => DeadLetterError::NotFound(id),
            Some(_) => DeadLetterError::AlreadyReplayed(id),
        });
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
    let replayed = match store.delivery_log() {
        Some(log) => {
            bus.replay_letter(&record.handler, event, context, &log, id)
                .await
        }
        None => bus.replay(&record.handler, event, context).await,
    };
    match replayed {
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

/// Dead letters in memory, with the same contract as [`DeadLetters`]
/// (claims included, without expiry): for tests and demos.
#[derive(Debug, Default)]
pub struct InMemoryDeadLetterStore {
    letters: Mutex<Vec<(StoredDeadLetter, bool)>>,
}

impl InMemoryDeadLetterStore {
    fn letters(&self) -> std::sync::MutexGuard<'_, Vec<(StoredDeadLetter, bool)>> {
        // Every change below is one assignment, push or removal: a poisoned
        // lock's data is whole.
        self.letters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl DeadLetterStore for InMemoryDeadLetterStore {
    async fn add(&self, letter: DeadLetterRecord) -> Result<i64, DeadLetterError> {
        let mut letters = self.letters();
        let id = letters.last().map_or(1, |(last, _)| last.id + 1);
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

    async fn delete(&self, id: i64) -> Result<(), DeadLetterError> {
        let mut letters = self.letters();
        let position = letters
            .iter()
            .position(|(letter, _)| letter.id == id)
            .ok_or(DeadLetterError::NotFound(id))?;
        if letters[position].1 {
            return Err(DeadLetterError::BeingReplayed(id));
        }
        letters.remove(position);
        Ok(())
    }
}
