//! A scheduled message that fell due: read back by its name from the JSON
//! it was kept as, and sent like any other, with the ids it was scheduled
//! with. Unlike [`handle_external`](Bus::handle_external), no stream is
//! checked: the message was written by this application's own scheduler,
//! not received from outside.

use super::Bus;
use crate::bus::InboundError;
use crate::message::MessageKind;
use crate::schedule::ScheduledMessage;

impl Bus {
    /// Sends `message`, due now: a command is dispatched (its
    /// [`context`](ScheduledMessage::context) makes its id an inbound one,
    /// for the unit of work's inbox), an event published. A command's
    /// error is returned; an event's handlers fail alone, as always.
    pub async fn deliver_scheduled(&self, message: &ScheduledMessage) -> Result<(), InboundError> {
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
                (codec.dispatch)(self, message.payload(), context).await
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
                crate::blocking::driving(self.publish_erased(event, meta, context)).await
            }
        }
    }
}
