use arch_events::Event;

#[derive(Debug, Event)]
struct Allocated {
    orderid: String,
}

fn main() {}
