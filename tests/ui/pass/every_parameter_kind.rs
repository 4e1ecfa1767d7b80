//! Every kind of handler parameter, sync and async, for each kind of message.
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use arch_events::{
    handler, Bus, Command, Dependencies, Event, EventReleaser, MessageContext, Query, Scoped,
};

#[derive(Debug, Command)]
#[command(output = u32)]
struct Count(u32);

#[derive(Debug, Clone, Event)]
struct Counted(u32);

#[derive(Debug, Query)]
#[query(output = u32)]
struct Total;

trait Tally: Send + Sync {
    fn add(&self, by: u32) -> u32;
    fn get(&self) -> u32;
}

#[derive(Default)]
struct Atomic(AtomicU32);

impl Tally for Atomic {
    fn add(&self, by: u32) -> u32 {
        self.0.fetch_add(by, Ordering::SeqCst) + by
    }
    fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

trait Audit: Send {
    fn note(&mut self, what: &str);
}

struct Notes(Vec<String>);

impl Audit for Notes {
    fn note(&mut self, what: &str) {
        self.0.push(what.to_owned());
    }
}

struct Config {
    factor: u32,
}

#[handler(releases(Counted))]
fn count(
    cmd: Count,
    config: &Config,
    tally: &dyn Tally,
    mut audit: Scoped<dyn Audit>,
    context: MessageContext,
    events: EventReleaser,
) -> Result<u32, std::convert::Infallible> {
    assert_eq!(context.attempt(), 1);
    audit.note("count");
    let now = tally.add(cmd.0 * config.factor);
    events.release(Counted(now));
    Ok(now)
}

#[handler]
async fn on_counted(event: &Counted, tally: Arc<dyn Tally>, config: Arc<Config>) {
    assert!(event.0 <= tally.get() * config.factor);
}

#[handler]
fn on_counted_by_value(event: Counted, mut notes: Scoped<Notes>) -> Result<(), std::io::Error> {
    notes.note(&event.0.to_string());
    Ok(())
}

#[handler]
async fn total(_: Total, tally: &dyn Tally) -> Result<u32, std::convert::Infallible> {
    Ok(tally.get())
}

fn main() {
    let tally: Arc<dyn Tally> = Arc::new(Atomic::default());
    let bus = Bus::builder()
        .dependencies(
            Dependencies::new()
                .shared(Config { factor: 2 })
                .shared_arc(tally)
                .scoped_boxed::<dyn Audit, _>(|_| Box::new(Notes(Vec::new())))
                .scoped(|_| Notes(Vec::new())),
        )
        .require_event_handlers()
        .build()
        .expect("valid wiring");
    assert_eq!(bus.dispatch_blocking(Count(3)).unwrap(), 6);
    assert_eq!(bus.query_blocking(Total).unwrap(), 6);
}
