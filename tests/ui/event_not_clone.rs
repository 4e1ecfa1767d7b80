use bus_core::Event;

#[derive(Debug, Event)]
struct Allocated {
    orderid: String,
}

fn main() {}
