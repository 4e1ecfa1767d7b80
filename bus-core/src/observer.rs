//! Reporting event-handler failures to the application.

use std::fmt;
use std::time::Duration;

use crate::error::BoxError;
use crate::message::Location;
use crate::retry::is_permanent;

/// Why a handler call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum FailureCause {
    /// It returned an error.
    Error(BoxError),
    /// It panicked; the payload's text when it was a string.
    Panic(String),
    /// It did not finish within its timeout (an `async fn` handler with a
    /// [`Timeout`](crate::Timeout)).
    TimedOut(Duration),
}

impl FailureCause {
    /// Whether trying again may succeed: everything but an error marked
    /// [`Permanent`](crate::Permanent) (anywhere in its source chain).
    /// Panics and timeouts count as transient.
    pub fn is_transient(&self) -> bool {
        match self {
            FailureCause::Error(error) => !is_permanent(error.as_ref()),
            FailureCause::Panic(_) | FailureCause::TimedOut(_) => true,
        }
    }

    /// The error the handler returned, if it returned one.
    pub fn error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            FailureCause::Error(error) => Some(error.as_ref()),
            _ => None,
        }
    }
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureCause::Error(error) => write!(f, "{error}"),
            FailureCause::Panic(text) => write!(f, "panicked: {text}"),
            FailureCause::TimedOut(after) => write!(f, "timed out after {after:?}"),
        }
    }
}

/// One event-handler call that failed for good (after every attempt its
/// retry policy allowed). The other handlers and the rest of the queue ran
/// regardless.
#[derive(Debug)]
pub struct HandlerFailure {
    pub(crate) message: &'static str,
    pub(crate) handler: &'static str,
    pub(crate) location: Location,
    pub(crate) cause: FailureCause,
    pub(crate) attempts: u32,
}

impl HandlerFailure {
    /// The event's name.
    pub fn message(&self) -> &'static str {
        self.message
    }

    /// The handler's full path.
    pub fn handler(&self) -> &'static str {
        self.handler
    }

    /// Where the handler is defined.
    pub fn location(&self) -> Location {
        self.location
    }

    /// The error or panic.
    pub fn cause(&self) -> &FailureCause {
        &self.cause
    }

    /// Whether the handler panicked (on its last attempt).
    pub fn is_panic(&self) -> bool {
        matches!(self.cause, FailureCause::Panic(_))
    }

    /// How many times the handler was called.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for HandlerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "handler `{}` ({}) of `{}` failed after {} attempt{}: {}",
            self.handler,
            self.location,
            self.message,
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.cause
        )
    }
}

impl std::error::Error for HandlerFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            FailureCause::Error(error) => Some(error.as_ref()),
            _ => None,
        }
    }
}

/// Told about every event-handler call that failed for good; set one with
/// [`BusBuilder::observer`](crate::BusBuilder::observer).
///
/// Any `Fn(&HandlerFailure) + Send + Sync` closure is an observer.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use arch_events::{handler, Bus, Event, HandlerFailure};
///
/// #[derive(Debug, Clone, Event)]
/// struct Ordered;
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("mail server down")]
/// struct MailDown;
///
/// #[handler]
/// fn send_confirmation(_: &Ordered) -> Result<(), MailDown> {
///     Err(MailDown)
/// }
///
/// let failures = Arc::new(Mutex::new(Vec::new()));
/// let seen = failures.clone();
/// let bus = Bus::builder()
///     .observer(move |failure: &HandlerFailure| {
///         seen.lock().unwrap().push(failure.cause().to_string());
///     })
///     .build()
///     .unwrap();
/// bus.publish_blocking(Ordered).unwrap(); // the failure does not fail the publish
/// assert_eq!(*failures.lock().unwrap(), ["mail server down"]);
/// ```
pub trait Observer: Send + Sync + 'static {
    /// Called once per handler call that failed for good (retries
    /// exhausted, or a permanent error), after it was logged.
    fn handler_failed(&self, failure: &HandlerFailure);
}

impl<F> Observer for F
where
    F: Fn(&HandlerFailure) + Send + Sync + 'static,
{
    fn handler_failed(&self, failure: &HandlerFailure) {
        self(failure)
    }
}

/// The text of a panic payload.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
