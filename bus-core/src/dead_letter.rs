//! Dead letters: event-handler calls that failed for good, kept with
//! everything needed to look into them and to try them again.
//!
//! When an event handler's retries are exhausted (or its error is
//! [`Permanent`](crate::Permanent)), the bus hands a [`DeadLetter`] to the
//! bus's [`DeadLetterSink`] before the dispatch returns. The default sink,
//! [`InMemoryDeadLetters`], keeps the most recent ones in memory; a durable
//! sink (a database table) implements the trait and can replay them later
//! with [`Bus::replay`](crate::Bus::replay).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use crate::context::MessageContext;
use crate::error::BoxError;
use crate::events::PendingEvent;
use crate::message::Location;

/// One event-handler call that failed for good.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub(crate) event: PendingEvent,
    pub(crate) handler: &'static str,
    pub(crate) location: Location,
    pub(crate) error: String,
    pub(crate) panicked: bool,
    pub(crate) attempts: u32,
    pub(crate) failed_at: SystemTime,
    pub(crate) context: MessageContext,
}

impl DeadLetter {
    /// The event (a copy of it: the other handlers had it too).
    pub fn event(&self) -> &PendingEvent {
        &self.event
    }

    /// The event's stable name.
    pub fn message_name(&self) -> &'static str {
        self.event.name()
    }

    /// The handler's full path: what [`Bus::replay`](crate::Bus::replay)
    /// takes to call it again.
    pub fn handler(&self) -> &'static str {
        self.handler
    }

    /// Where the handler is defined.
    pub fn location(&self) -> Location {
        self.location
    }

    /// The last attempt's error (or panic) text.
    pub fn error(&self) -> &str {
        &self.error
    }

    /// Whether the last attempt panicked.
    pub fn panicked(&self) -> bool {
        self.panicked
    }

    /// How many times the handler was called.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When the last attempt failed.
    pub fn failed_at(&self) -> SystemTime {
        self.failed_at
    }

    /// The event's ids: its own, the correlation and the causation id.
    pub fn context(&self) -> MessageContext {
        self.context
    }
}

impl fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` of `{}` ({}) failed {} time{}: {}",
            self.handler,
            self.message_name(),
            self.context.message_id(),
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.error
        )
    }
}

/// Where dead letters go. Called once per dead letter, before the dispatch
/// that produced it returns.
///
/// An error from `store` is logged with the whole letter, so that nothing is
/// lost silently even when the store itself is down.
#[crate::async_trait]
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Keeps one dead letter.
    async fn store(&self, letter: &DeadLetter) -> Result<(), BoxError>;

    /// The in-memory sink behind this one, when it is one (lets
    /// [`Bus::dead_letters`](crate::Bus::dead_letters) reach it).
    fn as_in_memory(&self) -> Option<&InMemoryDeadLetters> {
        None
    }
}

/// The default sink: the most recent dead letters, in memory (10,000 unless
/// set with [`with_capacity`](Self::with_capacity)); older ones are dropped
/// and counted.
///
/// ```
/// use arch_events::{handler, Bus, Event};
///
/// #[derive(Debug, Clone, Event)]
/// struct Ordered { id: u32 }
///
/// #[handler]
/// fn always_fails(_: &Ordered) -> Result<(), std::io::Error> {
///     Err(std::io::Error::other("mail server down"))
/// }
///
/// let bus = Bus::builder().build().unwrap();
/// bus.publish_blocking(Ordered { id: 7 }).unwrap();
///
/// let letters = bus.dead_letters().unwrap().letters();
/// assert_eq!(letters.len(), 1);
/// assert_eq!(letters[0].error(), "mail server down");
/// assert_eq!(letters[0].event().downcast_ref::<Ordered>().unwrap().id, 7);
/// ```
pub struct InMemoryDeadLetters {
    capacity: usize,
    state: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    letters: VecDeque<DeadLetter>,
    dropped: u64,
}

/// How many dead letters the default sink keeps.
pub const DEFAULT_DEAD_LETTER_CAPACITY: usize = 10_000;

impl InMemoryDeadLetters {
    /// Keeps the last [`DEFAULT_DEAD_LETTER_CAPACITY`] letters.
    pub fn new() -> Self {
        InMemoryDeadLetters::with_capacity(DEFAULT_DEAD_LETTER_CAPACITY)
    }

    /// Keeps the last `capacity` letters (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        InMemoryDeadLetters {
            capacity: capacity.max(1),
            state: Mutex::new(Kept::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, Kept> {
        // A panic while holding this lock cannot leave `Kept` half-updated
        // (each method makes one push or one take), so a poisoned lock's
        // data is still good.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps a letter, dropping the oldest one when full.
    pub fn push(&self, letter: DeadLetter) {
        let mut state = self.state();
        if state.letters.len() == self.capacity {
            state.letters.pop_front();
            state.dropped += 1;
        }
        state.letters.push_back(letter);
    }

    /// A copy of the letters kept, oldest first.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.state().letters.iter().cloned().collect()
    }

    /// Takes every letter kept, oldest first.
    pub fn take(&self) -> Vec<DeadLetter> {
        self.state().letters.drain(..).collect()
    }

    /// How many letters are kept.
    pub fn len(&self) -> usize {
        self.state().letters.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many old letters were dropped to make room.
    pub fn dropped(&self) -> u64 {
        self.state().dropped
    }
}

impl Default for InMemoryDeadLetters {
    fn default() -> Self {
        InMemoryDeadLetters::new()
    }
}

impl fmt::Debug for InMemoryDeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("InMemoryDeadLetters")
            .field("capacity", &self.capacity)
            .field("kept", &state.letters.len())
            .field("dropped", &state.dropped)
            .finish()
    }
}

#[crate::async_trait]
impl DeadLetterSink for InMemoryDeadLetters {
    async fn store(&self, letter: &DeadLetter) -> Result<(), BoxError> {
        self.push(letter.clone());
        Ok(())
    }

    fn as_in_memory(&self) -> Option<&InMemoryDeadLetters> {
        Some(self)
    }
}
