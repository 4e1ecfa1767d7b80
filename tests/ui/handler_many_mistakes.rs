use arch_events::handler;

#[handler(retry, timeout = 5)]
unsafe fn allocate<T>(qty: &mut u32, extra: impl Send) {
    let _ = (qty, extra);
}

fn main() {}
