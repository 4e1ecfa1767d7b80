//! Dispatching commands and queries: the one handler called (directly, or
//! through its layers, retried when the command opted in), its typed result
//! returned, then the events it released run to the end.
//!
//! Plain `fn` handlers without layers are called inline, through their
//! typed entries, with no future and no allocation. An `async fn` handler's
//! future is driven where it was made by a blocking dispatch, stored in
//! place (boxed beyond 256 bytes) by an awaited one; layered handlers go
//! through a boxed future per layer. The `*_blocking` entry points
//! therefore drive a dispatch whose handlers are all plain `fn`s without
//! touching an executor at all.

use std::convert::Infallible;
use std::future::Future;

use tracing::Instrument;

use super::cascade::{Cascade, Current, Run};
use super::command_retry::CommandRetry;
use super::invocation::{
    dispatch_span, enter, request_handler_span, wanted_dispatch_span, within, RequestInvocation,
    NO_SPAN,
};
use super::routes::{BoundHandler, CallPath};
use super::Bus;
use crate::blocking::{driving, Blocking};
use crate::call::{
    AsyncCall, BoxFuture, Call, Frame, MessageRef, SyncCall, TypedAsyncRequestEntry,
    TypedRequestEntry,
};
use crate::context::{LazyContext, MessageContext};
use crate::error::{BoxError, DispatchError, InternalError, MisuseError};
use crate::events::PendingEvent;
use crate::executor::block_on;
use crate::inject::Scope;
use crate::layer::Next;
use crate::message::{Command, Event, Message, MessageMeta, Query};
use crate::observer::HandlerFailure;

impl Bus {
    /// Sends a command to its one handler and returns what the handler
    /// returned; then runs every event the handler released (and those their
    /// handlers release) before returning.
    ///
    /// The handler's error comes back as [`DispatchError::Handler`], typed.
    /// Event-handler failures do not fail the dispatch: they are retried per
    /// policy, logged, reported to the observer and kept as dead letters.
    ///
    /// # When the caller stops waiting
    ///
    /// Dropping the returned future (a timeout, an HTTP client that hung
    /// up) before the command handler returned cancels the command: its
    /// unit of work never commits, nothing it released runs. Dropping it
    /// after the handler returned cancels nothing: the events run to their
    /// end, and a graceful [`shutdown`](Self::shutdown) waits for them. On a
    /// bus built with a [`spawner`](crate::BusBuilder::spawner) they run on
    /// a task of their own all along, so no handler is interrupted; without
    /// one, the handler that was running is called again from the start
    /// (see [`Spawn`](crate::Spawn)). Only a crash loses them; events
    /// stored by a durable unit of work (`arch-events-sqlx`) survive that too.
    pub fn dispatch<C: Command>(
        &self,
        command: C,
    ) -> impl Future<Output = Result<C::Output, DispatchError<C::Error>>> + Send + '_ {
        driving(self.request::<C, C::Output, C::Error>(command, "command", None))
    }

    /// [`dispatch`](Self::dispatch) as part of an earlier flow: the command
    /// keeps `context`'s correlation id (a message read from a broker, say).
    pub fn dispatch_in<C: Command>(
        &self,
        command: C,
        context: MessageContext,
    ) -> impl Future<Output = Result<C::Output, DispatchError<C::Error>>> + Send + '_ {
        driving(self.request::<C, C::Output, C::Error>(command, "command", Some(context)))
    }

    /// [`dispatch`](Self::dispatch) without an async runtime: plain `fn`
    /// handlers run inline, `async fn` ones on a minimal executor on this
    /// thread (retry waits wait on this thread).
    ///
    /// # Panics
    ///
    /// When it would have to wait (an `async fn` handler, layers, a retry
    /// or a durable store to drive) on a thread that drives async tasks (a
    /// tokio task, the body of a `block_on`, a handler of an awaited
    /// dispatch): blocking there can hang the runtime. It panics before it
    /// drives anything, naming the awaited method; `.await`
    /// [`dispatch`](Self::dispatch) there instead. When that point comes
    /// after the command's handler returned, the rest of its events goes
    /// on on the runtime, as for a caller that stopped waiting. A dispatch
    /// whose handlers are all plain `fn`s never waits, and is never
    /// refused.
    #[track_caller]
    pub fn dispatch_blocking<C: Command>(
        &self,
        command: C,
    ) -> Result<C::Output, DispatchError<C::Error>> {
        self.request_blocking::<C, C::Output, C::Error>(command, "command", &Blocking::DISPATCH)
    }

    /// Asks a query of its one handler (the read side).
    pub fn query<Q: Query>(
        &self,
        query: Q,
    ) -> impl Future<Output = Result<Q::Output, DispatchError<Q::Error>>> + Send + '_ {
        driving(self.request::<Q, Q::Output, Q::Error>(query, "query", None))
    }

    /// [`query`](Self::query) without an async runtime.
    ///
    /// # Panics
    ///
    /// When it would have to wait on a thread that drives async tasks, like
    /// [`dispatch_blocking`](Self::dispatch_blocking).
    #[track_caller]
    pub fn query_blocking<Q: Query>(&self, query: Q) -> Result<Q::Output, DispatchError<Q::Error>> {
        self.request_blocking::<Q, Q::Output, Q::Error>(query, "query", &Blocking::QUERY)
    }

    /// Publishes an event raised outside any handler, and runs the cascade it
    /// causes. Fails only when the bus is closed or the cascade exceeds the
    /// bound.
    pub fn publish<E: Event>(
        &self,
        event: E,
    ) -> impl Future<Output = Result<(), DispatchError<Infallible>>> + Send + '_ {
        self.publish_in(event, MessageContext::root())
    }

    /// [`publish`](Self::publish) as part of an earlier flow (see
    /// [`dispatch_in`](Self::dispatch_in)).
    pub fn publish_in<E: Event>(
        &self,
        event: E,
        context: MessageContext,
    ) -> impl Future<Output = Result<(), DispatchError<Infallible>>> + Send + '_ {
        driving(self.publish_awaited(event, context))
    }

    async fn publish_awaited<E: Event>(
        &self,
        event: E,
        context: MessageContext,
    ) -> Result<(), DispatchError<Infallible>> {
        let _in_flight = self.enter_dispatch()?;
        let span = dispatch_span(E::meta(), "event", &mut Some(context));
        let mut cascade = Cascade::new(E::meta(), self.inner.max_messages, 0);
        cascade.count(E::meta())?;
        let event = PendingEvent::new(event).with_context(context);
        let run = Run::starting_with(cascade, Current::new(event, context));
        self.run_to_end(run, span)
            .await
            .map_err(DispatchError::from)
    }

    /// [`publish`](Self::publish) without an async runtime.
    ///
    /// # Panics
    ///
    /// When it would have to wait on a thread that drives async tasks, like
    /// [`dispatch_blocking`](Self::dispatch_blocking).
    #[track_caller]
    pub fn publish_blocking<E: Event>(&self, event: E) -> Result<(), DispatchError<Infallible>> {
        let blocking = &Blocking::PUBLISH;
        let meta = E::meta();
        let route = self.inner.routes.route(meta);
        if route.is_some_and(|route| route.drives) {
            blocking.check();
        }
        let _in_flight = self.enter_blocking()?;
        let mut ids = LazyContext::root();
        let span = wanted_dispatch_span(meta, "event", &mut ids);
        // The published event is the first message processed; the bound is
        // at least 1.
        let cascade = Cascade::new(meta, self.inner.max_messages, 1);
        let published = (&event, route, &mut ids);
        within!(
            span.as_ref(),
            self.publish_to_end(published, cascade, blocking)
        )
        .map_err(DispatchError::from)
    }

    /// A published event through its handlers, then what they released,
    /// on this thread.
    #[inline(always)]
    fn publish_to_end<E: Event>(
        &self,
        (event, route, ids): (&E, Option<&super::routes::Route>, &mut LazyContext),
        mut cascade: Cascade,
        blocking: &Blocking,
    ) -> Result<(), crate::error::CascadeLimitError> {
        if let Some(route) = route {
            self.publish_typed_blocking(event, route, ids, &mut cascade);
        }
        if cascade.is_quiet() {
            // Nothing released or failed: the common case.
            cascade.finish();
            return Ok(());
        }
        let mut run = Run::new(cascade);
        self.after_event_blocking(&mut run, blocking);
        if run.cascade.queue.is_some() {
            self.run_queue_blocking(&mut run, blocking)?;
        }
        Ok(())
    }

    /// Counts an awaited dispatch in, or refuses it once the bus is closed.
    #[inline]
    pub(super) fn enter_dispatch<E>(
        &self,
    ) -> Result<super::lifecycle::InFlight<'_>, DispatchError<E>> {
        self.inner
            .lifecycle
            .enter()
            .map_err(|_| DispatchError::Closed)
    }

    /// Counts a blocking dispatch (one that ends on this thread) in, or
    /// refuses it once the bus is closed.
    #[inline]
    fn enter_blocking<E>(
        &self,
    ) -> Result<super::lifecycle::BlockingInFlight<'_>, DispatchError<E>> {
        self.inner
            .lifecycle
            .enter_blocking()
            .map_err(|_| DispatchError::Closed)
    }

    async fn request<M, O, E>(
        &self,
        message: M,
        kind: &'static str,
        mut context: Option<MessageContext>,
    ) -> Result<O, DispatchError<E>>
    where
        M: Message,
        O: Send + 'static,
        E: Send + 'static,
    {
        let _in_flight = self.enter_dispatch()?;
        let meta = M::meta();
        let handler = self.single_handler::<E>(meta)?;
        let span = dispatch_span(meta, kind, &mut context);
        let retried = handler.command_retry.is_some();
        let (output, mut scope) = match (&handler.path, retried) {
            // The hot path: a plain `fn`, called inline, no future.
            (CallPath::Inline(f), false) => enter(&span, || {
                let mut scope = Scope::request(context, meta.kind());
                let output = request_sync(handler, *f, message, &mut scope);
                (output, scope)
            }),
            (CallPath::Awaited(f), false) => {
                request_direct_async(handler, *f, message, context)
                    .instrument(span.clone())
                    .await
            }
            // Layers or a retry: boxed, so that this future stays small.
            _ => {
                let context = context.unwrap_or_else(MessageContext::root);
                self.request_driven(handler, message, context)
                    .instrument(span.clone())
                    .await
            }
        };
        if !scope.has_releaser() {
            self.tap_ran(handler, meta, 1, output.is_ok());
            // Rebuilt, not moved whole: cheaper for a small output.
            let value = output?;
            return Ok(value);
        }
        let released = self
            .settle_request(handler, meta, &output, &mut scope)
            .map_err(DispatchError::Misuse)?;
        if let Some(cascade) = released {
            // From here on, dropping this future does not drop the cascade.
            self.run_to_end(Run::new(cascade), span).await?;
        }
        output
    }

    /// A request through its layers, or retried: boxed.
    fn request_driven<'a, M, O, E>(
        &'a self,
        handler: &'a BoundHandler,
        message: M,
        context: MessageContext,
    ) -> BoxFuture<'a, (Result<O, DispatchError<E>>, Scope)>
    where
        M: Message,
        O: Send + 'static,
        E: Send + 'static,
    {
        Box::pin(async move {
            match handler.command_retry::<M, E>() {
                None => self.request_once(handler, message, context).await,
                Some(retry) => {
                    retry
                        .run(message, context, |message, context| {
                            self.request_once(handler, message, context)
                        })
                        .await
                }
            }
        })
    }

    #[track_caller]
    fn request_blocking<M, O, E>(
        &self,
        message: M,
        kind: &'static str,
        blocking: &Blocking,
    ) -> Result<O, DispatchError<E>>
    where
        M: Message,
        O: Send + 'static,
        E: Send + 'static,
    {
        let _in_flight = self.enter_blocking()?;
        let meta = M::meta();
        let handler = self.single_handler::<E>(meta)?;
        // The scope first, its ids slot given to the span: a context built
        // apart and then moved into the scope would be copied whole.
        let mut scope = Scope::request(None, meta.kind());
        let span = wanted_dispatch_span(meta, kind, scope.context_slot());
        let output = match (&handler.path, handler.command_retry.is_some()) {
            // The hot path: a plain `fn`, called inline.
            (CallPath::Inline(f), false) => within!(
                span.as_ref(),
                request_sync(handler, *f, message, &mut scope)
            ),
            // An `async fn`: its future driven here, where it was made.
            (CallPath::Awaited(f), false) => {
                blocking.check();
                within!(
                    span.as_ref(),
                    request_async_blocking(handler, *f, message, &mut scope)
                )
            }
            _ => {
                // Layers or a retry: driven on this thread.
                blocking.check();
                let span = span.as_ref().unwrap_or(&NO_SPAN);
                let context = *scope.context_slot();
                let (output, ran) = self.request_blocking_driven(handler, message, context, span);
                scope = ran;
                output
            }
        };
        if !scope.has_releaser() {
            self.tap_ran(handler, meta, 1, output.is_ok());
            // Rebuilt, not moved whole: cheaper for a small output.
            let value = output?;
            return Ok(value);
        }
        let span = span.as_ref().unwrap_or(&NO_SPAN);
        self.answer_blocking(handler, meta, output, &mut scope, span, blocking)
    }

    /// A command's or query's answer, once what its handler released ran
    /// on this thread.
    #[inline(never)]
    fn answer_blocking<O, E>(
        &self,
        handler: &BoundHandler,
        meta: &'static MessageMeta,
        output: Result<O, DispatchError<E>>,
        scope: &mut Scope,
        span: &tracing::Span,
        blocking: &Blocking,
    ) -> Result<O, DispatchError<E>> {
        let released = self
            .settle_request(handler, meta, &output, scope)
            .map_err(DispatchError::Misuse)?;
        if let Some(cascade) = released {
            enter(span, || {
                self.run_queue_blocking(&mut Run::new(cascade), blocking)
            })?;
        }
        output
    }

    /// A blocking request through its layers, or retried.
    #[inline(never)]
    fn request_blocking_driven<M, O, E>(
        &self,
        handler: &BoundHandler,
        message: M,
        context: Option<MessageContext>,
        span: &tracing::Span,
    ) -> (Result<O, DispatchError<E>>, Scope)
    where
        M: Message,
        O: Send + 'static,
        E: Send + 'static,
    {
        let context = context.unwrap_or_else(MessageContext::root);
        block_on(
            self.request_driven(handler, message, context)
                .instrument(span.clone()),
        )
    }

    /// One call of a command or query handler, direct or through its layers.
    async fn request_once<M, O, E>(
        &self,
        handler: &BoundHandler,
        message: M,
        context: MessageContext,
    ) -> (Result<O, DispatchError<E>>, Scope)
    where
        M: Message,
        O: Send + 'static,
        E: Send + 'static,
    {
        let mut scope = Scope::request(Some(context), M::meta().kind());
        let output = match &handler.path {
            CallPath::Inline(f) => request_sync(handler, *f, message, &mut scope),
            CallPath::Awaited(f) => request_async(handler, *f, message, &mut scope).await,
            CallPath::Layered(pipeline, _) => {
                let mut frame: Frame<M, Result<O, E>> = Frame::new(message);
                let invocation = RequestInvocation::new(handler, &mut frame, context);
                let outcome = Next::new(pipeline, &invocation)
                    .run(invocation.call(M::meta()))
                    .await;
                if let Some(ran) = invocation.into_scope() {
                    scope = ran;
                }
                match outcome {
                    Ok(()) => complete(handler, Ok(()), frame.output, &mut scope),
                    Err(cause) => {
                        drop(std::mem::take(&mut scope).finish());
                        Err(DispatchError::Pipeline(Box::new(HandlerFailure {
                            message: M::meta().name(),
                            handler: handler.registration.name(),
                            location: handler.registration.location(),
                            cause,
                            attempts: 1,
                        })))
                    }
                }
            }
        };
        (output, scope)
    }

    /// After a command's or query's handler returned: the cascade of what
    /// it released (when it succeeded), and the recorder told how the call
    /// ended (a query refused for releasing failed).
    fn settle_request<O, E>(
        &self,
        handler: &BoundHandler,
        meta: &'static MessageMeta,
        output: &Result<O, DispatchError<E>>,
        scope: &mut Scope,
    ) -> Result<Option<Cascade>, Box<MisuseError>> {
        let released = match output {
            Ok(_) => self.released(handler, meta, scope),
            Err(_) => Ok(None),
        };
        self.tap_ran(handler, meta, 1, output.is_ok() && released.is_ok());
        released
    }

    /// The cascade of what a command handler released, if anything: the
    /// handler's own message counts as the first one processed. A query's
    /// handler that released events (they were refused) fails the query
    /// instead.
    #[inline]
    fn released(
        &self,
        handler: &BoundHandler,
        meta: &'static MessageMeta,
        scope: &mut Scope,
    ) -> Result<Option<Cascade>, Box<MisuseError>> {
        if !scope.has_releaser() {
            return Ok(None);
        }
        let context = scope.context();
        let mut closed = scope.finish_checked();
        let refused = closed.take_refused();
        let events = self.inner.watch.accept_closed(handler.registration, closed);
        if !refused.is_empty() {
            return Err(query_released(handler, meta, refused));
        }
        if events.is_empty() {
            return Ok(None);
        }
        let mut cascade = Cascade::new(meta, self.inner.max_messages, 1);
        cascade.push_all(events, &context);
        Ok(Some(cascade))
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
}

impl BoundHandler {
    /// The typed entry of a plain `fn` handler of `M` whose result is `R`.
    #[inline(always)]
    fn typed_request<M: 'static, R: 'static>(&self) -> Option<&TypedRequestEntry<M, R>> {
        self.typed_request?.downcast_ref()
    }

    /// The typed entry of an `async fn` handler of `M` whose result is `R`.
    #[inline(always)]
    fn typed_async_request<M: 'static, R: 'static>(&self) -> Option<&TypedAsyncRequestEntry<M, R>> {
        self.typed_async_request?.downcast_ref()
    }

    /// The command's opt-in retry, when it has one (only a command whose
    /// message and error types are `M` and `E` can).
    #[inline]
    fn command_retry<M: 'static, E: 'static>(&self) -> Option<&CommandRetry<M, E>> {
        self.command_retry.as_deref()?.downcast_ref()
    }
}

/// A plain `fn` command or query handler, called inline. On success, what
/// it released stays in `scope` for the caller.
#[inline(always)]
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
    // A command or query handler's panic is not caught: it fails noisily.
    if let Some(entry) = handler.typed_request::<M, Result<O, E>>() {
        // The typed entry: the message in, the result out, no frame.
        return call_typed(handler, entry, message, scope);
    }
    let mut frame: Frame<M, Result<O, E>> = Frame::new(message);
    let called = if super::invocation::spans_wanted() {
        let span = request_handler_span(handler, M::meta(), scope);
        let call = Call::new(MessageRef::Owned(&mut frame), &handler.dependencies, scope);
        span.in_scope(|| f(call))
    } else {
        f(Call::new(
            MessageRef::Owned(&mut frame),
            &handler.dependencies,
            scope,
        ))
    };
    complete(handler, called, frame.output, scope)
}

/// A command or query handler's call through its typed entry (for an
/// `async fn` one, the entry that drives its future on this thread).
#[inline(always)]
fn call_typed<M, O, E>(
    handler: &BoundHandler,
    entry: &TypedRequestEntry<M, Result<O, E>>,
    message: M,
    scope: &mut Scope,
) -> Result<O, DispatchError<E>>
where
    M: Message,
{
    let called = if super::invocation::spans_wanted() {
        let span = request_handler_span(handler, M::meta(), scope);
        span.in_scope(|| (entry.0)(message, &handler.dependencies, scope))
    } else {
        (entry.0)(message, &handler.dependencies, scope)
    };
    complete_typed(handler, called, scope)
}

/// An `async fn` command or query handler driven on this thread: through
/// its typed entry, which drives the handler's own future where it was made
/// (no future stored, boxed or moved); else its erased call's future, with
/// no wrapper around it when no span is wanted.
#[inline]
fn request_async_blocking<M, O, E>(
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
    if let Some(entry) = handler.typed_request::<M, Result<O, E>>() {
        // The typed entry drives the handler's future where it was made:
        // the message in, the result out, no frame, nothing stored.
        return call_typed(handler, entry, message, scope);
    }
    // No span at all when none is wanted (not even a disabled one, whose
    // drop is a call of its own with tracing's `log` feature on).
    let span =
        super::invocation::spans_wanted().then(|| request_handler_span(handler, M::meta(), scope));
    let mut frame: Frame<M, Result<O, E>> = Frame::new(message);
    let called = {
        let call = Call::new(MessageRef::Owned(&mut frame), &handler.dependencies, scope);
        let mut future = std::pin::pin!(f(call));
        match span {
            None => block_on(future.as_mut()),
            Some(span) => block_on(future.as_mut().instrument(span)),
        }
    };
    complete(handler, called, frame.output, scope)
}

/// An `async fn` command or query handler without layers: its answer and
/// the scope holding what it released.
async fn request_direct_async<M, O, E>(
    handler: &BoundHandler,
    f: AsyncCall,
    message: M,
    context: Option<MessageContext>,
) -> (Result<O, DispatchError<E>>, Scope)
where
    M: Message,
    O: Send + 'static,
    E: Send + 'static,
{
    let mut scope = Scope::request(context, M::meta().kind());
    let output = request_async(handler, f, message, &mut scope).await;
    (output, scope)
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
    let span = request_handler_span(handler, M::meta(), scope);
    if let Some(entry) = handler.typed_async_request::<M, Result<O, E>>() {
        // The typed entry: the message in, the result out, no frame.
        let called = (entry.0)(message, &handler.dependencies, scope)
            .instrument(span)
            .await;
        return complete_typed(handler, called, scope);
    }
    let mut frame: Frame<M, Result<O, E>> = Frame::new(message);
    let call = Call::new(MessageRef::Owned(&mut frame), &handler.dependencies, scope);
    let called = f(call).instrument(span).await;
    complete(handler, called, frame.output, scope)
}

/// A query whose handler released events: they were refused (never
/// queued, and a unit of work that stores events did not commit them).
#[cold]
#[inline(never)]
fn query_released(
    handler: &BoundHandler,
    meta: &'static MessageMeta,
    events: Vec<&'static str>,
) -> Box<MisuseError> {
    let misuse = MisuseError::QueryReleased {
        query: meta.name(),
        handler: handler.registration.name(),
        events,
    };
    tracing::error!(
        query = meta.name(),
        handler = handler.registration.name(),
        location = %handler.registration.location(),
        error = %misuse,
        "query refused: its handler released events"
    );
    Box::new(misuse)
}

/// The caller's answer from a command or query handler's call; a failed
/// handler's released events are dropped.
#[inline(always)]
fn complete<O, E>(
    handler: &BoundHandler,
    called: Result<(), BoxError>,
    output: Option<Result<O, E>>,
    scope: &mut Scope,
) -> Result<O, DispatchError<E>> {
    match (called, output) {
        (Ok(()), Some(Ok(value))) => Ok(value),
        (called, output) => Err(failed(handler, called, output, scope)),
    }
}

/// [`complete`] for a call through a typed entry, which hands back the
/// handler's result itself (or the error of a call that never ran it).
#[inline(always)]
fn complete_typed<O, E>(
    handler: &BoundHandler,
    called: Result<Result<O, E>, BoxError>,
    scope: &mut Scope,
) -> Result<O, DispatchError<E>> {
    match called {
        Ok(result) => complete(handler, Ok(()), Some(result), scope),
        Err(error) => complete(handler, Err(error), None, scope),
    }
}

/// Why a command or query handler's call failed; what it released is
/// dropped.
#[cold]
#[inline(never)]
fn failed<O, E>(
    handler: &BoundHandler,
    called: Result<(), BoxError>,
    output: Option<Result<O, E>>,
    scope: &mut Scope,
) -> DispatchError<E> {
    let failure = match (called, output) {
        (Ok(()), Some(Err(error))) => DispatchError::Handler(error),
        (Ok(()), Some(Ok(_)) | None) => DispatchError::Internal(Box::new(InternalError {
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
    failure
}
