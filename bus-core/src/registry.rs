//! Link-time registrations: what the derives and `#[handler]` submit, and the
//! list the bus is built from.

use std::fmt;

use crate::call::{AsyncCall, SyncCall};
use crate::inject::DependencyKey;
use crate::message::{Location, Message, MessageMeta};

/// A message type, as submitted by its derive.
#[doc(hidden)]
pub struct MessageEntry(pub &'static MessageMeta);
inventory::collect!(MessageEntry);

/// A handler, as submitted by `#[handler]`.
#[doc(hidden)]
pub struct HandlerEntry(pub &'static HandlerRegistration);
inventory::collect!(HandlerEntry);

/// How the bus calls a handler, with its message and dependencies type-erased.
#[derive(Clone, Copy)]
#[doc(hidden)]
pub enum HandlerFn {
    /// A plain `fn`.
    Sync(SyncCall),
    /// An `async fn`.
    Async(AsyncCall),
}

/// Everything the bus knows about one `#[handler]` function.
pub struct HandlerRegistration {
    name: &'static str,
    location: Location,
    message: fn() -> &'static MessageMeta,
    dependencies: &'static [fn() -> DependencyKey],
    releases: &'static [fn() -> &'static MessageMeta],
    call: HandlerFn,
}

impl HandlerRegistration {
    /// Called from generated code only.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        name: &'static str,
        file: &'static str,
        line: u32,
        message: fn() -> &'static MessageMeta,
        dependencies: &'static [fn() -> DependencyKey],
        releases: &'static [fn() -> &'static MessageMeta],
        call: HandlerFn,
    ) -> Self {
        HandlerRegistration {
            name,
            location: Location { file, line },
            message,
            dependencies,
            releases,
            call,
        }
    }

    /// The handler's full path, `crate::module::function`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Where the handler function is defined.
    pub fn location(&self) -> Location {
        self.location
    }

    /// The message the handler takes.
    pub fn message(&self) -> &'static MessageMeta {
        (self.message)()
    }

    /// The dependencies it asks for, in parameter order.
    pub fn dependencies(&self) -> impl Iterator<Item = DependencyKey> + '_ {
        self.dependencies.iter().map(|key| key())
    }

    /// The events it declared with `#[handler(releases(...))]`.
    pub fn releases(&self) -> impl Iterator<Item = &'static MessageMeta> + '_ {
        self.releases.iter().map(|meta| meta())
    }

    /// Whether it is an `async fn`.
    pub fn is_async(&self) -> bool {
        matches!(self.call, HandlerFn::Async(_))
    }

    pub(crate) fn call(&self) -> HandlerFn {
        self.call
    }
}

impl fmt::Debug for HandlerRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerRegistration")
            .field("name", &self.name)
            .field("location", &self.location)
            .field("message", &self.message().name())
            .field("async", &self.is_async())
            .finish()
    }
}

/// A `#[handler]` function's registration, named by the function's own name.
///
/// `#[handler]` defines, next to `fn allocate`, a type-namespace item
/// `allocate` that implements this trait, so a test can say
/// `Registrations::new().handler::<allocate>()`.
pub trait HandlerDef {
    /// The registration `#[handler]` generated.
    fn registration() -> &'static HandlerRegistration;
}

/// The messages and handlers a bus is built from.
///
/// [`Registrations::linked`] takes everything linked into the binary (what
/// [`BusBuilder::build`](crate::BusBuilder::build) uses by default); an
/// explicit list built with [`Registrations::new`] lets a test build a bus
/// from exactly the handlers it names.
///
/// ```
/// use bus_core::{handler, Bus, Command, Registrations};
///
/// #[derive(Debug, Command)]
/// struct Ping;
///
/// #[handler]
/// fn ping(_: Ping) -> Result<(), std::convert::Infallible> { Ok(()) }
///
/// let bus = Bus::builder()
///     .registrations(Registrations::new().message::<Ping>().handler::<ping>())
///     .build()
///     .unwrap();
/// bus.dispatch_blocking(Ping).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct Registrations {
    pub(crate) messages: Vec<&'static MessageMeta>,
    pub(crate) handlers: Vec<&'static HandlerRegistration>,
}

impl Registrations {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every message and handler linked into this binary.
    pub fn linked() -> Self {
        Registrations {
            messages: inventory::iter::<MessageEntry>().map(|e| e.0).collect(),
            handlers: inventory::iter::<HandlerEntry>().map(|e| e.0).collect(),
        }
    }

    /// Adds a message type (its handlers are not added).
    pub fn message<M: Message>(mut self) -> Self {
        self.messages.push(M::meta());
        self
    }

    /// Adds a `#[handler]` function, by its name.
    pub fn handler<H: HandlerDef>(self) -> Self {
        self.handler_registration(H::registration())
    }

    /// Adds a handler registration.
    pub fn handler_registration(mut self, registration: &'static HandlerRegistration) -> Self {
        self.handlers.push(registration);
        self
    }

    /// The handlers in the list.
    pub fn handlers(&self) -> impl Iterator<Item = &'static HandlerRegistration> + '_ {
        self.handlers.iter().copied()
    }

    /// The message types in the list (not counting those only named by handlers).
    pub fn messages(&self) -> impl Iterator<Item = &'static MessageMeta> + '_ {
        self.messages.iter().copied()
    }
}
