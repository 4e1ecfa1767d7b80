use arch_events::Command;

#[derive(Debug, Command)]
struct Allocate<T> {
    line: T,
}

fn main() {}
