use arch_events::saga::saga;

#[saga]
struct AwaitPayment {
    order: u32,
}

fn main() {}
