//! Replaying a dead letter: one event through the one handler that failed
//! on it (the others succeeded already), through that handler's layers, and
//! then the events it releases, as in any dispatch.

use std::sync::Arc;

use tracing::Instrument;

use super::cascade::{Cascade, Run};
use super::detach::Stopped;
use super::invocation::{dispatch_span, EventInvocation, HandOff};
use super::routes::CallPath;
use super::Bus;
use crate::context::MessageContext;
use crate::error::CascadeLimitError;
use crate::events::PendingEvent;
use crate::layer::{Layer, Next};
use crate::observer::HandlerFailure;

/// What a handler is called again for.
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "json"), allow(dead_code))]
pub(super) enum Again<'a> {
    /// A replay the caller asked for.
    Replay,
    /// The replay of a store's dead letter: the store's log and the
    /// letter's id.
    Letter(&'a Arc<dyn crate::delivery::DeliveryLog>, i64),
    /// A retry the scheduler fired: the scheduled message's id.
    Scheduled(crate::context::MessageId),
}

/// Why a replay did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// No handler has this path in this bus.
    #[error("no handler `{0}` in this bus")]
    UnknownHandler(String),
    /// The handler takes another event type.
    #[error("handler `{handler}` takes `{expected}`, not `{given}`")]
    WrongEvent {
        /// The handler's path.
        handler: &'static str,
        /// The event it takes.
        expected: &'static str,
        /// The event given.
        given: &'static str,
    },
    /// No event type has this name in this bus.
    #[error("no event type is named `{0}` in this bus")]
    UnknownEvent(String),
    /// The event type was not derived with `#[event(serde)]`.
    #[error("event `{0}` cannot be read from JSON: derive it with `#[event(serde)]`")]
    NotSerializable(&'static str),
    /// The stored JSON does not read back as the event.
    #[error("the stored `{name}` does not read back: {error}")]
    Decode {
        /// The event's name.
        name: &'static str,
        /// What the codec said.
        error: crate::CodecError,
    },
    /// The handler failed again (after the attempts its retry policy makes
    /// in a dispatch: a replay stops at a wait the policy hands off).
    #[error(transparent)]
    Failed(Box<HandlerFailure>),
    /// The events the replayed call released kept raising events.
    #[error(transparent)]
    CascadeLimit(Box<CascadeLimitError>),
    /// The bus is closed.
    #[error("the bus is shutting down: it accepts no new dispatch")]
    Closed,
    /// The task running the events the replayed call released was dropped
    /// before they all ran (its runtime shut down).
    #[error(
        "the task running the rest of the replay was dropped before its end (its runtime shut down)"
    )]
    Interrupted,
}

impl Bus {
    /// Reads a stored event back: `name` is its
    /// [`MessageMeta::name`](crate::registry::MessageMeta::name), `json` what
    /// [`PendingEvent::to_json`] wrote.
    pub fn decode_event(&self, name: &str, json: &str) -> Result<PendingEvent, ReplayError> {
        let meta = self
            .inner
            .names()
            .messages
            .get(name)
            .copied()
            .ok_or_else(|| ReplayError::UnknownEvent(name.to_owned()))?;
        let codec = meta
            .codec()
            .ok_or(ReplayError::NotSerializable(meta.name()))?;
        codec.decode(json).map_err(|error| ReplayError::Decode {
            name: meta.name(),
            error,
        })
    }

    /// Calls the event handler at path `handler` on `event` again (a dead
    /// letter, once its fault is gone), through its layers and retry policy
    /// (the attempts it makes in a dispatch: a replay stops at a wait the
    /// policy hands off to the scheduler); then runs what it releases.
    /// `context` keeps the original ids.
    ///
    /// A failure is returned, not dead-lettered again: the caller still holds
    /// the letter.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use arch_events::{handler, Bus, Dependencies, Event};
    ///
    /// #[derive(Debug, Clone, Event)]
    /// struct Ordered;
    ///
    /// #[handler]
    /// fn send_mail(_: &Ordered, mail_up: &AtomicBool) -> Result<(), std::io::Error> {
    ///     if mail_up.load(Ordering::SeqCst) { Ok(()) } else { Err(std::io::Error::other("mail down")) }
    /// }
    ///
    /// let mail_up = std::sync::Arc::new(AtomicBool::new(false));
    /// let bus = Bus::builder()
    ///     .dependencies(Dependencies::new().shared_arc(mail_up.clone()))
    ///     .build()
    ///     .unwrap();
    /// bus.publish_blocking(Ordered).unwrap();
    /// let letter = bus.dead_letters().unwrap().take().remove(0);
    /// let replay = || bus.replay_blocking(letter.handler(), letter.event().clone(), letter.context());
    ///
    /// assert!(replay().is_err()); // still down
    /// mail_up.store(true, Ordering::SeqCst);
    /// assert!(replay().is_ok());
    /// ```
    pub async fn replay(
        &self,
        handler: &str,
        event: PendingEvent,
        context: MessageContext,
    ) -> Result<(), ReplayError> {
        crate::blocking::driving(self.replay_with(handler, event, context, None)).await
    }

    /// [`replay`](Self::replay) of the dead letter `letter` of the store
    /// whose log is `log`: the call's unit of work, when it is that store's,
    /// marks the letter replayed in its own transaction (see
    /// [`Delivery::letter`](crate::delivery::Delivery::letter)), so that the
    /// handler's effect happens once however often the letter is replayed.
    /// A replay that finds the letter replayed already succeeds, doing
    /// nothing.
    pub async fn replay_letter(
        &self,
        handler: &str,
        event: PendingEvent,
        context: MessageContext,
        log: &Arc<dyn crate::delivery::DeliveryLog>,
        letter: i64,
    ) -> Result<(), ReplayError> {
        crate::blocking::driving(self.replay_with(handler, event, context, Some((log, letter))))
            .await
    }

    async fn replay_with(
        &self,
        handler: &str,
        event: PendingEvent,
        context: MessageContext,
        letter: Option<(&Arc<dyn crate::delivery::DeliveryLog>, i64)>,
    ) -> Result<(), ReplayError> {
        let again = match letter {
            Some((log, letter)) => Again::Letter(log, letter),
            None => Again::Replay,
        };
        self.call_again(handler, event, context, again)
            .await
            .map(|_| ())
    }

    /// Calls the event handler at path `handler` on `event` again, through
    /// its layers and retry policy (numbered from `context`'s attempt on),
    /// then runs what it releases: a dead letter's replay, or a retry the
    /// scheduler fired. A failure of a replay is returned (after the
    /// attempts its policy makes in a dispatch); a scheduled retry's is a
    /// dead letter, unless its policy handed the next attempt off again:
    /// that attempt is returned.
    pub(super) async fn call_again(
        &self,
        handler: &str,
        event: PendingEvent,
        context: MessageContext,
        again: Again<'_>,
    ) -> Result<Option<HandOff>, ReplayError> {
        let _in_flight = self
            .inner
            .lifecycle
            .enter()
            .map_err(|_| ReplayError::Closed)?;
        let (meta, index) = self
            .inner
            .names()
            .handlers
            .get(handler)
            .copied()
            .ok_or_else(|| ReplayError::UnknownHandler(handler.to_owned()))?;
        let bound = self
            .inner
            .routes
            .handlers(meta)
            .get(index)
            .ok_or_else(|| ReplayError::UnknownHandler(handler.to_owned()))?;
        if !std::ptr::eq(event.meta(), meta) {
            return Err(ReplayError::WrongEvent {
                handler: bound.registration.name(),
                expected: meta.name(),
                given: event.name(),
            });
        }
        let kind = match again {
            Again::Scheduled(_) => "scheduled retry",
            _ => "replay",
        };
        let span = dispatch_span(meta, kind, &mut Some(context));
        let name = bound.registration.name();
        let id = context.message_id();
        // A replay's caller waits for its outcome: it makes the attempts a
        // dispatch makes, and stops, failed, where a dispatch would hand
        // an attempt off (the hand-off is dropped).
        let hands_off = self.may_hand_off(meta);
        let delivery = match again {
            Again::Replay => None,
            Again::Letter(log, letter) => {
                Some(crate::delivery::Delivery::replaying(id, name, log, letter))
            }
            Again::Scheduled(scheduled) => Some(crate::delivery::Delivery::scheduled_retry(
                id, name, scheduled,
            )),
        };
        async {
            let invocation = EventInvocation::new(bound, event.as_any(), meta, &self.inner.watch)
                .delivering(delivery)
                .handing_off(hands_off);
            // The handler's retry, when it is its only layer, is kept beside it.
            let retry_only: Vec<Arc<dyn Layer>> = bound
                .retry
                .iter()
                .map(|retry| retry.clone() as Arc<dyn Layer>)
                .collect();
            let layers = match &bound.path {
                CallPath::Layered(pipeline, _) => &pipeline[..],
                _ => &retry_only[..],
            };
            let outcome = Next::new(layers, &invocation)
                .run(invocation.call(context))
                .await;
            let attempts = invocation.attempts();
            match (&outcome, invocation.recorded()) {
                (Err(_), crate::events::Recorded::Duplicate) => {
                    tracing::info!(handler, kind, "made already: nothing done");
                    return Ok(None);
                }
                (Err(cause), crate::events::Recorded::Yes) => {
                    tracing::warn!(
                        handler,
                        %cause,
                        "handler failed after its unit of work committed: counted as done"
                    );
                }
                _ => {}
            }
            let mut cascade = Cascade::new(meta, self.inner.max_messages, 1);
            if let (Err(cause), crate::events::Recorded::No) = (outcome, invocation.recorded()) {
                let Again::Scheduled(_) = again else {
                    return Err(ReplayError::Failed(Box::new(HandlerFailure {
                        message: meta.name(),
                        handler: bound.registration.name(),
                        location: bound.registration.location(),
                        cause,
                        attempts,
                    })));
                };
                let handed = invocation.handed_off();
                if handed.is_none() {
                    // Its attempts are spent: a dead letter, as in a dispatch.
                    let made = context.attempt().saturating_add(attempts).saturating_sub(1);
                    let failed = (cause, made.max(1), None);
                    self.fail(bound, event.clone(), context, failed, &mut cascade);
                    if !self.flush_dead_letters(&mut cascade).await {
                        // Kept nowhere: the scheduler fires it again later.
                        return Err(ReplayError::Interrupted);
                    }
                }
                return Ok(handed);
            }
            tracing::info!(handler, kind, "made");
            let released = invocation.released();
            if !released.is_empty() {
                cascade.push_all(released, &context);
                let run = Run::new(cascade);
                let error = match self.run_to_end(run, tracing::Span::current()).await {
                    Ok(()) => return Ok(None),
                    Err(Stopped::Limit(error)) => ReplayError::CascadeLimit(Box::new(error)),
                    Err(Stopped::Dropped) => ReplayError::Interrupted,
                };
                if let Again::Scheduled(_) = again {
                    // The retry succeeded: firing it again would call the
                    // handler again. What it released and did not run is
                    // lost as in any dispatch (a stored event is
                    // recovered by its store).
                    tracing::warn!(handler, %error, "retry made; the events it released stopped short");
                    return Ok(None);
                }
                return Err(error);
            }
            Ok(None)
        }
        .instrument(span)
        .await
    }

    /// [`replay`](Self::replay) without an async runtime.
    ///
    /// # Panics
    ///
    /// When called on a thread that drives async tasks (it always waits on
    /// a future), like [`dispatch_blocking`](Self::dispatch_blocking).
    #[track_caller]
    pub fn replay_blocking(
        &self,
        handler: &str,
        event: PendingEvent,
        context: MessageContext,
    ) -> Result<(), ReplayError> {
        crate::blocking::Blocking::REPLAY.check();
        crate::executor::block_on(self.replay(handler, event, context))
    }
}
