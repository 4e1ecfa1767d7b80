use bus_core::Query;

#[derive(Debug, Query)]
struct Allocations {
    orderid: String,
}

fn main() {}
