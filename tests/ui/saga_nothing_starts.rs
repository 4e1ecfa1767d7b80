use arch_events::saga::{saga, SagaContext};
use arch_events::Event;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(serde)]
struct Paid {
    order: u32,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct AwaitPayment {
    order: u32,
}

#[saga(name = "shop.await_payment")]
impl AwaitPayment {
    #[handles(by = order, not_found = ignore)]
    fn paid(&mut self, _: &Paid, saga: &mut SagaContext) {
        saga.mark_completed();
    }
}

fn main() {}
