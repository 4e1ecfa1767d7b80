//! Inbound messages: a message that arrives on a stream as a name and a JSON
//! payload (from a broker, a queue, a webhook) is read into its registered
//! type and dispatched: a command to its handler, an event to its handlers.
//!
//! The names come from the derives, collected at link time like everything
//! else: a message's external name (`external = "change_batch_quantity"`)
//! or its own name. A message enters only on the stream it declared with
//! `external = "<stream>"`: a command or event without `external` is
//! internal and never enters from outside, a query never does, and a
//! message declared for another stream is refused on this one
//! ([`InboundError::NotDeclared`]), before its payload is read.

use super::cascade::{Cascade, Current, Run};
use super::detach::Stopped;
use super::invocation::dispatch_span;
use super::Bus;
use crate::call::BoxFuture;
use crate::codec::{self, CodecError, JsonCommand};
use crate::context::MessageContext;
use crate::message::{Command, MessageKind, MessageMeta};

/// Why an inbound message was not handled. Every variant says whether
/// trying it again could help ([`is_retryable`](Self::is_retryable)); a
/// consumer sends the others to its dead letters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboundError {
    /// No message of this bus has this name.
    #[error("no message is named `{0}` in this bus")]
    UnknownName(String),
    /// The message type cannot be read from JSON.
    #[error("`{0}` cannot be read from JSON: derive it with `serde` or `external`")]
    NotSerializable(&'static str),
    /// A query arrived: the read side is not driven by messages.
    #[error("`{0}` is a query: queries are asked, not sent")]
    Query(&'static str),
    /// The message is not declared for the stream it arrived on: it is
    /// internal (no `external = "..."`), or declared for another stream.
    /// Refused before its payload is read.
    #[error("the {kind} `{name}` {}: not accepted on stream `{stream}`", declared_for(.declared))]
    NotDeclared {
        /// The message's name.
        name: &'static str,
        /// Command or event.
        kind: MessageKind,
        /// The stream it arrived on.
        stream: String,
        /// The stream it is declared for (`external = "..."`), `None` for an
        /// internal message.
        declared: Option<&'static str>,
    },
    /// The payload is larger than the consumer accepts: refused unread.
    #[error("a payload of {size} bytes is over the limit of {limit} bytes: not read")]
    TooLarge {
        /// The payload's size, in bytes.
        size: usize,
        /// The largest payload accepted, in bytes.
        limit: usize,
    },
    /// The payload is not the message.
    #[error("malformed `{name}`: {error}")]
    Malformed {
        /// The message's name.
        name: &'static str,
        /// What the codec said.
        error: CodecError,
    },
    /// The command's handler returned its error (or the bus failed the
    /// dispatch); its text.
    #[error("`{name}` failed: {error}")]
    Failed {
        /// The message's name.
        name: &'static str,
        /// The error's text.
        error: String,
    },
    /// A scheduled retry of a handler this bus does not have (a newer or
    /// older build scheduled it): another instance may have it.
    #[error("no handler `{handler}` of `{name}` in this bus")]
    UnknownHandler {
        /// The event's name.
        name: &'static str,
        /// The handler's path.
        handler: String,
    },
    /// The bus is closed: nothing was handled; another instance may take it.
    #[error("the bus is shutting down: `{0}` was not handled")]
    Closed(&'static str),
}

fn declared_for(declared: &Option<&'static str>) -> String {
    match declared {
        Some(stream) => format!("is declared for stream `{stream}`"),
        None => "is internal (declared for no stream: no `external = \"...\"`)".to_owned(),
    }
}

impl InboundError {
    /// Whether the same message may succeed later (the bus was closed): the
    /// others will fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        matches!(self, InboundError::Closed(_))
    }
}

/// Reads one command type from JSON and dispatches it; what
/// `#[command(serde)]` generates.
pub struct CommandCodec {
    pub(super) dispatch:
        for<'a> fn(&'a Bus, &'a str, MessageContext) -> BoxFuture<'a, Result<(), InboundError>>,
}

impl CommandCodec {
    /// The JSON codec of `C`.
    #[doc(hidden)]
    pub const fn json<C>() -> Self
    where
        C: Command + JsonCommand,
    {
        CommandCodec {
            dispatch: dispatch_json::<C>,
        }
    }
}

impl std::fmt::Debug for CommandCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommandCodec(json)")
    }
}

fn dispatch_json<'a, C>(
    bus: &'a Bus,
    json: &'a str,
    context: MessageContext,
) -> BoxFuture<'a, Result<(), InboundError>>
where
    C: Command + JsonCommand,
{
    let name = C::meta().name();
    let command = match codec::command_from_json::<C>(json) {
        Ok(command) => command,
        Err(error) => {
            return Box::pin(std::future::ready(Err(InboundError::Malformed {
                name,
                error,
            })))
        }
    };
    Box::pin(async move {
        match bus.dispatch_in(command, context).await {
            Ok(_) => Ok(()),
            Err(crate::error::DispatchError::Closed) => Err(InboundError::Closed(name)),
            Err(error) => Err(InboundError::Failed {
                name,
                error: error.to_string(),
            }),
        }
    })
}

impl Bus {
    /// Handles a message that arrived from outside on `stream` as `name`
    /// (its external name, or its own) and a JSON `payload`: a command is
    /// dispatched, an event published, as part of the flow `context`
    /// continues.
    ///
    /// A message enters only on the stream it declared (invariant 11):
    /// `stream` must be the one its type names with `external = "<stream>"`
    /// ([`MessageMeta::external`]). A command or event without `external` is
    /// internal and never accepted here, a message declared for another
    /// stream is refused ([`InboundError::NotDeclared`]), and so is a query
    /// ([`InboundError::Query`]); all of them before the payload is read.
    /// `stream` is where the caller read the message (a consumer passes its
    /// subscriber's stream, never a field of the message itself).
    ///
    /// ```
    /// use arch_events::{handler, Bus, Command, Event, InboundError, MessageContext};
    /// use std::sync::atomic::{AtomicU32, Ordering};
    ///
    /// #[derive(Debug, serde::Deserialize, Command)]
    /// #[command(name = "stock.change_quantity", external = "change_batch_quantity")]
    /// struct ChangeQuantity { batchref: String, qty: u32 }
    ///
    /// /// An internal event: it can be stored as JSON, never sent from outside.
    /// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
    /// #[event(name = "stock.changed", serde)]
    /// struct Changed { batchref: String }
    ///
    /// #[handler]
    /// fn change_quantity(cmd: ChangeQuantity, last: &AtomicU32) -> Result<(), std::convert::Infallible> {
    ///     last.store(cmd.qty, Ordering::SeqCst);
    ///     Ok(())
    /// }
    ///
    /// let last = std::sync::Arc::new(AtomicU32::new(0));
    /// let bus = Bus::builder()
    ///     .dependencies(arch_events::Dependencies::new().shared_arc(last.clone()))
    ///     .build()
    ///     .unwrap();
    /// let on = |name, payload| {
    ///     futures::executor::block_on(bus.handle_external("change_batch_quantity", name, payload, MessageContext::root()))
    /// };
    /// on("change_batch_quantity", r#"{"batchref": "b1", "qty": 25}"#).unwrap();
    /// assert_eq!(last.load(Ordering::SeqCst), 25);
    ///
    /// let malformed = on("change_batch_quantity", "{}").unwrap_err();
    /// assert!(malformed.to_string().starts_with("malformed `stock.change_quantity`: missing field"));
    ///
    /// let internal = on("stock.changed", r#"{"batchref": "b1"}"#).unwrap_err();
    /// assert!(matches!(internal, InboundError::NotDeclared { declared: None, .. }));
    /// assert_eq!(
    ///     internal.to_string(),
    ///     "the event `stock.changed` is internal (declared for no stream: no `external = \"...\"`): \
    ///      not accepted on stream `change_batch_quantity`"
    /// );
    ///
    /// // Declared for `change_batch_quantity`, refused anywhere else.
    /// let elsewhere = futures::executor::block_on(bus.handle_external(
    ///     "line_allocated", "change_batch_quantity", r#"{"batchref": "b1", "qty": 3}"#, MessageContext::root(),
    /// ));
    /// assert!(matches!(elsewhere, Err(InboundError::NotDeclared { declared: Some("change_batch_quantity"), .. })));
    /// assert_eq!(last.load(Ordering::SeqCst), 25);
    /// ```
    pub async fn handle_external(
        &self,
        stream: &str,
        name: &str,
        payload: &str,
        context: MessageContext,
    ) -> Result<(), InboundError> {
        let meta = self
            .inner
            .names()
            .inbound(name)
            .ok_or_else(|| InboundError::UnknownName(name.to_owned()))?;
        if meta.kind() == MessageKind::Query {
            return Err(InboundError::Query(meta.name()));
        }
        if meta.external() != Some(stream) {
            return Err(InboundError::NotDeclared {
                name: meta.name(),
                kind: meta.kind(),
                stream: stream.to_owned(),
                declared: meta.external(),
            });
        }
        match meta.kind() {
            MessageKind::Query => Err(InboundError::Query(meta.name())),
            MessageKind::Command => {
                let codec = meta
                    .command_codec()
                    .ok_or(InboundError::NotSerializable(meta.name()))?;
                (codec.dispatch)(self, payload, context).await
            }
            MessageKind::Event => {
                let codec = meta
                    .codec()
                    .ok_or(InboundError::NotSerializable(meta.name()))?;
                let event = codec
                    .decode(payload)
                    .map_err(|error| InboundError::Malformed {
                        name: meta.name(),
                        error,
                    })?;
                crate::blocking::driving(self.publish_erased(event, meta, context)).await
            }
        }
    }

    /// Publishes an event whose type is known only at run time.
    pub(super) async fn publish_erased(
        &self,
        event: crate::events::PendingEvent,
        meta: &'static MessageMeta,
        context: MessageContext,
    ) -> Result<(), InboundError> {
        let Ok(_in_flight) = self.inner.lifecycle.enter() else {
            return Err(InboundError::Closed(meta.name()));
        };
        let span = dispatch_span(meta, "event", &mut Some(context));
        let cascade = Cascade::new(meta, self.inner.max_messages, 1);
        let event = event.with_context(context);
        let run = Run::starting_with(cascade, Current::new(event, context));
        self.run_to_end(run, span)
            .await
            .map_err(|stopped| InboundError::Failed {
                name: meta.name(),
                error: match stopped {
                    Stopped::Limit(error) => error.to_string(),
                    Stopped::Dropped => Stopped::DROPPED.to_owned(),
                },
            })
    }
}
