//! Message derives with every option, and handlers in modules, named by
//! their path for a bus built from an explicit list.
use arch_events::{Bus, Message, Registrations};

mod shop {
    use arch_events::{handler, Command, Event, EventReleaser};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Deserialize, Command)]
    #[command(name = "shop.place_order", output = u64, external = "orders.in")]
    pub struct PlaceOrder {
        pub lines: u64,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
    #[event(name = "shop.order_placed", external = "orders.out")]
    pub struct OrderPlaced {
        pub lines: u64,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    #[event(serde)]
    pub struct Internal;

    pub mod handlers {
        use super::*;

        #[handler(releases(OrderPlaced, Internal))]
        pub fn place_order(
            cmd: PlaceOrder,
            events: EventReleaser,
        ) -> Result<u64, std::convert::Infallible> {
            events.release(OrderPlaced { lines: cmd.lines });
            events.release(Internal);
            Ok(cmd.lines)
        }
    }
}

fn main() {
    assert_eq!(shop::PlaceOrder::name(), "shop.place_order");
    assert_eq!(shop::PlaceOrder::meta().external(), Some("orders.in"));
    assert!(shop::Internal::meta().codec().is_some());
    let bus = Bus::builder()
        .registrations(Registrations::new().handler::<shop::handlers::place_order>())
        .build()
        .expect("valid wiring");
    assert_eq!(bus.dispatch_blocking(shop::PlaceOrder { lines: 3 }).unwrap(), 3);
    let wiring = bus.describe();
    let ends: Vec<&str> = wiring.dead_ends().iter().map(|end| end.event).collect();
    let mut expected = vec!["shop.order_placed", shop::Internal::name()];
    expected.sort_unstable();
    assert_eq!(ends, expected, "no handler here: both leave the service");
}
