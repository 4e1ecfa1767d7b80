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

#[saga(name = "shop.await_payment", retries = 3)]
impl AwaitPayment {
    #[starts(by = order)]
    fn ordered(&mut self, event: &Ordered, _: &mut SagaContext) {
        self.order = event.order;
    }

    // No correlation, no declaration of what a missing saga means.
    #[handles]
    fn noted(&mut self, _: &Ordered, _: &mut SagaContext) {}

    #[handles(by = order)]
    fn paid(&mut self, _: &Ordered, _: &mut SagaContext) {}

    #[handles(by = order, not_found = shrug)]
    fn disputed(&mut self, _: &Ordered, _: &mut SagaContext) {}

    #[starts(by = order)]
    #[timeout(by = order)]
    fn twice(&mut self, _: &Ordered, _: &mut SagaContext) {}

    #[timeout(by = order, not_found = ignore)]
    async fn waits(&mut self, _: &Ordered, _: &mut SagaContext) {}

    #[handles(by = order, not_found = error)]
    fn by_value(&mut self, _: Ordered, _: &mut SagaContext) {}

    #[handles(by = order, not_found = error)]
    fn no_self(_: &Ordered, _: &mut SagaContext) {}

    // Not a handler: left alone.
    fn helper(&self) -> u32 {
        self.order
    }
}

fn main() {}
