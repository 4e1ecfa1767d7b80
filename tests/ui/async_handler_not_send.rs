use std::rc::Rc;

use arch_events::{handler, Command};

#[derive(Debug, Command)]
struct Allocate;

async fn tick() {}

#[handler]
async fn allocate(_cmd: Allocate) -> Result<(), std::convert::Infallible> {
    let local = Rc::new(1);
    tick().await;
    let _ = local;
    Ok(())
}

fn main() {}
