//! The errors a caller of the bus sees.

use std::fmt;

use crate::message::{Location, MessageKind};

/// Any error, boxed: what an event handler's error becomes once erased.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why [`Bus::dispatch`](crate::Bus::dispatch) (or `query`, `publish`) did not
/// return the handler's output.
///
/// `E` is the handler's own error type, so a caller matches on its domain
/// error directly:
///
/// ```
/// # use arch_events::DispatchError;
/// #[derive(Debug, thiserror::Error)]
/// enum AllocError { #[error("Invalid sku {0}")] InvalidSku(String) }
///
/// fn status(result: Result<String, DispatchError<AllocError>>) -> u16 {
///     match result {
///         Ok(_) => 202,
///         Err(DispatchError::Handler(AllocError::InvalidSku(_))) => 400,
///         Err(_) => 500,
///     }
/// }
/// assert_eq!(status(Err(DispatchError::Handler(AllocError::InvalidSku("X".into())))), 400);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError<E> {
    /// The handler returned its error.
    #[error(transparent)]
    Handler(E),
    /// The message has no handler in this bus: it was allowed unhandled at
    /// build, or the bus was built from registrations that do not list it.
    #[error("{kind} `{name}` has no handler in this bus")]
    Unhandled {
        /// Command or query.
        kind: MessageKind,
        /// The message's name.
        name: &'static str,
    },
    /// The chain of events this dispatch caused exceeded the bound set with
    /// [`BusBuilder::max_messages_per_dispatch`](crate::BusBuilder::max_messages_per_dispatch).
    /// (Boxed, like [`Internal`](Self::Internal), to keep the `Result` of every
    /// dispatch small.)
    #[error(transparent)]
    CascadeLimit(Box<CascadeLimitError>),
    /// The bus could not prepare the handler's call (a framework bug: report it).
    #[error(transparent)]
    Internal(Box<InternalError>),
    /// A layer around the handler failed the call: it refused it, or the
    /// call timed out. (The handler's own error is [`Handler`](Self::Handler).)
    #[error("{0}")]
    Pipeline(Box<crate::observer::HandlerFailure>),
    /// The bus is closed ([`Bus::close`](crate::Bus::close) or
    /// [`Bus::shutdown`](crate::Bus::shutdown)): the message was not handled.
    #[error("the bus is shutting down: it accepts no new dispatch")]
    Closed,
    /// The handler did something the bus refuses, that only shows when it
    /// runs (see [`MisuseError`]): a bug in the handler, to fix.
    #[error(transparent)]
    Misuse(Box<MisuseError>),
}

/// A handler did something the bus refuses, that no compile-time or build
/// check could see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MisuseError {
    /// A query's handler released events (through a unit of work it was
    /// given, say): the read side never changes state, so the events were
    /// not handled and the query failed. Release events from a command
    /// handler; a query handler reads a read model.
    #[error(
        "query `{query}`: its handler `{handler}` released {events:?}; a query reads, it never \
         changes state or releases events, so they were not handled: release them from a \
         command handler, and give the query handler a read model instead of a unit of work"
    )]
    QueryReleased {
        /// The query's name.
        query: &'static str,
        /// Its handler's path.
        handler: &'static str,
        /// The names of the events it released, in order.
        events: Vec<&'static str>,
    },
}

impl<E> From<CascadeLimitError> for DispatchError<E> {
    fn from(error: CascadeLimitError) -> Self {
        DispatchError::CascadeLimit(Box::new(error))
    }
}

/// The bus could not prepare a handler's call: a framework bug, to report.
#[derive(Debug, thiserror::Error)]
#[error("handler `{handler}` could not be called: {error}")]
pub struct InternalError {
    /// The handler's path.
    pub handler: &'static str,
    /// What went wrong.
    pub error: BoxError,
}

impl<E> DispatchError<E> {
    /// The handler's own error, if that is what this is.
    pub fn handler_error(&self) -> Option<&E> {
        match self {
            DispatchError::Handler(error) => Some(error),
            _ => None,
        }
    }

    /// Converts the handler's own error, keeping the bus's variants.
    pub fn map_handler<F, T>(self, f: F) -> DispatchError<T>
    where
        F: FnOnce(E) -> T,
    {
        match self {
            DispatchError::Handler(error) => DispatchError::Handler(f(error)),
            DispatchError::Unhandled { kind, name } => DispatchError::Unhandled { kind, name },
            DispatchError::CascadeLimit(error) => DispatchError::CascadeLimit(error),
            DispatchError::Internal(error) => DispatchError::Internal(error),
            DispatchError::Pipeline(failure) => DispatchError::Pipeline(failure),
            DispatchError::Closed => DispatchError::Closed,
            DispatchError::Misuse(misuse) => DispatchError::Misuse(misuse),
        }
    }
}

/// A dispatch processed more messages than its bound: events kept causing events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CascadeLimitError {
    pub(crate) origin: &'static str,
    pub(crate) limit: usize,
    /// Names of the messages still queued when the bound was hit, with counts,
    /// most frequent first.
    pub(crate) pending: Vec<(&'static str, usize)>,
}

impl CascadeLimitError {
    /// The name of the message the dispatch started with.
    pub fn origin(&self) -> &'static str {
        self.origin
    }

    /// The bound that was hit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The messages involved: the one being processed and those still queued,
    /// by name, with how many of each, most frequent first.
    pub fn pending(&self) -> &[(&'static str, usize)] {
        &self.pending
    }
}

impl fmt::Display for CascadeLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dispatch of `{}` stopped after {} messages, the bound set by \
             `max_messages_per_dispatch`: its events keep raising events; messages involved: ",
            self.origin, self.limit
        )?;
        for (i, (name, count)) in self.pending.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{name}` (x{count})")?;
        }
        Ok(())
    }
}

impl std::error::Error for CascadeLimitError {}

/// A handler as it appears in build errors: its path and `file:line`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandlerSite {
    /// The handler's full path.
    pub name: &'static str,
    /// Where it is defined.
    pub location: Location,
}

impl fmt::Display for HandlerSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ({})", self.name, self.location)
    }
}

/// One wiring mistake found while building the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A command or query with no handler; or an event with none, when the
    /// bus requires one for every event
    /// ([`require_event_handlers`](crate::BusBuilder::require_event_handlers)).
    NoHandler {
        /// Command or query.
        kind: MessageKind,
        /// Its name.
        message: &'static str,
        /// Where the type is declared.
        declared_at: Location,
    },
    /// A command or query with two or more handlers.
    MultipleHandlers {
        /// Command or query.
        kind: MessageKind,
        /// Its name.
        message: &'static str,
        /// Every one of its handlers.
        handlers: Vec<HandlerSite>,
    },
    /// A dependency nobody provided, with every handler that asks for it.
    MissingDependency {
        /// The type asked for (`T` in `&T`, `Arc<T>`, `Scoped<T>`).
        type_name: &'static str,
        /// Shared or scoped.
        lifetime: crate::Lifetime,
        /// Every handler that asks for it, sorted.
        handlers: Vec<HandlerSite>,
        /// Set when the type is registered with the other lifetime.
        registered_as: Option<crate::Lifetime>,
        /// What is registered under a near type (the same name inside an
        /// `Arc` or a `Box`, say, or a concrete type where a trait object is
        /// asked for): each type with its lifetime, sorted.
        near: Vec<(&'static str, crate::Lifetime)>,
    },
    /// A `replace_*` of a type that nothing registered with that lifetime:
    /// the replacement (a test's fake, say) would be injected nowhere,
    /// since the handlers ask for another type.
    ReplacesNothing {
        /// The type replaced.
        type_name: &'static str,
        /// Shared or scoped.
        lifetime: crate::Lifetime,
        /// Where the replacement was made.
        at: Location,
    },
    /// A type registered twice with one lifetime, without `replace_*`.
    DuplicateDependency {
        /// The type.
        type_name: &'static str,
        /// Shared or scoped.
        lifetime: crate::Lifetime,
        /// Every place it was registered, in order.
        registered_at: Vec<Location>,
    },
    /// A handler registration that could not say which message it takes
    /// (one not generated by `#[handler]`).
    UndescribedHandler {
        /// The handler.
        handler: HandlerSite,
    },
    /// A per-handler setting from the builder that cannot apply: the
    /// handler is not in this bus, or the setting does not fit it.
    InvalidSetting {
        /// The handler (or the command, for a command's retry).
        handler: HandlerSite,
        /// The builder method, such as `handler_timeout`.
        setting: &'static str,
        /// Why it cannot apply.
        reason: &'static str,
    },
    /// The upcasters of a stored event cannot bring every stored version
    /// to the code's (`#[upcaster]`).
    Upcaster {
        /// The event's name.
        event: &'static str,
        /// What is wrong.
        reason: String,
        /// The upcasters concerned: their paths and locations.
        upcasters: Vec<(&'static str, Location)>,
    },
    /// A saga in the bus that cannot work as written: two saga types share
    /// its name (their instances would mix), or a timeout it handles
    /// cannot be scheduled.
    Saga {
        /// The saga's name.
        saga: &'static str,
        /// Where its `#[saga]` is.
        location: Location,
        /// What is wrong, and the fix.
        reason: String,
    },
    /// Two message types share one name.
    DuplicateName {
        /// The name.
        name: &'static str,
        /// The Rust paths and locations of the types.
        types: Vec<(&'static str, Location)>,
    },
}

impl Problem {
    /// The name the problem is about, used to sort problems.
    fn subject(&self) -> &'static str {
        match self {
            Problem::NoHandler { message, .. } | Problem::MultipleHandlers { message, .. } => {
                message
            }
            Problem::MissingDependency { type_name, .. }
            | Problem::DuplicateDependency { type_name, .. }
            | Problem::ReplacesNothing { type_name, .. } => type_name,
            Problem::UndescribedHandler { handler } | Problem::InvalidSetting { handler, .. } => {
                handler.name
            }
            Problem::DuplicateName { name, .. } => name,
            Problem::Upcaster { event, .. } => event,
            Problem::Saga { saga, .. } => saga,
        }
    }

    pub(crate) fn sort_key(&self) -> (&'static str, String) {
        (self.subject(), self.to_string())
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoHandler {
                kind,
                message,
                declared_at,
            } => write!(
                f,
                "{kind} `{message}` (declared at {declared_at}) has no handler{}: write a \
                 `#[handler]` fn taking it, make sure the crate that holds it is linked \
                 (`use that_crate as _;`), or allow it with `allow_unhandled`",
                if *kind == MessageKind::Event {
                    ", and this bus requires one for every event (`require_event_handlers`)"
                } else {
                    ""
                }
            ),
            Problem::MultipleHandlers {
                kind,
                message,
                handlers,
            } => {
                write!(
                    f,
                    "{kind} `{message}` has {} handlers, and a {kind} takes exactly one:",
                    handlers.len()
                )?;
                for handler in handlers {
                    write!(f, " {handler};")?;
                }
                Ok(())
            }
            Problem::MissingDependency {
                type_name,
                lifetime,
                handlers,
                registered_as,
                near,
            } => {
                write!(
                    f,
                    "the {lifetime} dependency `{type_name}` was not provided; {}:",
                    if handlers.len() == 1 {
                        "1 handler needs it".to_owned()
                    } else {
                        format!("{} handlers need it", handlers.len())
                    }
                )?;
                for handler in handlers {
                    write!(f, " {handler};")?;
                }
                match (registered_as, lifetime) {
                    (Some(other), crate::Lifetime::Scoped) => write!(
                        f,
                        " it is registered as {other}: take it as `&{type_name}` or \
                         `Arc<{type_name}>`, or register it with `{}`",
                        registration(type_name, *lifetime)
                    )?,
                    (Some(other), _) => write!(
                        f,
                        " it is registered as {other}: take it as `Scoped<{type_name}>`, or \
                         register it with `{}`",
                        registration(type_name, *lifetime)
                    )?,
                    (None, _) => write!(
                        f,
                        " register it with `{}`",
                        registration(type_name, *lifetime)
                    )?,
                }
                if !near.is_empty() {
                    f.write_str("; registered:")?;
                    for (i, (near, lifetime)) in near.iter().enumerate() {
                        let sep = if i == 0 { "" } else { "," };
                        write!(f, "{sep} `{near}` ({lifetime})")?;
                    }
                }
                Ok(())
            }
            Problem::DuplicateDependency {
                type_name,
                lifetime,
                registered_at,
            } => {
                write!(
                    f,
                    "the {lifetime} dependency `{type_name}` is registered {} times:",
                    registered_at.len()
                )?;
                for at in registered_at {
                    write!(f, " {at};")?;
                }
                write!(
                    f,
                    " keep one, or say that a later one replaces it with `{}`",
                    replacement(type_name, *lifetime)
                )
            }
            Problem::ReplacesNothing {
                type_name,
                lifetime,
                at,
            } => write!(
                f,
                "the {lifetime} dependency `{type_name}` is replaced at {at}, but nothing \
                 registered it: no handler would get the replacement; replace the type the \
                 handlers ask for (a trait object: `{}`), or register it with `{}`",
                replacement(type_name, *lifetime),
                registration(type_name, *lifetime)
            ),
            Problem::Upcaster {
                event,
                reason,
                upcasters,
            } => {
                write!(f, "event `{event}`: {reason}")?;
                if !upcasters.is_empty() {
                    f.write_str("; its upcasters:")?;
                }
                for (path, at) in upcasters {
                    write!(f, " `{path}` ({at});")?;
                }
                Ok(())
            }
            Problem::UndescribedHandler { handler } => write!(
                f,
                "handler {handler} could not say which message it takes: register handlers with `#[handler]`"
            ),
            Problem::InvalidSetting {
                handler,
                setting,
                reason,
            } => write!(f, "`{setting}` for {handler} cannot apply: {reason}"),
            Problem::DuplicateName { name, types } => {
                write!(f, "{} message types share the name `{name}`:", types.len())?;
                for (path, location) in types {
                    write!(f, " `{path}` ({location});")?;
                }
                f.write_str(" give each a distinct `name = \"...\"`")
            }
            Problem::Saga {
                saga,
                location,
                reason,
            } => write!(f, "saga `{saga}` (at {location}): {reason}"),
        }
    }
}

/// How to register a dependency of this type and lifetime, in its exact
/// generic form: a trait object goes through `shared_arc` / `scoped_boxed`.
fn registration(type_name: &str, lifetime: crate::Lifetime) -> String {
    let is_dyn = type_name.starts_with("dyn ");
    match (lifetime, is_dyn) {
        (crate::Lifetime::Scoped, true) => {
            format!("Dependencies::scoped_boxed::<{type_name}, _>(|scope| Box::new(value))")
        }
        (crate::Lifetime::Scoped, false) => "Dependencies::scoped(|scope| value)".to_owned(),
        (_, true) => format!("Dependencies::shared_arc::<{type_name}>(Arc::new(value))"),
        (_, false) => {
            "Dependencies::shared(value)` (or, for an `Arc` you hold, `shared_arc(arc)".to_owned()
        }
    }
}

/// How to replace a dependency of this type and lifetime, in its exact
/// generic form.
fn replacement(type_name: &str, lifetime: crate::Lifetime) -> String {
    let is_dyn = type_name.starts_with("dyn ");
    match (lifetime, is_dyn) {
        (crate::Lifetime::Scoped, true) => {
            format!("Dependencies::replace_scoped_boxed::<{type_name}, _>(|scope| Box::new(value))")
        }
        (crate::Lifetime::Scoped, false) => {
            "Dependencies::replace_scoped(|scope| value)".to_owned()
        }
        (_, true) => format!("Dependencies::replace_shared_arc::<{type_name}>(Arc::new(value))"),
        (_, false) => "Dependencies::replace_shared(value)".to_owned(),
    }
}

/// The bus refused to start: every wiring problem found, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    problems: Vec<Problem>,
}

impl BuildError {
    pub(crate) fn new(mut problems: Vec<Problem>) -> Self {
        problems.sort_by_cached_key(Problem::sort_key);
        // A setting named twice for a handler outside the bus says so once.
        problems.dedup();
        BuildError { problems }
    }

    /// Every problem, sorted by the message or handler it is about.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "the bus cannot start: {n} wiring problem{}",
            if n == 1 { "" } else { "s" }
        )?;
        for (i, problem) in self.problems.iter().enumerate() {
            write!(f, "\n  {}. {problem}", i + 1)?;
        }
        Ok(())
    }
}

impl std::error::Error for BuildError {}
