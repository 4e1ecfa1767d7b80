//! Message identity: every message a dispatch processes has an id, the id of
//! the dispatch's first message (the *correlation* id) and the id of the
//! message whose handler released it (the *causation* id).
//!
//! Handlers ask for a [`MessageContext`] parameter to read them; the bus puts
//! them on its `dispatch` and `handler` tracing spans.

use std::fmt;

use crate::error::BoxError;
use crate::inject::{DependencyKey, Inject, Lifetime, Resolved, Scope};
pub use crate::message_id::{MessageId, ParseMessageIdError};

/// Where a message stands in its dispatch: its id, the correlation id shared
/// by everything one command caused, the id of the message that caused it,
/// and which attempt of the current handler call this is.
///
/// Ask for it as a handler parameter:
///
/// ```
/// use arch_events::{handler, Bus, Command, Event, EventReleaser, MessageContext};
/// use std::sync::Mutex;
///
/// #[derive(Debug, Command)]
/// struct Start;
///
/// #[derive(Debug, Clone, Event)]
/// struct Started;
///
/// #[handler(releases(Started))]
/// fn start(_: Start, events: EventReleaser) -> Result<(), std::convert::Infallible> {
///     events.release(Started);
///     Ok(())
/// }
///
/// #[handler]
/// fn on_started(_: &Started, context: MessageContext, seen: &Mutex<Vec<MessageContext>>) -> Result<(), std::convert::Infallible> {
///     seen.lock().unwrap().push(context);
///     Ok(())
/// }
///
/// let seen = std::sync::Arc::new(Mutex::new(Vec::<MessageContext>::new()));
/// let bus = Bus::builder()
///     .dependencies(arch_events::Dependencies::new().shared_arc(seen.clone()))
///     .build()
///     .unwrap();
/// bus.dispatch_blocking(Start).unwrap();
///
/// // `Started` was caused by the command, whose id correlates the dispatch.
/// let context = seen.lock().unwrap()[0];
/// assert_eq!(context.causation_id(), Some(context.correlation_id()));
/// assert_ne!(context.message_id(), context.correlation_id());
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MessageContext {
    message_id: MessageId,
    correlation_id: MessageId,
    causation_id: Option<MessageId>,
    /// The attempt number, and in its top bit whether the message arrived
    /// from a broker with this id ([`INBOUND`]): one word, so that the
    /// context stays as cheap to copy into every handler call's scope.
    attempt: u32,
}

/// The bit of `MessageContext::attempt` that marks an inbound message.
const INBOUND: u32 = 1 << 31;

/// A message's ids, made on first demand: an event published outside any
/// dispatch, or released by a handler, gets its id only when something
/// reads it (a handler that takes a [`MessageContext`], an event it
/// releases, a failure kept as a dead letter, an enabled span, a test's
/// recorder). Every reader sees the same ids. Its correlation and causation
/// ids are known from the start: the cause's ([`Cause`]).
///
/// A pending event keeps its ids in one (`PendingEvent::with_lazy_ids`
/// lends it to the run that handles the event, not a copy). Neither `Clone`
/// nor `Copy`: a copy taken before the first read would make other ids
/// ([`copied`](Self::copied) is for a pending event's copy only).
#[derive(Debug)]
pub(crate) enum LazyContext {
    /// A first message (or an event in no dispatch yet): its ids are all
    /// made on first read, its own id its correlation id.
    Root,
    /// A message released while handling the one this describes: its own
    /// id is made on first read.
    Caused(Cause),
    /// Made, or known from the start.
    Known(MessageContext),
}

/// The ids a message released by a handler takes from the message that
/// handler handled: its correlation id, and its id as the causation id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cause {
    correlation_id: MessageId,
    causation_id: MessageId,
}

impl Cause {
    /// The cause of a message released while handling `cause`.
    #[inline]
    pub(crate) fn of(cause: &MessageContext) -> Self {
        Cause {
            correlation_id: cause.correlation_id,
            causation_id: cause.message_id,
        }
    }

    /// The ids of the message released, its own id made now.
    #[inline]
    pub(crate) fn ids(self) -> MessageContext {
        MessageContext::with_ids(
            MessageId::new(),
            self.correlation_id,
            Some(self.causation_id),
            false,
        )
    }
}

impl LazyContext {
    /// The ids of a first message, not made yet.
    #[inline]
    pub(crate) fn root() -> Self {
        LazyContext::Root
    }

    /// Ids known already.
    #[inline]
    pub(crate) fn known(context: MessageContext) -> Self {
        LazyContext::Known(context)
    }

    /// The ids, made now if nothing asked for them before.
    #[inline]
    pub(crate) fn get(&mut self) -> MessageContext {
        match *self {
            LazyContext::Known(context) => context,
            LazyContext::Caused(cause) => self.make(cause.ids()),
            LazyContext::Root => self.make(MessageContext::root()),
        }
    }

    #[inline]
    fn make(&mut self, context: MessageContext) -> MessageContext {
        *self = LazyContext::Known(context);
        context
    }

    /// The ids, if they are made.
    #[inline]
    pub(crate) fn made(&self) -> Option<MessageContext> {
        match *self {
            LazyContext::Known(context) => Some(context),
            LazyContext::Root | LazyContext::Caused(_) => None,
        }
    }

    /// The ids of a copy of a pending event: the same once made; unmade
    /// for an event in no dispatch yet (`Root`: each copy joins a dispatch,
    /// and takes its ids there, on its own). A state waiting on its cause
    /// is never copied: each copy would make an id of its own.
    #[inline]
    pub(crate) fn copied(&self) -> Self {
        match *self {
            LazyContext::Known(context) => LazyContext::Known(context),
            LazyContext::Root => LazyContext::Root,
            LazyContext::Caused(cause) => {
                debug_assert!(
                    false,
                    "ids waiting on their cause copied before they were made"
                );
                LazyContext::Caused(cause)
            }
        }
    }
}

/// Where a dispatch's span finds its message's ids, made only when the
/// span is enabled.
pub(crate) trait IdsSlot {
    /// The ids, made now if they were not.
    fn ids(&mut self) -> MessageContext;
}

impl IdsSlot for LazyContext {
    fn ids(&mut self) -> MessageContext {
        self.get()
    }
}

impl IdsSlot for Option<MessageContext> {
    fn ids(&mut self) -> MessageContext {
        *self.get_or_insert_with(MessageContext::root)
    }
}

impl MessageContext {
    /// The context of a dispatch's first message: it correlates everything
    /// the dispatch causes.
    #[inline]
    pub fn root() -> Self {
        let id = MessageId::new();
        MessageContext::with_ids(id, id, None, false)
    }

    /// A first attempt with these ids.
    #[inline]
    fn with_ids(
        message_id: MessageId,
        correlation_id: MessageId,
        causation_id: Option<MessageId>,
        inbound: bool,
    ) -> Self {
        MessageContext {
            message_id,
            correlation_id,
            causation_id,
            attempt: if inbound { 1 | INBOUND } else { 1 },
        }
    }

    /// The context of a message that arrived from a broker with the id
    /// `message_id`: a unit of work can record that id (an inbox) in the
    /// transaction of its effects, so that a redelivery is recognised.
    pub fn inbound(
        message_id: MessageId,
        correlation_id: MessageId,
        causation_id: Option<MessageId>,
    ) -> Self {
        MessageContext::with_ids(message_id, correlation_id, causation_id, true)
    }

    /// Whether this message arrived from a broker
    /// ([`inbound`](Self::inbound)); its id is then the broker message's.
    pub fn is_inbound(&self) -> bool {
        self.attempt & INBOUND != 0
    }

    /// The context of a first message that continues an earlier flow (one
    /// read from a broker, say): it keeps that flow's correlation id.
    pub fn continuing(correlation_id: MessageId, causation_id: Option<MessageId>) -> Self {
        MessageContext::with_ids(MessageId::new(), correlation_id, causation_id, false)
    }

    /// A context rebuilt from stored ids (replaying a dead letter).
    pub fn restored(
        message_id: MessageId,
        correlation_id: MessageId,
        causation_id: Option<MessageId>,
    ) -> Self {
        MessageContext::with_ids(message_id, correlation_id, causation_id, false)
    }

    /// The same message, at another attempt of the handler call.
    #[inline]
    pub(crate) fn at_attempt(mut self, attempt: u32) -> Self {
        self.attempt = (self.attempt & INBOUND) | (attempt & !INBOUND);
        self
    }

    /// This message's id.
    pub fn message_id(&self) -> MessageId {
        self.message_id
    }

    /// The id of the first message of the dispatch that led here.
    pub fn correlation_id(&self) -> MessageId {
        self.correlation_id
    }

    /// The id of the message whose handler released this one; `None` for the
    /// first message of a dispatch.
    pub fn causation_id(&self) -> Option<MessageId> {
        self.causation_id
    }

    /// Which attempt of this handler call is running: 1, then 2, 3, ... when
    /// a retry policy calls it again.
    pub fn attempt(&self) -> u32 {
        self.attempt & !INBOUND
    }
}

impl fmt::Debug for MessageContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageContext")
            .field("message_id", &self.message_id)
            .field("correlation_id", &self.correlation_id)
            .field("causation_id", &self.causation_id)
            .field("attempt", &self.attempt())
            .field("inbound", &self.is_inbound())
            .finish()
    }
}

impl Default for MessageContext {
    fn default() -> Self {
        MessageContext::root()
    }
}

impl<'a> Inject<'a> for MessageContext {
    fn key() -> DependencyKey {
        DependencyKey::of::<MessageContext>(Lifetime::Bus)
    }

    fn inject(_: &'a Resolved, scope: &mut Scope) -> Result<Self, BoxError> {
        Ok(scope.context())
    }
}

/// The causation id as a span field: the id, or nothing for a first message.
pub(crate) struct Causation(pub(crate) Option<MessageId>);

impl fmt::Display for Causation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => id.fmt(f),
            None => f.write_str("none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Cause, MessageContext, MessageId};

    #[test]
    fn an_inbound_message_stays_inbound_across_attempts_and_its_events_do_not() {
        let id = MessageId::new();
        let inbound = MessageContext::inbound(id, id, None);
        assert!(inbound.is_inbound());
        assert_eq!(inbound.attempt(), 1);
        let third = inbound.at_attempt(3);
        assert!(third.is_inbound());
        assert_eq!(third.attempt(), 3);
        assert!(format!("{third:?}").contains("attempt: 3, inbound: true"));
        assert!(!Cause::of(&inbound).ids().is_inbound());
        assert!(!MessageContext::root().at_attempt(2).is_inbound());
    }
}
