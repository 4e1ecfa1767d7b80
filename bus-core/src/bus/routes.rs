//! The routing table: for each message type, its handlers, with their
//! dependencies resolved, in a deterministic order.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use super::typed_route::EventRoute;
use crate::call::{AsyncCall, SyncCall};
use crate::inject::Resolved;
use crate::layer::Pipeline;
use crate::message::MessageMeta;
use crate::registry::{HandlerFn, HandlerRegistration};
use crate::retry::Retry;

/// How a handler is called, decided once when the bus is built: every path
/// of a dispatch matches on it (see the table in `bus/mod.rs`).
pub(crate) enum CallPath {
    /// A plain `fn` without layers: called inline, no future, no allocation.
    Inline(SyncCall),
    /// An `async fn` without layers: its future awaited in place.
    Awaited(AsyncCall),
    /// Through its layers, outermost first (a boxed future per layer);
    /// the innermost calls `call`.
    Layered(Pipeline, HandlerFn),
}

impl CallPath {
    /// The handler's own call, whatever is around it.
    pub(crate) fn call(&self) -> HandlerFn {
        match *self {
            CallPath::Inline(f) => HandlerFn::Sync(f),
            CallPath::Awaited(f) => HandlerFn::Async(f),
            CallPath::Layered(_, call) => call,
        }
    }

    /// Whether a call drives a future (an `async fn`, or layers).
    pub(crate) fn drives(&self) -> bool {
        !matches!(self, CallPath::Inline(_))
    }

    /// Whether it has layers.
    pub(crate) fn is_layered(&self) -> bool {
        matches!(self, CallPath::Layered(..))
    }
}

/// A handler with its dependencies already looked up.
pub(crate) struct BoundHandler {
    /// How a call is made: the variants of a call, as data.
    pub(crate) path: CallPath,
    pub(crate) registration: &'static HandlerRegistration,
    pub(crate) dependencies: Box<[Resolved]>,
    /// A command or query handler's typed entry (a
    /// `TypedRequestEntry<M, M::Result>`): called with the message itself;
    /// an `async fn` handler's drives its future on the calling thread.
    pub(crate) typed_request: Option<&'static (dyn Any + Send + Sync)>,
    /// An `async fn` command or query handler's typed entry for an awaited
    /// dispatch (a `TypedAsyncRequestEntry<M, M::Result>`).
    pub(crate) typed_async_request: Option<&'static (dyn Any + Send + Sync)>,
    /// Whether a call's scope must carry the message's ids: the handler asks
    /// for a `MessageContext`, or for a scoped dependency (whose factory may
    /// read them). Otherwise they stay out of its scope, which is cheaper.
    pub(crate) needs_context: bool,
    /// An event handler's retry, when it is its only layer: the handler is
    /// called directly, and the retry takes over after a failed attempt.
    pub(crate) retry: Option<Arc<Retry>>,
    /// A command's opt-in retry: a `CommandRetry<C, C::Error>`.
    pub(crate) command_retry: Option<Box<dyn Any + Send + Sync>>,
}

/// One message type's handlers, sorted by path.
pub(crate) struct Route {
    pub(crate) meta: &'static MessageMeta,
    pub(crate) handlers: Box<[BoundHandler]>,
    /// For an event type whose handlers have typed entries.
    pub(crate) typed: Option<Arc<dyn EventRoute>>,
    /// The same route, as its concrete `TypedRoute<E>`: a publisher that
    /// knows the event type reaches it with one downcast.
    pub(crate) typed_any: Option<Arc<dyn Any + Send + Sync>>,
    /// Whether calling its handlers drives a future (an `async fn` or a
    /// layered handler): what a blocking dispatch may not do on a thread
    /// that drives async tasks.
    pub(crate) drives: bool,
}

/// Routes indexed by each message type's process-wide slot: finding a
/// message's handlers is an index, not a hash lookup.
#[derive(Default)]
pub(crate) struct Routes {
    by_slot: Vec<Option<Route>>,
}

impl Routes {
    pub(crate) fn insert(&mut self, route: Route) {
        let slot = route.meta.slot();
        if self.by_slot.len() <= slot {
            self.by_slot.resize_with(slot + 1, || None);
        }
        self.by_slot[slot] = Some(route);
    }

    /// The route of a message type, if it is in this bus.
    #[inline]
    pub(crate) fn route(&self, meta: &'static MessageMeta) -> Option<&Route> {
        match self.by_slot.get(meta.slot()) {
            Some(Some(route)) if std::ptr::eq(route.meta, meta) => Some(route),
            _ => None,
        }
    }

    /// The handlers of a message type; empty when it has none in this bus.
    #[inline]
    pub(crate) fn handlers(&self, meta: &'static MessageMeta) -> &[BoundHandler] {
        self.route(meta).map_or(&[], |route| &route.handlers)
    }

    /// Every route, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Route> {
        self.by_slot.iter().flatten()
    }
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|route| {
                let names: Vec<&str> = route
                    .handlers
                    .iter()
                    .map(|h| h.registration.name())
                    .collect();
                (route.meta.name(), names)
            }))
            .finish()
    }
}
