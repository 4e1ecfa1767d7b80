// A refused handler is still named by the rest of the program: the only
// errors are the ones on the handler itself.
use arch_events::{handler, Bus, Command, Registrations, RetryPolicy};

#[derive(Debug, Command)]
struct Ship;

#[handler]
fn ship(cmd: &mut Ship) -> Result<(), std::convert::Infallible> {
    let _ = cmd;
    Ok(())
}

fn main() {
    let _ = Bus::builder()
        .registrations(Registrations::new().handler::<ship>())
        .handler_retry::<ship>(RetryPolicy::exponential(3))
        .build();
}
