use arch_events::{handler, Command, Event};

#[derive(Debug, Command)]
struct Allocate;

#[derive(Debug, Clone, Event)]
struct Allocated;

#[handler(releases(Allocated), releases(Allocated))]
fn allocate(_cmd: Allocate) -> Result<(), std::convert::Infallible> {
    Ok(())
}

fn main() {}
