use arch_events::{handler, Event, EventReleaser, Query};

#[derive(Debug, Query)]
#[query(output = u32)]
struct Basket;

#[derive(Debug, Clone, Event)]
struct Looked;

// The read side never changes state: a query handler cannot release events.
#[handler]
fn basket(_: Basket, events: EventReleaser) -> Result<u32, std::convert::Infallible> {
    events.release(Looked);
    Ok(3)
}

fn main() {}
