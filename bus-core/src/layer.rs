//! Middleware: layers around handler calls.
//!
//! A [`Layer`] wraps every call of the handlers it is installed on: it sees
//! which handler runs on which message (and, for an event, the event
//! itself), and decides when and how often to call the rest of the pipeline
//! through [`Next`]. Logging, timing, validation and transactions are layers;
//! so are the bus's own [`Retry`](crate::Retry) and
//! [`Timeout`](crate::Timeout).
//!
//! Install them with [`BusBuilder::layer`](crate::BusBuilder::layer) (every
//! handler) or [`BusBuilder::layer_for`](crate::BusBuilder::layer_for) (the
//! handlers of one message type). Handlers with no layer keep the direct,
//! allocation-free call, and so does a handler whose only layer is its retry
//! policy (the retry takes over after a failed first attempt); a layered
//! call costs one boxed future per layer.
//!
//! Why not `tower`: a `tower::Service` owns its request and hands back a
//! `'static` future, while a handler call borrows the message, its resolved
//! dependencies and its per-call scope from the dispatch; and `poll_ready`
//! back-pressure has no meaning inside one dispatch. A one-method trait over
//! a borrowed call keeps handlers zero-copy.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use arch_events::{handler, Bus, Event};
//! use arch_events::layer::{BoxFuture, HandlerCall, Layer, Next, Outcome};
//!
//! #[derive(Debug, Clone, Event)]
//! struct Shipped { order: u32 }
//!
//! #[handler]
//! fn notify(_: &Shipped) -> Result<(), std::convert::Infallible> {
//!     Ok(())
//! }
//!
//! /// Counts calls and logs slow ones.
//! struct Timing(Arc<AtomicUsize>);
//!
//! impl Layer for Timing {
//!     fn call<'a>(&'a self, call: HandlerCall<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
//!         Box::pin(async move {
//!             let started = std::time::Instant::now();
//!             let outcome = next.run(call).await;
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!             if started.elapsed().as_millis() > 100 {
//!                 tracing::warn!(handler = call.handler_name(), "slow handler");
//!             }
//!             outcome
//!         })
//!     }
//! }
//!
//! let calls = Arc::new(AtomicUsize::new(0));
//! let bus = Bus::builder().layer(Timing(calls.clone())).build().unwrap();
//! bus.publish_blocking(Shipped { order: 7 }).unwrap();
//! assert_eq!(calls.load(Ordering::Relaxed), 1);
//! ```

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

pub use crate::call::BoxFuture;
use crate::context::MessageContext;
use crate::message::{Event, Location, MessageKind, MessageMeta};
use crate::observer::FailureCause;
use crate::registry::HandlerRegistration;

/// What a handler call, or a layer, comes back with.
pub type Outcome = Result<(), FailureCause>;

/// One layer of the handler pipeline.
///
/// `call` gets the call's description and the rest of the pipeline; it
/// returns the outcome, usually that of `next.run(call)`. It may run code
/// before and after, refuse the call (return an `Err` without calling
/// `next`), or call `next` more than once (a retry).
pub trait Layer: Send + Sync + 'static {
    /// Runs around one handler call.
    fn call<'a>(&'a self, call: HandlerCall<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome>;
}

impl<L: Layer + ?Sized> Layer for Arc<L> {
    fn call<'a>(&'a self, call: HandlerCall<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        (**self).call(call, next)
    }
}

/// The handler call a layer wraps: which handler, which message, which ids,
/// which attempt.
#[derive(Clone, Copy)]
pub struct HandlerCall<'a> {
    pub(crate) registration: &'static HandlerRegistration,
    pub(crate) meta: &'static MessageMeta,
    pub(crate) event: Option<&'a (dyn Any + Send + Sync)>,
    pub(crate) context: MessageContext,
}

impl<'a> HandlerCall<'a> {
    /// The handler's full path (`crate::module::function`).
    pub fn handler_name(&self) -> &'static str {
        self.registration.name()
    }

    /// Where the handler is defined.
    pub fn location(&self) -> Location {
        self.registration.location()
    }

    /// Whether the handler is an `async fn`.
    pub fn is_async(&self) -> bool {
        self.registration.is_async()
    }

    /// The message's stable name.
    pub fn message_name(&self) -> &'static str {
        self.meta.name()
    }

    /// Command, event or query.
    pub fn kind(&self) -> MessageKind {
        self.meta.kind()
    }

    /// The event this call handles, if it is an `E`. Commands and queries are
    /// owned by their one handler and are not shown to layers.
    pub fn event<E: Event>(&self) -> Option<&'a E> {
        self.event.and_then(|event| event.downcast_ref())
    }

    /// The message's ids and the attempt number.
    pub fn context(&self) -> MessageContext {
        self.context
    }

    /// Which attempt this is (1 for the first call).
    pub fn attempt(&self) -> u32 {
        self.context.attempt()
    }

    /// The same call, numbered as attempt `attempt` (what a retry layer hands
    /// to `next`).
    pub fn at_attempt(self, attempt: u32) -> Self {
        HandlerCall {
            context: self.context.at_attempt(attempt),
            ..self
        }
    }
}

impl std::fmt::Debug for HandlerCall<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerCall")
            .field("handler", &self.handler_name())
            .field("message", &self.message_name())
            .field("context", &self.context)
            .finish()
    }
}

/// The rest of the pipeline: the inner layers, then the handler.
///
/// `Copy`: a layer may run it several times, each run a fresh handler call
/// (fresh scoped dependencies; only a successful run's events are kept).
#[derive(Clone, Copy)]
pub struct Next<'a> {
    layers: &'a [Arc<dyn Layer>],
    handler: &'a (dyn Invoke + 'a),
}

impl<'a> Next<'a> {
    pub(crate) fn new(layers: &'a [Arc<dyn Layer>], handler: &'a (dyn Invoke + 'a)) -> Self {
        Next { layers, handler }
    }

    /// Runs the inner layers and the handler.
    pub fn run(self, call: HandlerCall<'a>) -> BoxFuture<'a, Outcome> {
        match self.layers.split_first() {
            Some((layer, inner)) => layer.call(
                call,
                Next {
                    layers: inner,
                    handler: self.handler,
                },
            ),
            None => self.handler.invoke(call),
        }
    }

    /// Hands attempt number `attempt` of this call to the bus's scheduler,
    /// to be made `after` from now, once the pipeline returns its last
    /// failure; `false` when this call cannot be handed off (no scheduler,
    /// not an event handler's call): the retry waits then. (A replay's
    /// call takes it, and drops it: the replay stops there, failed.)
    pub(crate) fn hand_off(&self, attempt: u32, after: Duration) -> bool {
        self.handler.hand_off(attempt, after)
    }
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

/// The innermost step of a pipeline: one real handler call.
pub(crate) trait Invoke: Sync {
    fn invoke<'a>(&'a self, call: HandlerCall<'a>) -> BoxFuture<'a, Outcome>;

    /// Takes over attempt `attempt`, `after` from now, for the scheduler
    /// (see [`Next::hand_off`]); `false` by default: only an event
    /// handler's call on a bus with a scheduler can be handed off.
    fn hand_off(&self, attempt: u32, after: Duration) -> bool {
        let _ = (attempt, after);
        false
    }
}

/// The layers of one handler, outermost first.
pub(crate) type Pipeline = Box<[Arc<dyn Layer>]>;
