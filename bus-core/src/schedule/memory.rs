//! The scheduler of one process, in memory: scheduled messages and sagas'
//! state under one lock, so that a saga's change and its timeouts commit
//! together. Nothing survives the process: arch-events-sqlx's
//! `SqlScheduler` is the durable one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use super::{Clock, Fired, ScheduledMessage, Scheduler, SchedulerError, SystemClock};
use crate::bus::InboundError;
use crate::context::MessageContext;
use crate::events::EventReleaser;
use crate::saga::{SagaChange, SagaError, SagaRecord, SagaStore};
use crate::{Bus, MessageId};

/// How long a message this bus does not know is put off.
const UNKNOWN_PAUSE: std::time::Duration = std::time::Duration::from_secs(60);

/// Scheduled messages and sagas' state, in memory: for tests (with a
/// [`VirtualClock`](super::VirtualClock)) and for a service that needs no
/// durability.
pub struct InMemoryScheduler {
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Waiting (and parked) messages, with the order they were scheduled in.
    waiting: Vec<(u64, ScheduledMessage)>,
    next: u64,
    sagas: HashMap<(String, String), SagaRecord>,
}

impl std::fmt::Debug for InMemoryScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("InMemoryScheduler")
            .field("waiting", &inner.waiting.len())
            .field("sagas", &inner.sagas.len())
            .finish()
    }
}

impl Default for InMemoryScheduler {
    fn default() -> Self {
        InMemoryScheduler::new()
    }
}

impl InMemoryScheduler {
    /// On the system's clock.
    pub fn new() -> Self {
        InMemoryScheduler::with_clock(SystemClock)
    }

    /// On `clock` (a [`VirtualClock`](super::VirtualClock) in tests).
    pub fn with_clock(clock: impl Clock) -> Self {
        InMemoryScheduler {
            clock: Arc::new(clock),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change under the lock is whole before it is released: a
        // poisoned lock's data is consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn add(&mut self, message: ScheduledMessage) {
        if self.waiting.iter().any(|(_, m)| m.id() == message.id()) {
            return;
        }
        self.next += 1;
        self.waiting.push((self.next, message));
    }

    fn remove(&mut self, id: MessageId) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|(_, m)| m.id() != id);
        self.waiting.len() != before
    }
}

#[crate::async_trait]
impl Scheduler for InMemoryScheduler {
    async fn schedule(&self, message: ScheduledMessage) -> Result<(), SchedulerError> {
        self.lock().add(message);
        Ok(())
    }

    async fn cancel(&self, id: MessageId) -> Result<bool, SchedulerError> {
        Ok(self.lock().remove(id))
    }

    async fn fire_due(&self, bus: &Bus) -> Result<usize, SchedulerError> {
        let now = self.clock.now();
        let mut due: Vec<(u64, ScheduledMessage)> = {
            let mut inner = self.lock();
            let (due, waiting) = std::mem::take(&mut inner.waiting)
                .into_iter()
                .partition(|(_, m)| !m.is_parked() && m.due() <= now);
            inner.waiting = waiting;
            due
        };
        due.sort_by_key(|(seq, m)| (m.due(), *seq));
        let mut fired = 0;
        for (seq, message) in due {
            match bus.deliver_scheduled(&message).await {
                Ok(Fired::Again { attempt, after }) => {
                    fired += 1;
                    let next = message.next_attempt(attempt, self.clock.now() + after);
                    self.lock().waiting.push((seq, next));
                }
                Ok(_) => fired += 1,
                Err(InboundError::Closed(_)) => {
                    // Not fired: the bus is shutting down.
                    self.lock().waiting.push((seq, message));
                }
                Err(
                    error @ (InboundError::UnknownName(_) | InboundError::UnknownHandler { .. }),
                ) => {
                    // Not this bus's: put off for another, no attempt counted.
                    tracing::warn!(message = message.name(), message_id = %message.id(), %error, "a scheduled message this bus does not know: put off");
                    let later = message.due_at(now + UNKNOWN_PAUSE);
                    self.lock().waiting.push((seq, later));
                }
                Err(error) => {
                    fired += 1;
                    let again = message.failed(&error.to_string(), now);
                    self.lock().waiting.push((seq, again));
                }
            }
        }
        Ok(fired)
    }

    async fn unpark(&self, id: MessageId) -> Result<bool, SchedulerError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let Some(at) = inner
            .waiting
            .iter()
            .position(|(_, m)| m.id() == id && m.is_parked())
        else {
            return Ok(false);
        };
        let (seq, message) = inner.waiting.remove(at);
        inner
            .waiting
            .push((seq, message.with_failures(0, None, false).due_at(now)));
        Ok(true)
    }

    async fn next_due(&self) -> Result<Option<SystemTime>, SchedulerError> {
        Ok(self
            .lock()
            .waiting
            .iter()
            .filter(|(_, m)| !m.is_parked())
            .map(|(_, m)| m.due())
            .min())
    }

    async fn pending(&self) -> Result<Vec<ScheduledMessage>, SchedulerError> {
        let mut waiting = self.lock().waiting.clone();
        waiting.sort_by_key(|(seq, m)| (m.due(), *seq));
        Ok(waiting.into_iter().map(|(_, m)| m).collect())
    }

    fn now(&self) -> SystemTime {
        self.clock.now()
    }
}

#[crate::async_trait]
impl SagaStore for InMemoryScheduler {
    async fn load(&self, saga: &'static str, id: &str) -> Result<Option<SagaRecord>, SagaError> {
        Ok(self
            .lock()
            .sagas
            .get(&(saga.to_owned(), id.to_owned()))
            .cloned())
    }

    async fn commit(
        &self,
        change: SagaChange,
        releaser: &EventReleaser,
        _flow: &MessageContext,
    ) -> Result<(), SagaError> {
        let SagaChange {
            saga,
            id,
            expected,
            state,
            timeouts,
            events,
            scheduled,
            cancelled,
        } = change;
        {
            let mut inner = self.lock();
            let key = (saga.to_owned(), id);
            let current = inner.sagas.get(&key).map(SagaRecord::version);
            let version = match (expected, current) {
                (None, None) => 1,
                (Some(expected), Some(current)) if expected == current => current + 1,
                _ => return Err(SagaError::Conflict { saga, id: key.1 }),
            };
            for message in scheduled {
                inner.add(message);
            }
            for id in cancelled {
                inner.remove(id);
            }
            let record = match state {
                Some(state) => SagaRecord::Active {
                    state,
                    version,
                    timeouts,
                },
                None => {
                    inner.waiting.retain(|(_, m)| {
                        m.saga()
                            .is_none_or(|owner| owner.saga != key.0 || owner.id != key.1)
                    });
                    SagaRecord::Completed { version }
                }
            };
            inner.sagas.insert(key, record);
        }
        releaser.release_all(events);
        Ok(())
    }

    fn now(&self) -> SystemTime {
        self.clock.now()
    }
}
