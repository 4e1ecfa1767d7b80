//! What the store holds for one event: the event as JSON, where it stands
//! (stream, version, global position), the ids of the flow that caused it,
//! when it was recorded, its schema version and the user's metadata.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use crate::context::MessageContext;
use crate::events::PendingEvent;
use crate::message::{Event, PersonalFields};
use crate::message_id::MessageId;

use super::error::EventStoreError;
use super::stream::StreamId;

/// Where an event stands in the order of all events: what a catch-up
/// projection checkpoints. Positions only grow in the order readers see
/// events, and a reader that has seen a position will never be shown an
/// event before it.
///
/// It has two parts: the commit's order key (PostgreSQL's transaction id;
/// on SQLite and in memory, where commits are serial, the sequence again)
/// and the event's sequence number. Compare and store the whole position,
/// never the sequence alone: on PostgreSQL a later transaction can take a
/// smaller sequence number than an earlier one (see the guide's chapter on
/// event sourcing).
///
/// ```
/// use arch_events::event_store::Position;
///
/// let position: Position = "812.40".parse().unwrap();
/// assert_eq!(position, Position::new(812, 40));
/// assert_eq!(position.to_string(), "812.40");
/// assert!(Position::START < position);
/// assert!("812".parse::<Position>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Position {
    commit: u64,
    sequence: u64,
}

impl Position {
    /// Before every event: where a new projection starts.
    pub const START: Position = Position {
        commit: 0,
        sequence: 0,
    };

    /// The position with these two parts.
    pub const fn new(commit: u64, sequence: u64) -> Self {
        Position { commit, sequence }
    }

    /// The commit's order key.
    pub const fn commit(self) -> u64 {
        self.commit
    }

    /// The event's sequence number.
    pub const fn sequence(self) -> u64 {
        self.sequence
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.commit, self.sequence)
    }
}

/// Why a text is not a [`Position`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{0}` is not a position: expected `<commit>.<sequence>`, two unsigned integers")]
pub struct ParsePositionError(String);

impl FromStr for Position {
    type Err = ParsePositionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParsePositionError(text.chars().take(64).collect());
        let (commit, sequence) = text.split_once('.').ok_or_else(error)?;
        Ok(Position {
            commit: commit.parse().map_err(|_| error())?,
            sequence: sequence.parse().map_err(|_| error())?,
        })
    }
}

/// An event about to be appended: its ids, its type's name and schema
/// version, the event as JSON, and the user's metadata.
///
/// Made from a recorded event with [`NewEvent::encode`], which gives it the
/// ids of the flow that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event's own id; appending an id the store holds already is a
    /// retry, not a new event (see [`EventStore::append`](super::EventStore::append)).
    pub id: MessageId,
    /// The event type's stable name (`#[event(name = "...")]`).
    pub name: String,
    /// The schema version of `payload`'s shape.
    pub schema_version: u32,
    /// The event, as JSON.
    pub payload: String,
    /// The first message of the flow that led here.
    pub correlation_id: MessageId,
    /// The message whose handler recorded this event.
    pub causation_id: Option<MessageId>,
    /// Anything else the application keeps with the event (who, from
    /// where): a JSON object, or `null`.
    pub metadata: serde_json::Value,
    /// The event type's personal fields (`#[event(personal(..))]`), which
    /// a [`Protected`](super::Protected) store encrypts.
    pub personal: Option<&'static PersonalFields>,
}

impl NewEvent {
    /// The event, as JSON, with ids made as caused by `cause` (the message
    /// the handler call handles), unless it has ids already.
    ///
    /// ```
    /// use arch_events::event_store::NewEvent;
    /// use arch_events::{Event, MessageContext, PendingEvent};
    ///
    /// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
    /// #[event(name = "shop.shipped", serde)]
    /// struct Shipped { order: u32 }
    ///
    /// let command = MessageContext::root();
    /// let mut event = PendingEvent::new(Shipped { order: 7 });
    /// let new = NewEvent::encode(&mut event, &command).unwrap();
    /// assert_eq!((new.name.as_str(), new.payload.as_str()), ("shop.shipped", r#"{"order":7}"#));
    /// assert_eq!(new.causation_id, Some(command.message_id()));
    /// assert_eq!(Some(new.id), event.context().map(|ids| ids.message_id()));
    /// ```
    pub fn encode(
        event: &mut PendingEvent,
        cause: &MessageContext,
    ) -> Result<Self, EventStoreError> {
        let context = event.assign_ids(cause);
        let name = event.name();
        let payload = match event.to_json() {
            Some(Ok(payload)) => payload,
            Some(Err(source)) => {
                return Err(EventStoreError::Encode {
                    event: name,
                    source: source.into(),
                })
            }
            None => return Err(EventStoreError::NotStorable { event: name }),
        };
        Ok(NewEvent {
            id: context.message_id(),
            name: name.to_owned(),
            schema_version: event.meta().schema_version(),
            payload,
            correlation_id: context.correlation_id(),
            causation_id: context.causation_id(),
            metadata: serde_json::Value::Null,
            personal: event.meta().personal(),
        })
    }

    /// `event` on its own, caused by no message of this process (a new
    /// flow, new ids): what a test's history or a script appends.
    ///
    /// ```
    /// use arch_events::event_store::NewEvent;
    /// use arch_events::Event;
    ///
    /// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
    /// #[event(name = "shop.shipped", serde)]
    /// struct Shipped { order: u32 }
    ///
    /// let new = NewEvent::of(Shipped { order: 7 }).unwrap();
    /// assert_eq!((new.name.as_str(), new.payload.as_str()), ("shop.shipped", r#"{"order":7}"#));
    /// assert_ne!(new.id, NewEvent::of(Shipped { order: 7 }).unwrap().id, "ids of its own");
    /// ```
    pub fn of<E: Event>(event: E) -> Result<Self, EventStoreError> {
        NewEvent::encode(&mut PendingEvent::new(event), &MessageContext::root())
    }

    /// The same event, with `metadata` kept beside it.
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = metadata;
        self
    }
}

/// An event as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// The event's own id.
    pub id: MessageId,
    /// Its stream.
    pub stream: StreamId,
    /// Its version within the stream: 1 for the stream's first event.
    pub version: u64,
    /// Its place in the order of all events.
    pub position: Position,
    /// The event type's stable name.
    pub name: String,
    /// The schema version of `payload`'s shape.
    pub schema_version: u32,
    /// The event, as JSON.
    pub payload: String,
    /// When the store recorded it.
    pub recorded_at: SystemTime,
    /// The first message of the flow that led to it.
    pub correlation_id: MessageId,
    /// The message whose handler recorded it.
    pub causation_id: Option<MessageId>,
    /// What the application kept with it.
    pub metadata: serde_json::Value,
}

impl RecordedEvent {
    /// The ids it was stored with, for handling it again.
    pub fn context(&self) -> MessageContext {
        MessageContext::restored(self.id, self.correlation_id, self.causation_id)
    }

    /// The event, read as an `E`, brought first from the schema version it
    /// was stored in to the code's by its upcasters (`#[upcaster]`):
    /// [`EventStoreError::Decode`] when it is another type, an upcaster is
    /// missing or fails, or its JSON does not fit.
    pub fn decode<E>(&self) -> Result<E, EventStoreError>
    where
        E: Event + serde::de::DeserializeOwned,
    {
        if self.name != E::name() {
            return Err(self.decode_error(format!(
                "it is a `{}`, not a `{}`",
                self.name,
                E::name()
            )));
        }
        let meta = E::meta();
        // serde's messages can quote the values they refused: an event with
        // personal fields says only where and what kind of mistake it was.
        let describe = |error: serde_json::Error| match meta.personal() {
            None => error.to_string(),
            Some(personal) if sealed(&self.payload, personal) => {
                "its personal fields are sealed: read it through \
                a store that reveals them (`SqlEventStore::with_personal_data()`, or \
                `Protected` around another store), every reader alike, projections included"
                    .to_owned()
            }
            Some(_) => format!(
                "its JSON does not fit ({:?} error at line {}, column {}; the message is withheld: \
                 the event holds personal data)",
                error.classify(),
                error.line(),
                error.column()
            ),
        };
        if self.schema_version == meta.schema_version() {
            return serde_json::from_str(&self.payload)
                .map_err(|error| self.decode_error(describe(error)));
        }
        let current = super::upcast::to_current(meta, self.schema_version, &self.payload)
            .map_err(|reason| self.decode_error(reason))?;
        serde_json::from_value(current)
            .map_err(|error| self.decode_error(format!("after its upcasters: {}", describe(error))))
    }

    /// Whether the event is an `E` (by its stored name), as a projection
    /// asks before it decodes one.
    ///
    /// ```
    /// use arch_events::event_store::{EventStore, ExpectedVersion, NewEvent, StreamId};
    /// use arch_events::testing::InMemoryEventStore;
    /// use arch_events::Event;
    ///
    /// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
    /// #[event(name = "shop.shipped", serde)]
    /// struct Shipped { order: u32 }
    /// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
    /// #[event(name = "shop.returned", serde)]
    /// struct Returned { order: u32 }
    ///
    /// # futures::executor::block_on(async {
    /// let store = InMemoryEventStore::new();
    /// let stream = StreamId::new("order", "7");
    /// store.append(&stream, ExpectedVersion::Any, &[NewEvent::of(Shipped { order: 7 })?]).await?;
    /// let event = &store.read_stream(&stream, 1, 10).await?[0];
    /// assert!(event.is::<Shipped>() && !event.is::<Returned>());
    /// assert_eq!(event.decode::<Shipped>()?.order, 7);
    /// # Ok::<(), arch_events::event_store::EventStoreError>(())
    /// # }).unwrap();
    /// ```
    pub fn is<E: Event>(&self) -> bool {
        self.name == E::name()
    }

    pub(crate) fn decode_error(&self, reason: String) -> EventStoreError {
        EventStoreError::Decode {
            stream: self.stream.clone(),
            version: self.version,
            event: self.name.clone(),
            reason,
        }
    }
}

/// Whether one of the `personal` fields of `payload` is still sealed: the
/// event was read from the store as written, not through one that reveals
/// it.
fn sealed(payload: &str, personal: &PersonalFields) -> bool {
    #[cfg(feature = "personal-data")]
    {
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(payload) else {
            return false;
        };
        personal.fields().iter().any(|field| {
            fields
                .get(*field)
                .and_then(serde_json::Value::as_object)
                .is_some_and(|value| value.contains_key(super::personal::SEALED))
        })
    }
    #[cfg(not(feature = "personal-data"))]
    {
        let _ = (payload, personal);
        false
    }
}
