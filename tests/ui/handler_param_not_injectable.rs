use arch_events::{handler, Command};

#[derive(Debug, Command)]
struct Allocate;

#[handler]
fn allocate(_cmd: Allocate, sku: String) -> Result<(), std::convert::Infallible> {
    let _ = sku;
    Ok(())
}

fn main() {}
