//! How a handler parameter becomes a value: the injectable parameter types.
//!
//! | parameter type        | comes from                                          |
//! |-----------------------|-----------------------------------------------------|
//! | `&T`, `Arc<T>`        | a shared dependency: [`Dependencies::shared`]        |
//! | `Scoped<T>`           | a scoped one, made per call: [`Dependencies::scoped`] |
//! | [`EventReleaser`]     | the bus: this call's releaser                       |
//!
//! `T` may be unsized (`&dyn Notifications`, `Scoped<dyn UnitOfWork>`), which is
//! how tests swap a fake in for a real adapter.
//!
//! [`Dependencies::shared`]: crate::Dependencies::shared
//! [`Dependencies::scoped`]: crate::Dependencies::scoped

use std::any::{Any, TypeId};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::context::MessageContext;
use crate::error::BoxError;
use crate::events::EventReleaser;

/// How long an injected value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Lifetime {
    /// One instance for the whole application.
    Shared,
    /// A fresh instance for each handler call.
    Scoped,
    /// Supplied by the bus itself (such as [`EventReleaser`]); always present.
    Bus,
}

impl fmt::Display for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lifetime::Shared => "shared",
            Lifetime::Scoped => "scoped",
            Lifetime::Bus => "bus-provided",
        })
    }
}

/// What a handler parameter asks the container for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DependencyKey {
    type_id: TypeId,
    type_name: &'static str,
    lifetime: Lifetime,
}

impl DependencyKey {
    /// The key of a dependency of type `T` with the given lifetime.
    pub fn of<T: ?Sized + 'static>(lifetime: Lifetime) -> Self {
        DependencyKey {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            lifetime,
        }
    }

    /// The `TypeId` of the registered type (`T` in `&T`, `Arc<T>`, `Scoped<T>`).
    pub fn type_id(&self) -> TypeId {
        self.type_id
    }

    /// The name of the registered type, for errors.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// Shared, scoped or bus-provided.
    pub fn lifetime(&self) -> Lifetime {
        self.lifetime
    }
}

/// A handler parameter type the bus knows how to fill.
///
/// Implemented for `&T` and `Arc<T>` (shared), [`Scoped<T>`] (scoped) and
/// [`EventReleaser`]. The `#[handler]` macro checks every dependency parameter
/// against this trait at compile time.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be injected into a handler",
    label = "not injectable",
    note = "take a shared dependency as `&T` or `Arc<T>` (register it with `Dependencies::shared`), \
            or a per-call one as `arch_events::Scoped<T>` (register it with `Dependencies::scoped`)",
    note = "handlers run on any thread: a shared dependency must be `Send + Sync` (use a `Mutex` or \
            an atomic rather than `Cell`/`RefCell`, and `Arc` rather than `Rc`), a scoped one `Send`"
)]
pub trait Inject<'a>: Sized {
    /// What the container must hold for this parameter.
    fn key() -> DependencyKey;

    /// Builds the value.
    #[doc(hidden)]
    fn inject(resolved: &'a Resolved, scope: &mut Scope) -> Result<Self, BoxError>;
}

/// A dependency as the build resolved it for one handler parameter.
#[doc(hidden)]
#[derive(Clone)]
pub enum Resolved {
    /// Holds an `Arc<T>`.
    Shared(Arc<dyn Any + Send + Sync>),
    /// Holds a [`ScopedFactory<T>`].
    Scoped(Arc<dyn Any + Send + Sync>),
    /// Supplied from the call's [`Scope`].
    Bus,
}

pub(crate) type ScopedFactory<T> = Box<dyn Fn(&mut Scope) -> Box<T> + Send + Sync>;

fn mismatch<T: ?Sized>() -> BoxError {
    format!(
        "internal error: the dependency resolved for `{}` has another type",
        std::any::type_name::<T>()
    )
    .into()
}

impl Resolved {
    fn shared<T: ?Sized + Send + Sync + 'static>(&self) -> Result<&Arc<T>, BoxError> {
        match self {
            Resolved::Shared(value) => value.downcast_ref::<Arc<T>>().ok_or_else(mismatch::<T>),
            _ => Err(mismatch::<T>()),
        }
    }
}

impl<'a, T: ?Sized + Send + Sync + 'static> Inject<'a> for &'a T {
    fn key() -> DependencyKey {
        DependencyKey::of::<T>(Lifetime::Shared)
    }
    #[inline]
    fn inject(resolved: &'a Resolved, _: &mut Scope) -> Result<Self, BoxError> {
        resolved.shared::<T>().map(|arc| &**arc)
    }
}

impl<'a, T: ?Sized + Send + Sync + 'static> Inject<'a> for Arc<T> {
    fn key() -> DependencyKey {
        DependencyKey::of::<T>(Lifetime::Shared)
    }
    #[inline]
    fn inject(resolved: &'a Resolved, _: &mut Scope) -> Result<Self, BoxError> {
        resolved.shared::<T>().cloned()
    }
}

impl<'a, T: ?Sized + Send + 'static> Inject<'a> for Scoped<T> {
    fn key() -> DependencyKey {
        DependencyKey::of::<T>(Lifetime::Scoped)
    }
    fn inject(resolved: &'a Resolved, scope: &mut Scope) -> Result<Self, BoxError> {
        match resolved {
            Resolved::Scoped(factory) => {
                let factory = factory
                    .downcast_ref::<ScopedFactory<T>>()
                    .ok_or_else(mismatch::<T>)?;
                Ok(Scoped(factory(scope)))
            }
            _ => Err(mismatch::<T>()),
        }
    }
}

impl<'a> Inject<'a> for EventReleaser {
    fn key() -> DependencyKey {
        DependencyKey::of::<EventReleaser>(Lifetime::Bus)
    }
    fn inject(_: &'a Resolved, scope: &mut Scope) -> Result<Self, BoxError> {
        Ok(scope.releaser())
    }
}

/// A value made for one handler call by a factory registered with
/// [`Dependencies::scoped`](crate::Dependencies::scoped): a unit of work, say.
/// Derefs to `T`.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use arch_events::{handler, Bus, Command, Dependencies, Scoped};
///
/// /// Made afresh for every call.
/// struct Attempt { number: u32 }
///
/// #[derive(Debug, Command)]
/// #[command(output = u32)]
/// struct Try;
///
/// #[handler]
/// fn try_it(_: Try, attempt: Scoped<Attempt>) -> Result<u32, std::convert::Infallible> {
///     Ok(attempt.number)
/// }
///
/// let counter = Arc::new(AtomicU32::new(0));
/// let bus = Bus::builder()
///     .dependencies(Dependencies::new().scoped(move |_| Attempt {
///         number: counter.fetch_add(1, Ordering::SeqCst) + 1,
///     }))
///     .build()
///     .unwrap();
/// assert_eq!(bus.dispatch_blocking(Try).unwrap(), 1);
/// assert_eq!(bus.dispatch_blocking(Try).unwrap(), 2);
/// ```
pub struct Scoped<T: ?Sized>(Box<T>);

impl<T: ?Sized> Scoped<T> {
    /// Wraps a value (for calling a handler directly in a test).
    pub fn new(value: Box<T>) -> Self {
        Scoped(value)
    }

    /// The boxed value.
    pub fn into_inner(self) -> Box<T> {
        self.0
    }
}

impl<T> From<T> for Scoped<T> {
    fn from(value: T) -> Self {
        Scoped(Box::new(value))
    }
}

impl<T: ?Sized> Deref for Scoped<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized> DerefMut for Scoped<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Scoped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a scoped factory gets for one handler call.
#[derive(Debug, Default)]
pub struct Scope {
    releaser: Option<EventReleaser>,
    /// `None` for the first message of a dispatch until something asks for
    /// its ids: most dispatches never need them.
    context: Option<MessageContext>,
    /// The stored event this call delivers, if it is one.
    delivery: Option<crate::delivery::Delivery>,
    /// Whether the call is a query's handler's: its releaser takes no event.
    reads_only: bool,
}

impl Scope {
    /// A scope outside any bus (for calling a factory in a test).
    pub fn new() -> Self {
        Scope::with_context(None)
    }

    /// The scope of one handler call on the message `context` describes
    /// (`None`: the first message of a dispatch, ids made on demand).
    #[inline]
    pub(crate) fn with_context(context: Option<MessageContext>) -> Self {
        Scope {
            releaser: None,
            context,
            delivery: None,
            reads_only: false,
        }
    }

    /// The scope of one call of a command's or a query's handler.
    #[inline]
    pub(crate) fn request(
        context: Option<MessageContext>,
        kind: crate::message::MessageKind,
    ) -> Self {
        Scope {
            reads_only: kind == crate::message::MessageKind::Query,
            ..Scope::with_context(context)
        }
    }

    /// The scope of one call delivering a stored event (see
    /// [`Delivery`](crate::delivery::Delivery)).
    pub(crate) fn delivering(
        context: MessageContext,
        delivery: Option<crate::delivery::Delivery>,
    ) -> Self {
        Scope {
            releaser: None,
            context: Some(context),
            delivery,
            reads_only: false,
        }
    }

    /// The message this call handles: its ids and the attempt number.
    #[inline]
    pub fn context(&mut self) -> MessageContext {
        *self.context.get_or_insert_with(MessageContext::root)
    }

    /// The ids of the call's message, if made yet: where a dispatch's span
    /// makes them when it records them.
    #[inline(always)]
    pub(crate) fn context_slot(&mut self) -> &mut Option<MessageContext> {
        &mut self.context
    }

    /// Gives the call the ids of its message, unless it has them already
    /// (a scope reused by the handlers of one event).
    #[inline]
    pub(crate) fn ensure_context(&mut self, context: impl FnOnce() -> MessageContext) {
        if self.context.is_none() {
            self.context = Some(context());
        }
    }

    /// This call's event releaser: what is released through it reaches the
    /// bus when the handler returns `Ok`.
    pub fn releaser(&mut self) -> EventReleaser {
        let (delivery, reads_only) = (self.delivery, self.reads_only);
        self.releaser
            .get_or_insert_with(|| EventReleaser::for_call(delivery, reads_only))
            .clone()
    }

    /// Whether anything asked for this call's releaser.
    #[inline]
    pub(crate) fn has_releaser(&self) -> bool {
        self.releaser.is_some()
    }

    /// Closes the releaser (if any was asked for) and takes what it holds.
    #[inline]
    pub(crate) fn finish(self) -> crate::events::Released {
        match self.releaser {
            Some(releaser) => releaser.close(),
            None => crate::events::Released::new(),
        }
    }

    /// [`finish`](Self::finish), with what the call's units of work dropped
    /// without committing, and what a query's call tried to release.
    #[inline]
    pub(crate) fn finish_checked(&mut self) -> crate::events::Closed {
        match self.releaser.take() {
            Some(releaser) => releaser.close_checked(),
            None => Default::default(),
        }
    }

    /// What the call's unit of work said about the delivery it served.
    pub(crate) fn recorded(&self) -> crate::events::Recorded {
        self.releaser
            .as_ref()
            .map_or(crate::events::Recorded::No, EventReleaser::recorded)
    }
}
