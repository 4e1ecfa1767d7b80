use arch_events::saga::{saga, SagaContext};
use arch_events::Event;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(serde)]
struct Ordered {
    order: u32,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct AwaitPayment {
    order: u32,
}

// Its name is the key of its stored instances: it must be given.
#[saga]
impl AwaitPayment {
    #[starts(by = order)]
    fn ordered(&mut self, event: &Ordered, _: &mut SagaContext) {
        self.order = event.order;
    }
}

fn main() {}
