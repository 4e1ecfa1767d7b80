use bus_core::Command;

#[derive(Debug, Command)]
struct Allocate<T> {
    line: T,
}

fn main() {}
