//! The message bus: built once at startup, then dispatched to concurrently.
//!
//! # Where a dispatch goes
//!
//! Every entry point counts itself in flight (`lifecycle.rs`: `enter` for an
//! awaited one, `enter_blocking` for one that ends on its thread), finds the
//! message's route by its slot (`routes.rs`), and calls each handler by the
//! handler's [`CallPath`](routes::CallPath), decided at build
//! (`builder.rs`): `Inline` (a plain `fn`, no future), `Awaited` (an
//! `async fn`) or `Layered` (its pipeline, a boxed future per layer).
//!
//! | entry point | file: function | the handler's call | what it released |
//! |---|---|---|---|
//! | `dispatch`, `dispatch_in`, `query` | `dispatch.rs`: `request` | `Inline`: `request_sync`; `Awaited`: `request_direct_async`; `Layered`, or a command's retry: `request_driven` → `CommandRetry::run` → `request_once` | `settle_request` → `detach.rs`: `run_to_end` → `event_path.rs`: `run_queue` |
//! | `dispatch_blocking`, `query_blocking` | `dispatch.rs`: `request_blocking` | `Inline`: `request_sync` on this thread; `Awaited`: `Blocking::check`, then `request_async_blocking` (its future polled in place); `Layered`, or a retry: `Blocking::check`, then `request_blocking_driven` under the crate's `block_on` | `answer_blocking` → `run_queue_blocking` |
//! | `publish`, `publish_in` | `dispatch.rs`: `publish_awaited` | the event's handlers, as below | `run_to_end` → `run_queue` |
//! | `publish_blocking` | `dispatch.rs`: `publish_blocking` | `publish_typed_blocking` (the typed route) | `run_queue_blocking` |
//! | `handle_external` | `inbound.rs` | a command: its `CommandCodec` → `dispatch_in`; an event: `publish_erased` | as for `dispatch` / `publish` |
//! | `redeliver` (a store's recovery) | `redeliver.rs` | `event_path.rs`: `handle_tracked`, skipping the handlers that completed | `run_queue` |
//! | `deliver_scheduled` (a scheduler) | `scheduled.rs` | a command: its `CommandCodec` → `dispatch_in`; an event: `publish_erased` | as for `dispatch` / `publish` |
//! | `replay` (a dead letter) | `replay.rs`: `replay_with` | the one handler, through its layers or its retry | `run_to_end` |
//! | `shutdown`, `settled` | `mod.rs` → `lifecycle.rs`: `wait_idle` | none | none |
//!
//! A command or query handler without layers is called through its typed
//! entry (`BoundHandler::typed_request`: the message in, the result out, no
//! frame and no downcast of it), an event handler's plain `fn` through its
//! typed route; the erased call (`Call`, `Frame`) serves the layers.
//!
//! What a handler call released (`events.rs`: its `EventReleaser`, reused
//! by the thread's next call when no clone outlived the call) becomes the
//! queue of a dispatch's events (`cascade.rs`: a `Run` over a `Cascade`; a
//! released event's own id is made when first read, its correlation and
//! causation ids are its cause's). The queue runs one event at a time,
//! first in, first out, each through all of its handlers in route order
//! (`event_path.rs`):
//! - an event whose handlers are all plain `fn`s without layers goes through
//!   its typed route (`typed_route.rs`: no downcast per handler,
//!   `handle_typed_blocking`): the calls run back to back under one
//!   `catch_unwind` (`run_quiet`), and one that failed, panicked or released
//!   events is settled (`settle_typed`) before the rest go on;
//! - on a blocking run, such an event that is not stored is handled as it
//!   leaves the queue, without becoming the run's current event: nothing
//!   can stop its calls half-way (`run_queue_blocking`);
//! - a stored event (a durable unit of work released it) goes through
//!   `handle_tracked`, which records each handler's success with the store;
//! - otherwise each handler by its `CallPath`: `call_direct_sync`,
//!   `call_event_async`, or an `EventInvocation` through `Next`.
//!
//! An event handler's failure never stops the queue: `fail_or_retry` keeps
//! it for its retry, when its only layer is a `Retry` (the retry runs after
//! the event's other handlers, in `after_event`, through
//! `Retry::after_failure`), else it fails for good (`fail`: logged, told to
//! the observer and the recorder, kept as a dead letter). Both retries, an
//! event handler's and a command's, are the one loop `retry::retried`.

mod barrier;
mod builder;
mod cascade;
mod command_retry;
mod describe;
mod detach;
mod dispatch;
mod event_path;
mod hand_off;
mod inbound;
mod invocation;
mod lifecycle;
mod redeliver;
mod replay;
mod routes;
#[cfg(feature = "json")]
mod scheduled;
mod typed_route;
mod unwind;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use builder::{BusBuilder, DEFAULT_MAX_MESSAGES_PER_DISPATCH};
pub use describe::{
    BusDescription, DeadEnd, DependencyDescription, HandlerDescription, MessageDescription,
    SagaDescription, SagaRole, SagaStepDescription,
};
pub use inbound::{CommandCodec, InboundError};
pub use replay::ReplayError;
use routes::Routes;
pub(crate) use typed_route::{TypedEntry, TypedSyncEntry};

use crate::dead_letter::{DeadLetterSink, InMemoryDeadLetters};
use crate::message::MessageMeta;
use crate::observer::Observer;

/// The message bus.
///
/// Built once by [`Bus::builder`], which validates all wiring; then cheap to
/// clone, `Send + Sync`, and safe to dispatch to from many threads and tasks
/// at once: every dispatch has its own queue and its own scoped dependencies.
///
/// ```
/// use arch_events::{handler, Bus, Command, Dependencies, Event, EventReleaser};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// #[derive(Debug, Command)]
/// #[command(output = usize)]
/// struct Add(usize);
///
/// #[derive(Debug, Clone, Event)]
/// struct Added(usize);
///
/// #[handler(releases(Added))]
/// fn add(cmd: Add, total: &AtomicUsize, events: EventReleaser) -> Result<usize, std::convert::Infallible> {
///     let now = total.fetch_add(cmd.0, Ordering::SeqCst) + cmd.0;
///     events.release(Added(now));
///     Ok(now)
/// }
///
/// let bus = Bus::builder()
///     .dependencies(Dependencies::new().shared(AtomicUsize::new(0)))
///     .build()
///     .unwrap();
/// assert_eq!(bus.dispatch_blocking(Add(2)).unwrap(), 2);
/// assert_eq!(bus.dispatch_blocking(Add(3)).unwrap(), 5);
/// ```
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

struct BusInner {
    routes: Routes,
    observer: Option<Arc<dyn Observer>>,
    max_messages: usize,
    dead_letters: Arc<dyn DeadLetterSink>,
    lifecycle: lifecycle::Lifecycle,
    /// Every message type of the bus.
    messages: Box<[&'static MessageMeta]>,
    /// Handlers and messages by name, made on the first replay.
    names: OnceLock<Names>,
    /// A test's recorder, once attached, and the run-time checks of what
    /// handlers release.
    watch: watch::Watch,
    /// Where the cascade of an awaited dispatch runs, when bootstrap named
    /// a runtime (see `detach.rs`).
    spawner: Option<Arc<dyn crate::spawn::Spawn>>,
    /// Where event handlers' retries hand their attempts off to.
    scheduler: Option<hand_off::RetryScheduler>,
}

/// What a replay looks up by name.
struct Names {
    /// Every handler by its path: `(its message, its index in the route)`.
    handlers: HashMap<&'static str, (&'static MessageMeta, usize)>,
    /// Every message type by its name.
    messages: HashMap<&'static str, &'static MessageMeta>,
    /// Every message type with an external name, by that name.
    external: HashMap<&'static str, &'static MessageMeta>,
}

impl Names {
    /// The message an inbound `name` means: an external name first, then a
    /// message's own name.
    fn inbound(&self, name: &str) -> Option<&'static MessageMeta> {
        self.external
            .get(name)
            .or_else(|| self.messages.get(name))
            .copied()
    }
}

impl BusInner {
    fn names(&self) -> &Names {
        self.names.get_or_init(|| {
            let mut handlers = HashMap::new();
            for route in self.routes.iter() {
                for (index, handler) in route.handlers.iter().enumerate() {
                    handlers.insert(handler.registration.name(), (route.meta, index));
                }
            }
            let messages = self.messages.iter().map(|m| (m.name(), *m)).collect();
            let external = self
                .messages
                .iter()
                .filter_map(|m| m.external().map(|name| (name, *m)))
                .collect();
            Names {
                handlers,
                messages,
                external,
            }
        })
    }
}

/// Dispatches were still running when the grace period of
/// [`Bus::shutdown`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{running} dispatch(es) still running after the {grace:?} grace period")]
pub struct ShutdownError {
    /// How many (blocking dispatches nested on one thread count as one).
    pub running: usize,
    /// The grace period that ended.
    pub grace: Duration,
}

impl Bus {
    /// Starts building a bus; see [`BusBuilder`].
    pub fn builder() -> BusBuilder {
        BusBuilder::new()
    }

    /// Every message type the bus knows, sorted by name.
    pub fn message_types(&self) -> impl Iterator<Item = &'static MessageMeta> + '_ {
        self.inner.messages.iter().copied()
    }

    /// The paths of the handlers of the message type `meta`, in the order
    /// the bus calls them (empty when it has none here).
    pub fn handlers_of(
        &self,
        meta: &'static MessageMeta,
    ) -> impl Iterator<Item = &'static str> + '_ {
        self.inner
            .routes
            .handlers(meta)
            .iter()
            .map(|handler| handler.registration.name())
    }

    /// The bound on messages one dispatch may process.
    pub fn max_messages_per_dispatch(&self) -> usize {
        self.inner.max_messages
    }

    /// The default in-memory dead-letter sink, unless the bus was built
    /// with another one ([`BusBuilder::dead_letters`]).
    pub fn dead_letters(&self) -> Option<&InMemoryDeadLetters> {
        self.inner.dead_letters.as_in_memory()
    }

    /// Closes the bus: every later dispatch, query or publish (on any clone
    /// of this bus) fails at once with
    /// [`DispatchError::Closed`](crate::DispatchError::Closed); those in
    /// flight run to the end, their events included.
    pub fn close(&self) {
        self.inner.lifecycle.close();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.lifecycle.is_closed()
    }

    /// How many dispatches (with their cascades) are running now. A
    /// blocking dispatch made by a handler of another on the same thread
    /// counts with that one.
    pub fn in_flight(&self) -> usize {
        self.inner.lifecycle.in_flight()
    }

    /// Graceful shutdown: [`close`](Self::close)s the bus, then waits
    /// (without blocking the thread) until the dispatches in flight have
    /// finished, at most `grace`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use arch_events::{handler, Bus, Command, DispatchError};
    ///
    /// #[derive(Debug, Command)]
    /// struct Ping;
    ///
    /// #[handler]
    /// fn ping(_: Ping) -> Result<(), std::convert::Infallible> {
    ///     Ok(())
    /// }
    ///
    /// let bus = Bus::builder().build().unwrap();
    /// bus.dispatch_blocking(Ping).unwrap();
    /// bus.shutdown_blocking(Duration::from_secs(5)).unwrap();
    /// assert!(matches!(bus.dispatch_blocking(Ping), Err(DispatchError::Closed)));
    /// ```
    pub async fn shutdown(&self, grace: Duration) -> Result<(), ShutdownError> {
        self.close();
        match self.inner.lifecycle.wait_idle(grace).await {
            0 => {
                tracing::info!("bus shut down: no dispatch in flight");
                Ok(())
            }
            running => {
                tracing::warn!(
                    running,
                    ?grace,
                    "bus shut down with dispatches still running"
                );
                Err(ShutdownError { running, grace })
            }
        }
    }

    /// Waits (without blocking the thread) until no dispatch is in flight,
    /// at most `within`; `false` if some still were. For tests whose
    /// dispatches run on other tasks: a dispatch itself returns only once
    /// its whole cascade ran.
    pub async fn settled(&self, within: Duration) -> bool {
        self.inner.lifecycle.wait_idle(within).await == 0
    }

    /// Attaches a test recorder's store; `Err` with the one already attached.
    pub(crate) fn attach_tap(
        &self,
        tap: Arc<crate::testing::RecorderInner>,
    ) -> Result<(), Arc<crate::testing::RecorderInner>> {
        let mut fresh = Some(tap);
        let attached = self
            .inner
            .watch
            .tap
            .get_or_init(|| fresh.take().unwrap_or_default());
        match fresh {
            None => Ok(()),
            Some(_) => Err(attached.clone()),
        }
    }

    /// [`shutdown`](Self::shutdown), waiting on this thread.
    ///
    /// # Panics
    ///
    /// When called on a thread that drives async tasks (it always waits on
    /// a future), like [`dispatch_blocking`](Self::dispatch_blocking).
    #[track_caller]
    pub fn shutdown_blocking(&self, grace: Duration) -> Result<(), ShutdownError> {
        crate::blocking::Blocking::SHUTDOWN.check();
        crate::executor::block_on(self.shutdown(grace))
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("routes", &self.inner.routes)
            .field("max_messages", &self.inner.max_messages)
            .field("observer", &self.inner.observer.is_some())
            .field("closed", &self.is_closed())
            .finish()
    }
}
