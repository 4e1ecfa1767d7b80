//! Typed routes: for one event type, its plain `fn` handlers' typed entries,
//! so that publishing calls them with the event itself instead of each one
//! downcasting it again.

use std::any::Any;
use std::sync::Arc;

use super::cascade::Cascade;
use super::routes::BoundHandler;
use super::Bus;
use crate::call::{TakeMessage, TypedSync};
use crate::context::LazyContext;
use crate::events::ErasedEvent;

/// A handler's typed entry, as its generated code described it.
pub(crate) trait TypedEntry: Send + Sync + 'static {
    fn as_any(&self) -> &dyn Any;

    /// The typed route of the event type this entry takes, over `handlers`
    /// (all the handlers of that event, in order).
    fn build_route(&self, handlers: &[BoundHandler]) -> Arc<dyn EventRoute>;
}

/// The typed entry of a plain `fn` handler of `M`.
pub(crate) struct TypedSyncEntry<M>(pub(crate) TypedSync<M>);

impl<M: TakeMessage> TypedEntry for TypedSyncEntry<M> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn build_route(&self, handlers: &[BoundHandler]) -> Arc<dyn EventRoute> {
        let calls: Box<[_]> = handlers
            .iter()
            .map(|handler| TypedCall {
                // A layered handler is called through its pipeline.
                entry: (!handler.path.is_layered())
                    .then(|| handler.registration.typed_entry())
                    .flatten()
                    .and_then(|entry| entry.as_any().downcast_ref::<TypedSyncEntry<M>>())
                    .map(|entry| entry.0),
                dependencies: handler.dependencies.clone(),
            })
            .collect();
        let all_sync = calls.iter().all(|call| call.entry.is_some());
        let needs_context = handlers.iter().any(|handler| handler.needs_context);
        Arc::new(TypedRoute::<M> {
            calls,
            all_sync,
            needs_context,
        })
    }
}

/// Runs one event type's handlers through their typed entries.
pub(crate) trait EventRoute: Send + Sync + 'static {
    /// The concrete route, for a caller that knows the event type.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;

    /// Whether every handler has a typed entry (none is an `async fn` or has
    /// layers), so that running the route never blocks.
    fn all_sync(&self) -> bool;

    /// Returns `false`, having done nothing, when `event` is of another type.
    fn run_blocking(
        &self,
        bus: &Bus,
        handlers: &[BoundHandler],
        event: &dyn ErasedEvent,
        ids: &mut LazyContext,
        cascade: &mut Cascade,
    ) -> bool;
}

/// One handler's call in a typed route: what a call needs, side by side
/// with the other handlers', so that publishing reads nothing else.
pub(crate) struct TypedCall<M> {
    /// The typed entry; `None` for a handler that has none (an `async fn`)
    /// or has layers, which is called through its erased entry.
    pub(crate) entry: Option<TypedSync<M>>,
    /// The handler's dependencies (the same `Arc`s as its own).
    pub(crate) dependencies: Box<[crate::inject::Resolved]>,
}

/// One typed entry per handler, in the route's order; `None` for a handler
/// that has none (an `async fn`) or has layers, which is called through its
/// erased entry.
pub(crate) struct TypedRoute<M> {
    pub(crate) calls: Box<[TypedCall<M>]>,
    all_sync: bool,
    /// Whether a handler's scope must carry the event's ids (one of them
    /// asks for a `MessageContext` or a scoped dependency).
    pub(crate) needs_context: bool,
}

impl<M: TakeMessage> EventRoute for TypedRoute<M> {
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn all_sync(&self) -> bool {
        self.all_sync
    }

    fn run_blocking(
        &self,
        bus: &Bus,
        handlers: &[BoundHandler],
        event: &dyn ErasedEvent,
        ids: &mut LazyContext,
        cascade: &mut Cascade,
    ) -> bool {
        let Some(typed) = event.as_any().downcast_ref::<M>() else {
            return false;
        };
        bus.handle_typed_blocking(self, handlers, typed, event, ids, cascade);
        true
    }
}
