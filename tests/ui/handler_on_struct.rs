use arch_events::handler;

#[handler]
struct AllocateHandler {
    qty: u32,
}

fn main() {
    let _ = AllocateHandler { qty: 1 }.qty;
}
