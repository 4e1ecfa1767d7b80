use arch_events::{handler, Command};

#[derive(Debug, Command)]
struct Allocate;

#[handler(retries = 3)]
fn allocate(_cmd: Allocate) -> Result<(), std::convert::Infallible> {
    Ok(())
}

fn main() {}
