use arch_events::{handler, Event, Query};

#[derive(Debug, Query)]
#[query(output = u32)]
struct Basket;

#[derive(Debug, Clone, Event)]
struct Looked;

// A query never releases events: declaring one is refused too.
#[handler(releases(Looked))]
fn basket(_: Basket) -> Result<u32, std::convert::Infallible> {
    Ok(3)
}

fn main() {}
