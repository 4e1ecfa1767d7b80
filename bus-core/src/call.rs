//! One handler call, type-erased: the contract between `#[handler]`'s
//! generated code and the bus. Nothing here is meant to be used by hand.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use crate::error::BoxError;
use crate::inject::{Inject, Resolved, Scope};
use crate::message::kind::{CommandKind, EventKind, MessageKind, QueryKind};
use crate::message::{Command, Event, Message, Query};

/// A boxed, `Send` future: what an async handler call returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The erased form of a plain `fn` handler.
pub type SyncCall = for<'a> fn(Call<'a>) -> Result<(), BoxError>;

/// The erased form of an `async fn` handler.
pub type AsyncCall = for<'a> fn(Call<'a>) -> BoxFuture<'a, Result<(), BoxError>>;

/// The message a handler call receives.
#[doc(hidden)]
pub enum MessageRef<'a> {
    /// A command or query: `&mut Option<M>`, taken by a by-value parameter.
    Owned(&'a mut (dyn Any + Send)),
    /// An event, shared by all of its handlers: `&M`.
    Shared(&'a (dyn Any + Send + Sync)),
    /// Already taken.
    Taken,
}

/// Everything one handler call needs, prepared by the bus.
#[doc(hidden)]
pub struct Call<'a> {
    message: MessageRef<'a>,
    output: Option<&'a mut (dyn Any + Send)>,
    dependencies: &'a [Resolved],
    scope: &'a mut Scope,
}

fn internal(what: &str) -> BoxError {
    format!("internal error: {what}").into()
}

impl<'a> Call<'a> {
    pub(crate) fn new(
        message: MessageRef<'a>,
        output: Option<&'a mut (dyn Any + Send)>,
        dependencies: &'a [Resolved],
        scope: &'a mut Scope,
    ) -> Self {
        Call {
            message,
            output,
            dependencies,
            scope,
        }
    }

    /// The message, for a parameter that takes it by value.
    #[inline]
    pub fn message_by_value<M>(&mut self) -> Result<M, BoxError>
    where
        M: Message,
        M::Kind: TakeMessage<M>,
    {
        let message = std::mem::replace(&mut self.message, MessageRef::Taken);
        <M::Kind as TakeMessage<M>>::take(message)
    }

    /// The message, for a parameter that takes it by reference.
    #[inline]
    pub fn message_by_ref<M: Message>(&mut self) -> Result<&'a M, BoxError> {
        match std::mem::replace(&mut self.message, MessageRef::Taken) {
            MessageRef::Owned(slot) => {
                let slot: &'a (dyn Any + Send) = slot;
                slot.downcast_ref::<Option<M>>()
                    .and_then(Option::as_ref)
                    .ok_or_else(|| internal("message slot holds another type"))
            }
            MessageRef::Shared(event) => event
                .downcast_ref::<M>()
                .ok_or_else(|| internal("event has another type")),
            MessageRef::Taken => Err(internal("message taken twice")),
        }
    }

    /// The dependency at `index` (0 is the first parameter after the message).
    #[inline]
    pub fn dependency<D: Inject<'a>>(&mut self, index: usize) -> Result<D, BoxError> {
        let dependencies: &'a [Resolved] = self.dependencies;
        let resolved = dependencies
            .get(index)
            .ok_or_else(|| internal("dependency index out of range"))?;
        D::inject(resolved, self.scope)
    }

    /// The slot the handler's result goes to; taken once.
    #[inline]
    pub fn output(&mut self) -> Output<'a> {
        Output(self.output.take())
    }
}

/// Where a handler's return value goes.
#[doc(hidden)]
pub struct Output<'a>(Option<&'a mut (dyn Any + Send)>);

impl Output<'_> {
    /// Hands the handler's return value to the bus.
    #[inline]
    pub fn deliver<M, R>(self, returned: R) -> Result<(), BoxError>
    where
        M: Message,
        R: HandlerOutput<M, M::Kind>,
    {
        returned.deliver(self.0)
    }
}

/// How a message kind hands a by-value parameter its message.
#[diagnostic::on_unimplemented(
    message = "a handler cannot take `{M}` by value",
    label = "taken by value here",
    note = "take the message by reference instead: `&{M}`"
)]
#[doc(hidden)]
pub trait TakeMessage<M: Message>: MessageKind {
    /// Produces the message.
    fn take(message: MessageRef<'_>) -> Result<M, BoxError>;
}

fn take_owned<M: Message>(message: MessageRef<'_>) -> Result<M, BoxError> {
    match message {
        MessageRef::Owned(slot) => slot
            .downcast_mut::<Option<M>>()
            .and_then(Option::take)
            .ok_or_else(|| internal("message slot empty or of another type")),
        _ => Err(internal("a command or query was passed as an event")),
    }
}

impl<M: Command> TakeMessage<M> for CommandKind {
    #[inline]
    fn take(message: MessageRef<'_>) -> Result<M, BoxError> {
        take_owned(message)
    }
}

impl<M: Query> TakeMessage<M> for QueryKind {
    #[inline]
    fn take(message: MessageRef<'_>) -> Result<M, BoxError> {
        take_owned(message)
    }
}

impl<M: Event> TakeMessage<M> for EventKind {
    #[inline]
    fn take(message: MessageRef<'_>) -> Result<M, BoxError> {
        match message {
            MessageRef::Shared(event) => event
                .downcast_ref::<M>()
                .cloned()
                .ok_or_else(|| internal("event has another type")),
            _ => Err(internal("an event was passed as a command")),
        }
    }
}

/// What a handler of `M` may return.
///
/// - a command handler: `Result<C::Output, C::Error>`, as the command declared;
/// - a query handler: `Result<Q::Output, Q::Error>`, likewise;
/// - an event handler: `()` or `Result<(), E>` for any error `E`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not what a handler of `{M}` returns",
    label = "wrong return type for a handler of `{M}`",
    note = "a command or query handler returns `Result<Output, Error>` with the types declared by \
            `#[command(output = .., error = ..)]` or `#[query(..)]`; an event handler returns `()` or \
            `Result<(), E>`"
)]
pub trait HandlerOutput<M: Message, K> {
    #[doc(hidden)]
    fn deliver(self, output: Option<&mut (dyn Any + Send)>) -> Result<(), BoxError>;
}

fn put<T: Send + 'static>(value: T, output: Option<&mut (dyn Any + Send)>) -> Result<(), BoxError> {
    let slot = output
        .and_then(|slot| slot.downcast_mut::<Option<T>>())
        .ok_or_else(|| internal("output slot missing or of another type"))?;
    *slot = Some(value);
    Ok(())
}

impl<C: Command> HandlerOutput<C, CommandKind> for Result<C::Output, C::Error> {
    #[inline]
    fn deliver(self, output: Option<&mut (dyn Any + Send)>) -> Result<(), BoxError> {
        put(self, output)
    }
}

impl<Q: Query> HandlerOutput<Q, QueryKind> for Result<Q::Output, Q::Error> {
    #[inline]
    fn deliver(self, output: Option<&mut (dyn Any + Send)>) -> Result<(), BoxError> {
        put(self, output)
    }
}

impl<E: Event> HandlerOutput<E, EventKind> for () {
    #[inline]
    fn deliver(self, _: Option<&mut (dyn Any + Send)>) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E: Event, Err: Into<BoxError>> HandlerOutput<E, EventKind> for Result<(), Err> {
    #[inline]
    fn deliver(self, _: Option<&mut (dyn Any + Send)>) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

/// Compile-time check that `M` is a message; spanned on the user's parameter.
#[doc(hidden)]
#[inline(always)]
pub const fn assert_message<M: Message>() {}

/// Compile-time check that `R` is a valid return type for a handler of `M`.
#[doc(hidden)]
#[inline(always)]
pub fn assert_output<M: Message, R: HandlerOutput<M, M::Kind>>() {}

/// Compile-time check that a declared released type is an event.
#[doc(hidden)]
pub fn released_meta<E: Event>() -> &'static crate::MessageMeta {
    E::meta()
}

/// An async handler whose preparation failed: a ready error.
#[doc(hidden)]
pub fn ready_err<'a>(error: BoxError) -> BoxFuture<'a, Result<(), BoxError>> {
    Box::pin(std::future::ready(Err(error)))
}

/// Boxes an async handler's future.
#[doc(hidden)]
#[inline]
pub fn boxed<'a, F>(future: F) -> BoxFuture<'a, Result<(), BoxError>>
where
    F: Future<Output = Result<(), BoxError>> + Send + 'a,
{
    Box::pin(future)
}

/// Keeps `Infallible` nameable for generated defaults.
#[doc(hidden)]
pub type DefaultError = Infallible;
