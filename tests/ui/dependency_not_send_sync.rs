use std::cell::Cell;
use std::rc::Rc;

use arch_events::{handler, Command};

#[derive(Debug, Command)]
struct Allocate;

#[handler]
fn allocate(_cmd: Allocate, counter: &Cell<u32>, cache: &Rc<String>) -> Result<(), std::convert::Infallible> {
    let _ = (counter, cache);
    Ok(())
}

fn main() {}
