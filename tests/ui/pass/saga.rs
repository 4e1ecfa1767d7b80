//! A saga as users write it, with a command and an event, an error type of
//! its own, and a helper method; the wiring report shows it.

use std::sync::Arc;
use std::time::Duration;

use arch_events::saga::{saga, SagaContext, SagaError, Sagas};
use arch_events::schedule::{InMemoryScheduler, VirtualClock};
use arch_events::{Bus, Command, Dependencies, Event};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "shop.ordered", serde)]
struct Ordered {
    order: u32,
    customer: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, Command)]
#[command(name = "shop.ship", serde, error = SagaError)]
struct Ship {
    order: u32,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "shop.shipping_late", serde)]
struct ShippingLate {
    order: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("order {0} shipped twice")]
struct ShippedTwice(u32);

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Shipping {
    order: u32,
    customer: String,
    shipped: bool,
}

#[saga(name = "shop.shipping")]
impl Shipping {
    #[starts(by = order)]
    fn ordered(&mut self, event: &Ordered, saga: &mut SagaContext) {
        self.order = event.order;
        self.customer = event.customer.clone();
        saga.request_timeout(Duration::from_secs(60), &ShippingLate { order: event.order });
    }

    #[handles(by = order, not_found = error)]
    fn ship(&mut self, _: &Ship, saga: &mut SagaContext) -> Result<(), ShippedTwice> {
        if self.shipped {
            return Err(ShippedTwice(self.order));
        }
        self.shipped = true;
        saga.mark_completed();
        Ok(())
    }

    #[timeout(by = order)]
    fn late(&mut self, _: &ShippingLate, saga: &mut SagaContext) {
        let _ = self.label();
        saga.mark_completed();
    }

    fn label(&self) -> String {
        format!("{} for {}", self.order, self.customer)
    }
}

fn main() {
    let clock = VirtualClock::new();
    let scheduler = Arc::new(InMemoryScheduler::with_clock(clock.clone()));
    let bus = Bus::builder()
        .dependencies(Dependencies::new().shared(Sagas::new(scheduler.clone())))
        .build()
        .unwrap();
    let wiring = bus.describe();
    assert_eq!(wiring.sagas.len(), 1);
    assert_eq!(wiring.sagas[0].name, "shop.shipping");
    assert!(wiring.to_mermaid().contains("m_shop_ordered == starts ==> s_shop_shipping"));
    futures::executor::block_on(async {
        bus.publish(Ordered { order: 1, customer: "ada".into() }).await.unwrap();
        bus.dispatch(Ship { order: 1 }).await.unwrap();
        let fired = clock.advance_and_fire(Duration::from_secs(60), &*scheduler, &bus).await.unwrap();
        assert_eq!(fired, 0, "shipped in time: the timeout went with the saga");
    });
}
