//! A scheduled message that fell due: read back by its name from the JSON
//! it was kept as, and sent like any other, with the ids it was scheduled
//! with; or, for a handler's retry, that one handler called again. Unlike
//! [`handle_external`](Bus::handle_external), no stream is checked: the
//! message was written by this application's own scheduler, not received
//! from outside.

use super::replay::{Again, ReplayError};
use super::Bus;
use crate::bus::InboundError;
use crate::message::MessageKind;
use crate::schedule::{Fired, HandlerRetry, ScheduledMessage};

impl Bus {
    /// Sends `message`, due now: a command is dispatched (its
    /// [`context`](ScheduledMessage::context) makes its id an inbound one,
    /// for the unit of work's inbox), an event published. A command's
    /// error is returned; an event's handlers fail alone, as always.
    ///
    /// A [handler's retry](ScheduledMessage::handler_retry) calls that
    /// handler again, with the event's ids and its attempt number; a unit
    /// of work records the message's id in its inbox (see
    /// [`Delivery::scheduled`](crate::delivery::Delivery::scheduled)). When
    /// it fails again and its policy hands the next attempt off, that
    /// attempt is returned ([`Fired::Again`]): the scheduler keeps the
    /// message for it. Spent, it is a dead letter, and the firing is done.
    pub async fn deliver_scheduled(
        &self,
        message: &ScheduledMessage,
    ) -> Result<Fired, InboundError> {
        let meta = self
            .inner
            .names()
            .messages
            .get(message.name())
            .copied()
            .ok_or_else(|| InboundError::UnknownName(message.name().to_owned()))?;
        let context = message.context();
        match meta.kind() {
            MessageKind::Query => Err(InboundError::Query(meta.name())),
            MessageKind::Command => {
                let codec = meta
                    .command_codec()
                    .ok_or(InboundError::NotSerializable(meta.name()))?;
                (codec.dispatch)(self, message.payload(), context).await?;
                Ok(Fired::Done)
            }
            MessageKind::Event => {
                let codec = meta
                    .codec()
                    .ok_or(InboundError::NotSerializable(meta.name()))?;
                let event =
                    codec
                        .decode(message.payload())
                        .map_err(|error| InboundError::Malformed {
                            name: meta.name(),
                            error,
                        })?;
                let Some(retry) = message.handler_retry() else {
                    crate::blocking::driving(self.publish_erased(event, meta, context)).await?;
                    return Ok(Fired::Done);
                };
                let again = Again::Scheduled(message.id());
                let called = self.call_again(&retry.handler, event, context, again);
                match crate::blocking::driving(called).await {
                    Ok(None) => Ok(Fired::Done),
                    Ok(Some(next)) => Ok(Fired::Again {
                        attempt: next.attempt,
                        after: next.after,
                    }),
                    Err(error) => Err(retry_error(meta.name(), retry, error)),
                }
            }
        }
    }
}

/// What a scheduler hears of a handler's retry that came to nothing.
fn retry_error(name: &'static str, retry: &HandlerRetry, error: ReplayError) -> InboundError {
    match error {
        ReplayError::Closed => InboundError::Closed(name),
        ReplayError::UnknownHandler(_) | ReplayError::WrongEvent { .. } => {
            InboundError::UnknownHandler {
                name,
                handler: retry.handler.clone(),
            }
        }
        other => InboundError::Failed {
            name,
            error: other.to_string(),
        },
    }
}
