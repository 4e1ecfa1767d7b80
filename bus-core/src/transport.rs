//! Brokers behind one small contract: publish a message to a stream; read
//! deliveries as a consumer group member, acknowledge each one, or send it
//! to the stream's dead letters with the reason.
//!
//! The contract is at-least-once, with a unique id per message, which is
//! what Redis Streams (consumer groups, `XACK`, claiming stale pending
//! entries), Kafka (consumer groups, committed offsets) and NATS JetStream
//! (durable consumers, `ack`) all give; a consumer that must not handle a
//! message twice keeps the ids it handled (an inbox).
//!
//! [`Consumer`] runs a [`Subscriber`]'s deliveries through
//! [`Bus::handle_external`], on the subscriber's own stream: handled →
//! acknowledged; not declared for that stream, too large, malformed,
//! unknown or failed for good → dead-lettered with the reason, then
//! acknowledged, so it never blocks the messages behind it; the bus shutting
//! down → left unacknowledged, for another consumer to claim.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::bus::Bus;
use crate::context::{MessageContext, MessageId};
use crate::error::BoxError;
use crate::events::PendingEvent;
use crate::InboundError;

/// One message for a broker: a stream (or topic, or subject), the message's
/// name, its JSON payload and its ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Unique per message: a consumer's inbox key.
    pub id: MessageId,
    /// Where it goes.
    pub stream: String,
    /// The message's name (its type, for the consumer).
    pub name: String,
    /// The message as JSON.
    pub payload: String,
    /// The flow it belongs to.
    pub correlation_id: MessageId,
    /// The message that caused it.
    pub causation_id: Option<MessageId>,
}

impl OutboundMessage {
    /// The outbound form of an external event (derived with
    /// `external = "..."`) raised in the flow `context` belongs to; `None`
    /// for an internal event. Its name is its stream, which is how a
    /// consumer finds its type.
    ///
    /// ```
    /// use arch_events::transport::OutboundMessage;
    /// use arch_events::{Event, MessageContext, PendingEvent};
    ///
    /// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
    /// #[event(name = "allocation.allocated", external = "line_allocated")]
    /// struct Allocated { orderid: String }
    ///
    /// let flow = MessageContext::root();
    /// let event = PendingEvent::new(Allocated { orderid: "o1".into() });
    /// let message = OutboundMessage::from_event(&event, &flow).unwrap().unwrap();
    /// assert_eq!((message.stream.as_str(), message.payload.as_str()), ("line_allocated", r#"{"orderid":"o1"}"#));
    /// assert_eq!(message.correlation_id, flow.correlation_id());
    /// ```
    pub fn from_event(
        event: &PendingEvent,
        context: &MessageContext,
    ) -> Option<Result<Self, crate::CodecError>> {
        let stream = event.meta().external()?;
        let payload = match event.to_json()? {
            Ok(payload) => payload,
            Err(error) => return Some(Err(error)),
        };
        Some(Ok(OutboundMessage {
            id: MessageId::new(),
            stream: stream.to_owned(),
            name: stream.to_owned(),
            payload,
            correlation_id: context.correlation_id(),
            causation_id: Some(context.message_id()),
        }))
    }
}

/// One message as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message (as published).
    pub message: OutboundMessage,
    /// The broker's handle on this delivery (an entry id, an offset).
    pub receipt: String,
    /// How many times it was delivered before this one.
    pub redeliveries: u32,
}

/// A broker failed, or gave something that is not a message.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {source}")]
pub struct TransportError {
    /// What was being done.
    pub operation: &'static str,
    /// The broker's error.
    #[source]
    pub source: BoxError,
}

impl TransportError {
    /// A failed `operation`.
    pub fn new(operation: &'static str, source: impl Into<BoxError>) -> Self {
        TransportError {
            operation,
            source: source.into(),
        }
    }
}

/// Publishes messages to a broker.
#[crate::async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one message; `Ok` once the broker has it.
    async fn publish(&self, message: &OutboundMessage) -> Result<(), TransportError>;

    /// Publishes `messages` in order; `Ok` once the broker has them all. On
    /// a failure, says how many of the first ones the broker has for sure
    /// (the rest may or may not have arrived: a relay sends them again, and
    /// the consumers' inboxes drop the copies).
    ///
    /// The default publishes one message at a time; a broker client that can
    /// pipeline (Redis) sends them in one round trip.
    async fn publish_batch(&self, messages: &[OutboundMessage]) -> Result<(), BatchError> {
        for (published, message) in messages.iter().enumerate() {
            if let Err(error) = self.publish(message).await {
                return Err(BatchError { published, error });
            }
        }
        Ok(())
    }
}

/// A batch was published in part: how many of its first messages the broker
/// has for sure, and why the rest failed.
#[derive(Debug, thiserror::Error)]
#[error("{error} (after {published} message(s) of the batch)")]
pub struct BatchError {
    /// How many of the batch's first messages the broker has.
    pub published: usize,
    /// Why publishing stopped.
    #[source]
    pub error: TransportError,
}

/// Reads a stream as one member of a consumer group.
#[crate::async_trait]
pub trait Subscriber: Send + 'static {
    /// The stream this subscriber reads: the one a [`Consumer`] checks each
    /// message against (a message enters only on the stream its type
    /// declares with `external = "..."`). It is the subscriber's own
    /// configuration, never read from a delivery (whose fields whoever can
    /// write to the stream controls).
    fn stream(&self) -> &str;

    /// The next deliveries (at most `max`), waiting up to `wait` for one:
    /// new ones, and ones another member took but never acknowledged.
    async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, TransportError>;

    /// The delivery was handled: it is not delivered again.
    async fn ack(&mut self, delivery: &Delivery) -> Result<(), TransportError>;

    /// Keeps the delivery in the stream's dead letters with `reason` (the
    /// caller acknowledges it next).
    async fn dead_letter(
        &mut self,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), TransportError>;
}

/// The ids of the inbound messages a service already handled, kept by its
/// units of work in the transaction of each message's effects (see
/// [`MessageContext::inbound`]).
#[crate::async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// Whether the message with this id was handled.
    async fn handled(&self, id: MessageId) -> Result<bool, TransportError>;
}

/// What a consumer did with one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handled {
    /// Dispatched and acknowledged.
    Done,
    /// Handled before (the inbox has its id): acknowledged, not dispatched.
    Duplicate,
    /// Dead-lettered with this reason, then acknowledged.
    DeadLettered(String),
    /// Left unacknowledged (the bus is shutting down): delivered again later.
    Left,
}

/// Runs a subscriber's deliveries through a bus.
///
/// A stream is an entrance: a consumer dispatches only the messages
/// declared for the stream it reads ([`Subscriber::stream`]), that is the
/// commands and events derived with `external = "<that stream>"`. Anything
/// else is refused and dead-lettered with the reason, before its payload is
/// read: an internal command or event (no `external`, even with `serde`), a
/// message declared for another stream, a query, an unknown name; so is a
/// payload larger than [`max_payload`](Self::max_payload) (64 KiB unless
/// set), unread. A refused message is acknowledged after it is
/// dead-lettered, like a malformed one: it never blocks the messages behind
/// it.
///
/// ```
/// use arch_events::transport::{Consumer, Handled, InMemoryBroker, OutboundMessage, Publisher};
/// use arch_events::{handler, Bus, Command, Event, MessageId};
///
/// #[derive(Debug, serde::Deserialize, Command)]
/// #[command(name = "stock.change_quantity", external = "change_batch_quantity")]
/// struct ChangeQuantity { batchref: String, qty: u32 }
///
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
/// #[event(name = "stock.changed", serde)]
/// struct Changed { batchref: String }
///
/// #[handler]
/// fn change_quantity(_: ChangeQuantity) -> Result<(), std::convert::Infallible> { Ok(()) }
///
/// let broker = InMemoryBroker::default();
/// let send = |name: &str, payload: &str| {
///     let id = MessageId::new();
///     let message = OutboundMessage {
///         id, stream: "change_batch_quantity".into(), name: name.into(), payload: payload.into(),
///         correlation_id: id, causation_id: None,
///     };
///     futures::executor::block_on(broker.publish(&message)).unwrap();
/// };
/// send("stock.changed", r#"{"batchref": "b1"}"#); // internal: refused
/// send("change_batch_quantity", r#"{"batchref": "b1", "qty": 3}"#);
///
/// let bus = Bus::builder().build().unwrap();
/// let mut consumer = Consumer::new(bus, broker.subscribe("change_batch_quantity"));
/// let handled = futures::executor::block_on(consumer.poll_once()).unwrap();
/// assert!(matches!(&handled[0], Handled::DeadLettered(reason) if reason.contains("is internal")));
/// assert_eq!(handled[1], Handled::Done);
/// ```
pub struct Consumer<S> {
    bus: Bus,
    subscriber: S,
    inbox: Option<Arc<dyn Inbox>>,
    batch: usize,
    wait: Duration,
    max_payload: usize,
}

impl<S: Subscriber> Consumer<S> {
    /// The largest payload a consumer reads unless told otherwise
    /// ([`max_payload`](Self::max_payload)): 64 KiB.
    pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

    /// A consumer of `subscriber`'s deliveries on `bus`.
    pub fn new(bus: Bus, subscriber: S) -> Self {
        Consumer {
            bus,
            subscriber,
            inbox: None,
            batch: 16,
            wait: Duration::from_millis(500),
            max_payload: Self::DEFAULT_MAX_PAYLOAD,
        }
    }

    /// Dead-letters, unread, every payload larger than `bytes`
    /// ([`InboundError::TooLarge`]); the default is
    /// [`DEFAULT_MAX_PAYLOAD`](Self::DEFAULT_MAX_PAYLOAD), 64 KiB.
    /// (The broker client has the payload in memory by then: this bounds
    /// what the bus parses and dispatches, not what the broker accepts.)
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Skips (and acknowledges) the messages `inbox` says were handled: an
    /// idempotent consumer.
    pub fn with_inbox(mut self, inbox: Arc<dyn Inbox>) -> Self {
        self.inbox = Some(inbox);
        self
    }

    async fn already_handled(&self, id: MessageId) -> Result<bool, TransportError> {
        match &self.inbox {
            Some(inbox) => inbox.handled(id).await,
            None => Ok(false),
        }
    }

    /// Handles one delivery: see [`Handled`]. The message must be declared
    /// for this consumer's stream (see [`Consumer`]), and its payload no
    /// larger than [`max_payload`](Self::max_payload).
    pub async fn handle(&mut self, delivery: &Delivery) -> Result<Handled, TransportError> {
        let message = &delivery.message;
        if self.already_handled(message.id).await? {
            self.subscriber.ack(delivery).await?;
            return Ok(Handled::Duplicate);
        }
        if message.payload.len() > self.max_payload {
            let refused = InboundError::TooLarge {
                size: message.payload.len(),
                limit: self.max_payload,
            };
            return self.dead_letter(delivery, &refused).await;
        }
        let context =
            MessageContext::inbound(message.id, message.correlation_id, message.causation_id);
        // The subscriber's stream, not the delivery's: the entrance it
        // guards is its own configuration.
        match self
            .bus
            .handle_external(
                self.subscriber.stream(),
                &message.name,
                &message.payload,
                context,
            )
            .await
        {
            Ok(()) => {
                self.subscriber.ack(delivery).await?;
                Ok(Handled::Done)
            }
            Err(error) if error.is_retryable() => Ok(Handled::Left),
            // Refused unread: nobody can have handled it.
            Err(error @ InboundError::NotDeclared { .. }) => {
                self.dead_letter(delivery, &error).await
            }
            // Another consumer handled it meanwhile: this one's commit lost.
            Err(_) if self.already_handled(message.id).await? => {
                self.subscriber.ack(delivery).await?;
                Ok(Handled::Duplicate)
            }
            Err(error) => self.dead_letter(delivery, &error).await,
        }
    }

    /// Keeps `delivery` in the dead letters with `error` as its reason, then
    /// acknowledges it.
    async fn dead_letter(
        &mut self,
        delivery: &Delivery,
        error: &InboundError,
    ) -> Result<Handled, TransportError> {
        let message = &delivery.message;
        // The reason may quote what the sender sent (a name, a field):
        // stored, logged and returned at most `MAX_REASON` bytes of it.
        let reason = Shortened::to(&error.to_string(), MAX_REASON);
        tracing::warn!(
            message_id = %message.id,
            stream = %self.subscriber.stream(),
            name = %Shortened(&message.name),
            %reason,
            "inbound message dead-lettered"
        );
        self.subscriber.dead_letter(delivery, &reason).await?;
        self.subscriber.ack(delivery).await?;
        Ok(Handled::DeadLettered(reason))
    }

    /// Reads and handles one batch: what became of each delivery.
    pub async fn poll_once(&mut self) -> Result<Vec<Handled>, TransportError> {
        let deliveries = self.subscriber.next(self.batch, self.wait).await?;
        let mut handled = Vec::with_capacity(deliveries.len());
        for delivery in &deliveries {
            handled.push(self.handle(delivery).await?);
        }
        Ok(handled)
    }

    /// Consumes until the bus closes. A broker or inbox error (the database
    /// behind the inbox down, say) is logged and retried after a pause, never
    /// the end of the consumer; the deliveries it did not settle stay pending,
    /// to be delivered again.
    pub async fn run(mut self) {
        while !self.bus.is_closed() {
            if let Err(error) = self.poll_once().await {
                tracing::error!(
                    %error,
                    "consumer: deliveries left pending (the broker or the inbox failed); \
                     trying again in 1 s"
                );
                crate::retry::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl<S> std::fmt::Debug for Consumer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("batch", &self.batch)
            .field("wait", &self.wait)
            .field("max_payload", &self.max_payload)
            .finish_non_exhaustive()
    }
}

/// A name from outside, in a log line: at most 200 bytes of it.
struct Shortened<'a>(&'a str);

/// The longest dead-letter reason a [`Consumer`] keeps, in bytes (plus a
/// note of the full length).
const MAX_REASON: usize = 1024;

impl Shortened<'_> {
    /// `text`, cut to at most `max` bytes on a character boundary, with its
    /// full length said when it was cut.
    fn to(text: &str, max: usize) -> String {
        let kept = truncated(text, max);
        if kept.len() == text.len() {
            return text.to_owned();
        }
        format!("{kept}... ({} bytes)", text.len())
    }
}

/// At most `limit` bytes of `text`, cut on a character boundary: how a
/// transport keeps what a sender sent (a name, a reason, a payload) from
/// growing a dead letter or a log line without end.
///
/// ```
/// use arch_events::transport::truncated;
///
/// assert_eq!(truncated("short", 10), "short");
/// assert_eq!(truncated("aébc", 2), "a", "`é` is two bytes: not cut in half");
/// ```
pub fn truncated(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl std::fmt::Display for Shortened<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&Shortened::to(self.0, 200))
    }
}

/// An in-memory broker with one stream per name: for tests and demos.
/// Deliveries stay pending until acknowledged; dead letters are kept per
/// stream.
#[derive(Debug, Clone, Default)]
pub struct InMemoryBroker {
    state: Arc<Mutex<BrokerState>>,
}

#[derive(Debug, Default)]
struct BrokerState {
    streams: std::collections::HashMap<String, VecDeque<(u64, OutboundMessage)>>,
    /// Taken and not acknowledged: `(stream, receipt, message)`.
    pending: Vec<(String, String, OutboundMessage)>,
    dead: Vec<(String, OutboundMessage, String)>,
    next_receipt: u64,
}

impl InMemoryBroker {
    fn state(&self) -> std::sync::MutexGuard<'_, BrokerState> {
        // Every change is a push or a removal: a poisoned lock's data is whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A subscriber to `stream`.
    pub fn subscribe(&self, stream: &str) -> InMemorySubscriber {
        InMemorySubscriber {
            broker: self.clone(),
            stream: stream.to_owned(),
        }
    }

    /// The messages published to `stream` and not yet delivered.
    pub fn waiting(&self, stream: &str) -> Vec<OutboundMessage> {
        self.state()
            .streams
            .get(stream)
            .map(|queue| queue.iter().map(|(_, m)| m.clone()).collect())
            .unwrap_or_default()
    }

    /// The dead letters of `stream`: each message with its reason.
    pub fn dead_letters(&self, stream: &str) -> Vec<(OutboundMessage, String)> {
        self.state()
            .dead
            .iter()
            .filter(|(s, _, _)| s == stream)
            .map(|(_, m, reason)| (m.clone(), reason.clone()))
            .collect()
    }

    /// How many deliveries are taken and not acknowledged.
    pub fn pending(&self) -> usize {
        self.state().pending.len()
    }
}

#[crate::async_trait]
impl Publisher for InMemoryBroker {
    async fn publish(&self, message: &OutboundMessage) -> Result<(), TransportError> {
        let mut state = self.state();
        state.next_receipt += 1;
        let receipt = state.next_receipt;
        state
            .streams
            .entry(message.stream.clone())
            .or_default()
            .push_back((receipt, message.clone()));
        Ok(())
    }
}

/// A subscriber of an [`InMemoryBroker`] stream.
#[derive(Debug)]
pub struct InMemorySubscriber {
    broker: InMemoryBroker,
    stream: String,
}

#[crate::async_trait]
impl Subscriber for InMemorySubscriber {
    fn stream(&self) -> &str {
        &self.stream
    }

    async fn next(&mut self, max: usize, _wait: Duration) -> Result<Vec<Delivery>, TransportError> {
        let mut state = self.broker.state();
        let mut deliveries = Vec::new();
        while deliveries.len() < max {
            let Some((receipt, message)) = state
                .streams
                .get_mut(&self.stream)
                .and_then(VecDeque::pop_front)
            else {
                break;
            };
            let receipt = receipt.to_string();
            state
                .pending
                .push((self.stream.clone(), receipt.clone(), message.clone()));
            deliveries.push(Delivery {
                message,
                receipt,
                redeliveries: 0,
            });
        }
        Ok(deliveries)
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<(), TransportError> {
        self.broker
            .state()
            .pending
            .retain(|(_, receipt, _)| *receipt != delivery.receipt);
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), TransportError> {
        self.broker.state().dead.push((
            self.stream.clone(),
            delivery.message.clone(),
            reason.to_owned(),
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::truncated;

    #[test]
    fn a_text_is_cut_on_a_character_boundary_at_most_at_the_limit() {
        assert_eq!(truncated("short", 10), "short");
        assert_eq!(truncated("exactly", 7), "exactly");
        assert_eq!(truncated("abcdef", 3), "abc");
        // `é` is two bytes (1..3): a cut at 2 falls inside it.
        assert_eq!(truncated("aébc", 2), "a");
        assert_eq!(truncated("aébc", 3), "aé");
        // A four-byte character, cut anywhere inside, is dropped whole.
        for limit in 0..4 {
            assert_eq!(truncated("🦀x", limit), "");
        }
        assert_eq!(truncated("🦀x", 4), "🦀");
        assert_eq!(truncated("", 0), "");
    }
}
