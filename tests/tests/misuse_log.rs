//! What the bus logs about a misuse it lets run: an undeclared release
//! (once per handler and event) and a unit of work dropped uncommitted by a
//! handler that returned `Ok` (each time, naming the handler).
//!
//! (Its own test binary, with one test: it captures the log with a tracing
//! subscriber, and tracing caches callsite interest process-wide.)

use std::convert::Infallible;

use arch_events::{handler, Bus, Command, Event, EventReleaser, Registrations, Scoped};
use arch_events_tests::LogBuffer;

#[derive(Debug, Clone, Event)]
#[event(name = "log.audited")]
struct Audited;

#[derive(Debug, Command)]
struct Audit;

#[handler]
fn audit(_: Audit, events: EventReleaser) -> Result<(), Infallible> {
    events.release(Audited);
    Ok(())
}

/// A unit of work that says it held one changed aggregate and two events.
struct Forgetful(EventReleaser);

impl Drop for Forgetful {
    fn drop(&mut self) {
        self.0.dropped_uncommitted(1, 2);
    }
}

#[derive(Debug, Command)]
struct Forget;

#[handler]
fn forget(_: Forget, _uow: Scoped<Forgetful>) -> Result<(), Infallible> {
    Ok(())
}

#[test]
fn misuses_that_run_are_logged_naming_the_handler() {
    let log = LogBuffer::default();
    tracing::subscriber::with_default(log.subscriber(), || {
        let bus = Bus::builder()
            .registrations(Registrations::new().handler::<audit>().handler::<forget>())
            .dependencies(
                arch_events::Dependencies::new().scoped(|scope| Forgetful(scope.releaser())),
            )
            .build()
            .expect("valid wiring");
        for _ in 0..3 {
            bus.dispatch_blocking(Audit).expect("handled");
        }
        bus.dispatch_blocking(Forget).expect("handled");
        bus.dispatch_blocking(Forget).expect("handled");
    });
    let text = log.text();
    let undeclared: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("handler released an event it does not declare"))
        .collect();
    assert_eq!(undeclared.len(), 1, "once per handler and event:\n{text}");
    assert!(
        undeclared[0].contains("WARN")
            && undeclared[0].contains("handler=\"misuse_log::audit\"")
            && undeclared[0].contains("event=\"log.audited\"")
            && undeclared[0].contains("location=tests/tests/misuse_log.rs:"),
        "{}",
        undeclared[0]
    );
    let uncommitted: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("dropped without commit while it held changes"))
        .collect();
    assert_eq!(uncommitted.len(), 2, "every time:\n{text}");
    assert!(
        uncommitted[0].contains("WARN")
            && uncommitted[0].contains("handler=\"misuse_log::forget\"")
            && uncommitted[0].contains("aggregates=1")
            && uncommitted[0].contains("events=2"),
        "{}",
        uncommitted[0]
    );
}
