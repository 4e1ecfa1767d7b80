//! Given / when / then for event-sourced aggregates: the state is built from
//! a history of events, each through the path a load takes (written as JSON
//! in the code's current shape, read back through the aggregate's event
//! list, applied).

use std::time::SystemTime;

use crate::context::MessageContext;
use crate::event_store::{
    Apply, EventSourced, EventTypes, NewEvent, Position, RecordedEvent, StreamId,
};
use crate::events::PendingEvent;
use crate::message::Event;

use super::scenario::{given, Given, Then};

/// Starts a scenario for an event-sourced aggregate: given these events
/// happened to it (each stored and read back as a load would), when a
/// method runs, then these events were recorded (or this error returned).
///
/// ```
/// use arch_events::event_store::{Apply, EventSourced, EventTypes};
/// use arch_events::testing::given_events;
/// use arch_events::{Aggregate, Event, EventRecorder};
///
/// #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, Event)]
/// #[event(name = "stock.received", serde)]
/// struct Received { qty: u32 }
///
/// #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, Event)]
/// #[event(name = "stock.allocated", serde)]
/// struct Allocated { qty: u32 }
///
/// #[derive(Debug, PartialEq)]
/// struct OutOfStock;
///
/// #[derive(Debug, Default)]
/// struct Stock { available: u32, events: EventRecorder }
///
/// impl Stock {
///     fn allocate(&mut self, qty: u32) -> Result<(), OutOfStock> {
///         if qty > self.available { return Err(OutOfStock); }
///         self.record(Allocated { qty });
///         Ok(())
///     }
/// }
/// impl EventSourced for Stock {
///     const KIND: &'static str = "stock";
///     fn event_types(types: EventTypes<Self>) -> EventTypes<Self> {
///         types.event::<Received>().event::<Allocated>()
///     }
/// }
/// impl Apply<Received> for Stock { fn apply(&mut self, e: &Received) { self.available += e.qty; } }
/// impl Apply<Allocated> for Stock { fn apply(&mut self, e: &Allocated) { self.available -= e.qty; } }
/// impl Aggregate for Stock { fn events(&mut self) -> &mut EventRecorder { &mut self.events } }
///
/// given_events::<Stock>()
///     .event(Received { qty: 10 })
///     .event(Allocated { qty: 4 })
///     .when(|stock| stock.allocate(5))
///     .then_ok()
///     .then_events(&[Allocated { qty: 5 }])
///     .then(|stock, _| assert_eq!(stock.available, 1));
///
/// given_events::<Stock>()
///     .event(Received { qty: 3 })
///     .when(|stock| stock.allocate(5))
///     .then_error(&OutOfStock)
///     .then_no_events();
/// ```
pub fn given_events<A: EventSourced>() -> History<A> {
    History {
        types: EventTypes::of(),
        state: A::default(),
        version: 0,
    }
}

/// The history of an event-sourced aggregate so far; see [`given_events`].
#[derive(Debug)]
pub struct History<A> {
    types: EventTypes<A>,
    state: A,
    version: u64,
}

impl<A: EventSourced> History<A> {
    /// `event` happened next: it is written as the store would write it (in
    /// its current shape), read back and applied. Panics, saying why, when that fails (the
    /// event is not `#[event(serde)]`, not listed in the aggregate's
    /// `event_types`, or its JSON does not read back).
    pub fn event<E: Event>(mut self, event: E) -> Self
    where
        A: Apply<E>,
    {
        let new = NewEvent::encode(&mut PendingEvent::new(event), &MessageContext::root())
            .unwrap_or_else(|error| panic!("the history's event cannot be stored: {error}"));
        self.version += 1;
        let recorded = RecordedEvent {
            id: new.id,
            stream: StreamId::new(A::KIND, "given"),
            version: self.version,
            position: Position::new(self.version, self.version),
            name: new.name,
            schema_version: new.schema_version,
            payload: new.payload,
            recorded_at: SystemTime::now(),
            correlation_id: new.correlation_id,
            causation_id: new.causation_id,
            metadata: new.metadata,
        };
        self.types
            .apply(&mut self.state, &recorded)
            .unwrap_or_else(|error| panic!("the history's event cannot be applied: {error}"));
        self
    }

    /// The state the history built.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Runs the action under test on the state the history built.
    pub fn when<R>(self, act: impl FnOnce(&mut A) -> R) -> Then<A, R> {
        let given: Given<A> = given(self.state);
        given.when(act)
    }
}
