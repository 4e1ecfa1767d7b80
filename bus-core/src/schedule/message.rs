//! A scheduled message: what is sent, when, with which ids.

use std::time::SystemTime;

use super::SchedulerError;
use crate::codec::{JsonCommand, JsonEvent};
use crate::context::MessageContext;
use crate::message::{Command, Event, Message, MessageKind, MessageMeta};
use crate::MessageId;

/// The saga instance a scheduled message belongs to (a timeout it
/// requested): its completion cancels the message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SagaRef {
    /// The saga type's name.
    pub saga: String,
    /// The instance's id.
    pub id: String,
}

/// The one handler a scheduled event is for, when it is the retry of that
/// handler's call (its retry policy handed the attempt off: see
/// [`RetryPolicy::hand_off_waits_over`](crate::RetryPolicy::hand_off_waits_over)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerRetry {
    /// The handler's path (its name in every record).
    pub handler: String,
    /// The number of the attempt the firing makes (2 or more).
    pub attempt: u32,
    /// The event's own id: a retry keeps the event's ids.
    pub event_id: MessageId,
}

impl HandlerRetry {
    /// Attempt `attempt` of `handler`'s call on the event `event_id` (for
    /// stores, restoring one). 2 at least: the first attempt is always
    /// the dispatch's.
    pub fn new(handler: impl Into<String>, attempt: u32, event_id: MessageId) -> Self {
        HandlerRetry {
            handler: handler.into(),
            attempt: attempt.max(2),
            event_id,
        }
    }
}

/// A command or event to send at `due`, kept as JSON; or the retry of one
/// event handler's call ([`handler_retry`](Self::handler_retry)).
///
/// Its id is its own, made when it is scheduled: a command is dispatched
/// with it as an inbound message id (a unit of work's inbox recognises a
/// firing repeated after a crash), an event is published with it. Its
/// correlation and causation ids are those of what scheduled it
/// ([`caused_by`](Self::caused_by)), or its own id as a first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledMessage {
    id: MessageId,
    kind: MessageKind,
    name: String,
    payload: String,
    due: SystemTime,
    correlation_id: MessageId,
    causation_id: Option<MessageId>,
    saga: Option<SagaRef>,
    attempts: u32,
    last_error: Option<String>,
    parked: bool,
    retry: Option<HandlerRetry>,
    /// For a retry the bus just handed off: which store's log its event was
    /// stored with (its address), if it was stored. Not kept by stores.
    event_log: Option<usize>,
}

impl ScheduledMessage {
    /// `command`, to be dispatched at `due`. Its type must read from JSON
    /// (`#[command(serde)]` or `external`) and write to it (`Serialize`).
    pub fn command<C>(command: &C, due: SystemTime) -> Result<Self, SchedulerError>
    where
        C: Command + JsonCommand + serde::Serialize,
    {
        Self::message(command, due)
    }

    /// `event`, to be published at `due`. Its type must be derived with
    /// `#[event(serde)]` (or `external`).
    pub fn event<E>(event: &E, due: SystemTime) -> Result<Self, SchedulerError>
    where
        E: Event + JsonEvent,
    {
        Self::message(event, due)
    }

    /// `message`, a command or an event, to be sent at `due`: what a saga's
    /// [`send`](crate::saga::SagaContext::send) and timeouts use. Its type
    /// must have a JSON codec (`serde` or `external` in its derive).
    pub fn message<M>(message: &M, due: SystemTime) -> Result<Self, SchedulerError>
    where
        M: Message + serde::Serialize,
    {
        let meta = M::meta();
        if !schedulable(meta) {
            return Err(not_serializable(meta));
        }
        Self::of(meta, encode(meta, message)?, due)
    }

    fn of(
        meta: &'static MessageMeta,
        payload: String,
        due: SystemTime,
    ) -> Result<Self, SchedulerError> {
        let id = MessageId::new();
        Ok(ScheduledMessage {
            id,
            kind: meta.kind(),
            name: meta.name().to_owned(),
            payload,
            due,
            correlation_id: id,
            causation_id: None,
            saga: None,
            attempts: 0,
            last_error: None,
            parked: false,
            retry: None,
            event_log: None,
        })
    }

    /// Attempt `attempt` of `handler`'s call on `event`, whose ids
    /// `context` holds, due at `due`, under the id `id`: what the bus
    /// schedules when a retry policy hands an attempt off.
    pub(crate) fn retry_of(
        event: &crate::PendingEvent,
        context: &MessageContext,
        handler: &str,
        attempt: u32,
        due: SystemTime,
        id: MessageId,
    ) -> Result<Self, SchedulerError> {
        let meta = event.meta();
        let payload = match event.to_json() {
            Some(Ok(payload)) => payload,
            Some(Err(error)) => {
                return Err(SchedulerError::Encode {
                    name: meta.name(),
                    error,
                })
            }
            None => return Err(not_serializable(meta)),
        };
        Ok(ScheduledMessage {
            id,
            correlation_id: context.correlation_id(),
            causation_id: context.causation_id(),
            retry: Some(HandlerRetry::new(handler, attempt, context.message_id())),
            event_log: event.delivery_log().map(crate::delivery::log_address),
            ..Self::of(meta, payload, due)?
        })
    }

    /// The same message, caused by the message `flow` describes: it takes
    /// that flow's correlation id, and that message's id as its causation
    /// id.
    pub fn caused_by(mut self, flow: &MessageContext) -> Self {
        self.correlation_id = flow.correlation_id();
        self.causation_id = Some(flow.message_id());
        self
    }

    /// The same message, belonging to the saga instance `saga`.
    pub fn for_saga(mut self, saga: SagaRef) -> Self {
        self.saga = Some(saga);
        self
    }

    /// A scheduled message as a store kept it; for stores.
    #[allow(clippy::too_many_arguments)]
    pub fn restored(
        id: MessageId,
        kind: MessageKind,
        name: String,
        payload: String,
        due: SystemTime,
        correlation_id: MessageId,
        causation_id: Option<MessageId>,
        saga: Option<SagaRef>,
    ) -> Self {
        ScheduledMessage {
            id,
            kind,
            name,
            payload,
            due,
            correlation_id,
            causation_id,
            saga,
            attempts: 0,
            last_error: None,
            parked: false,
            retry: None,
            event_log: None,
        }
    }

    /// The same message, as the retry of one handler's call (for stores:
    /// see [`handler_retry`](Self::handler_retry)).
    pub fn retrying(mut self, retry: HandlerRetry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The same handler retry, as attempt `attempt`, due at `due`: what a
    /// scheduler keeps when a firing hands the next attempt back
    /// ([`Fired::Again`](super::Fired::Again)).
    pub fn next_attempt(mut self, attempt: u32, due: SystemTime) -> Self {
        if let Some(retry) = &mut self.retry {
            retry.attempt = attempt;
        }
        self.due = due;
        self
    }

    /// The same message, with the failures a store kept of it.
    pub fn with_failures(
        mut self,
        attempts: u32,
        last_error: Option<String>,
        parked: bool,
    ) -> Self {
        self.attempts = attempts;
        self.last_error = last_error;
        self.parked = parked;
        self
    }

    /// The same message after a firing that failed at `now` with `error`:
    /// one more attempt counted, the error kept, due again after
    /// [`retry_pause`](super::retry_pause), parked once it reached
    /// [`MAX_ATTEMPTS`](super::MAX_ATTEMPTS). Logged. What every scheduler
    /// does with a failed firing.
    pub fn failed(self, error: &str, now: SystemTime) -> Self {
        let attempts = self.attempts + 1;
        let parked = attempts >= super::MAX_ATTEMPTS;
        tracing::warn!(
            message = %self.name,
            message_id = %self.id,
            attempts,
            parked,
            error,
            "a scheduled message failed"
        );
        self.with_failures(attempts, Some(error.to_owned()), parked)
            .due_at(now + super::retry_pause(attempts))
    }

    /// Its id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// Command or event.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// The message's name ([`MessageMeta::name`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The message as JSON.
    pub fn payload(&self) -> &str {
        &self.payload
    }

    /// When it is due.
    pub fn due(&self) -> SystemTime {
        self.due
    }

    /// The same message, due at `due` (a firing that failed, put off).
    pub fn due_at(mut self, due: SystemTime) -> Self {
        self.due = due;
        self
    }

    /// The id of the first message of the flow that scheduled it.
    pub fn correlation_id(&self) -> MessageId {
        self.correlation_id
    }

    /// The id of the message whose handler scheduled it.
    pub fn causation_id(&self) -> Option<MessageId> {
        self.causation_id
    }

    /// The saga instance it belongs to, if it is a saga's timeout.
    pub fn saga(&self) -> Option<&SagaRef> {
        self.saga.as_ref()
    }

    /// The handler it is for, when it is the retry of one handler's call on
    /// an event: only that handler is called, with the event's ids.
    pub fn handler_retry(&self) -> Option<&HandlerRetry> {
        self.retry.as_ref()
    }

    /// Whether it is a retry the bus just handed off for an event stored
    /// by the store whose log is `log`: a store that finds the event's
    /// delivery to the handler recorded, or finished, by another delivery
    /// of it (a recovery's) schedules nothing. `false` for a message read
    /// back from a store.
    pub fn retries_an_event_of(
        &self,
        log: &std::sync::Arc<dyn crate::delivery::DeliveryLog>,
    ) -> bool {
        self.retry.is_some() && self.event_log == Some(crate::delivery::log_address(log))
    }

    /// How many firings of it failed.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The error of the last failed firing.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Whether it failed [`MAX_ATTEMPTS`](super::MAX_ATTEMPTS) times and is
    /// no longer fired.
    pub fn is_parked(&self) -> bool {
        self.parked
    }

    /// The ids it is dispatched with: its own id, as an inbound message
    /// (a command's unit of work records it in its inbox); a handler's
    /// retry keeps its event's, numbered as the attempt it makes.
    pub fn context(&self) -> MessageContext {
        if let Some(retry) = &self.retry {
            return MessageContext::restored(
                retry.event_id,
                self.correlation_id,
                self.causation_id,
            )
            .at_attempt(retry.attempt);
        }
        match self.kind {
            MessageKind::Command => {
                MessageContext::inbound(self.id, self.correlation_id, self.causation_id)
            }
            _ => MessageContext::restored(self.id, self.correlation_id, self.causation_id),
        }
    }
}

/// Whether a message of this type can be kept as JSON and read back when
/// due: a command or event with its codec.
pub(crate) fn schedulable(meta: &MessageMeta) -> bool {
    match meta.kind() {
        MessageKind::Command => meta.command_codec().is_some(),
        MessageKind::Event => meta.codec().is_some(),
        MessageKind::Query => false,
    }
}

fn not_serializable(meta: &'static MessageMeta) -> SchedulerError {
    if meta.kind() == MessageKind::Query {
        return SchedulerError::Query(meta.name());
    }
    SchedulerError::NotSerializable {
        kind: meta.kind(),
        name: meta.name(),
    }
}

fn encode<T: serde::Serialize>(
    meta: &'static MessageMeta,
    value: &T,
) -> Result<String, SchedulerError> {
    serde_json::to_string(value).map_err(|error| SchedulerError::Encode {
        name: meta.name(),
        error: error.into(),
    })
}
