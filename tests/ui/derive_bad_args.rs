use arch_events::{Command, Event};

#[derive(Debug, Command)]
#[command(outptu = String, name = "allocate", name = "again")]
struct Allocate;

#[derive(Debug, Clone, Event)]
#[event(output = String)]
struct Allocated;

fn main() {}
