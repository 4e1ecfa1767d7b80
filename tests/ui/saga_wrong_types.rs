use arch_events::saga::{saga, SagaContext};
use arch_events::Event;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(serde)]
struct Ordered {
    order: u32,
}

/// Neither `Default` nor serde: the saga's state must be both.
#[derive(Debug)]
struct AwaitPayment {
    order: u32,
}

#[saga(name = "shop.await_payment")]
impl AwaitPayment {
    // `Ordered` has no field `order_id`.
    #[starts(by = order_id)]
    fn ordered(&mut self, event: &Ordered, _: &mut SagaContext) {
        self.order = event.order;
    }

    // A handler returns nothing or `Result<(), E>`.
    #[timeout(by = order)]
    fn late(&mut self, _: &Ordered, _: &mut SagaContext) -> u32 {
        self.order
    }
}

fn main() {}
