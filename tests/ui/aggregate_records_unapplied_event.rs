use arch_events::event_store::{Apply, EventSourced, EventTypes};
use arch_events::{Aggregate, Event, EventRecorder};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(serde)]
struct Opened;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(serde)]
struct Closed;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(serde)]
struct Locked;

#[derive(Default)]
struct Door {
    events: EventRecorder,
}

impl Door {
    fn close(&mut self) {
        self.record(Closed);
    }
}

impl EventSourced for Door {
    const KIND: &'static str = "door";
    fn event_types(types: EventTypes<Self>) -> EventTypes<Self> {
        types.event::<Opened>().event::<Locked>().event::<Closed>()
    }
}

impl Apply<Opened> for Door {
    fn apply(&mut self, _: &Opened) {}
}

impl Apply<Locked> for Door {
    fn apply(&mut self, _: &Locked) {}
}

impl Aggregate for Door {
    fn events(&mut self) -> &mut EventRecorder {
        &mut self.events
    }
}

fn main() {}
