use arch_events::{handler, Event};

#[derive(Debug, Clone, Event)]
struct Allocated;

#[handler]
fn add_to_read_model(_event: &Allocated) -> u32 {
    1
}

fn main() {}
