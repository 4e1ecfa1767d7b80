//! The queue of one dispatch: the events still to handle, each with its ids,
//! their count against the bound, and the dead letters not yet stored.

use std::collections::VecDeque;

use crate::context::MessageContext;
use crate::dead_letter::DeadLetter;
use crate::error::CascadeLimitError;
use crate::events::PendingEvent;
use crate::message::MessageMeta;
use crate::observer::FailureCause;
use crate::registry::HandlerRegistration;

pub(crate) struct Cascade {
    origin: &'static MessageMeta,
    limit: usize,
    processed: usize,
    /// Created on the first release: most dispatches never need one.
    pub(super) queue: Option<VecDeque<PendingEvent>>,
    /// Dead letters waiting to be handed to the sink.
    pub(super) dead: Vec<DeadLetter>,
    /// Direct calls that failed and are to be retried.
    pub(super) retries: Vec<PendingRetry>,
}

/// A direct event-handler call that failed on its first attempt, whose
/// retry policy gives it more.
pub(super) struct PendingRetry {
    pub(super) handler: &'static HandlerRegistration,
    pub(super) event: PendingEvent,
    pub(super) context: MessageContext,
    pub(super) cause: FailureCause,
}

impl Cascade {
    pub(super) fn new(origin: &'static MessageMeta, limit: usize, processed: usize) -> Self {
        Cascade {
            origin,
            limit,
            processed,
            queue: None,
            dead: Vec::new(),
            retries: Vec::new(),
        }
    }

    /// Queues events released by the handler of the message `cause`
    /// describes, after those already queued.
    #[inline]
    pub(super) fn push_all(&mut self, mut events: Vec<PendingEvent>, cause: &MessageContext) {
        for event in &mut events {
            event.context = Some(cause.caused());
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
            return Err(self.limit_error(meta.name()));
        }
        Ok(())
    }

    /// The next queued event, counted against the bound.
    pub(super) fn next(
        &mut self,
    ) -> Result<Option<(PendingEvent, MessageContext)>, CascadeLimitError> {
        let Some(event) = self.queue.as_mut().and_then(VecDeque::pop_front) else {
            return Ok(None);
        };
        self.count(event.meta())?;
        let context = event.context.unwrap_or_else(|| self.origin_context());
        Ok(Some((event, context)))
    }

    /// The context of an event queued without one (never, in practice).
    #[cold]
    fn origin_context(&self) -> MessageContext {
        MessageContext::root()
    }

    #[cold]
    fn limit_error(&self, current: &'static str) -> CascadeLimitError {
        let mut counts: Vec<(&'static str, usize)> = Vec::new();
        let queued = self.queue.iter().flatten().map(PendingEvent::name);
        for name in std::iter::once(current).chain(queued) {
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
