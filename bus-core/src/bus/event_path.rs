//! Handling events: each queued event through every one of its handlers, in
//! order; a handler that fails for good is reported and dead-lettered, and
//! the others and the rest of the queue still run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::SystemTime;

use super::cascade::{Cascade, PendingRetry};
use super::invocation::{call_event_async, call_event_sync, handler_span, EventInvocation};
use super::routes::BoundHandler;
use super::typed_route::TypedRoute;
use super::Bus;
use crate::call::TypedSync;
use crate::context::{Causation, MessageContext};
use crate::dead_letter::DeadLetter;
use crate::error::CascadeLimitError;
use crate::events::{ErasedEvent, PendingEvent};
use crate::executor::block_on;
use crate::inject::Scope;
use crate::layer::{Next, Outcome};
use crate::message::{Event, MessageMeta};
use crate::observer::{panic_text, FailureCause, HandlerFailure};
use crate::registry::HandlerFn;

impl Bus {
    /// Tells the attached recorder (tests) about an event leaving the queue.
    #[inline]
    pub(super) fn tap_released(&self, event: &PendingEvent) {
        if let Some(tap) = self.inner.tap.get() {
            tap.released(event);
        }
    }

    /// Tells the attached recorder (tests) how a handler call ended.
    #[inline]
    pub(super) fn tap_ran(
        &self,
        handler: &BoundHandler,
        meta: &'static MessageMeta,
        attempts: u32,
        ok: bool,
    ) {
        if let Some(tap) = self.inner.tap.get() {
            tap.ran(handler.registration.name(), meta.name(), attempts, ok);
        }
    }
}

impl BoundHandler {
    /// The scope of one call of this event handler on the message `context`
    /// describes.
    #[inline]
    fn scope(&self, context: MessageContext) -> Scope {
        Scope::with_context(self.needs_context.then_some(context))
    }
}

impl Bus {
    /// The published event through its handlers: its type is known here, so
    /// its typed route is used without looking at the event's type again.
    pub(super) fn publish_typed_blocking<E: Event>(
        &self,
        event: &E,
        meta: &'static MessageMeta,
        context: MessageContext,
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
                context,
                cascade,
            ),
            None => self.handle_event_blocking(event, meta, context, cascade),
        }
    }

    /// Runs the queue to the end: each event through all of its handlers, in
    /// order; what they release joins the back of the queue.
    pub(super) async fn run_queue(&self, cascade: &mut Cascade) -> Result<(), CascadeLimitError> {
        while let Some((event, context)) = cascade.next()? {
            self.tap_released(&event);
            self.handle_event(event.erased(), event.meta(), context, cascade)
                .await;
            self.after_event(cascade).await;
        }
        Ok(())
    }

    /// [`run_queue`](Self::run_queue), with async handlers driven on this
    /// thread; the caller has entered the dispatch span.
    pub(super) fn run_queue_blocking(
        &self,
        cascade: &mut Cascade,
    ) -> Result<(), CascadeLimitError> {
        while let Some((event, context)) = cascade.next()? {
            self.tap_released(&event);
            self.handle_event_blocking(event.erased(), event.meta(), context, cascade);
            self.after_event_blocking(cascade);
        }
        Ok(())
    }

    /// One event through all of its handlers.
    pub(super) async fn handle_event(
        &self,
        event: &dyn ErasedEvent,
        meta: &'static MessageMeta,
        context: MessageContext,
        cascade: &mut Cascade,
    ) {
        let Some(route) = self.inner.routes.route(meta) else {
            return;
        };
        if let Some(typed) = &route.typed {
            // A route whose handlers are all plain `fn`s without layers never
            // blocks: its typed entries run right here.
            if typed.all_sync()
                && typed.run_blocking(self, &route.handlers, event, context, cascade)
            {
                return;
            }
        }
        let traced = tracing::enabled!(tracing::Level::DEBUG);
        for handler in route.handlers.iter() {
            match (&handler.pipeline, handler.call) {
                (Some(pipeline), _) => {
                    let invocation = EventInvocation::new(handler, event.as_any(), meta);
                    let outcome = Next::new(pipeline, &invocation)
                        .run(invocation.call(context))
                        .await;
                    self.settle_layered(handler, event, context, invocation, outcome, cascade);
                }
                (None, HandlerFn::Sync(f)) => {
                    self.call_direct_sync(handler, f, event, context, cascade, traced)
                }
                (None, HandlerFn::Async(f)) => {
                    let mut scope = handler.scope(context);
                    let outcome =
                        call_event_async(handler, f, (event.as_any(), &context), meta, &mut scope)
                            .await;
                    self.settle(handler, event, (scope, context), outcome, cascade);
                }
            }
        }
    }

    /// [`handle_event`](Self::handle_event), with async handlers driven on this thread.
    pub(super) fn handle_event_blocking(
        &self,
        event: &dyn ErasedEvent,
        meta: &'static MessageMeta,
        context: MessageContext,
        cascade: &mut Cascade,
    ) {
        let Some(route) = self.inner.routes.route(meta) else {
            return;
        };
        if let Some(typed) = &route.typed {
            if typed.run_blocking(self, &route.handlers, event, context, cascade) {
                return;
            }
        }
        let traced = tracing::enabled!(tracing::Level::DEBUG);
        for handler in route.handlers.iter() {
            self.call_erased_blocking(handler, event, meta, context, cascade, traced);
        }
    }

    /// One handler of an event, through its erased entry, on this thread.
    fn call_erased_blocking(
        &self,
        handler: &BoundHandler,
        event: &dyn ErasedEvent,
        meta: &'static MessageMeta,
        context: MessageContext,
        cascade: &mut Cascade,
        traced: bool,
    ) {
        match (&handler.pipeline, handler.call) {
            (Some(pipeline), _) => {
                let invocation = EventInvocation::new(handler, event.as_any(), meta);
                let outcome =
                    block_on(Next::new(pipeline, &invocation).run(invocation.call(context)));
                self.settle_layered(handler, event, context, invocation, outcome, cascade);
            }
            (None, HandlerFn::Sync(f)) => {
                self.call_direct_sync(handler, f, event, context, cascade, traced)
            }
            (None, HandlerFn::Async(f)) => {
                let mut scope = handler.scope(context);
                let outcome = block_on(call_event_async(
                    handler,
                    f,
                    (event.as_any(), &context),
                    meta,
                    &mut scope,
                ));
                self.settle(handler, event, (scope, context), outcome, cascade);
            }
        }
    }

    /// One plain `fn` handler of an event, called directly.
    #[inline]
    fn call_direct_sync(
        &self,
        handler: &BoundHandler,
        f: crate::call::SyncCall,
        event: &dyn ErasedEvent,
        context: MessageContext,
        cascade: &mut Cascade,
        traced: bool,
    ) {
        let mut scope = handler.scope(context);
        let message = (event.as_any(), &context);
        let outcome = call_event_sync(handler, f, message, event.meta(), &mut scope, traced);
        self.settle(handler, event, (scope, context), outcome, cascade);
    }

    /// After one event handler's pipeline: queue what its last successful
    /// run released, or report its failure.
    fn settle_layered(
        &self,
        handler: &BoundHandler,
        event: &dyn ErasedEvent,
        context: MessageContext,
        invocation: EventInvocation<'_>,
        outcome: Outcome,
        cascade: &mut Cascade,
    ) {
        let attempts = invocation.attempts();
        match outcome {
            Ok(()) => {
                self.tap_ran(handler, event.meta(), attempts, true);
                let released = invocation.released();
                if !released.is_empty() {
                    cascade.push_all(released, &context);
                }
            }
            Err(cause) => self.fail(handler, event, context, cause, attempts, cascade),
        }
    }

    /// One event's handlers through their typed entries (the typed route);
    /// a handler without one goes through its erased entry.
    pub(super) fn handle_typed_blocking<M>(
        &self,
        calls: &[Option<TypedSync<M>>],
        handlers: &[BoundHandler],
        typed: &M,
        event: &dyn ErasedEvent,
        context: MessageContext,
        cascade: &mut Cascade,
    ) {
        let meta = event.meta();
        let traced = tracing::enabled!(tracing::Level::DEBUG);
        // Read once per event: a test's recorder, if one is attached.
        let tap = self.inner.tap.get();
        for (call, handler) in calls.iter().zip(handlers) {
            let Some(f) = call else {
                // No typed entry (an `async fn`, or a layered handler).
                self.call_erased_blocking(handler, event, meta, context, cascade, traced);
                continue;
            };
            let mut scope = handler.scope(context);
            let dependencies = &handler.dependencies;
            let called = {
                let scope = &mut scope;
                let mut run = || catch_unwind(AssertUnwindSafe(|| f(typed, dependencies, scope)));
                if traced {
                    handler_span(handler, meta, &context).in_scope(run)
                } else {
                    run()
                }
            };
            match called {
                Ok(Ok(())) => {
                    if let Some(tap) = tap {
                        tap.ran(handler.registration.name(), meta.name(), 1, true);
                    }
                    if scope.has_releaser() {
                        cascade.push_all(scope.finish(), &context);
                    }
                }
                Ok(Err(error)) => {
                    drop(scope.finish());
                    let cause = FailureCause::Error(error);
                    self.fail_or_retry(handler, event, context, cause, cascade);
                }
                Err(payload) => {
                    drop(scope.finish());
                    let cause = FailureCause::Panic(panic_text(&*payload));
                    self.fail_or_retry(handler, event, context, cause, cascade);
                }
            }
        }
    }

    /// After one direct event-handler call: queue what it released, or
    /// report its failure and drop what it released.
    #[inline(always)]
    fn settle(
        &self,
        handler: &BoundHandler,
        event: &dyn ErasedEvent,
        (scope, context): (Scope, MessageContext),
        outcome: Outcome,
        cascade: &mut Cascade,
    ) {
        match outcome {
            Ok(()) => {
                self.tap_ran(handler, event.meta(), 1, true);
                if scope.has_releaser() {
                    cascade.push_all(scope.finish(), &context);
                }
            }
            Err(cause) => {
                drop(scope.finish());
                self.fail_or_retry(handler, event, context, cause, cascade);
            }
        }
    }

    /// A direct event-handler call that failed: retried later in this
    /// dispatch when its retry policy allows, failed for good otherwise.
    #[cold]
    #[inline(never)]
    fn fail_or_retry(
        &self,
        handler: &BoundHandler,
        event: &dyn ErasedEvent,
        context: MessageContext,
        cause: FailureCause,
        cascade: &mut Cascade,
    ) {
        match &handler.retry {
            Some(retry) if retry.policy().is_retryable(&cause) => {
                cascade.retries.push(PendingRetry {
                    handler: handler.registration,
                    event: PendingEvent::copy_of(event),
                    context,
                    cause,
                })
            }
            _ => self.fail(handler, event, context, cause, 1, cascade),
        }
    }

    /// The retries of the direct calls that failed (each after the other
    /// handlers of its event ran), then the dead letters to the sink.
    pub(super) async fn after_event(&self, cascade: &mut Cascade) {
        for pending in std::mem::take(&mut cascade.retries) {
            self.retry_direct(pending, cascade).await;
        }
        self.flush_dead_letters(cascade).await;
    }

    /// [`after_event`](Self::after_event) on this thread.
    #[inline]
    pub(super) fn after_event_blocking(&self, cascade: &mut Cascade) {
        if !cascade.retries.is_empty() || !cascade.dead.is_empty() {
            block_on(self.after_event(cascade));
        }
    }

    /// The second and later attempts of a direct call, through its retry.
    async fn retry_direct(&self, pending: PendingRetry, cascade: &mut Cascade) {
        let meta = pending.event.meta();
        let handler = self
            .inner
            .routes
            .handlers(meta)
            .iter()
            .find(|h| std::ptr::eq(h.registration, pending.handler));
        let Some((handler, Some(retry))) = handler.map(|h| (h, h.retry.as_ref())) else {
            return;
        };
        let event = pending.event.erased();
        let invocation = EventInvocation::new(handler, event.as_any(), meta).after(1);
        let outcome = retry
            .after_failure(
                invocation.call(pending.context),
                Next::new(&[], &invocation),
                pending.cause,
            )
            .await;
        self.settle_layered(
            handler,
            event,
            pending.context,
            invocation,
            outcome,
            cascade,
        );
    }

    /// An event-handler call that failed for good: logged, reported to the
    /// observer, and kept as a dead letter.
    #[cold]
    #[inline(never)]
    fn fail(
        &self,
        handler: &BoundHandler,
        event: &dyn ErasedEvent,
        context: MessageContext,
        cause: FailureCause,
        attempts: u32,
        cascade: &mut Cascade,
    ) {
        let failure = HandlerFailure {
            message: event.meta().name(),
            handler: handler.registration.name(),
            location: handler.registration.location(),
            cause,
            attempts,
        };
        tracing::error!(
            message_name = failure.message,
            handler = failure.handler,
            location = %failure.location,
            attempts,
            message_id = %context.message_id(),
            correlation_id = %context.correlation_id(),
            causation_id = %Causation(context.causation_id()),
            cause = %failure.cause,
            "event handler failed; kept as a dead letter; the other handlers and the rest of the queue still run"
        );
        if let Some(observer) = &self.inner.observer {
            observer.handler_failed(&failure);
        }
        self.tap_ran(handler, event.meta(), attempts, false);
        cascade.dead.push(DeadLetter {
            event: PendingEvent::copy_of(event),
            handler: failure.handler,
            location: failure.location,
            error: failure.cause.to_string(),
            panicked: failure.is_panic(),
            attempts,
            failed_at: SystemTime::now(),
            context: context.at_attempt(1),
        });
    }

    /// Hands the dead letters gathered so far to the sink.
    pub(super) async fn flush_dead_letters(&self, cascade: &mut Cascade) {
        if cascade.dead.is_empty() {
            return;
        }
        for letter in std::mem::take(&mut cascade.dead) {
            if let Err(error) = self.inner.dead_letters.store(&letter).await {
                tracing::error!(
                    %error,
                    letter = %letter,
                    event = ?letter.event(),
                    "the dead-letter sink failed: this log line is the only record of the letter"
                );
            }
        }
    }
}
