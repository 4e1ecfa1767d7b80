//! One handler call, type-erased: the contract between `#[handler]`'s
//! generated code and the bus. Nothing here is meant to be used by hand.
//!
//! A command or query travels in a [`Frame`] (the message going in, the
//! result coming out), handed to the generated code as one `&mut dyn Any`:
//! one downcast gives the handler its message and the bus its answer. An
//! event is handed over as `&dyn Any`, shared by all of its handlers.
//!
//! # The describe contract
//!
//! A handler's signature is learned from the handler itself: the bus calls
//! its generated function once, at build time, with a [`Call`] in *describe*
//! mode (`Call::describe_into`, a `Shape` to fill, no message, no
//! dependencies). The generated code must then, and only then:
//!
//! 1. call `Describe::message_by_value::<M>` or `message_by_ref::<M>` once,
//!    with the message type of its first parameter;
//! 2. call `Describe::dependency::<D>` once per other parameter, in order
//!    (its position is the index `Call::dependency` is later asked for);
//!    `Describe::releaser` for an `EventReleaser` parameter, and
//!    `Describe::releases::<E, _>` once per event of `releases(...)`, each
//!    given the message's kind, so that a query handler fails to compile;
//! 3. hand the bus its *typed entry*, the same call with no erased
//!    message: `Describe::typed_sync` for a plain `fn` event handler (it
//!    borrows the event), `Describe::typed_request` for a command or query
//!    handler (it takes the message and hands back the handler's result;
//!    an `async fn` one's drives the handler's future to its end with
//!    `drive_future`, for a blocking dispatch) and, for an `async fn`
//!    one, `Describe::typed_async_request` too (a future of the result,
//!    for an awaited dispatch); the bus calls it instead of the erased call
//!    wherever no layer is in the way;
//! 4. return `Ok(())` (an `async fn` handler: a future that is ready with
//!    `Ok(())` on its first poll) without calling the handler.
//!
//! `HandlerRegistration::shape` asks once per handler and keeps the answer;
//! an async handler's future is driven by the crate's own `block_on`, which
//! never waits since the future is ready at once. Keeping every use of the
//! user's types in that one generated function is what keeps a type error
//! in a handler signature down to one diagnostic. The checks of the answer
//! (a message registered, dependencies registered with a lifetime, declared
//! events that are events) are the build's: a handler that answers nothing
//! is reported as such.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use crate::error::BoxError;
use crate::inject::DependencyKey;
use crate::inject::{Inject, Resolved, Scope};
use crate::message::{Event, Message, MessageMeta};

/// A boxed, `Send` future: what an async handler call returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The erased form of a plain `fn` handler.
pub type SyncCall = for<'a> fn(Call<'a>) -> Result<(), BoxError>;

/// How many bytes an `async fn` handler's future may take to be stored in
/// place, with no allocation: a handler whose future is larger (one that
/// holds big values across an `.await`) is boxed instead.
pub const INLINE_FUTURE_BYTES: usize = 256;

/// An `async fn` handler call's future: stored in place when it fits in
/// `INLINE_FUTURE_BYTES`, boxed otherwise.
pub type HandlerFuture<'a> =
    stackfuture::StackFuture<'a, Result<(), BoxError>, INLINE_FUTURE_BYTES>;

/// The erased form of an `async fn` handler.
pub type AsyncCall = for<'a> fn(Call<'a>) -> HandlerFuture<'a>;

/// A command or query call: the message in, the handler's result out.
#[doc(hidden)]
pub struct Frame<M, R> {
    pub(crate) message: Option<M>,
    pub(crate) output: Option<R>,
}

impl<M, R> Frame<M, R> {
    pub(crate) fn new(message: M) -> Self {
        Frame {
            message: Some(message),
            output: None,
        }
    }
}

/// The message a handler call receives.
#[doc(hidden)]
pub enum MessageRef<'a> {
    /// A command or query: a `Frame<M, M::Result>`.
    Owned(&'a mut (dyn Any + Send)),
    /// An event, shared by all of its handlers: `&M`.
    Shared(&'a (dyn Any + Send + Sync)),
    /// Already taken, or describe mode.
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
    dependencies: &'a [Resolved],
    scope: Option<&'a mut Scope>,
    shape: Option<&'a mut Shape>,
}

#[cold]
fn internal(what: &str) -> BoxError {
    format!("internal error: {what}").into()
}

/// A plain `fn` handler's typed entry: called with the event itself, so a
/// route of one event type calls its handlers without a downcast each.
pub type TypedSync<M> =
    for<'x, 'y> fn(&'x M, &'x [Resolved], &'y mut Scope) -> Result<(), BoxError>;

/// A plain `fn` command or query handler's typed entry: called with the
/// message itself, it hands back the handler's result, so a dispatch makes
/// no frame and no downcast of it.
pub type TypedRequest<M> = for<'x, 'y> fn(
    M,
    &'x [Resolved],
    &'y mut Scope,
) -> Result<<M as TakeMessage>::Result, BoxError>;

/// A typed async request entry's future: stored in place when it fits in
/// `INLINE_FUTURE_BYTES`, boxed otherwise.
pub type RequestFuture<'a, R> =
    stackfuture::StackFuture<'a, Result<R, BoxError>, INLINE_FUTURE_BYTES>;

/// An `async fn` command or query handler's typed entry: [`TypedRequest`]'s
/// counterpart, whose future hands back the handler's result.
pub type TypedAsyncRequest<M> =
    for<'a> fn(M, &'a [Resolved], &'a mut Scope) -> RequestFuture<'a, <M as TakeMessage>::Result>;

/// A [`TypedAsyncRequest`] as the bus keeps it (see [`TypedRequestEntry`]).
pub(crate) struct TypedAsyncRequestEntry<M, R>(
    pub(crate) for<'a> fn(M, &'a [Resolved], &'a mut Scope) -> RequestFuture<'a, R>,
);

/// A [`TypedRequest`] as the bus keeps it: `R` is the handler's result
/// type, which a dispatch names as `Result<C::Output, C::Error>`.
pub(crate) struct TypedRequestEntry<M, R>(
    pub(crate) for<'x, 'y> fn(M, &'x [Resolved], &'y mut Scope) -> Result<R, BoxError>,
);

/// What a handler's signature says, gathered in describe mode.
#[derive(Default)]
#[doc(hidden)]
pub struct Shape {
    pub(crate) message: Option<&'static MessageMeta>,
    pub(crate) dependencies: Vec<DependencyKey>,
    pub(crate) releases: Vec<&'static MessageMeta>,
    pub(crate) typed: Option<Box<dyn crate::bus::TypedEntry>>,
    /// A `TypedRequestEntry<M, M::Result>`: a plain `fn` command or query
    /// handler's call, or an `async fn` one's driven to its end on the
    /// calling thread (for a blocking dispatch).
    pub(crate) typed_request: Option<Box<dyn Any + Send + Sync>>,
    /// A `TypedAsyncRequestEntry<M, M::Result>`, for an `async fn` command
    /// or query handler.
    pub(crate) typed_async_request: Option<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shape")
            .field("message", &self.message.map(MessageMeta::name))
            .field("dependencies", &self.dependencies)
            .field(
                "releases",
                &self.releases.iter().map(|m| m.name()).collect::<Vec<_>>(),
            )
            .field("typed", &self.typed.is_some())
            .field("typed_request", &self.typed_request.is_some())
            .field("typed_async_request", &self.typed_async_request.is_some())
            .finish()
    }
}

/// Records a handler's signature; see [`Call`].
#[doc(hidden)]
pub struct Describe<'s, 'a> {
    shape: &'s mut Shape,
    _call: PhantomData<&'a ()>,
}

/// The kind of the message a described handler takes, for the checks of
/// its other parameters.
#[doc(hidden)]
pub struct KindOf<K>(PhantomData<K>);

/// The kinds of message whose handlers may release events: commands and
/// events, not queries.
#[diagnostic::on_unimplemented(
    message = "a query handler cannot take `EventReleaser`: a query reads, it never releases events",
    label = "not in a query handler",
    note = "the read side never changes state: release events from a command handler (or an \
            event handler), and answer the query from a read model"
)]
#[doc(hidden)]
pub trait ReleasingKind {}

impl ReleasingKind for crate::message::marker::CommandMarker {}
impl ReleasingKind for crate::message::marker::EventMarker {}

/// The kinds of message whose handlers may declare events they release:
/// commands and events, not queries.
#[diagnostic::on_unimplemented(
    message = "a query handler cannot release events: remove `releases(...)`",
    label = "a query handler declares no event",
    note = "the read side never changes state: release events from a command handler (or an \
            event handler), and answer the query from a read model"
)]
#[doc(hidden)]
pub trait DeclaresReleases {}

impl DeclaresReleases for crate::message::marker::CommandMarker {}
impl DeclaresReleases for crate::message::marker::EventMarker {}

impl<'a> Describe<'_, 'a> {
    /// The message, taken by value.
    #[cold]
    #[inline(never)]
    pub fn message_by_value<M: TakeMessage>(&mut self) -> KindOf<<M as Message>::Marker> {
        self.shape.message = Some(M::meta());
        KindOf(PhantomData)
    }

    /// The message, taken by reference.
    #[cold]
    #[inline(never)]
    pub fn message_by_ref<M: TakeMessage>(&mut self) -> KindOf<<M as Message>::Marker> {
        self.shape.message = Some(M::meta());
        KindOf(PhantomData)
    }

    /// The next dependency parameter.
    #[cold]
    #[inline(never)]
    pub fn dependency<D: Inject<'a>>(&mut self) {
        self.shape.dependencies.push(D::key());
    }

    /// A parameter spelled `EventReleaser`, in a handler of a message of
    /// kind `K`: refused in a query handler. (A releaser that reaches a
    /// query handler another way is refused when the query runs.)
    #[cold]
    #[inline(never)]
    pub fn releaser<K: ReleasingKind>(&mut self, _: &KindOf<K>) {}

    /// An event declared with `releases(...)`, by a handler of a message
    /// of kind `K` (not a query).
    #[cold]
    #[inline(never)]
    pub fn releases<E: Event, K: DeclaresReleases>(&mut self, _: &KindOf<K>) {
        self.shape.releases.push(E::meta());
    }

    /// The handler's typed entry (plain `fn` handlers).
    #[cold]
    #[inline(never)]
    pub fn typed_sync<M: TakeMessage>(&mut self, entry: TypedSync<M>) {
        self.shape.typed = Some(Box::new(crate::bus::TypedSyncEntry(entry)));
    }

    /// The handler's typed entry (`async fn` command and query handlers).
    #[cold]
    #[inline(never)]
    pub fn typed_async_request<M: TakeMessage>(&mut self, entry: TypedAsyncRequest<M>) {
        let entry: TypedAsyncRequestEntry<M, M::Result> = TypedAsyncRequestEntry(entry);
        self.shape.typed_async_request = Some(Box::new(entry));
    }

    /// The handler's typed entry (plain `fn` command and query handlers),
    /// or an `async fn` one's, driven to its end on the calling thread.
    #[cold]
    #[inline(never)]
    pub fn typed_request<M: TakeMessage>(&mut self, entry: TypedRequest<M>) {
        let entry: TypedRequestEntry<M, M::Result> = TypedRequestEntry(entry);
        self.shape.typed_request = Some(Box::new(entry));
    }
}

/// Resolves the dependency at `index` for a typed entry.
#[doc(hidden)]
#[inline]
pub fn inject<'a, D: Inject<'a>>(
    dependencies: &'a [Resolved],
    index: usize,
    scope: &mut Scope,
) -> Result<D, BoxError> {
    let resolved = dependencies
        .get(index)
        .ok_or_else(|| internal("dependency index out of range"))?;
    D::inject(resolved, scope)
}

/// An event, cloned for a by-value handler parameter.
#[doc(hidden)]
#[inline]
pub fn clone_event<E: Event>(event: &E) -> E {
    event.clone()
}

/// A command or query has a single owner; it is never shared like an event.
#[doc(hidden)]
#[cold]
pub fn not_shared() -> BoxError {
    internal("a command or query was passed as a shared event")
}

impl<'a> Call<'a> {
    #[inline]
    pub(crate) fn new(
        message: MessageRef<'a>,
        dependencies: &'a [Resolved],
        scope: &'a mut Scope,
    ) -> Self {
        Call {
            message,
            dependencies,
            scope: Some(scope),
            shape: None,
        }
    }

    pub(crate) fn describe_into(shape: &'a mut Shape) -> Self {
        Call {
            message: MessageRef::Taken,
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
            _call: PhantomData,
        })
    }

    /// The message, for a parameter that takes it by value, and where the
    /// handler's result goes: `(M, Output<M>)`.
    #[inline]
    pub fn message_by_value<M: TakeMessage>(&mut self) -> Result<M::Taken<'a>, BoxError> {
        M::take(std::mem::replace(&mut self.message, MessageRef::Taken))
    }

    /// The message, for a parameter that takes it by reference, and where the
    /// handler's result goes: `(&M, Output<M>)`.
    #[inline]
    pub fn message_by_ref<M: TakeMessage>(&mut self) -> Result<M::Borrowed<'a>, BoxError> {
        M::borrow(std::mem::replace(&mut self.message, MessageRef::Taken))
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
}

/// Where a handler's return value goes: the frame's result slot for a command
/// or query, nowhere for an event.
#[doc(hidden)]
pub struct Output<'a, M: TakeMessage>(Option<&'a mut Option<M::Result>>);

impl<M: TakeMessage> Output<'_, M> {
    /// No result slot: an event's handler.
    #[doc(hidden)]
    #[inline]
    pub fn none() -> Self {
        Output(None)
    }

    /// Hands the handler's return value to the bus.
    #[inline]
    pub fn deliver<R: HandlerOutput<M>>(self, returned: R) -> Result<(), BoxError> {
        returned.deliver(self.0)
    }
}

impl<'a, M: TakeMessage> Output<'a, M> {
    /// The result goes to `slot`: a typed request entry's.
    #[doc(hidden)]
    #[inline]
    pub fn to(slot: &'a mut Option<M::Result>) -> Self {
        Output(Some(slot))
    }
}

/// How a handler gets its message and gives back its result. Implemented by
/// the derives: commands and queries are moved out of their frame, events are
/// shared (and cloned for a by-value parameter).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a message",
    label = "not a command, event or query",
    note = "a handler's first parameter is the message it handles; derive one of `Command`, `Event` or `Query` on `{Self}`"
)]
#[doc(hidden)]
pub trait TakeMessage: Message + Sized {
    /// What the handler hands back: `Result<Output, Error>` for a command or
    /// query, `()` for an event.
    type Result: Send + 'static;

    /// Whether the message is shared by its handlers (an event), so that a
    /// typed entry is worth having.
    const SHARED: bool;

    /// `(Self, Output<'a, Self>)`. Named through the trait so that, when a
    /// handler's first parameter is not a message, the generated code's later
    /// uses of it are silenced instead of reported again.
    type Taken<'a>;

    /// `(&'a Self, Output<'a, Self>)`.
    type Borrowed<'a>;

    /// The message by value.
    fn take(message: MessageRef<'_>) -> Result<Self::Taken<'_>, BoxError>;

    /// The message by reference.
    fn borrow(message: MessageRef<'_>) -> Result<Self::Borrowed<'_>, BoxError>;

    /// The message by value, from a shared reference (an event's clone).
    fn take_shared(message: &Self) -> Result<Self::Taken<'_>, BoxError>;

    /// The message by reference, from a shared reference.
    fn borrow_shared(message: &Self) -> Self::Borrowed<'_>;

    /// The message by value, for a typed request entry whose result goes
    /// to `slot`.
    fn take_owned(message: Self, slot: &mut Option<Self::Result>) -> Self::Taken<'_>;

    /// The message by reference, for a typed request entry whose result
    /// goes to `slot`.
    fn borrow_owned<'a>(
        message: &'a Self,
        slot: &'a mut Option<Self::Result>,
    ) -> Self::Borrowed<'a>;
}

fn frame<'a, M: TakeMessage>(
    message: MessageRef<'a>,
) -> Result<&'a mut Frame<M, M::Result>, BoxError> {
    match message {
        MessageRef::Owned(frame) => frame
            .downcast_mut::<Frame<M, M::Result>>()
            .ok_or_else(|| internal("the frame holds another type")),
        _ => Err(internal("a command or query was passed as an event")),
    }
}

/// [`TakeMessage::take`] for commands and queries.
#[doc(hidden)]
#[inline]
pub fn take_from_frame<M: TakeMessage>(
    message: MessageRef<'_>,
) -> Result<(M, Output<'_, M>), BoxError> {
    let frame = frame::<M>(message)?;
    let message = frame
        .message
        .take()
        .ok_or_else(|| internal("message taken twice"))?;
    Ok((message, Output(Some(&mut frame.output))))
}

/// [`TakeMessage::borrow`] for commands and queries.
#[doc(hidden)]
#[inline]
pub fn borrow_from_frame<M: TakeMessage>(
    message: MessageRef<'_>,
) -> Result<(&M, Output<'_, M>), BoxError> {
    let Frame { message, output } = frame::<M>(message)?;
    let message = message
        .as_ref()
        .ok_or_else(|| internal("message taken twice"))?;
    Ok((message, Output(Some(output))))
}

fn event<'a, M: Event>(message: MessageRef<'a>) -> Result<&'a M, BoxError> {
    match message {
        MessageRef::Shared(event) => event
            .downcast_ref::<M>()
            .ok_or_else(|| internal("the event has another type")),
        _ => Err(internal("an event was passed as a command")),
    }
}

/// [`TakeMessage::take`] for events: a clone.
#[doc(hidden)]
#[inline]
pub fn take_event<M: Event + TakeMessage>(
    message: MessageRef<'_>,
) -> Result<(M, Output<'_, M>), BoxError> {
    Ok((event::<M>(message)?.clone(), Output(None)))
}

/// [`TakeMessage::borrow`] for events.
#[doc(hidden)]
#[inline]
pub fn borrow_event<M: Event + TakeMessage>(
    message: MessageRef<'_>,
) -> Result<(&M, Output<'_, M>), BoxError> {
    Ok((event::<M>(message)?, Output(None)))
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
pub trait HandlerOutput<M: TakeMessage> {
    #[doc(hidden)]
    fn deliver(self, slot: Option<&mut Option<M::Result>>) -> Result<(), BoxError>;
}

/// [`HandlerOutput`] for commands and queries: the result goes to the caller.
#[doc(hidden)]
#[inline]
pub fn put_output<T>(value: T, slot: Option<&mut Option<T>>) -> Result<(), BoxError> {
    let slot = slot.ok_or_else(|| internal("no result slot"))?;
    *slot = Some(value);
    Ok(())
}

/// What a typed request entry hands back: the result its handler gave.
#[doc(hidden)]
#[inline]
pub fn request_result<R>(slot: Option<R>) -> Result<R, BoxError> {
    slot.ok_or_else(|| internal("the handler produced no output"))
}

/// [`HandlerOutput`] for events returning `Result<(), E>`.
#[doc(hidden)]
#[inline]
pub fn event_result<E: Into<BoxError>>(result: Result<(), E>) -> Result<(), BoxError> {
    result.map_err(Into::into)
}

/// An async handler's answer in describe mode.
#[doc(hidden)]
pub fn ready_ok<'a>() -> HandlerFuture<'a> {
    HandlerFuture::from(std::future::ready(Ok(())))
}

/// An async handler whose preparation failed: a ready error.
#[doc(hidden)]
pub fn ready_err<'a>(error: BoxError) -> HandlerFuture<'a> {
    HandlerFuture::from(std::future::ready(Err(error)))
}

/// An async handler's future, in place when it fits, else boxed.
#[doc(hidden)]
#[inline]
pub fn handler_future<'a, F>(future: F) -> HandlerFuture<'a>
where
    F: Future<Output = Result<(), BoxError>> + Send + 'a,
{
    HandlerFuture::from_or_box(future)
}

/// How many bytes an `async fn` handler's future may take to be driven on
/// the stack by a blocking dispatch; a larger one is boxed first, so that a
/// handler holding a big buffer across an `.await` does not hold it on the
/// calling thread's stack for as long as it runs.
pub const STACK_FUTURE_BYTES: usize = 16 * 1024;

/// Drives an `async fn` handler's future to its end on this thread (the
/// typed entry of a blocking dispatch): where it was made, or boxed when it
/// is larger than `STACK_FUTURE_BYTES`.
#[doc(hidden)]
#[track_caller]
#[inline]
pub fn drive_future<F: Future>(future: F) -> F::Output {
    if std::mem::size_of::<F>() > STACK_FUTURE_BYTES {
        crate::executor::block_on(Box::pin(future))
    } else {
        crate::executor::block_on(future)
    }
}

/// A typed async request entry's future, in place when it fits, else
/// boxed.
#[doc(hidden)]
#[inline]
pub fn request_future<'a, R, F>(future: F) -> RequestFuture<'a, R>
where
    F: Future<Output = Result<R, BoxError>> + Send + 'a,
{
    RequestFuture::from_or_box(future)
}

/// A typed async request entry whose preparation failed: a ready error.
#[doc(hidden)]
pub fn ready_request_err<'a, R: Send + 'a>(error: BoxError) -> RequestFuture<'a, R> {
    RequestFuture::from(std::future::ready(Err(error)))
}

/// The default error type of commands and queries.
#[doc(hidden)]
pub type DefaultError = Infallible;
