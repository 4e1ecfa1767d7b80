//! Durable delivery: the contract between the bus and a store that keeps
//! every event a unit of work committed until each of its handlers has
//! handled it, so that nothing committed is lost when the process dies
//! half-way through a cascade.
//!
//! The store's side (`arch-events-sqlx` implements it on SQLite and PostgreSQL):
//! - a unit of work writes the events it releases in its commit's
//!   transaction, then hands them to its [`EventReleaser`](crate::EventReleaser)
//!   marked with [`PendingEvent::stored`](crate::PendingEvent::stored): the bus now knows whom to tell
//!   how their delivery went;
//! - the bus tells the store's [`DeliveryLog`] when a handler of a stored
//!   event succeeded ([`handled`](DeliveryLog::handled)) and when every
//!   handler is through ([`delivered`](DeliveryLog::delivered));
//! - a handler that commits a unit of work records its own completion in
//!   that commit instead (see [`Delivery`]), so that its effect happens once;
//! - the store's recovery hands what was never delivered back to the bus
//!   with [`Bus::redeliver`](crate::Bus::redeliver), naming the handlers
//!   that completed before.

use std::fmt;
use std::sync::Arc;

use crate::context::MessageId;
use crate::error::BoxError;

/// One handler call delivering a stored event: which event, which handler,
/// and whether this call is the one that finishes the event's delivery.
///
/// A unit of work finds it on its [`EventReleaser`](crate::EventReleaser)
/// ([`delivery`](crate::EventReleaser::delivery)), records it in its
/// commit's transaction, and once that committed says so with
/// [`EventReleaser::delivery_recorded`](crate::EventReleaser::delivery_recorded):
/// the bus then writes nothing more for this handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub(crate) event: crate::context::MessageId,
    pub(crate) handler: &'static str,
    pub(crate) settles: bool,
    /// The address of the store's log: which store the event is in.
    pub(crate) log: usize,
    pub(crate) record: Record,
}

/// What records a call: the event's delivery, a dead letter's replay, or a
/// scheduled retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record {
    /// The event's delivery to the handler.
    Delivery,
    /// The dead letter, by the store's id, that the call replays.
    Letter(i64),
    /// The scheduled retry, by its id, that the call makes.
    Scheduled(MessageId),
}

impl Delivery {
    /// A delivery of the event `event`, stored with `log`, to `handler`.
    pub(crate) fn new(
        event: MessageId,
        handler: &'static str,
        settles: bool,
        log: &Arc<dyn DeliveryLog>,
    ) -> Self {
        Delivery {
            event,
            handler,
            settles,
            log: log_address(log),
            record: Record::Delivery,
        }
    }

    /// A retry of the event `event`'s handler `handler` that a scheduler
    /// fired: the scheduled message `scheduled`.
    pub(crate) fn scheduled_retry(
        event: MessageId,
        handler: &'static str,
        scheduled: MessageId,
    ) -> Self {
        Delivery {
            event,
            handler,
            settles: false,
            log: 0,
            record: Record::Scheduled(scheduled),
        }
    }

    /// The replay of the dead letter `letter` (the store's id of it) of the
    /// event `event` to `handler`.
    pub(crate) fn replaying(
        event: MessageId,
        handler: &'static str,
        log: &Arc<dyn DeliveryLog>,
        letter: i64,
    ) -> Self {
        Delivery {
            record: Record::Letter(letter),
            ..Delivery::new(event, handler, false, log)
        }
    }

    /// When this call replays a dead letter
    /// ([`Bus::replay_letter`](crate::Bus::replay_letter)): the store's id
    /// of the letter. A unit of work then marks the letter replayed in its
    /// transaction (instead of recording the event's delivery, which ended
    /// when the letter was kept), so that a second replay finds it replayed
    /// and writes nothing.
    pub fn letter(&self) -> Option<i64> {
        match self.record {
            Record::Letter(letter) => Some(letter),
            _ => None,
        }
    }

    /// When this call is a retry that the scheduler fired (its retry
    /// policy handed it off: see
    /// [`RetryPolicy::hand_off_waits_over`](crate::RetryPolicy::hand_off_waits_over)):
    /// the scheduled message's id. A unit of work that knows of it records
    /// that id in its own inbox (instead of the event's delivery, which
    /// ended when the retry was handed off), so that a retry fired again
    /// after a crash has its effect once; one that does not (its
    /// [`is_for`](Self::is_for) says no to a retry) leaves it unrecorded,
    /// and such a retry has its effect at least once.
    pub fn scheduled(&self) -> Option<MessageId> {
        match self.record {
            Record::Scheduled(id) => Some(id),
            _ => None,
        }
    }

    /// Whether the event was stored by the store whose log is `log`: a
    /// unit of work records only the deliveries of its own store's events
    /// (one on another database leaves the record to the bus). `false`
    /// for a [`scheduled`](Self::scheduled) retry, whose record is the
    /// unit of work's own inbox.
    pub fn is_for(&self, log: &Arc<dyn DeliveryLog>) -> bool {
        self.scheduled().is_none() && self.log == log_address(log)
    }

    /// The stored event's id.
    pub fn event(&self) -> MessageId {
        self.event
    }

    /// The handler's path (its name in every record).
    pub fn handler(&self) -> &'static str {
        self.handler
    }

    /// Whether every other handler of the event is through already: when
    /// this call succeeds, the event's delivery is finished, and its record
    /// can go in the same transaction ([`DeliveryLog::delivered`] is then
    /// not called).
    pub fn settles(&self) -> bool {
        self.settles
    }
}

/// Where a store hears how the delivery of its events went.
///
/// Called by the bus for every event marked with
/// [`PendingEvent::stored`](crate::PendingEvent::stored);
/// an error is logged, never fails the dispatch: the store's recovery
/// delivers again what it has no record of (at-least-once).
#[crate::async_trait]
pub trait DeliveryLog: Send + Sync + 'static {
    /// The handler `handler` succeeded on the event `event`, and its call
    /// did not record that itself (see [`Delivery`]).
    async fn handled(&self, event: MessageId, handler: &'static str) -> Result<(), BoxError>;

    /// Every handler of `event` is through: succeeded, or failed for good
    /// and kept as a dead letter.
    async fn delivered(&self, event: MessageId) -> Result<(), BoxError>;

    /// The bus holds the event no longer: its delivery finished, or it was
    /// dropped before that (its command failed after the commit, or the
    /// task running it was torn down). A store's recovery may deliver it
    /// from here on. Called once per stored event, when it is dropped.
    fn let_go(&self, event: MessageId);
}

/// Where a log lives: what tells two stores apart.
pub(crate) fn log_address(log: &Arc<dyn DeliveryLog>) -> usize {
    Arc::as_ptr(log).cast::<()>() as usize
}

/// The store's mark on an event it wrote.
pub(crate) struct Stored {
    pub(crate) log: Arc<dyn DeliveryLog>,
    /// Whether dropping this copy tells the log the bus let the event go:
    /// only the copy in a dispatch's queue does; copies (a retry's, a dead
    /// letter's) do not.
    owner: bool,
}

impl Stored {
    pub(crate) fn new(log: Arc<dyn DeliveryLog>) -> Self {
        Stored { log, owner: true }
    }

    /// The same mark, on a copy of the event.
    pub(crate) fn copy(&self) -> Self {
        Stored {
            log: self.log.clone(),
            owner: false,
        }
    }

    /// Lets go of the event when `id` is known and this is the queue's copy.
    pub(crate) fn let_go(&mut self, id: Option<MessageId>) {
        if std::mem::take(&mut self.owner) {
            if let Some(id) = id {
                self.log.let_go(id);
            }
        }
    }
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stored")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}
