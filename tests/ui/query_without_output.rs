use arch_events::Query;

#[derive(Debug, Query)]
struct Allocations {
    orderid: String,
}

fn main() {}
