//! One handler call: direct (plain `fn` inline, `async fn` awaited), or as
//! the innermost step of a layered pipeline; with its tracing span, and with
//! an event handler's errors and panics caught.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

use tracing::{Instrument, Span};

use super::routes::BoundHandler;
use super::unwind::CatchUnwind;
use crate::call::{AsyncCall, BoxFuture, Call, MessageRef, SyncCall};
use crate::context::{Causation, IdsSlot, MessageContext};
use crate::delivery::Delivery;
use crate::error::BoxError;
use crate::events::{Closed, Recorded};
use crate::inject::Scope;
use crate::layer::{HandlerCall, Invoke, Outcome};
use crate::message::MessageMeta;
use crate::observer::{panic_text, FailureCause};
use crate::registry::HandlerFn;

/// Whether the bus's spans (`dispatch`, `handler`, at DEBUG) may be wanted:
/// tracing's global level filter, one relaxed load. Checked before a span is
/// made, and not `tracing::enabled!`: with tracing's `log` feature on (sqlx
/// turns it on in most services), a span that no subscriber wants still
/// records its fields for the `log` bridge, some 170 instructions (9 ns)
/// per dispatch. The spans are for tracing subscribers; through the `log`
/// bridge alone the bus's events are logged, not its spans.
#[inline(always)]
pub(super) fn spans_wanted() -> bool {
    tracing::level_enabled!(tracing::Level::DEBUG)
}

/// The span of one dispatch. The ids are made (when still `None`) only
/// when the span is enabled.
#[inline(always)]
pub(super) fn dispatch_span(
    meta: &'static MessageMeta,
    kind: &'static str,
    context: &mut dyn IdsSlot,
) -> Span {
    if !spans_wanted() {
        return Span::none();
    }
    new_dispatch_span(meta, kind, context)
}

/// Evaluates `$call` inside `$span`, an `Option<&Span>` (`None` when no
/// span is wanted). A macro rather than `enter`: a closure called from two
/// branches stays a call of its own, and this is for the hot paths.
macro_rules! within {
    ($span:expr, $call:expr) => {
        match $span {
            None => $call,
            Some(span) => span.in_scope(|| $call),
        }
    };
}
pub(super) use within;

/// A disabled span, for a path that made none.
pub(super) static NO_SPAN: Span = Span::none();

/// [`dispatch_span`] for the blocking hot paths: `None` when no span is
/// wanted, so that no disabled span is made and dropped either (with
/// tracing's `log` feature on, dropping one is a call of its own).
#[inline(always)]
pub(super) fn wanted_dispatch_span(
    meta: &'static MessageMeta,
    kind: &'static str,
    context: &mut dyn IdsSlot,
) -> Option<Span> {
    if spans_wanted() {
        Some(new_dispatch_span(meta, kind, context))
    } else {
        None
    }
}

/// [`dispatch_span`] when spans may be wanted: out of the hot path.
#[cold]
#[inline(never)]
fn new_dispatch_span(
    meta: &'static MessageMeta,
    kind: &'static str,
    context: &mut dyn IdsSlot,
) -> Span {
    let span = tracing::debug_span!(
        "dispatch",
        kind,
        message_name = meta.name(),
        message_id = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
        causation_id = tracing::field::Empty,
    );
    if !span.is_disabled() {
        record_ids(&span, &context.ids());
    }
    span
}

#[cold]
fn record_ids(span: &Span, context: &MessageContext) {
    span.record("message_id", tracing::field::display(context.message_id()));
    span.record(
        "correlation_id",
        tracing::field::display(context.correlation_id()),
    );
    span.record(
        "causation_id",
        tracing::field::display(Causation(context.causation_id())),
    );
}

/// The span of one handler call (one attempt).
#[inline]
pub(super) fn handler_span(
    handler: &BoundHandler,
    meta: &'static MessageMeta,
    context: &MessageContext,
) -> Span {
    if !spans_wanted() {
        return Span::none();
    }
    new_handler_span(handler, meta, context)
}

/// [`handler_span`] when spans may be wanted: out of the hot path.
#[cold]
#[inline(never)]
fn new_handler_span(
    handler: &BoundHandler,
    meta: &'static MessageMeta,
    context: &MessageContext,
) -> Span {
    tracing::debug_span!(
        "handler",
        handler = handler.registration.name(),
        message_name = meta.name(),
        attempt = context.attempt(),
        message_id = %context.message_id(),
        correlation_id = %context.correlation_id(),
        causation_id = %Causation(context.causation_id()),
    )
}

/// The span of one command or query handler call: its ids are made, when
/// still missing, only when the span is enabled.
#[inline(always)]
pub(super) fn request_handler_span(
    handler: &BoundHandler,
    meta: &'static MessageMeta,
    scope: &mut Scope,
) -> Span {
    if spans_wanted() {
        handler_span(handler, meta, &scope.context())
    } else {
        Span::none()
    }
}

/// Runs `f` inside `span` (the dispatch's, when nothing entered it yet).
#[inline(always)]
pub(super) fn enter<R>(span: &Span, f: impl FnOnce() -> R) -> R {
    if span.is_disabled() {
        f()
    } else {
        span.in_scope(f)
    }
}

/// A plain `fn` event handler, with its errors and panics caught.
#[inline]
pub(super) fn call_event_sync(
    handler: &BoundHandler,
    f: SyncCall,
    (event, context): (&(dyn Any + Send + Sync), &MessageContext),
    meta: &'static MessageMeta,
    scope: &mut Scope,
    traced: bool,
) -> Outcome {
    let outcome = if traced {
        let call = Call::new(MessageRef::Shared(event), &handler.dependencies, scope);
        handler_span(handler, meta, context).in_scope(|| catch_unwind(AssertUnwindSafe(|| f(call))))
    } else {
        let call = Call::new(MessageRef::Shared(event), &handler.dependencies, scope);
        catch_unwind(AssertUnwindSafe(|| f(call)))
    };
    failure_cause(outcome)
}

/// An `async fn` event handler, with its errors and panics caught.
pub(super) async fn call_event_async(
    handler: &BoundHandler,
    f: AsyncCall,
    (event, context): (&(dyn Any + Send + Sync), &MessageContext),
    meta: &'static MessageMeta,
    scope: &mut Scope,
) -> Outcome {
    let call = Call::new(MessageRef::Shared(event), &handler.dependencies, scope);
    let outcome = match catch_unwind(AssertUnwindSafe(|| f(call))) {
        Ok(future) => {
            CatchUnwind::new(future)
                .instrument(handler_span(handler, meta, context))
                .await
        }
        Err(payload) => Err(payload),
    };
    failure_cause(outcome)
}

#[inline]
pub(super) fn failure_cause(outcome: Result<Result<(), BoxError>, Box<dyn Any + Send>>) -> Outcome {
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(FailureCause::Error(error)),
        Err(payload) => Err(FailureCause::Panic(panic_text(&*payload))),
    }
}

/// An event handler as the innermost step of its pipeline: every run is a
/// fresh call with a fresh scope; the events of the last successful run are
/// kept for the queue, and what the last run's unit of work said about the
/// stored event it delivered.
pub(super) struct EventInvocation<'h> {
    handler: &'h BoundHandler,
    watch: &'h super::watch::Watch,
    event: &'h (dyn Any + Send + Sync),
    meta: &'static MessageMeta,
    attempts: AtomicU32,
    /// What the last successful run's releaser held, and what the last
    /// run's unit of work said about its delivery.
    released: Mutex<(Option<Closed>, Recorded)>,
    delivery: Option<Delivery>,
    /// Whether its retry may hand an attempt to the scheduler, and the one
    /// it handed: its number and how long after now it is due.
    may_hand_off: bool,
    handed_off: Mutex<Option<HandOff>>,
}

/// An attempt a retry handed to the scheduler: its number, and how long
/// after now it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HandOff {
    pub(crate) attempt: u32,
    pub(crate) after: std::time::Duration,
}

impl<'h> EventInvocation<'h> {
    pub(super) fn new(
        handler: &'h BoundHandler,
        event: &'h (dyn Any + Send + Sync),
        meta: &'static MessageMeta,
        watch: &'h super::watch::Watch,
    ) -> Self {
        EventInvocation {
            handler,
            watch,
            event,
            meta,
            attempts: AtomicU32::new(0),
            released: Mutex::new((None, Recorded::No)),
            delivery: None,
            may_hand_off: false,
            handed_off: Mutex::new(None),
        }
    }

    /// An invocation whose retry may hand attempts to the scheduler (the
    /// bus has one, and the event reads from JSON): a dispatch's and a
    /// scheduled retry's keep the attempt handed off, a replay's stops
    /// there.
    pub(super) fn handing_off(mut self, may: bool) -> Self {
        self.may_hand_off = may;
        self
    }

    /// The attempt its retry handed to the scheduler, if it handed one.
    pub(super) fn handed_off(&self) -> Option<HandOff> {
        *self
            .handed_off
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// An invocation delivering a stored event: each run's scope carries
    /// `delivery` for its unit of work.
    pub(super) fn delivering(mut self, delivery: Option<Delivery>) -> Self {
        self.delivery = delivery;
        self
    }

    /// What the last run's unit of work said about its delivery.
    pub(super) fn recorded(&self) -> Recorded {
        self.released
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
    }

    /// The scope of one run.
    fn scope(&self, context: MessageContext) -> Scope {
        Scope::delivering(context, self.delivery)
    }

    /// An invocation whose first `attempts` calls were made directly.
    pub(super) fn after(mut self, attempts: u32) -> Self {
        self.attempts = AtomicU32::new(attempts);
        self
    }

    /// The description of this call for the pipeline's layers.
    pub(super) fn call(&self, context: MessageContext) -> HandlerCall<'h> {
        HandlerCall {
            registration: self.handler.registration,
            meta: self.meta,
            event: Some(self.event),
            context,
        }
    }

    /// How many times the handler ran.
    pub(super) fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// What the last successful run left, unchecked: for a caller that
    /// checks it once the pipeline's outcome is known.
    pub(super) fn closed(self) -> Closed {
        self.released
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .unwrap_or_default()
    }

    /// What the last successful run released, checked (see `watch.rs`):
    /// call it only when the pipeline's outcome is `Ok`.
    pub(super) fn released(self) -> crate::events::Released {
        let (watch, registration) = (self.watch, self.handler.registration);
        watch.accept_closed(registration, self.closed())
    }
}

impl EventInvocation<'_> {
    /// Counts the attempt, and keeps what a successful one released.
    fn settle(&self, mut scope: Scope, outcome: &Outcome) {
        let recorded = scope.recorded();
        let closed = if outcome.is_ok() {
            Some(scope.finish_checked())
        } else {
            drop(scope.finish());
            None
        };
        let mut kept = self.released.lock().unwrap_or_else(PoisonError::into_inner);
        kept.1 = recorded;
        if closed.is_some() {
            kept.0 = closed;
        }
    }
}

impl Invoke for EventInvocation<'_> {
    fn invoke<'a>(&'a self, call: HandlerCall<'a>) -> BoxFuture<'a, Outcome> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if self.may_hand_off {
            // A hand-off counts only when no attempt follows it (a layer
            // outside the retry may call again).
            *self
                .handed_off
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
        match self.handler.path.call() {
            // A plain `fn` runs right here; its outcome is a ready future.
            HandlerFn::Sync(f) => {
                let mut scope = self.scope(call.context);
                let traced = spans_wanted();
                let message = (self.event, &call.context);
                let outcome =
                    call_event_sync(self.handler, f, message, self.meta, &mut scope, traced);
                self.settle(scope, &outcome);
                Box::pin(std::future::ready(outcome))
            }
            HandlerFn::Async(f) => Box::pin(async move {
                let mut scope = self.scope(call.context);
                let message = (self.event, &call.context);
                let outcome =
                    call_event_async(self.handler, f, message, self.meta, &mut scope).await;
                self.settle(scope, &outcome);
                outcome
            }),
        }
    }

    fn hand_off(&self, attempt: u32, after: std::time::Duration) -> bool {
        // A year at most: any clock can add it (a policy's cap may be
        // `Duration::MAX`).
        let after = after.min(std::time::Duration::from_secs(365 * 24 * 60 * 60));
        if self.may_hand_off {
            *self
                .handed_off
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(HandOff { attempt, after });
        }
        self.may_hand_off
    }
}

/// A command or query handler as the innermost step of its pipeline. The
/// message is moved into the handler by the first run; the handler's typed
/// result stays in the frame for the caller.
pub(super) struct RequestInvocation<'h, 'f> {
    handler: &'h BoundHandler,
    frame: Mutex<Option<&'f mut (dyn Any + Send)>>,
    context: MessageContext,
    scope: Mutex<Option<Scope>>,
}

impl<'h, 'f> RequestInvocation<'h, 'f> {
    pub(super) fn new(
        handler: &'h BoundHandler,
        frame: &'f mut (dyn Any + Send),
        context: MessageContext,
    ) -> Self {
        RequestInvocation {
            handler,
            frame: Mutex::new(Some(frame)),
            context,
            scope: Mutex::new(None),
        }
    }

    pub(super) fn call(&self, meta: &'static MessageMeta) -> HandlerCall<'h> {
        HandlerCall {
            registration: self.handler.registration,
            meta,
            event: None,
            context: self.context,
        }
    }

    /// The scope of the run that succeeded, if one did.
    pub(super) fn into_scope(self) -> Option<Scope> {
        self.scope
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Invoke for RequestInvocation<'_, '_> {
    fn invoke<'a>(&'a self, call: HandlerCall<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let taken = self
                .frame
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let Some(frame) = taken else {
                return Err(FailureCause::Error(
                    "the command or query was already handed to its handler by an earlier run of \
                     this pipeline: a layer may call `next` only once for a command or query"
                        .into(),
                ));
            };
            let mut scope = Scope::request(Some(call.context), call.meta.kind());
            let span = handler_span(self.handler, call.meta, &call.context);
            // A command or query handler's panic is not caught: it fails noisily.
            let called = {
                let call = Call::new(
                    MessageRef::Owned(&mut *frame),
                    &self.handler.dependencies,
                    &mut scope,
                );
                match self.handler.path.call() {
                    HandlerFn::Sync(f) => span.in_scope(|| f(call)),
                    HandlerFn::Async(f) => f(call).instrument(span).await,
                }
            };
            match called {
                Ok(()) => {
                    *self.scope.lock().unwrap_or_else(PoisonError::into_inner) = Some(scope);
                    Ok(())
                }
                Err(error) => Err(FailureCause::Error(error)),
            }
        })
    }
}
