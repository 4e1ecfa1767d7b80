use arch_events::{Command, Event};

// `external` needs the event to be written as JSON: no serde derives here.
#[derive(Debug, Clone, Event)]
#[event(external = "line_allocated")]
struct Allocated {
    orderid: String,
}

// `serde` on a command needs it to be read from JSON.
#[derive(Debug, Command)]
#[command(serde)]
struct ChangeQuantity {
    qty: u32,
}

fn main() {}
