//! Dispatching: one caller-owned FIFO queue per dispatch, handlers called with
//! their dependencies, event-handler failures isolated and reported.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::panic::{catch_unwind, AssertUnwindSafe};

use tracing::Instrument;

use super::routes::BoundHandler;
use super::unwind::CatchUnwind;
use super::Bus;
use crate::call::{Call, MessageRef};
use crate::error::{CascadeLimitError, DispatchError};
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
        let span = tracing::debug_span!("dispatch", kind = "command", message_name = C::name());
        self.request::<C, C::Output, C::Error>(command)
            .instrument(span)
            .await
    }

    /// [`dispatch`](Self::dispatch) without an async runtime: drives the
    /// dispatch on this thread. Never call it from inside an async task.
    pub fn dispatch_blocking<C: Command>(
        &self,
        command: C,
    ) -> Result<C::Output, DispatchError<C::Error>> {
        block_on(self.dispatch(command))
    }

    /// Asks a query of its one handler (the read side).
    pub async fn query<Q: Query>(&self, query: Q) -> Result<Q::Output, DispatchError<Q::Error>> {
        let span = tracing::debug_span!("dispatch", kind = "query", message_name = Q::name());
        self.request::<Q, Q::Output, Q::Error>(query)
            .instrument(span)
            .await
    }

    /// [`query`](Self::query) without an async runtime.
    pub fn query_blocking<Q: Query>(&self, query: Q) -> Result<Q::Output, DispatchError<Q::Error>> {
        block_on(self.query(query))
    }

    /// Publishes an event raised outside any handler, and runs the cascade it
    /// causes. Fails only when the cascade exceeds the bound.
    pub async fn publish<E: Event>(&self, event: E) -> Result<(), DispatchError<Infallible>> {
        let span = tracing::debug_span!("dispatch", kind = "event", message_name = E::name());
        self.run_events(E::meta(), vec![PendingEvent::new(event)], 0)
            .instrument(span)
            .await
            .map_err(DispatchError::CascadeLimit)
    }

    /// [`publish`](Self::publish) without an async runtime.
    pub fn publish_blocking<E: Event>(&self, event: E) -> Result<(), DispatchError<Infallible>> {
        block_on(self.publish(event))
    }

    /// A command or query: its single handler, then the events it released.
    async fn request<M, O, E>(&self, message: M) -> Result<O, DispatchError<E>>
    where
        M: Message,
        O: Send + 'static,
        E: Send + 'static,
    {
        let meta = M::meta();
        let Some(handler) = self.inner.routes.handlers(meta).first() else {
            return Err(DispatchError::Unhandled {
                kind: meta.kind(),
                name: meta.name(),
            });
        };
        let registration = handler.registration;
        let mut slot = Some(message);
        let mut output: Option<Result<O, E>> = None;
        let mut scope = Scope::new();
        let call = Call::new(
            MessageRef::Owned(&mut slot),
            Some(&mut output),
            &handler.dependencies,
            &mut scope,
        );
        let span = tracing::debug_span!("handler", handler = registration.name());
        // A command handler's panic is not caught: commands fail noisily.
        let called = match registration.call() {
            HandlerFn::Sync(f) => span.in_scope(|| f(call)),
            HandlerFn::Async(f) => f(call).instrument(span).await,
        };
        if let Err(error) = called {
            return Err(DispatchError::Internal {
                handler: registration.name(),
                error,
            });
        }
        match output {
            Some(Ok(value)) => {
                let released = scope.finish();
                if !released.is_empty() {
                    self.run_events(meta, released, 1).await?;
                }
                Ok(value)
            }
            Some(Err(error)) => {
                let dropped = scope.finish();
                if !dropped.is_empty() {
                    tracing::debug!(
                        dropped = dropped.len(),
                        "handler failed: the events it released are dropped"
                    );
                }
                Err(DispatchError::Handler(error))
            }
            None => Err(DispatchError::Internal {
                handler: registration.name(),
                error: "the handler produced no output".into(),
            }),
        }
    }

    /// Runs the queue to the end: each event through all of its handlers, in
    /// order; what they release joins the back of the queue.
    async fn run_events(
        &self,
        origin: &'static MessageMeta,
        initial: Vec<PendingEvent>,
        mut processed: usize,
    ) -> Result<(), CascadeLimitError> {
        let max = self.inner.max_messages;
        let mut queue = VecDeque::from(initial);
        while let Some(event) = queue.pop_front() {
            processed += 1;
            if processed > max {
                return Err(cascade_error(origin, max, &event, &queue));
            }
            for handler in self.inner.routes.handlers(event.meta()) {
                let mut scope = Scope::new();
                match self.call_event_handler(handler, &event, &mut scope).await {
                    Ok(()) => queue.extend(scope.finish()),
                    Err(cause) => {
                        drop(scope.finish());
                        self.report(event.meta(), handler, cause);
                    }
                }
            }
        }
        Ok(())
    }

    /// One event-handler call, with its errors and panics caught.
    async fn call_event_handler(
        &self,
        handler: &BoundHandler,
        event: &PendingEvent,
        scope: &mut Scope,
    ) -> Result<(), FailureCause> {
        let registration = handler.registration;
        let span = tracing::debug_span!(
            "handler",
            handler = registration.name(),
            message_name = event.name()
        );
        let call = Call::new(
            MessageRef::Shared(event.as_any()),
            None,
            &handler.dependencies,
            scope,
        );
        let outcome = match registration.call() {
            HandlerFn::Sync(f) => span.in_scope(|| catch_unwind(AssertUnwindSafe(|| f(call)))),
            HandlerFn::Async(f) => match catch_unwind(AssertUnwindSafe(|| f(call))) {
                Ok(future) => CatchUnwind(future).instrument(span).await,
                Err(payload) => Err(payload),
            },
        };
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(FailureCause::Error(error)),
            Err(payload) => Err(FailureCause::Panic(panic_text(&*payload))),
        }
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

fn cascade_error(
    origin: &'static MessageMeta,
    limit: usize,
    current: &PendingEvent,
    queue: &VecDeque<PendingEvent>,
) -> CascadeLimitError {
    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    for name in std::iter::once(current.name()).chain(queue.iter().map(PendingEvent::name)) {
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count += 1,
            None => counts.push((name, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    tracing::error!(
        origin = origin.name(),
        limit,
        "dispatch stopped: its events keep raising events"
    );
    CascadeLimitError {
        origin: origin.name(),
        limit,
        pending: counts,
    }
}
