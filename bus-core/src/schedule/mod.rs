//! The scheduler: a command or an event sent later, at a time or after a
//! delay, durably (with a store that is: `arch-events-sqlx`'s), through
//! the bus with ids of its own and the causation id of what scheduled it.
//!
//! - [`ScheduledMessage`]: the message, written as JSON, with its due time
//!   and its ids.
//! - [`Scheduler`]: keeps scheduled messages, cancels them, and fires the
//!   due ones ([`fire_due`](Scheduler::fire_due)): a command is dispatched
//!   as an inbound message (its id reaches the unit of work's inbox, so a
//!   firing repeated after a crash has its effect once), an event is
//!   published. A command that fails is tried again later, with a growing
//!   pause, and parked after [`MAX_ATTEMPTS`].
//! - The retries an event handler's [`RetryPolicy`](crate::RetryPolicy)
//!   hands off ([`hand_off_waits_over`](crate::RetryPolicy::hand_off_waits_over))
//!   are scheduled messages too ([`ScheduledMessage::handler_retry`]): the
//!   firing calls that one handler, and keeps the message for the next
//!   attempt when the handler fails again ([`Fired::Again`]).
//! - [`Clock`]: what time it is; [`VirtualClock`] in tests, which moves
//!   only when the test says so, firing what falls due on the way
//!   ([`VirtualClock::advance_and_fire`]): no test sleeps.
//! - [`InMemoryScheduler`]: the scheduler of one process and of tests; it
//!   keeps the sagas' state too (a saga's timeouts are scheduled messages,
//!   and change with it). `arch_events_sqlx::SqlScheduler` is the durable
//!   one, on SQLite and PostgreSQL.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use arch_events::schedule::{InMemoryScheduler, ScheduledMessage, Scheduler, VirtualClock};
//! use arch_events::{handler, Bus, Command, Dependencies};
//!
//! #[derive(Debug, serde::Serialize, serde::Deserialize, Command)]
//! #[command(name = "billing.remind", serde)]
//! struct Remind { customer: String }
//!
//! #[handler]
//! fn remind(cmd: Remind, sent: &Mutex<Vec<String>>) -> Result<(), std::convert::Infallible> {
//!     sent.lock().unwrap().push(cmd.customer);
//!     Ok(())
//! }
//!
//! let sent = Arc::new(Mutex::new(Vec::<String>::new()));
//! let bus = Bus::builder().dependencies(Dependencies::new().shared_arc(sent.clone())).build()?;
//! let clock = VirtualClock::new();
//! let scheduler = InMemoryScheduler::with_clock(clock.clone());
//!
//! let due = scheduler.now() + Duration::from_secs(3600);
//! scheduler.schedule(ScheduledMessage::command(&Remind { customer: "ada".into() }, due)?).await?;
//!
//! clock.advance_and_fire(Duration::from_secs(3599), &scheduler, &bus).await?;
//! assert!(sent.lock().unwrap().is_empty(), "not due yet");
//! clock.advance_and_fire(Duration::from_secs(1), &scheduler, &bus).await?;
//! assert_eq!(*sent.lock().unwrap(), ["ada"]);
//! # Ok(())
//! # }
//! ```

mod clock;
mod memory;
mod message;

use std::time::{Duration, SystemTime};

pub use clock::{Clock, SystemClock, VirtualClock};
pub use memory::InMemoryScheduler;
pub(crate) use message::schedulable;
pub use message::{HandlerRetry, SagaRef, ScheduledMessage};

use crate::error::BoxError;
use crate::{Bus, MessageId};

/// How many times a scheduled command that fails is fired before it is
/// parked (kept, and listed, but no longer fired until
/// [`Scheduler::unpark`]): with [`retry_pause`], some 20 minutes of
/// trying.
pub const MAX_ATTEMPTS: u32 = 12;

/// The pause before the firing after the `attempt`th failed one: 1 s,
/// 2 s, 4 s, ... up to 5 minutes.
pub fn retry_pause(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(8)).min(Duration::from_secs(300))
}

/// What firing a scheduled message came to, for its scheduler
/// ([`Bus::deliver_scheduled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[must_use = "a handler retry that failed again must be kept for its next attempt"]
pub enum Fired {
    /// It was sent (a handler's retry: the handler succeeded, or failed
    /// for good and is a dead letter, or the store had its effect
    /// already): it is through.
    Done,
    /// A handler's retry that failed again, and whose policy hands the
    /// next attempt back: keep the message as attempt `attempt`, due
    /// `after` from now ([`ScheduledMessage::next_attempt`]).
    Again {
        /// The number of the next attempt.
        attempt: u32,
        /// How long after now it is due.
        after: Duration,
    },
}

/// Why scheduling, cancelling or firing did not work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// The message type has no JSON codec: it cannot be kept to be sent later.
    #[error(
        "the {kind} `{name}` cannot be scheduled: it is not read from JSON \
         (derive it with `#[{kind}(serde)]` and `serde::Serialize`/`serde::Deserialize`)"
    )]
    NotSerializable {
        /// `command` or `event`.
        kind: crate::MessageKind,
        /// The message's name.
        name: &'static str,
    },
    /// A query: queries are asked, not sent.
    #[error("`{0}` is a query: queries are asked, not scheduled")]
    Query(&'static str),
    /// The message could not be written as JSON.
    #[error("`{name}` could not be written as JSON: {error}")]
    Encode {
        /// The message's name.
        name: &'static str,
        /// What the codec said.
        error: crate::CodecError,
    },
    /// The store failed.
    #[error("the scheduler's store failed: {0}")]
    Store(#[source] BoxError),
}

/// A place that keeps scheduled messages and fires them when due.
///
/// Implemented by [`InMemoryScheduler`] and by arch-events-sqlx's
/// `SqlScheduler` (durable, several processes); the conformance suite
/// holds both to the same contract.
///
/// An implementation of your own keeps each message whole, a handler's
/// retry included ([`ScheduledMessage::handler_retry`]: a store restores
/// it with [`ScheduledMessage::retrying`]), fires through
/// [`Bus::deliver_scheduled`], and keeps a message that comes back
/// [`Fired::Again`] for its next attempt
/// ([`ScheduledMessage::next_attempt`]).
#[crate::async_trait]
pub trait Scheduler: Send + Sync + 'static {
    /// Keeps `message` until it is due. Scheduling one id twice keeps the
    /// first.
    async fn schedule(&self, message: ScheduledMessage) -> Result<(), SchedulerError>;

    /// Cancels the message `id`: `true` if it was waiting or parked (it
    /// will not be fired), `false` if it was fired already, is being fired,
    /// or never was. (A saga's timeout cancelled while it is being fired
    /// reaches the saga, which ignores it: see
    /// [`SagaContext::cancel_timeout`](crate::saga::SagaContext::cancel_timeout).)
    async fn cancel(&self, id: MessageId) -> Result<bool, SchedulerError>;

    /// Fires the parked message `id` again, now, its attempts counted from
    /// zero (its fault was fixed); `false` if no parked message has it.
    async fn unpark(&self, id: MessageId) -> Result<bool, SchedulerError>;

    /// Fires every message due by [`now`](Self::now), earliest first, each
    /// through `bus`; returns how many were fired. A firing that fails is
    /// kept for later (see [`MAX_ATTEMPTS`]).
    async fn fire_due(&self, bus: &Bus) -> Result<usize, SchedulerError>;

    /// When the earliest waiting message falls due, if one waits.
    async fn next_due(&self) -> Result<Option<SystemTime>, SchedulerError>;

    /// The messages waiting, earliest first (parked ones included, with
    /// their last error): for monitoring and tests.
    async fn pending(&self) -> Result<Vec<ScheduledMessage>, SchedulerError>;

    /// The scheduler's time.
    fn now(&self) -> SystemTime;
}

impl VirtualClock {
    /// Moves the clock `by` forward, stopping at each due time on the way
    /// to fire what is due then, through `bus`, in order: a message that a
    /// firing schedules within the span fires in it too, with the clock
    /// reading its due time. Returns how many were fired.
    pub async fn advance_and_fire(
        &self,
        by: Duration,
        scheduler: &dyn Scheduler,
        bus: &Bus,
    ) -> Result<usize, SchedulerError> {
        let target = self.now() + by;
        let mut fired = 0;
        loop {
            match scheduler.next_due().await? {
                Some(due) if due <= target => {
                    if due > self.now() {
                        self.set(due);
                    }
                    let now = scheduler.fire_due(bus).await?;
                    if now == 0 {
                        // Only parked or retried messages are due: they
                        // wait for their own later time.
                        break;
                    }
                    fired += now;
                }
                _ => break,
            }
        }
        self.set(target);
        fired += scheduler.fire_due(bus).await?;
        Ok(fired)
    }
}
