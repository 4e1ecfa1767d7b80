use arch_events::{handler, Command};

#[derive(Debug, Command)]
#[command(output = u32)]
struct Count;

struct Counter(u32);

impl Counter {
    // An associated function: `Self` gives it away.
    #[handler]
    fn count(_cmd: Count, counter: &Self) -> Result<u32, std::convert::Infallible> {
        Ok(counter.0)
    }
}

fn main() {}
