use bus_core::handler;

#[handler]
fn allocate() -> Result<(), std::convert::Infallible> {
    Ok(())
}

fn main() {}
