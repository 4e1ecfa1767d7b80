use arch_events::{handler, Command};

#[derive(Debug, Command)]
struct Allocate;

#[handler]
fn allocate(cmd: &mut Allocate) -> Result<(), std::convert::Infallible> {
    let _ = cmd;
    Ok(())
}

fn main() {}
