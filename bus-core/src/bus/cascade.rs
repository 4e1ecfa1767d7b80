//! The queue of one dispatch: the events still to handle, each with its ids,
//! their count against the bound, and the dead letters not yet stored; and
//! a [`Run`] of it, which knows how far it got, so that what is left of it
//! can go on elsewhere when the dispatch's caller stops waiting.

use std::collections::VecDeque;

use crate::context::MessageContext;
use crate::dead_letter::DeadLetter;
use crate::error::CascadeLimitError;
use crate::events::{PendingEvent, Released};
use crate::message::MessageMeta;
use crate::observer::FailureCause;
use crate::registry::HandlerRegistration;

pub(crate) struct Cascade {
    origin: &'static MessageMeta,
    limit: usize,
    processed: usize,
    /// Created on the first release: most dispatches never need one.
    pub(super) queue: Option<VecDeque<PendingEvent>>,
    /// Created on the first failure: most dispatches never need it, and an
    /// empty one costs nothing to drop.
    failures: Option<Box<Failures>>,
    /// When the bound stopped the run: the stored event at the queue's
    /// front whose dead letters were made already, so that a stop cut short
    /// at an `.await` (its caller gone) goes on without making them twice.
    pub(super) stopping: Option<crate::context::MessageId>,
}

impl Drop for Cascade {
    /// An emptied queue's buffer is kept for the next releasing call on
    /// this thread: a dispatch whose handlers release events allocates
    /// nothing for them.
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            if queue.is_empty() {
                // An empty queue's buffer, without moving anything.
                crate::events::recycle_buffer(Vec::from(queue));
            }
        }
    }
}

/// A cascade's failures not dealt with yet.
#[derive(Default)]
struct Failures {
    /// Dead letters waiting to be handed to the sink, oldest first.
    dead: VecDeque<DeadLetter>,
    /// Direct calls that failed and are to be retried, oldest first.
    retries: VecDeque<PendingRetry>,
    /// Calls whose retry handed the next attempt to the scheduler, waiting
    /// to be scheduled, oldest first.
    handed: VecDeque<PendingHandOff>,
}

/// An event-handler call whose retry handed its next attempt to the
/// scheduler: kept until the scheduler has it (`hand_off.rs`).
#[cfg_attr(not(feature = "json"), allow(dead_code))]
pub(super) struct PendingHandOff {
    pub(super) handler: &'static HandlerRegistration,
    /// The event, with its store's mark when it was stored.
    pub(super) event: PendingEvent,
    pub(super) context: MessageContext,
    /// Why the last attempt failed.
    pub(super) cause: FailureCause,
    /// The attempts made so far.
    pub(super) attempts: u32,
    /// The attempt handed off.
    pub(super) next: super::invocation::HandOff,
    /// The id it is scheduled under, made when it was handed off.
    pub(super) id: crate::context::MessageId,
}

/// A direct event-handler call that failed on its first attempt, whose
/// retry policy gives it more.
pub(super) struct PendingRetry {
    pub(super) handler: &'static HandlerRegistration,
    pub(super) event: PendingEvent,
    pub(super) context: MessageContext,
    /// Why the first attempt failed; taken when the retry starts, so `None`
    /// for a retry that was interrupted (its dispatch's future dropped).
    pub(super) cause: Option<FailureCause>,
}

/// A cascade being run, and how far the run got: the event being handled
/// and the retry under way are kept here, not in the running future, so
/// that a run cut short at an `.await` can be taken up again.
pub(crate) struct Run {
    pub(super) current: Option<Current>,
    pub(super) retrying: Option<PendingRetry>,
    pub(super) cascade: Cascade,
}

/// The event a run is handling.
pub(crate) struct Current {
    pub(super) event: PendingEvent,
    pub(super) context: MessageContext,
    /// The index, in the event's route, of the next handler to call: the
    /// ones before it are through.
    pub(super) next: usize,
    /// The handlers that handled this (stored) event before: a redelivery
    /// skips them.
    pub(super) skip: Box<[String]>,
    /// Whether one of its handlers failed (then no single call finishes a
    /// stored event's delivery).
    pub(super) failed: bool,
    /// Whether a stored event's delivery is recorded as finished.
    pub(super) settled: bool,
}

impl Current {
    pub(super) fn new(event: PendingEvent, context: MessageContext) -> Self {
        Current {
            event,
            context,
            next: 0,
            skip: Box::default(),
            failed: false,
            settled: false,
        }
    }

    /// Whether the handler named `name` handled this event before.
    pub(super) fn skips(&self, name: &str) -> bool {
        self.skip.iter().any(|skipped| skipped == name)
    }

    /// Whether the event goes the durable way: its store hears how its
    /// delivery goes, and handlers that handled it before are skipped.
    pub(super) fn is_tracked(&self) -> bool {
        self.event.is_stored() || !self.skip.is_empty()
    }
}

impl Run {
    /// A run of what is queued in `cascade`.
    pub(super) fn new(cascade: Cascade) -> Self {
        Run {
            current: None,
            retrying: None,
            cascade,
        }
    }

    /// A run that starts with `event`, not queued (a published event).
    pub(super) fn starting_with(cascade: Cascade, current: Current) -> Self {
        Run {
            current: Some(current),
            retrying: None,
            cascade,
        }
    }

    /// Whether nothing is left to do.
    pub(super) fn is_finished(&self) -> bool {
        self.current.is_none()
            && self.retrying.is_none()
            && !self.cascade.has_retries()
            && !self.cascade.has_dead()
            && self.cascade.queue.as_ref().is_none_or(VecDeque::is_empty)
    }
}

impl Cascade {
    pub(super) fn new(origin: &'static MessageMeta, limit: usize, processed: usize) -> Self {
        Cascade {
            origin,
            limit,
            processed,
            queue: None,
            failures: None,
            stopping: None,
        }
    }

    /// Whether nothing was ever queued or failed: a cascade that holds no
    /// heap memory at all.
    #[inline]
    pub(super) fn is_quiet(&self) -> bool {
        self.queue.is_none() && self.failures.is_none()
    }

    /// Done with a cascade: a quiet one is forgotten rather than dropped.
    /// Its only fields that own memory, `queue` and `failures`, are `None`
    /// then, so forgetting it frees nothing that dropping it would; what it
    /// spares is a call into its drop glue on `publish_blocking`'s hot path.
    #[inline]
    pub(super) fn finish(self) {
        // Every field named: one added later must be weighed here.
        if let Cascade {
            origin: _,
            limit: _,
            processed: _,
            queue: None,
            failures: None,
            stopping: _,
        } = &self
        {
            std::mem::forget(self);
        }
    }

    fn failures(&mut self) -> &mut Failures {
        self.failures.get_or_insert_with(Box::default)
    }

    /// Keeps a failed direct call to be retried after its event's other
    /// handlers.
    pub(super) fn push_retry(&mut self, retry: PendingRetry) {
        self.failures().retries.push_back(retry);
    }

    /// Whether failed calls wait to be retried.
    #[inline]
    pub(super) fn has_retries(&self) -> bool {
        self.failures
            .as_ref()
            .is_some_and(|failures| !failures.retries.is_empty())
    }

    /// The oldest failed call waiting to be retried.
    pub(super) fn next_retry(&mut self) -> Option<PendingRetry> {
        self.failures.as_mut()?.retries.pop_front()
    }

    /// Keeps a dead letter until the sink has it.
    pub(super) fn push_dead(&mut self, letter: DeadLetter) {
        self.failures().dead.push_back(letter);
    }

    /// Keeps a call whose next attempt is the scheduler's until it has it.
    pub(super) fn push_hand_off(&mut self, handed: PendingHandOff) {
        self.failures().handed.push_back(handed);
    }

    /// The oldest call waiting for the scheduler.
    pub(super) fn first_hand_off(&self) -> Option<&PendingHandOff> {
        self.failures.as_ref()?.handed.front()
    }

    /// Takes the oldest call waiting for the scheduler, once it was asked
    /// to keep it.
    pub(super) fn pop_hand_off(&mut self) -> Option<PendingHandOff> {
        self.failures.as_mut()?.handed.pop_front()
    }

    /// Whether dead letters wait for the sink, or calls for the scheduler.
    #[inline]
    pub(super) fn has_dead(&self) -> bool {
        self.failures
            .as_ref()
            .is_some_and(|failures| !failures.dead.is_empty() || !failures.handed.is_empty())
    }

    /// The oldest dead letter waiting for the sink.
    pub(super) fn first_dead(&self) -> Option<&DeadLetter> {
        self.failures.as_ref()?.dead.front()
    }

    /// Takes the oldest dead letter, once the sink was asked to keep it.
    pub(super) fn pop_dead(&mut self) -> Option<DeadLetter> {
        self.failures.as_mut()?.dead.pop_front()
    }

    /// The message the dispatch started with.
    pub(super) fn origin(&self) -> &'static MessageMeta {
        self.origin
    }

    /// How many events wait in the queue.
    pub(super) fn queued(&self) -> usize {
        self.queue.as_ref().map_or(0, VecDeque::len)
    }

    /// Queues events released by the handler of the message `cause`
    /// describes, after those already queued.
    #[inline]
    pub(super) fn push_all(&mut self, mut events: Released, cause: &MessageContext) {
        for event in &mut events {
            // Its own id is made when first read; a unit of work that stored
            // the event gave it its ids already.
            event.caused_by(cause);
        }
        match &mut self.queue {
            Some(queue) => queue.extend(events),
            // The released events' own buffer becomes the queue.
            None => self.queue = Some(VecDeque::from(events)),
        }
    }

    /// Counts one more message against the bound.
    #[inline]
    pub(super) fn count(&mut self, meta: &'static MessageMeta) -> Result<(), CascadeLimitError> {
        self.processed += 1;
        if self.processed > self.limit {
            return Err(self.limit_error(Some(meta.name())));
        }
        Ok(())
    }

    /// The next queued event, counted against the bound. Over it, the
    /// event stays at the front of the queue (where what stops the run
    /// finds it with the rest: a stored one must be dead-lettered, not let
    /// go undelivered), and the error names what was queued. Counted
    /// before it is taken: a large event is moved once, out of the queue.
    #[inline(always)]
    pub(super) fn next(&mut self) -> Result<Option<PendingEvent>, Box<CascadeLimitError>> {
        if self.queue.as_ref().is_none_or(VecDeque::is_empty) {
            return Ok(None);
        }
        self.processed += 1;
        if self.processed > self.limit {
            return Err(self.over_limit());
        }
        Ok(self.pop())
    }

    /// The next queued event, not counted against the bound.
    #[inline(always)]
    pub(super) fn pop(&mut self) -> Option<PendingEvent> {
        self.queue.as_mut()?.pop_front()
    }

    #[cold]
    #[inline(never)]
    fn over_limit(&self) -> Box<CascadeLimitError> {
        // The event over the bound is still at the front of the queue.
        Box::new(self.limit_error(None))
    }

    #[cold]
    fn limit_error(&self, current: Option<&'static str>) -> CascadeLimitError {
        let mut counts: Vec<(&'static str, usize)> = Vec::new();
        let queued = self.queue.iter().flatten().map(PendingEvent::name);
        for name in current.into_iter().chain(queued) {
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, count)) => *count += 1,
                None => counts.push((name, 1)),
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        tracing::error!(
            origin = self.origin.name(),
            limit = self.limit,
            "dispatch stopped: its events keep raising events"
        );
        CascadeLimitError {
            origin: self.origin.name(),
            limit: self.limit,
            pending: counts,
        }
    }
}
