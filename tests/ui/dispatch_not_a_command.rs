use arch_events::{Bus, Event};

#[derive(Debug, Clone, Event)]
struct Allocated;

#[derive(Debug)]
struct Plain;

fn run(bus: &Bus) {
    let _ = bus.dispatch_blocking(Allocated);
    let _ = bus.dispatch_blocking(Plain);
}

fn main() {
    let _ = run;
}
