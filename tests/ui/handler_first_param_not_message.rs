use arch_events::handler;

#[handler]
fn allocate(qty: u32) -> Result<(), std::convert::Infallible> {
    let _ = qty;
    Ok(())
}

fn main() {}
