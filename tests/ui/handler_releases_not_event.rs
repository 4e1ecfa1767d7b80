use arch_events::{handler, Command};

#[derive(Debug, Command)]
struct Allocate;

#[derive(Debug)]
struct Allocated;

#[handler(releases(Allocated))]
fn allocate(_cmd: Allocate) -> Result<(), std::convert::Infallible> {
    Ok(())
}

fn main() {}
