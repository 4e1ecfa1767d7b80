//! What a saga's handler works with besides its state: the time, the ids
//! of the message it handles, and what it asks for (events to publish,
//! commands to send, timeouts, completion), all of it committed with the
//! state or not at all.

use std::any::TypeId;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::context::MessageContext;
use crate::events::PendingEvent;
use crate::message::{Event, Message};
use crate::schedule::{SagaRef, ScheduledMessage, SchedulerError};
use crate::MessageId;

/// The saga handler's view of the call: `saga.publish(..)`,
/// `saga.send(..)`, `saga.request_timeout(..)`, `saga.mark_completed()`.
/// Nothing it is asked happens unless the saga's new state commits.
#[derive(Debug)]
pub struct SagaContext {
    saga: &'static str,
    id: String,
    now: SystemTime,
    flow: MessageContext,
    settings: Arc<super::runtime::Settings>,
    pub(super) events: Vec<PendingEvent>,
    pub(super) scheduled: Vec<ScheduledMessage>,
    pub(super) cancelled: Vec<MessageId>,
    pub(super) completed: bool,
    pub(super) declined: bool,
    pub(super) error: Option<SchedulerError>,
}

impl SagaContext {
    pub(super) fn new(
        saga: &'static str,
        id: String,
        now: SystemTime,
        flow: MessageContext,
        settings: Arc<super::runtime::Settings>,
    ) -> Self {
        SagaContext {
            saga,
            id,
            now,
            flow,
            settings,
            events: Vec::new(),
            scheduled: Vec::new(),
            cancelled: Vec::new(),
            completed: false,
            declined: false,
            error: None,
        }
    }

    /// The saga instance's id: the value its messages correlate by.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The store's time now (a test's virtual clock's).
    pub fn now(&self) -> SystemTime {
        self.now
    }

    /// The value of type `T` the runtime was given
    /// ([`Sagas::with`](super::Sagas::with)), if it was.
    pub fn setting<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.settings
            .get(&TypeId::of::<T>())
            .and_then(|value| value.downcast_ref())
    }

    /// The ids of the message being handled.
    pub fn message(&self) -> &MessageContext {
        &self.flow
    }

    /// Publishes `event` once the saga's change commits (stored with it,
    /// and sent to the broker too when it is external).
    pub fn publish<E: Event>(&mut self, event: E) {
        self.events.push(PendingEvent::new(event));
    }

    /// Sends `message` (a command or an event) once the saga's change
    /// commits: kept with it by the scheduler, and sent at once from
    /// there, so that it is sent even if the process dies right after.
    /// Its type must have a JSON codec (`serde` in its derive).
    pub fn send<M: Message + serde::Serialize>(&mut self, message: &M) {
        let now = self.now;
        self.schedule(message, now, false);
    }

    /// Sends `message` to the saga itself (a handler of the saga takes it)
    /// after `after`: a timeout. Cancelled when the saga completes first; a
    /// timeout that arrives all the same finds the saga completed, which
    /// is logged and ignored. Returns its id, for
    /// [`cancel_timeout`](Self::cancel_timeout).
    pub fn request_timeout<M: Message + serde::Serialize>(
        &mut self,
        after: Duration,
        message: &M,
    ) -> MessageId {
        let due = self.now + after;
        self.schedule(message, due, true)
    }

    /// Cancels a timeout this saga requested: it will not be handled,
    /// even if the scheduler is firing it at this moment (the saga keeps
    /// the ids of the timeouts it waits for, and ignores any other).
    pub fn cancel_timeout(&mut self, id: MessageId) {
        self.cancelled.push(id);
    }

    /// Completes the saga: its state is deleted and its waiting timeouts
    /// cancelled with the commit; a message that comes later is logged and
    /// ignored.
    pub fn mark_completed(&mut self) {
        self.completed = true;
    }

    /// Changes nothing after all: nothing is stored (for a starting
    /// message, no saga starts), whatever else was asked. The decision
    /// rests on the state as loaded, which another message may be changing
    /// at the same moment: decline only what does not depend on it (a
    /// feature switched off, a message the saga is not for). A declined
    /// stored event costs its delivery no record: redelivered after a
    /// crash, it is decided again, with the settings of then.
    pub fn decline(&mut self) {
        self.declined = true;
    }

    /// Whether [`mark_completed`](Self::mark_completed) was called.
    pub fn is_completed(&self) -> bool {
        self.completed
    }

    fn schedule<M: Message + serde::Serialize>(
        &mut self,
        message: &M,
        due: SystemTime,
        timeout: bool,
    ) -> MessageId {
        match ScheduledMessage::message(message, due) {
            Ok(scheduled) => {
                let mut scheduled = scheduled.caused_by(&self.flow);
                if timeout {
                    scheduled = scheduled.for_saga(SagaRef {
                        saga: self.saga.to_owned(),
                        id: self.id.clone(),
                    });
                }
                let id = scheduled.id();
                self.scheduled.push(scheduled);
                id
            }
            Err(error) => {
                // Reported when the change is committed: nothing is stored.
                self.error.get_or_insert(error);
                MessageId::new()
            }
        }
    }
}
