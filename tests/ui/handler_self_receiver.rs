use arch_events::{handler, Command};

#[derive(Debug, Command)]
struct Allocate;

struct Service;

impl Service {
    #[handler]
    fn allocate(&self, _cmd: Allocate) -> Result<(), std::convert::Infallible> {
        Ok(())
    }
}

fn main() {}
