//! One handler call, type-erased: the contract between `#[handler]`'s
//! generated code and the bus. Nothing here is meant to be used by hand.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use crate::error::BoxError;
use crate::inject::DependencyKey;
use crate::inject::{Inject, Resolved, Scope};
use crate::message::{Event, Message, MessageMeta};

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
///
/// A call is also made once per handler at build time in *describe* mode: the
/// generated code then reports the handler's message, dependencies and
/// declared events instead of running it. Keeping every use of the user's
/// types in that one generated function is what keeps a type error in a
/// handler signature down to one diagnostic.
#[doc(hidden)]
pub struct Call<'a> {
    message: MessageRef<'a>,
    output: Option<&'a mut (dyn Any + Send)>,
    dependencies: &'a [Resolved],
    scope: Option<&'a mut Scope>,
    shape: Option<&'a mut Shape>,
}

fn internal(what: &str) -> BoxError {
    format!("internal error: {what}").into()
}

/// What a handler's signature says, gathered in describe mode.
#[derive(Debug, Default)]
#[doc(hidden)]
pub struct Shape {
    pub(crate) message: Option<&'static MessageMeta>,
    pub(crate) dependencies: Vec<DependencyKey>,
    pub(crate) releases: Vec<&'static MessageMeta>,
}

/// Records a handler's signature; see [`Call`].
#[doc(hidden)]
pub struct Describe<'s, 'a> {
    shape: &'s mut Shape,
    _call: std::marker::PhantomData<&'a ()>,
}

impl<'a> Describe<'_, 'a> {
    /// The message, taken by value.
    pub fn message_by_value<M: TakeMessage>(&mut self) {
        self.shape.message = Some(M::meta());
    }

    /// The message, taken by reference.
    pub fn message_by_ref<M: Message>(&mut self) {
        self.shape.message = Some(M::meta());
    }

    /// The next dependency parameter.
    pub fn dependency<D: Inject<'a>>(&mut self) {
        self.shape.dependencies.push(D::key());
    }

    /// An event declared with `releases(...)`.
    pub fn releases<E: Event>(&mut self) {
        self.shape.releases.push(E::meta());
    }
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
            scope: Some(scope),
            shape: None,
        }
    }

    pub(crate) fn describe_into(shape: &'a mut Shape) -> Self {
        Call {
            message: MessageRef::Taken,
            output: None,
            dependencies: &[],
            scope: None,
            shape: Some(shape),
        }
    }

    /// `Some` when the bus asks for the handler's signature, not a call.
    #[inline]
    pub fn describe(&mut self) -> Option<Describe<'_, 'a>> {
        self.shape.as_deref_mut().map(|shape| Describe {
            shape,
            _call: std::marker::PhantomData,
        })
    }

    /// The message, for a parameter that takes it by value.
    #[inline]
    pub fn message_by_value<M: TakeMessage>(&mut self) -> Result<M, BoxError> {
        M::take(std::mem::replace(&mut self.message, MessageRef::Taken))
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
        let scope = self
            .scope
            .as_deref_mut()
            .ok_or_else(|| internal("no scope in describe mode"))?;
        D::inject(resolved, scope)
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
        R: HandlerOutput<M>,
    {
        returned.deliver(self.0)
    }
}

/// How a by-value handler parameter gets its message: commands and queries
/// are moved out of the dispatch, events are cloned (they may have several
/// handlers). Implemented by the derives.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a message",
    label = "not a command, event or query",
    note = "a handler's first parameter is the message it handles; derive one of `Command`, `Event` or `Query` on `{Self}`"
)]
#[doc(hidden)]
pub trait TakeMessage: Message + Sized {
    /// Produces the message.
    fn take(message: MessageRef<'_>) -> Result<Self, BoxError>;
}

/// [`TakeMessage`] for commands and queries.
#[doc(hidden)]
#[inline]
pub fn take_owned<M: Message>(message: MessageRef<'_>) -> Result<M, BoxError> {
    match message {
        MessageRef::Owned(slot) => slot
            .downcast_mut::<Option<M>>()
            .and_then(Option::take)
            .ok_or_else(|| internal("message slot empty or of another type")),
        _ => Err(internal("a command or query was passed as an event")),
    }
}

/// [`TakeMessage`] for events.
#[doc(hidden)]
#[inline]
pub fn take_cloned<M: Event>(message: MessageRef<'_>) -> Result<M, BoxError> {
    match message {
        MessageRef::Shared(event) => event
            .downcast_ref::<M>()
            .cloned()
            .ok_or_else(|| internal("event has another type")),
        _ => Err(internal("an event was passed as a command")),
    }
}

/// What a handler of `M` may return; implemented by the derives:
///
/// - a command handler: `Result<Output, Error>`, as declared in `#[command(..)]`;
/// - a query handler: `Result<Output, Error>`, as declared in `#[query(..)]`;
/// - an event handler: `()` or `Result<(), E>` for any error `E`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not what a handler of `{M}` returns",
    label = "wrong return type for a handler of `{M}`",
    note = "a command or query handler returns `Result<Output, Error>` with the types its \
            `#[command(output = .., error = ..)]` or `#[query(..)]` declares; an event handler \
            returns `()` or `Result<(), E>`"
)]
pub trait HandlerOutput<M: Message> {
    #[doc(hidden)]
    fn deliver(self, output: Option<&mut (dyn Any + Send)>) -> Result<(), BoxError>;
}

/// [`HandlerOutput`] for commands and queries: the result goes to the caller.
#[doc(hidden)]
#[inline]
pub fn put_output<T: Send + 'static>(
    value: T,
    output: Option<&mut (dyn Any + Send)>,
) -> Result<(), BoxError> {
    let slot = output
        .and_then(|slot| slot.downcast_mut::<Option<T>>())
        .ok_or_else(|| internal("output slot missing or of another type"))?;
    *slot = Some(value);
    Ok(())
}

/// [`HandlerOutput`] for events returning `Result<(), E>`.
#[doc(hidden)]
#[inline]
pub fn event_result<E: Into<BoxError>>(result: Result<(), E>) -> Result<(), BoxError> {
    result.map_err(Into::into)
}

/// An async handler's answer in describe mode.
#[doc(hidden)]
pub fn ready_ok<'a>() -> BoxFuture<'a, Result<(), BoxError>> {
    Box::pin(std::future::ready(Ok(())))
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

/// The default error type of commands and queries.
#[doc(hidden)]
pub type DefaultError = Infallible;
