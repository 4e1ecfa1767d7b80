use arch_events::Command;

#[derive(Debug, Clone, Copy)]
struct Raw(u32);

#[derive(Command)]
union Allocate {
    raw: Raw,
    qty: u32,
}

impl std::fmt::Debug for Allocate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Allocate")
    }
}

fn main() {}
