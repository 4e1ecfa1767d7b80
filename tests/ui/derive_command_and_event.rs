use arch_events::{Command, Event};

#[derive(Debug, Clone, Command, Event)]
struct Allocate;

fn main() {}
