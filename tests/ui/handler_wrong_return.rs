use arch_events::{handler, Command};

#[derive(Debug, thiserror::Error)]
#[error("invalid sku")]
struct InvalidSku;

#[derive(Debug, Command)]
#[command(output = String, error = InvalidSku)]
struct Allocate;

#[handler]
fn allocate(_cmd: Allocate) -> Result<u32, InvalidSku> {
    Ok(1)
}

fn main() {}
