//! Dispatching: one caller-owned FIFO queue per dispatch, handlers called with
//! their dependencies, event-handler failures isolated and reported.
//!
//! Plain `fn` handlers are called inline, with no future and no allocation;
//! only `async fn` handlers go through a (boxed) future. The `*_blocking`
//! entry points therefore drive a dispatch whose handlers are all plain `fn`s
//! without touching an executor at all.

use std::any::Any;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::panic::{catch_unwind, AssertUnwindSafe};

use tracing::{Instrument, Span};

use super::routes::BoundHandler;
use super::typed_route::TypedRoute;
use super::unwind::CatchUnwind;
use super::Bus;
use crate::call::{AsyncCall, Call, Frame, MessageRef, SyncCall, TypedSync};
use crate::error::{BoxError, CascadeLimitError, DispatchError, InternalError};
use crate::events::PendingEvent;
use crate::executor::block_on;
use crate::inject::Scope;
use crate::message::{Command, Event, Message, MessageMeta, Query};
use crate::observer::{panic_text, FailureCause, HandlerFailure};
use crate::registry::HandlerFn;

impl Bus {
    /// Sends a command to its one handler and returns what the handler
    /// returned; then runs every event the handler released (and those their
    /// handlers release) before returning.
    ///
    /// The handler's error comes back as [`DispatchError::Handler`], typed.
    /// Event-handler failures do not fail the dispatch: they are logged and
    /// reported to the observer.
    pub async fn dispatch<C: Command>(
        &self,
        command: C,
    ) -> Result<C::Output, DispatchError<C::Error>> {
        self.request::<C, C::Output, C::Error>(command, "command")
            .await
    }

    /// [`dispatch`](Self::dispatch) without an async runtime: plain `fn`
    /// handlers run inline, `async fn` ones on a minimal executor on this
    /// thread. Never call it from inside an async task.
    pub fn dispatch_blocking<C: Command>(
        &self,
        command: C,
    ) -> Result<C::Output, DispatchError<C::Error>> {
        self.request_blocking::<C, C::Output, C::Error>(command, "command")
    }

    /// Asks a query of its one handler (the read side).
    pub async fn query<Q: Query>(&self, query: Q) -> Result<Q::Output, DispatchError<Q::Error>> {
        self.request::<Q, Q::Output, Q::Error>(query, "query").await
    }

    /// [`query`](Self::query) without an async runtime.
    pub fn query_blocking<Q: Query>(&self, query: Q) -> Result<Q::Output, DispatchError<Q::Error>> {
        self.request_blocking::<Q, Q::Output, Q::Error>(query, "query")
    }

    /// Publishes an event raised outside any handler, and runs the cascade it
    /// causes. Fails only when the cascade exceeds the bound.
    pub async fn publish<E: Event>(&self, event: E) -> Result<(), DispatchError<Infallible>> {
        let span = dispatch_span(E::meta(), "event");
        let mut cascade = Cascade::new(E::meta(), self.inner.max_messages, 0);
        async {
            cascade.count(E::meta())?;
            self.handle_event(&event, E::meta(), &mut cascade).await;
            self.run_queue(&mut cascade).await
        }
        .instrument(span)
        .await
        .map_err(DispatchError::from)
    }

    /// [`publish`](Self::publish) without an async runtime.
    pub fn publish_blocking<E: Event>(&self, event: E) -> Result<(), DispatchError<Infallible>> {
        let meta = E::meta();
        let span = dispatch_span(meta, "event");
        // The published event is the first message processed; the bound is
        // at least 1.
        let mut cascade = Cascade::new(meta, self.inner.max_messages, 1);
        enter(&span, || {
            self.publish_typed_blocking(&event, meta, &mut cascade);
            if cascade.queue.is_some() {
                self.run_queue_blocking(&mut cascade)?;
            }
            Ok::<(), CascadeLimitError>(())
        })
        .map_err(DispatchError::from)
    }

    /// The published event through its handlers: its type is known here, so
    /// its typed route is used without looking at the event's type again.
    fn publish_typed_blocking<E: Event>(
        &self,
        event: &E,
        meta: &'static MessageMeta,
        cascade: &mut Cascade,
    ) {
        let Some(route) = self.inner.routes.route(meta) else {
            return;
        };
        let typed = route
            .typed
            .as_deref()
            .and_then(|typed| typed.as_any().downcast_ref::<TypedRoute<E>>());
        match typed {
            Some(typed) => self.handle_typed_blocking(
                &typed.calls,
                &route.handlers,
                event,
                event,
                meta,
                cascade,
            ),
            None => self.handle_event_blocking(event, meta, cascade),
        }
    }

    async fn request<M, O, E>(&self, message: M, kind: &'static str) -> Result<O, DispatchError<E>>
    where
        M: Message,
        O: Send + 'static,
        E: Send + 'static,
    {
        let meta = M::meta();
        let handler = self.single_handler::<E>(meta)?;
        let span = dispatch_span(meta, kind);
        let mut scope = Scope::new();
        let output = match handler.call {
            HandlerFn::Sync(f) => enter(&span, || request_sync(handler, f, message, &mut scope)),
            HandlerFn::Async(f) => {
                request_async(handler, f, message, &mut scope)
                    .instrument(span.clone())
                    .await
            }
        }?;
        if let Some(mut cascade) = self.released(meta, scope) {
            self.run_queue(&mut cascade).instrument(span).await?;
        }
        Ok(output)
    }

    fn request_blocking<M, O, E>(
        &self,
        message: M,
        kind: &'static str,
    ) -> Result<O, DispatchError<E>>
    where
        M: Message,
        O: Send + 'static,
        E: Send + 'static,
    {
        let meta = M::meta();
        let handler = self.single_handler::<E>(meta)?;
        let span = dispatch_span(meta, kind);
        let mut scope = Scope::new();
        let output = match handler.call {
            HandlerFn::Sync(f) => enter(&span, || request_sync(handler, f, message, &mut scope)),
            HandlerFn::Async(f) => {
                block_on(request_async(handler, f, message, &mut scope).instrument(span.clone()))
            }
        }?;
        if let Some(mut cascade) = self.released(meta, scope) {
            enter(&span, || self.run_queue_blocking(&mut cascade))?;
        }
        Ok(output)
    }

    /// The cascade of what a command or query handler released, if anything:
    /// the handler's own message counts as the first one processed.
    #[inline]
    fn released(&self, meta: &'static MessageMeta, scope: Scope) -> Option<Cascade> {
        if !scope.has_releaser() {
            return None;
        }
        let mut cascade = Cascade::new(meta, self.inner.max_messages, 1);
        cascade.push_all(scope.finish());
        Some(cascade)
    }

    /// The one handler of a command or query.
    #[inline]
    fn single_handler<E>(
        &self,
        meta: &'static MessageMeta,
    ) -> Result<&BoundHandler, DispatchError<E>> {
        self.inner
            .routes
            .handlers(meta)
            .first()
            .ok_or(DispatchError::Unhandled {
                kind: meta.kind(),
                name: meta.name(),
            })
    }

    /// Runs the queue to the end: each event through all of its handlers, in
    /// order; what they release joins the back of the queue.
    async fn run_queue(&self, cascade: &mut Cascade) -> Result<(), CascadeLimitError> {
        while let Some(event) = cascade.next()? {
            self.handle_event(event.as_any(), event.meta(), cascade)
                .await;
        }
        Ok(())
    }

    /// [`run_queue`](Self::run_queue), with async handlers driven on this
    /// thread; the caller has entered the dispatch span.
    fn run_queue_blocking(&self, cascade: &mut Cascade) -> Result<(), CascadeLimitError> {
        while let Some(event) = cascade.next()? {
            self.handle_event_blocking(event.as_any(), event.meta(), cascade);
        }
        Ok(())
    }

    /// One event through all of its handlers.
    async fn handle_event(
        &self,
        event: &(dyn Any + Send + Sync),
        meta: &'static MessageMeta,
        cascade: &mut Cascade,
    ) {
        let Some(route) = self.inner.routes.route(meta) else {
            return;
        };
        if let Some(typed) = &route.typed {
            // A route whose handlers are all plain `fn`s never blocks: its
            // typed entries run right here.
            if typed.all_sync() && typed.run_blocking(self, &route.handlers, event, meta, cascade) {
                return;
            }
        }
        let traced = tracing::enabled!(tracing::Level::DEBUG);
        for handler in route.handlers.iter() {
            let mut scope = Scope::new();
            let outcome = match handler.call {
                HandlerFn::Sync(f) => call_event_sync(handler, f, event, meta, &mut scope, traced),
                HandlerFn::Async(f) => call_event_async(handler, f, event, meta, &mut scope).await,
            };
            self.settle(handler, meta, scope, outcome, cascade);
        }
    }

    /// [`handle_event`](Self::handle_event), with async handlers driven on this thread.
    fn handle_event_blocking(
        &self,
        event: &(dyn Any + Send + Sync),
        meta: &'static MessageMeta,
        cascade: &mut Cascade,
    ) {
        let Some(route) = self.inner.routes.route(meta) else {
            return;
        };
        if let Some(typed) = &route.typed {
            if typed.run_blocking(self, &route.handlers, event, meta, cascade) {
                return;
            }
        }
        let traced = tracing::enabled!(tracing::Level::DEBUG);
        for handler in route.handlers.iter() {
            let mut scope = Scope::new();
            let outcome = match handler.call {
                HandlerFn::Sync(f) => call_event_sync(handler, f, event, meta, &mut scope, traced),
                HandlerFn::Async(f) => {
                    block_on(call_event_async(handler, f, event, meta, &mut scope))
                }
            };
            self.settle(handler, meta, scope, outcome, cascade);
        }
    }

    /// One event's handlers through their typed entries (the typed route);
    /// a handler without one goes through its erased entry.
    pub(super) fn handle_typed_blocking<M>(
        &self,
        calls: &[Option<TypedSync<M>>],
        handlers: &[BoundHandler],
        typed: &M,
        event: &(dyn Any + Send + Sync),
        meta: &'static MessageMeta,
        cascade: &mut Cascade,
    ) {
        let traced = tracing::enabled!(tracing::Level::DEBUG);
        for (call, handler) in calls.iter().zip(handlers) {
            let mut scope = Scope::new();
            let Some(f) = call else {
                // No typed entry (an `async fn`): through the erased one.
                let outcome = match handler.call {
                    HandlerFn::Sync(f) => {
                        call_event_sync(handler, f, event, meta, &mut scope, traced)
                    }
                    HandlerFn::Async(f) => {
                        block_on(call_event_async(handler, f, event, meta, &mut scope))
                    }
                };
                self.settle(handler, meta, scope, outcome, cascade);
                continue;
            };
            let dependencies = &handler.dependencies;
            let called = {
                let scope = &mut scope;
                let mut run = || catch_unwind(AssertUnwindSafe(|| f(typed, dependencies, scope)));
                if traced {
                    handler_span(handler, meta).in_scope(run)
                } else {
                    run()
                }
            };
            match called {
                Ok(Ok(())) => {
                    if scope.has_releaser() {
                        cascade.push_all(scope.finish());
                    }
                }
                Ok(Err(error)) => self.fail(handler, meta, scope, FailureCause::Error(error)),
                Err(payload) => {
                    let cause = FailureCause::Panic(panic_text(&*payload));
                    self.fail(handler, meta, scope, cause);
                }
            }
        }
    }

    /// After one event-handler call: queue what it released, or report its
    /// failure and drop what it released.
    #[inline(always)]
    fn settle(
        &self,
        handler: &BoundHandler,
        meta: &'static MessageMeta,
        scope: Scope,
        outcome: Result<(), FailureCause>,
        cascade: &mut Cascade,
    ) {
        match outcome {
            Ok(()) => {
                if scope.has_releaser() {
                    cascade.push_all(scope.finish());
                }
            }
            Err(cause) => self.fail(handler, meta, scope, cause),
        }
    }

    /// A failed event-handler call: what it released is dropped, the failure
    /// reported.
    #[cold]
    #[inline(never)]
    fn fail(
        &self,
        handler: &BoundHandler,
        meta: &'static MessageMeta,
        scope: Scope,
        cause: FailureCause,
    ) {
        drop(scope.finish());
        self.report(meta, handler, cause);
    }

    fn report(&self, event: &'static MessageMeta, handler: &BoundHandler, cause: FailureCause) {
        let failure = HandlerFailure {
            message: event.name(),
            handler: handler.registration.name(),
            location: handler.registration.location(),
            cause,
        };
        tracing::error!(
            message_name = failure.message,
            handler = failure.handler,
            location = %failure.location,
            cause = %failure.cause,
            "event handler failed; the other handlers and the rest of the queue still run"
        );
        if let Some(observer) = &self.inner.observer {
            observer.handler_failed(&failure);
        }
    }
}

/// The span of one dispatch.
#[inline]
fn dispatch_span(meta: &'static MessageMeta, kind: &'static str) -> Span {
    tracing::debug_span!("dispatch", kind, message_name = meta.name())
}

/// Runs `f` inside `span` (the dispatch's, when nothing entered it yet).
#[inline]
fn enter<R>(span: &Span, f: impl FnOnce() -> R) -> R {
    if span.is_disabled() {
        f()
    } else {
        span.in_scope(f)
    }
}

/// The span of one handler call.
#[inline]
fn handler_span(handler: &BoundHandler, meta: &'static MessageMeta) -> Span {
    tracing::debug_span!(
        "handler",
        handler = handler.registration.name(),
        message_name = meta.name()
    )
}

/// A plain `fn` command or query handler, called inline. On success, what
/// it released stays in `scope` for the caller.
#[inline]
fn request_sync<M, O, E>(
    handler: &BoundHandler,
    f: SyncCall,
    message: M,
    scope: &mut Scope,
) -> Result<O, DispatchError<E>>
where
    M: Message,
    O: Send + 'static,
    E: Send + 'static,
{
    let mut frame: Frame<M, Result<O, E>> = Frame::new(message);
    let call = Call::new(MessageRef::Owned(&mut frame), &handler.dependencies, scope);
    // A command handler's panic is not caught: commands fail noisily.
    let called = if tracing::enabled!(tracing::Level::DEBUG) {
        handler_span(handler, M::meta()).in_scope(|| f(call))
    } else {
        f(call)
    };
    complete(handler, called, frame.output, scope)
}

/// An `async fn` command or query handler.
async fn request_async<M, O, E>(
    handler: &BoundHandler,
    f: AsyncCall,
    message: M,
    scope: &mut Scope,
) -> Result<O, DispatchError<E>>
where
    M: Message,
    O: Send + 'static,
    E: Send + 'static,
{
    let mut frame: Frame<M, Result<O, E>> = Frame::new(message);
    let call = Call::new(MessageRef::Owned(&mut frame), &handler.dependencies, scope);
    let called = f(call).instrument(handler_span(handler, M::meta())).await;
    complete(handler, called, frame.output, scope)
}

/// The caller's answer from a command or query handler's call; a failed
/// handler's released events are dropped.
#[inline]
fn complete<O, E>(
    handler: &BoundHandler,
    called: Result<(), BoxError>,
    output: Option<Result<O, E>>,
    scope: &mut Scope,
) -> Result<O, DispatchError<E>> {
    let failure = match (called, output) {
        (Ok(()), Some(Ok(value))) => return Ok(value),
        (Ok(()), Some(Err(error))) => DispatchError::Handler(error),
        (Ok(()), None) => DispatchError::Internal(Box::new(InternalError {
            handler: handler.registration.name(),
            error: "the handler produced no output".into(),
        })),
        (Err(error), _) => DispatchError::Internal(Box::new(InternalError {
            handler: handler.registration.name(),
            error,
        })),
    };
    let dropped = std::mem::take(scope).finish();
    if !dropped.is_empty() {
        tracing::debug!(
            dropped = dropped.len(),
            "handler failed: the events it released are dropped"
        );
    }
    Err(failure)
}

/// A plain `fn` event handler, with its errors and panics caught.
#[inline]
fn call_event_sync(
    handler: &BoundHandler,
    f: SyncCall,
    event: &(dyn Any + Send + Sync),
    meta: &'static MessageMeta,
    scope: &mut Scope,
    traced: bool,
) -> Result<(), FailureCause> {
    let call = Call::new(MessageRef::Shared(event), &handler.dependencies, scope);
    let outcome = if traced {
        handler_span(handler, meta).in_scope(|| catch_unwind(AssertUnwindSafe(|| f(call))))
    } else {
        catch_unwind(AssertUnwindSafe(|| f(call)))
    };
    failure_cause(outcome)
}

/// An `async fn` event handler, with its errors and panics caught.
async fn call_event_async(
    handler: &BoundHandler,
    f: AsyncCall,
    event: &(dyn Any + Send + Sync),
    meta: &'static MessageMeta,
    scope: &mut Scope,
) -> Result<(), FailureCause> {
    let call = Call::new(MessageRef::Shared(event), &handler.dependencies, scope);
    let outcome = match catch_unwind(AssertUnwindSafe(|| f(call))) {
        Ok(future) => {
            CatchUnwind(future)
                .instrument(handler_span(handler, meta))
                .await
        }
        Err(payload) => Err(payload),
    };
    failure_cause(outcome)
}

#[inline]
fn failure_cause(
    outcome: Result<Result<(), BoxError>, Box<dyn Any + Send>>,
) -> Result<(), FailureCause> {
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(FailureCause::Error(error)),
        Err(payload) => Err(FailureCause::Panic(panic_text(&*payload))),
    }
}

/// The queue of one dispatch and its count against the bound.
pub(crate) struct Cascade {
    origin: &'static MessageMeta,
    limit: usize,
    processed: usize,
    /// Created on the first release: most dispatches never need one.
    queue: Option<VecDeque<PendingEvent>>,
}

impl Cascade {
    fn new(origin: &'static MessageMeta, limit: usize, processed: usize) -> Self {
        Cascade {
            origin,
            limit,
            processed,
            queue: None,
        }
    }

    /// Queues released events after those already queued.
    #[inline]
    fn push_all(&mut self, events: Vec<PendingEvent>) {
        match &mut self.queue {
            Some(queue) => queue.extend(events),
            None => self.queue = Some(VecDeque::from(events)),
        }
    }

    /// Counts one more message against the bound.
    #[inline]
    fn count(&mut self, meta: &'static MessageMeta) -> Result<(), CascadeLimitError> {
        self.processed += 1;
        if self.processed > self.limit {
            return Err(self.limit_error(meta.name()));
        }
        Ok(())
    }

    /// The next queued event, counted against the bound.
    fn next(&mut self) -> Result<Option<PendingEvent>, CascadeLimitError> {
        let Some(event) = self.queue.as_mut().and_then(VecDeque::pop_front) else {
            return Ok(None);
        };
        self.count(event.meta())?;
        Ok(Some(event))
    }

    #[cold]
    fn limit_error(&self, current: &'static str) -> CascadeLimitError {
        let mut counts: Vec<(&'static str, usize)> = Vec::new();
        let queued = self.queue.iter().flatten().map(PendingEvent::name);
        for name in std::iter::once(current).chain(queued) {
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, count)) => *count += 1,
                None => counts.push((name, 1)),
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        tracing::error!(
            origin = self.origin.name(),
            limit = self.limit,
            "dispatch stopped: its events keep raising events"
        );
        CascadeLimitError {
            origin: self.origin.name(),
            limit: self.limit,
            pending: counts,
        }
    }
}
