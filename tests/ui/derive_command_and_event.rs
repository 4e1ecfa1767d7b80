use bus_core::{Command, Event};

#[derive(Debug, Clone, Command, Event)]
struct Allocate;

fn main() {}
