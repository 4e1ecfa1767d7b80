//! Retries handed to the scheduler: an event handler whose retry policy
//! hands off its long waits
//! ([`RetryPolicy::hand_off_waits_over`](crate::RetryPolicy::hand_off_waits_over))
//! leaves its dispatch with its last failure; the dispatch asks the bus's
//! scheduler to keep the next attempt (`flush_hand_offs`, after the event's
//! handlers, before its dead letters), and goes on. The attempt, when due,
//! comes back through [`Bus::deliver_scheduled`] (`scheduled.rs`), which
//! calls that one handler again (`replay.rs`: `call_again`).
//!
//! A stored event's delivery to that handler ends when the scheduler has
//! the attempt (as when a dead letter is kept): from then on the scheduler,
//! durable when the store's is, owns it. A scheduler that refuses it makes
//! the call a dead letter: it is never dropped.

use super::cascade::{Cascade, PendingHandOff};
use super::Bus;
use crate::message::MessageMeta;

/// What keeps the attempts a bus's retries hand off.
#[cfg(feature = "json")]
pub(super) type RetryScheduler = std::sync::Arc<dyn crate::schedule::Scheduler>;

/// Without JSON, nothing can be scheduled: no bus has a scheduler.
#[cfg(not(feature = "json"))]
pub(super) type RetryScheduler = std::convert::Infallible;

impl Bus {
    /// Whether a retry of a handler of `meta` may hand its attempts to the
    /// scheduler: the bus has one, and the event reads back from JSON.
    #[inline]
    pub(super) fn may_hand_off(&self, meta: &'static MessageMeta) -> bool {
        self.inner.scheduler.is_some() && meta.codec().is_some()
    }

    /// Hands the calls whose next attempt is the scheduler's to it, one at
    /// a time (each stays queued until the scheduler answered, and keeps
    /// its id: a run cut short and taken up again schedules it once); a
    /// stored event's store then hears that the handler is through with
    /// it. A call the scheduler refuses is a dead letter.
    pub(super) async fn flush_hand_offs(&self, cascade: &mut Cascade) {
        while let Some(handed) = cascade.first_hand_off() {
            let scheduled = self.schedule_hand_off(handed).await;
            let Some(handed) = cascade.pop_hand_off() else {
                break;
            };
            let name = handed.handler.name();
            let id = handed.context.message_id();
            match scheduled {
                Ok(()) => self.record_handled(&handed.event, id, name).await,
                Err(error) => {
                    tracing::error!(
                        handler = name,
                        message_name = handed.event.name(),
                        message_id = %id,
                        %error,
                        "the scheduler did not take the handler's next attempt: \
                         the call is a dead letter"
                    );
                    let PendingHandOff {
                        handler,
                        event,
                        context,
                        cause,
                        attempts,
                        ..
                    } = handed;
                    let bound = self
                        .inner
                        .routes
                        .handlers(event.meta())
                        .iter()
                        .find(|bound| std::ptr::eq(bound.registration, handler));
                    if let Some(bound) = bound {
                        self.fail(bound, event, context, (cause, attempts, None), cascade);
                    }
                }
            }
        }
    }

    /// Asks the bus's scheduler to keep `handed`'s next attempt.
    #[cfg(feature = "json")]
    async fn schedule_hand_off(&self, handed: &PendingHandOff) -> Result<(), crate::BoxError> {
        let Some(scheduler) = &self.inner.scheduler else {
            return Err("the bus has no scheduler".into());
        };
        let due = scheduler.now() + handed.next.after;
        let message = crate::schedule::ScheduledMessage::retry_of(
            &handed.event,
            &handed.context,
            handed.handler.name(),
            handed.next.attempt,
            due,
            handed.id,
        )?;
        scheduler.schedule(message).await?;
        Ok(())
    }

    /// Without JSON there is no scheduler: never reached (no call can hand
    /// off), and a dead letter if it were.
    #[cfg(not(feature = "json"))]
    async fn schedule_hand_off(&self, _: &PendingHandOff) -> Result<(), crate::BoxError> {
        Err("the bus has no scheduler".into())
    }
}
