use arch_events::handler;

#[handler]
fn allocate() -> Result<(), std::convert::Infallible> {
    Ok(())
}

fn main() {}
