//! Handling events: each queued event through every one of its handlers, in
//! order; a handler that fails for good is reported and dead-lettered, and
//! the others and the rest of the queue still run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::SystemTime;

use super::cascade::{Cascade, Current, PendingHandOff, PendingRetry, Run};
use super::invocation::{
    call_event_async, call_event_sync, handler_span, EventInvocation, HandOff,
};
use super::routes::{BoundHandler, CallPath};
use super::typed_route::TypedRoute;
use super::Bus;
use crate::blocking::Blocking;
use crate::context::{Causation, LazyContext, MessageContext};
use crate::dead_letter::DeadLetter;
use crate::delivery::Delivery;
use crate::error::CascadeLimitError;
use crate::events::{Closed, ErasedEvent, PendingEvent, Recorded};
use crate::executor::block_on;
use crate::inject::Scope;
use crate::layer::{Next, Outcome};
use crate::message::{Event, Message, MessageMeta};
use crate::observer::{panic_text, FailureCause, HandlerFailure};
use crate::registry::HandlerFn;

impl Bus {
    /// Tells the attached recorder (tests) about an event leaving the queue.
    #[inline]
    pub(super) fn tap_released(&self, event: &mut PendingEvent) {
        if let Some(tap) = self.inner.watch.tap.get() {
            // What the recorder keeps shows the ids the handlers see.
            event.fixed_ids();
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
        if let Some(tap) = self.inner.watch.tap.get() {
            tap.ran(handler.registration.name(), meta.name(), attempts, ok);
        }
    }
}

/// A handler call inside its span: out of the hot path, which makes no
/// span when none is wanted.
#[cold]
#[inline(never)]
fn traced_call<R>(
    handler: &BoundHandler,
    meta: &'static MessageMeta,
    context: MessageContext,
    call: impl FnOnce() -> R,
) -> R {
    handler_span(handler, meta, &context).in_scope(call)
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
    #[inline(always)]
    pub(super) fn publish_typed_blocking<E: Event>(
        &self,
        event: &E,
        route: &super::routes::Route,
        ids: &mut LazyContext,
        cascade: &mut Cascade,
    ) {
        let meta = route.meta;
        let typed = route
            .typed_any
            .as_deref()
            .and_then(|typed| typed.downcast_ref::<TypedRoute<E>>());
        match typed {
            Some(typed) => {
                self.handle_typed_blocking(typed, &route.handlers, event, event, ids, cascade)
            }
            None => self.handle_route_blocking(route, event, meta, ids, cascade),
        }
    }

    /// Runs the queue to the end: each event through all of its handlers, in
    /// order; what they release joins the back of the queue. A run cut short
    /// (its future dropped) can be run again: it goes on where it stopped.
    pub(super) async fn run_queue(&self, run: &mut Run) -> Result<(), CascadeLimitError> {
        loop {
            if let Some(current) = &mut run.current {
                if current.is_tracked() {
                    self.handle_tracked(current, &mut run.cascade).await;
                } else {
                    let (event, meta) = (current.event.erased(), current.event.meta());
                    self.handle_event(
                        event,
                        meta,
                        current.context,
                        &mut run.cascade,
                        &mut current.next,
                    )
                    .await;
                }
            }
            self.after_event(run).await;
            run.current = None;
            match run.cascade.next() {
                Ok(Some(mut event)) => {
                    self.tap_released(&mut event);
                    let context = event.fixed_ids();
                    run.current = Some(Current::new(event, context));
                }
                Ok(None) => return Ok(()),
                Err(limit) => {
                    self.stop_stored(&mut run.cascade, &limit).await;
                    return Err(*limit);
                }
            }
        }
    }

    /// [`run_queue`](Self::run_queue), with async handlers driven on this
    /// thread; the caller has entered the dispatch span.
    pub(super) fn run_queue_blocking(
        &self,
        run: &mut Run,
        blocking: &Blocking,
    ) -> Result<(), CascadeLimitError> {
        loop {
            if let Some(current) = &run.current {
                let route = self.inner.routes.route(current.event.meta());
                let drives = current.is_tracked() || route.is_some_and(|route| route.drives);
                if drives && blocking.refused() {
                    self.refuse_detaching(run, blocking);
                }
                if let (Some(current), Some(route)) = (&mut run.current, route) {
                    if current.is_tracked() {
                        block_on(self.handle_tracked(current, &mut run.cascade));
                    } else {
                        let (event, meta) = (current.event.erased(), current.event.meta());
                        let ids = &mut LazyContext::known(current.context);
                        self.handle_route_blocking(route, event, meta, ids, &mut run.cascade);
                        // Through with every handler: a run taken up
                        // elsewhere goes on after them.
                        current.next = usize::MAX;
                    }
                }
            }
            self.after_event_blocking(run, blocking);
            run.current = None;
            let mut event = match run.cascade.next() {
                Ok(Some(event)) => event,
                Ok(None) => return Ok(()),
                Err(limit) => {
                    block_on(self.stop_stored(&mut run.cascade, &limit));
                    return Err(*limit);
                }
            };
            self.tap_released(&mut event);
            if event.is_stored() {
                let context = event.fixed_ids();
                run.current = Some(Current::new(event, context));
                continue;
            }
            let Some(route) = self.inner.routes.route(event.meta()) else {
                // No handler: nothing to do with it.
                continue;
            };
            if route.drives {
                let context = event.fixed_ids();
                run.current = Some(Current::new(event, context));
                continue;
            }
            // Every handler a plain `fn`, and nothing stored: the calls
            // never wait, so nothing can stop them half-way; the event is
            // handled here, without becoming the run's current event (what a
            // run taken up elsewhere would go on with). What failed is in
            // the cascade. Its ids are made only if something reads them.
            let meta = event.meta();
            let (erased, ids) = event.with_lazy_ids();
            self.handle_route_blocking(route, erased, meta, ids, &mut run.cascade);
        }
    }

    /// One event through its handlers, from the `next`th on; `next` counts
    /// the handlers that are through, so that a call cut short at an
    /// `.await` can go on where it stopped.
    pub(super) async fn handle_event(
        &self,
        event: &dyn ErasedEvent,
        meta: &'static MessageMeta,
        context: MessageContext,
        cascade: &mut Cascade,
        next: &mut usize,
    ) {
        let Some(route) = self.inner.routes.route(meta) else {
            return;
        };
        if let Some(typed) = &route.typed {
            // A route whose handlers are all plain `fn`s without layers never
            // blocks: its typed entries run right here, all at once.
            if *next == 0
                && typed.all_sync()
                && typed.run_blocking(
                    self,
                    &route.handlers,
                    event,
                    &mut LazyContext::known(context),
                    cascade,
                )
            {
                *next = route.handlers.len();
                return;
            }
        }
        let traced = super::invocation::spans_wanted();
        while let Some(handler) = route.handlers.get(*next) {
            match &handler.path {
                CallPath::Layered(pipeline, _) => {
                    let invocation =
                        EventInvocation::new(handler, event.as_any(), meta, &self.inner.watch)
                            .handing_off(self.may_hand_off(meta));
                    let outcome = Next::new(pipeline, &invocation)
                        .run(invocation.call(context))
                        .await;
                    self.settle_layered(handler, event, context, invocation, outcome, cascade);
                }
                CallPath::Inline(f) => {
                    self.call_direct_sync(handler, *f, event, context, cascade, traced)
                }
                CallPath::Awaited(f) => {
                    let f = *f;
                    let mut scope = handler.scope(context);
                    let outcome =
                        call_event_async(handler, f, (event.as_any(), &context), meta, &mut scope)
                            .await;
                    self.settle(handler, event, (scope, context), outcome, cascade);
                }
            }
            *next += 1;
        }
    }

    /// A stored event (or a redelivered one) through its handlers, from the
    /// `next`th on, skipping those that handled it before: each call's scope
    /// carries its [`Delivery`], and each success is recorded with the
    /// event's store, by the handler's own commit or else here.
    async fn handle_tracked(&self, current: &mut Current, cascade: &mut Cascade) {
        let meta = current.event.meta();
        let Some(route) = self.inner.routes.route(meta) else {
            return;
        };
        let handlers = &route.handlers;
        let id = current.context.message_id();
        while let Some(handler) = handlers.get(current.next) {
            let name = handler.registration.name();
            if current.skips(name) {
                current.next += 1;
                continue;
            }
            // This call finishes the delivery when it succeeds if every
            // handler before it succeeded and none after it is left.
            let settles = !current.failed
                && handlers[current.next + 1..]
                    .iter()
                    .all(|later| current.skips(later.registration.name()));
            let delivery = current
                .event
                .delivery_log()
                .map(|log| Delivery::new(id, name, settles, log));
            let (outcome, recorded, closed, attempts, handed) = self
                .deliver_once(handler, &current.event, current.context, delivery)
                .await;
            // Through with this handler before the record below is awaited:
            // a run cut short there does not call it again.
            current.next += 1;
            match (outcome, recorded) {
                (_, Recorded::Duplicate) => {
                    tracing::info!(
                        handler = name,
                        message_name = meta.name(),
                        message_id = %id,
                        "delivery skipped: the store says this handler handled the event already"
                    );
                }
                (Ok(()), recorded) => {
                    self.tap_ran(handler, meta, attempts, true);
                    let released = self.inner.watch.accept_closed(handler.registration, closed);
                    if !released.is_empty() {
                        cascade.push_all(released, &current.context);
                    }
                    match recorded {
                        Recorded::Yes => current.settled |= settles,
                        // The delivery's own record follows at once then.
                        _ if settles => {}
                        _ => self.record_handled(&current.event, id, name).await,
                    }
                }
                (Err(cause), Recorded::Yes) => {
                    // Its unit of work committed the handler's effect and the
                    // record of it: another call could only find the record.
                    tracing::warn!(
                        handler = name,
                        message_name = meta.name(),
                        message_id = %id,
                        %cause,
                        "handler failed after its unit of work committed: counted as done, \
                         not retried"
                    );
                    self.tap_ran(handler, meta, attempts, false);
                    current.settled |= settles;
                }
                (Err(cause), Recorded::No) => {
                    current.failed = true;
                    let event = &current.event;
                    if handler.path.is_layered() {
                        let copy = event.clone();
                        let failed = (cause, attempts, handed);
                        self.fail(handler, copy, current.context, failed, cascade);
                    } else {
                        self.fail_or_retry(
                            handler,
                            event.erased(),
                            Some(event),
                            current.context,
                            cause,
                            cascade,
                        );
                    }
                }
            }
        }
    }

    /// One delivery of a stored event to one handler: through its layers,
    /// or a direct first attempt when its retry (if any) is beside it.
    /// Returns the outcome, what the call's unit of work said, what its
    /// releaser held (unchecked: the caller checks it once it knows the
    /// call counts), how many attempts it took, and the attempt its retry
    /// handed to the scheduler.
    async fn deliver_once(
        &self,
        handler: &BoundHandler,
        event: &PendingEvent,
        context: MessageContext,
        delivery: Option<Delivery>,
    ) -> (
        crate::layer::Outcome,
        Recorded,
        Closed,
        u32,
        Option<HandOff>,
    ) {
        let meta = event.meta();
        match &handler.path {
            CallPath::Layered(pipeline, _) => {
                let invocation =
                    EventInvocation::new(handler, event.as_any(), meta, &self.inner.watch)
                        .delivering(delivery)
                        .handing_off(self.may_hand_off(meta));
                let outcome = Next::new(pipeline, &invocation)
                    .run(invocation.call(context))
                    .await;
                let (recorded, attempts) = (invocation.recorded(), invocation.attempts());
                let handed = invocation.handed_off();
                (outcome, recorded, invocation.closed(), attempts, handed)
            }
            direct => {
                let mut scope = crate::inject::Scope::delivering(context, delivery);
                let message = (event.as_any(), &context);
                let outcome = match direct.call() {
                    HandlerFn::Sync(f) => {
                        let traced = super::invocation::spans_wanted();
                        call_event_sync(handler, f, message, meta, &mut scope, traced)
                    }
                    HandlerFn::Async(f) => {
                        call_event_async(handler, f, message, meta, &mut scope).await
                    }
                };
                let recorded = scope.recorded();
                let closed = if outcome.is_ok() {
                    scope.finish_checked()
                } else {
                    drop(scope.finish());
                    Closed::default()
                };
                (outcome, recorded, closed, 1, None)
            }
        }
    }

    /// Tells a stored event's store that `handler` handled it.
    pub(super) async fn record_handled(
        &self,
        event: &PendingEvent,
        id: crate::MessageId,
        handler: &'static str,
    ) {
        let Some(log) = event.delivery_log() else {
            return;
        };
        if let Err(error) = log.handled(id, handler).await {
            tracing::warn!(
                %error,
                handler,
                message_id = %id,
                "the store did not record that the handler handled the event: \
                 a recovery may run it again"
            );
        }
    }

    /// [`handle_event`](Self::handle_event) through the handlers of its
    /// `route`, with async handlers driven on this thread.
    fn handle_route_blocking(
        &self,
        route: &super::routes::Route,
        event: &dyn ErasedEvent,
        meta: &'static MessageMeta,
        ids: &mut LazyContext,
        cascade: &mut Cascade,
    ) {
        if let Some(typed) = &route.typed {
            if typed.run_blocking(self, &route.handlers, event, ids, cascade) {
                return;
            }
        }
        let traced = super::invocation::spans_wanted();
        for handler in route.handlers.iter() {
            self.call_erased_blocking(handler, event, meta, ids.get(), cascade, traced);
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
        match &handler.path {
            CallPath::Layered(pipeline, _) => {
                let invocation =
                    EventInvocation::new(handler, event.as_any(), meta, &self.inner.watch)
                        .handing_off(self.may_hand_off(meta));
                let outcome =
                    block_on(Next::new(pipeline, &invocation).run(invocation.call(context)));
                self.settle_layered(handler, event, context, invocation, outcome, cascade);
            }
            CallPath::Inline(f) => {
                self.call_direct_sync(handler, *f, event, context, cascade, traced)
            }
            CallPath::Awaited(f) => {
                let f = *f;
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
            Err(cause) => {
                let copy = PendingEvent::copy_of(event);
                let failed = (cause, attempts, invocation.handed_off());
                self.fail(handler, copy, context, failed, cascade)
            }
        }
    }

    /// One event's handlers through their typed entries (the typed route);
    /// a handler without one goes through its erased entry. The calls share
    /// one scope until one of them uses it (asks for a releaser): a fresh
    /// one follows that call. The event's ids are made when first read.
    /// Inlined into its two callers (one per event type each): one call
    /// frame fewer per event.
    #[inline(always)]
    pub(super) fn handle_typed_blocking<M: Message>(
        &self,
        route: &TypedRoute<M>,
        handlers: &[BoundHandler],
        typed: &M,
        event: &dyn ErasedEvent,
        ids: &mut LazyContext,
        cascade: &mut Cascade,
    ) {
        // The event's type is known here: no virtual call for its meta.
        let meta = M::meta();
        let traced = super::invocation::spans_wanted();
        // Read once per event: a test's recorder, if one is attached.
        let tap = self.inner.watch.tap.get();
        let mut scope = Scope::with_context(None);
        if route.needs_context {
            scope.ensure_context(|| ids.get());
        }
        let settle = Settle {
            needs_context: route.needs_context,
            meta,
            event,
            tap,
        };
        if traced || tap.is_some() {
            // Each call in its span, or told to the recorder.
            for (call, handler) in route.calls.iter().zip(handlers) {
                let Some(f) = call.entry else {
                    self.call_erased_blocking(handler, event, meta, ids.get(), cascade, traced);
                    continue;
                };
                let dependencies = &call.dependencies;
                let called = if traced {
                    traced_call(handler, meta, ids.get(), || {
                        catch_unwind(AssertUnwindSafe(|| f(typed, dependencies, &mut scope)))
                    })
                } else {
                    catch_unwind(AssertUnwindSafe(|| f(typed, dependencies, &mut scope)))
                };
                self.settle_typed(&settle, handler, called, &mut scope, ids, cascade);
            }
            return;
        }
        // The common case: the calls run one after the other under a single
        // catch, and stop only at one that failed, panicked or released
        // something (or has no typed entry); that one is settled, and the
        // calls after it go on under a new catch.
        let calls = &route.calls[..];
        let mut next = 0;
        while next < calls.len() {
            let stop = catch_unwind(AssertUnwindSafe(|| {
                run_quiet(calls, &mut next, typed, &mut scope)
            }));
            // `next` is the call that stopped the run, if any.
            let Some(handler) = handlers.get(next) else {
                return;
            };
            match stop {
                Ok(Stop::End) => return,
                Ok(Stop::Erased) => {
                    self.call_erased_blocking(handler, event, meta, ids.get(), cascade, false);
                }
                Ok(Stop::Called(result)) => {
                    self.settle_typed(&settle, handler, Ok(result), &mut scope, ids, cascade)
                }
                Err(payload) => {
                    self.settle_typed(&settle, handler, Err(payload), &mut scope, ids, cascade)
                }
            }
            next += 1;
        }
    }

    /// One typed call that did not end quietly: tell the recorder, queue
    /// what it released, or report its failure; the next call gets a fresh
    /// scope if this one was used.
    #[inline(never)]
    fn settle_typed(
        &self,
        settle: &Settle<'_>,
        handler: &BoundHandler,
        called: std::thread::Result<Result<(), crate::BoxError>>,
        scope: &mut Scope,
        ids: &mut LazyContext,
        cascade: &mut Cascade,
    ) {
        let failed = match called {
            Ok(Ok(())) => {
                if let Some(tap) = settle.tap {
                    tap.ran(handler.registration.name(), settle.meta.name(), 1, true);
                }
                if !scope.has_releaser() {
                    return;
                }
                let used = std::mem::take(scope);
                let released = self.inner.watch.accept(handler.registration, used);
                cascade.push_all(released, &ids.get());
                None
            }
            Ok(Err(error)) => Some(FailureCause::Error(error)),
            Err(payload) => Some(FailureCause::Panic(panic_text(&*payload))),
        };
        if let Some(cause) = failed {
            drop(std::mem::take(scope).finish());
            self.fail_or_retry(handler, settle.event, None, ids.get(), cause, cascade);
        }
        // The scope was used: the next call's is fresh, with the ids.
        if settle.needs_context {
            scope.ensure_context(|| ids.get());
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
                    let released = self.inner.watch.accept(handler.registration, scope);
                    cascade.push_all(released, &context);
                }
            }
            Err(cause) => {
                drop(scope.finish());
                self.fail_or_retry(handler, event, None, context, cause, cascade);
            }
        }
    }

    /// A direct event-handler call that failed: retried later in this
    /// dispatch when its retry policy allows, failed for good otherwise.
    /// `stored` is the event as queued, when it was stored: the copies kept
    /// for the retry or the dead letter keep its store's mark.
    #[cold]
    #[inline(never)]
    fn fail_or_retry(
        &self,
        handler: &BoundHandler,
        event: &dyn ErasedEvent,
        stored: Option<&PendingEvent>,
        context: MessageContext,
        cause: FailureCause,
        cascade: &mut Cascade,
    ) {
        let copy = match stored {
            Some(stored) => stored.clone(),
            None => PendingEvent::copy_of(event),
        };
        match &handler.retry {
            Some(retry) if retry.policy().is_retryable(&cause) => {
                cascade.push_retry(PendingRetry {
                    handler: handler.registration,
                    event: copy,
                    context,
                    cause: Some(cause),
                })
            }
            _ => self.fail(handler, copy, context, (cause, 1, None), cascade),
        }
    }

    /// After one event's handlers: the retries of the direct calls that
    /// failed (each after the other handlers of its event ran; the one a
    /// cut-short run was in first), the attempts handed off to the
    /// scheduler, the dead letters to the sink, then, for a stored event,
    /// the record that its delivery is finished.
    pub(super) async fn after_event(&self, run: &mut Run) {
        loop {
            if run.retrying.is_none() {
                match run.cascade.next_retry() {
                    Some(retry) => run.retrying = Some(retry),
                    None => break,
                }
            }
            if let Some(pending) = &mut run.retrying {
                self.retry_direct(pending, &mut run.cascade).await;
            }
            run.retrying = None;
        }
        self.flush_hand_offs(&mut run.cascade).await;
        let kept = self.flush_dead_letters(&mut run.cascade).await;
        if let Some(current) = &mut run.current {
            // A stored event whose dead letter could not be kept stays
            // undelivered: the store's recovery calls that handler again.
            if !current.settled && kept {
                self.record_delivered(&current.event, current.context).await;
                current.settled = true;
            }
        }
    }

    /// [`after_event`](Self::after_event) on this thread.
    #[inline]
    pub(super) fn after_event_blocking(&self, run: &mut Run, blocking: &Blocking) {
        let stored = run
            .current
            .as_ref()
            .is_some_and(|current| current.event.is_stored() && !current.settled);
        if stored || run.retrying.is_some() || run.cascade.has_retries() || run.cascade.has_dead() {
            if blocking.refused() {
                self.refuse_detaching(run, blocking);
            }
            block_on(self.after_event(run));
        }
    }

    /// A blocking dispatch that would have to wait on a thread that drives
    /// async tasks: what is left of its run goes on on the runtime (as for
    /// a caller that stopped waiting: nothing it committed is dropped), and
    /// the call panics, naming the awaited one.
    #[cold]
    #[inline(never)]
    fn refuse_detaching(&self, run: &mut Run, blocking: &Blocking) -> ! {
        let empty = Run::new(Cascade::new(run.cascade.origin(), 1, 0));
        let rest = std::mem::replace(run, empty);
        self.detach(rest, tracing::Span::current());
        blocking.refuse()
    }

    /// Tells a stored event's store that every handler is through.
    async fn record_delivered(&self, event: &PendingEvent, context: MessageContext) {
        let Some(log) = event.delivery_log() else {
            return;
        };
        let id = context.message_id();
        if let Err(error) = log.delivered(id).await {
            tracing::warn!(
                %error,
                message_name = event.name(),
                message_id = %id,
                "the store did not record that the event was delivered: \
                 a recovery will deliver it again to the handlers it has no record of"
            );
        }
    }

    /// The second and later attempts of a direct call, through its retry;
    /// a retry that a cut-short run interrupted starts again with an
    /// attempt at once.
    async fn retry_direct(&self, pending: &mut PendingRetry, cascade: &mut Cascade) {
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
        let stored = pending.event.is_stored();
        let id = pending.context.message_id();
        let name = handler.registration.name();
        let delivery = pending
            .event
            .delivery_log()
            .map(|log| Delivery::new(id, name, false, log));
        let event = pending.event.erased();
        let invocation = EventInvocation::new(handler, event.as_any(), meta, &self.inner.watch)
            .after(1)
            .delivering(delivery)
            .handing_off(self.may_hand_off(meta));
        let next = Next::new(&[], &invocation);
        let outcome = match pending.cause.take() {
            Some(cause) => {
                retry
                    .after_failure(invocation.call(pending.context), next, cause)
                    .await
            }
            None => {
                retry
                    .resume(invocation.call(pending.context.at_attempt(2)), next)
                    .await
            }
        };
        let recorded = invocation.recorded();
        if recorded == Recorded::Duplicate {
            tracing::info!(
                handler = name,
                message_id = %id,
                "retry skipped: the store says this handler handled the event already"
            );
            return;
        }
        if let (Err(cause), Recorded::Yes) = (&outcome, recorded) {
            tracing::warn!(
                handler = name,
                message_id = %id,
                %cause,
                "handler failed after its unit of work committed: counted as done, not retried"
            );
            return;
        }
        let succeeded = outcome.is_ok();
        let original = stored.then_some(&pending.event);
        self.settle_retried(
            handler,
            event,
            original,
            pending.context,
            invocation,
            outcome,
            cascade,
        );
        if succeeded && stored && recorded == Recorded::No {
            self.record_handled(&pending.event, id, name).await;
        }
    }

    /// After a retried call: queue what its last successful run released,
    /// or fail it for good (the dead letter keeps a stored event's mark).
    #[allow(clippy::too_many_arguments)]
    fn settle_retried(
        &self,
        handler: &BoundHandler,
        event: &dyn ErasedEvent,
        original: Option<&PendingEvent>,
        context: MessageContext,
        invocation: EventInvocation<'_>,
        outcome: Outcome,
        cascade: &mut Cascade,
    ) {
        match (outcome, original) {
            (Err(cause), Some(original)) => {
                let failed = (cause, invocation.attempts(), invocation.handed_off());
                self.fail(handler, original.clone(), context, failed, cascade)
            }
            (outcome, _) => {
                self.settle_layered(handler, event, context, invocation, outcome, cascade)
            }
        }
    }

    /// An event-handler call that failed after `attempts` attempts: kept
    /// for the scheduler when its retry handed the next attempt off (see
    /// `hand_off.rs`), else failed for good: logged, reported to the
    /// observer, and kept as a dead letter.
    #[cold]
    #[inline(never)]
    pub(super) fn fail(
        &self,
        handler: &BoundHandler,
        event: PendingEvent,
        context: MessageContext,
        (cause, attempts, handed): (FailureCause, u32, Option<HandOff>),
        cascade: &mut Cascade,
    ) {
        if let Some(next) = handed {
            self.tap_ran(handler, event.meta(), attempts, false);
            cascade.push_hand_off(PendingHandOff {
                handler: handler.registration,
                event,
                context,
                cause,
                attempts,
                next,
                id: crate::context::MessageId::new(),
            });
            return;
        }
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
        cascade.push_dead(DeadLetter {
            event,
            handler: failure.handler,
            location: failure.location,
            error: failure.cause.to_string(),
            panicked: failure.is_panic(),
            attempts,
            failed_at: SystemTime::now(),
            context: context.at_attempt(1),
        });
    }

    /// Hands the dead letters gathered so far to the sink, one at a time
    /// (each stays queued until the sink has it); a stored event's store
    /// then hears that the handler is through with it.
    /// Returns whether the sink kept them all.
    pub(super) async fn flush_dead_letters(&self, cascade: &mut Cascade) -> bool {
        let mut kept = true;
        while let Some(letter) = cascade.first_dead() {
            let stored = self.inner.dead_letters.store(letter).await;
            // Through with it before the record is awaited.
            let Some(letter) = cascade.pop_dead() else {
                break;
            };
            match stored {
                Ok(()) => {
                    let id = letter.context.message_id();
                    self.record_handled(&letter.event, id, letter.handler).await;
                }
                Err(error) => {
                    kept = false;
                    tracing::error!(
                        %error,
                        letter = %letter,
                        event = ?letter.event(),
                        stored = letter.event.is_stored(),
                        "the dead-letter sink failed: this log line is the only record of the \
                         letter (a stored event stays undelivered, and its recovery calls the \
                         handler again)"
                    );
                }
            }
        }
        kept
    }

    /// The cascade bound stopped a run: the stored events left in its
    /// queue are kept as dead letters (one per handler) and their delivery
    /// ended, so that no recovery takes the runaway chain up again; the
    /// others are dropped with the run, as the caller is told.
    ///
    /// One event at a time, left in the queue until its delivery is ended:
    /// when the caller stops waiting at one of these `.await`s, the rest of
    /// the run (handed on, see `detach.rs`) reaches the bound again and goes
    /// on from that event, without making its dead letters twice.
    #[cold]
    pub(super) async fn stop_stored(&self, cascade: &mut Cascade, limit: &CascadeLimitError) {
        while let Some(front) = cascade.queue.as_ref().and_then(|queue| queue.front()) {
            let (Some(context), true) = (front.context(), front.is_stored()) else {
                // Not stored: dropped with the run.
                drop(cascade.pop());
                continue;
            };
            // A copy, for the letters and the record: the queued original
            // tells its store the bus let it go, once through with it.
            let event = front.clone();
            let id = context.message_id();
            if cascade.stopping != Some(id) {
                for handler in self.inner.routes.handlers(event.meta()) {
                    cascade.push_dead(DeadLetter {
                        event: event.clone(),
                        handler: handler.registration.name(),
                        location: handler.registration.location(),
                        error: limit.to_string(),
                        panicked: false,
                        attempts: 0,
                        failed_at: SystemTime::now(),
                        context: context.at_attempt(1),
                    });
                }
                cascade.stopping = Some(id);
            }
            if self.flush_dead_letters(cascade).await {
                self.record_delivered(&event, context).await;
            }
            cascade.stopping = None;
            drop(cascade.pop());
        }
    }
}

/// What settling a typed call needs to know of its event.
struct Settle<'a> {
    needs_context: bool,
    meta: &'static MessageMeta,
    event: &'a dyn ErasedEvent,
    tap: Option<&'a std::sync::Arc<crate::testing::RecorderInner>>,
}

/// Why a run of typed calls stopped.
enum Stop {
    /// Every call ended quietly.
    End,
    /// The call at `next` has no typed entry: it was not made.
    Erased,
    /// The call at `next` failed, or released events.
    Called(Result<(), crate::BoxError>),
}

/// The typed calls from `next` on, while each ends quietly (`Ok`, nothing
/// released); `next` is left at the call that stopped the run. A panic
/// leaves it at the call that panicked.
#[inline(always)]
fn run_quiet<M>(
    calls: &[super::typed_route::TypedCall<M>],
    next: &mut usize,
    typed: &M,
    scope: &mut Scope,
) -> Stop {
    while let Some(call) = calls.get(*next) {
        let Some(f) = call.entry else {
            return Stop::Erased;
        };
        let result = f(typed, &call.dependencies, scope);
        if result.is_err() || scope.has_releaser() {
            return Stop::Called(result);
        }
        *next += 1;
    }
    Stop::End
}
