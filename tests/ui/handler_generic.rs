use arch_events::{handler, Command};

#[derive(Debug, Command)]
struct Allocate;

#[handler]
fn allocate<R: Send>(_cmd: Allocate) -> Result<(), std::convert::Infallible> {
    Ok(())
}

fn main() {}
