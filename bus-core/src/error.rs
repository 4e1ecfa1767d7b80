//! The errors a caller of the bus sees.

use std::fmt;

use crate::message::{Kind, Location};

/// Any error, boxed: what an event handler's error becomes once erased.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why [`Bus::dispatch`](crate::Bus::dispatch) (or `query`, `publish`) did not
/// return the handler's output.
///
/// `E` is the handler's own error type, so a caller matches on its domain
/// error directly:
///
/// ```
/// # use bus_core::DispatchError;
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
pub enum DispatchError<E> {
    /// The handler returned its error.
    #[error(transparent)]
    Handler(E),
    /// The message has no handler in this bus: it was allowed unhandled at
    /// build, or the bus was built from registrations that do not list it.
    #[error("{kind} `{name}` has no handler in this bus")]
    Unhandled {
        /// Command or query.
        kind: Kind,
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
    /// A command or query with no handler.
    NoHandler {
        /// Command or query.
        kind: Kind,
        /// Its name.
        message: &'static str,
        /// Where the type is declared.
        declared_at: Location,
    },
    /// A command or query with two or more handlers.
    MultipleHandlers {
        /// Command or query.
        kind: Kind,
        /// Its name.
        message: &'static str,
        /// Every one of its handlers.
        handlers: Vec<HandlerSite>,
    },
    /// A handler parameter whose dependency nobody provided.
    MissingDependency {
        /// The handler.
        handler: HandlerSite,
        /// The type it asks for.
        type_name: &'static str,
        /// Shared or scoped.
        lifetime: crate::Lifetime,
        /// Set when the type is registered with the other lifetime.
        registered_as: Option<crate::Lifetime>,
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
            Problem::MissingDependency { handler, .. }
            | Problem::UndescribedHandler { handler }
            | Problem::InvalidSetting { handler, .. } => handler.name,
            Problem::DuplicateName { name, .. } => name,
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
                "{kind} `{message}` (declared at {declared_at}) has no handler: write a \
                 `#[handler]` fn taking it, make sure the crate that holds it is linked \
                 (`use that_crate as _;`), or allow it with `allow_unhandled`"
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
                handler,
                type_name,
                lifetime,
                registered_as,
            } => {
                write!(
                    f,
                    "handler {handler} needs the {lifetime} dependency `{type_name}`, which was not provided"
                )?;
                match registered_as {
                    Some(other) => write!(
                        f,
                        " (it is registered as {other}: register it with `Dependencies::{lifetime}` \
                         or change the parameter type)"
                    ),
                    None => write!(f, ": register it with `Dependencies::{lifetime}`"),
                }
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
        }
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
