//! Correlation and causation ids reach handlers and scoped factories.
//!
//! (Its own test binary: tracing caches callsite interest process-wide, and
//! the span-capturing test of `observability` must not share it.)

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use arch_events::{
    handler, Bus, Command, Dependencies, Event, EventReleaser, MessageContext, Registrations,
    Scoped,
};

#[derive(Debug, Command)]
struct Open;

#[derive(Debug, Clone, Event)]
struct Opened;

#[derive(Debug, Clone, Event)]
struct Logged;

/// What a scoped factory saw of the call it was made for.
struct Tagged(MessageContext);

type Seen = Mutex<Vec<(&'static str, MessageContext)>>;

#[handler]
fn open(
    _: Open,
    context: MessageContext,
    seen: &Seen,
    events: EventReleaser,
) -> Result<(), Infallible> {
    seen.lock().unwrap().push(("open", context));
    events.release(Opened);
    Ok(())
}

#[handler]
fn log_opened(
    _: &Opened,
    tag: Scoped<Tagged>,
    seen: &Seen,
    events: EventReleaser,
) -> Result<(), Infallible> {
    seen.lock().unwrap().push(("log_opened (factory)", tag.0));
    events.release(Logged);
    Ok(())
}

#[handler]
fn count_logged(_: &Logged, context: MessageContext, seen: &Seen) -> Result<(), Infallible> {
    seen.lock().unwrap().push(("count_logged", context));
    Ok(())
}

#[test]
fn every_message_of_a_dispatch_shares_its_correlation_id_and_names_its_cause() {
    let seen = Arc::new(Seen::default());
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<open>()
                .handler::<log_opened>()
                .handler::<count_logged>(),
        )
        .dependencies(
            Dependencies::new()
                .shared_arc(seen.clone())
                .scoped(|scope| Tagged(scope.context())),
        )
        .build()
        .unwrap();
    bus.dispatch_blocking(Open).unwrap();
    bus.dispatch_blocking(Open).unwrap();
    let seen = seen.lock().unwrap();
    let [(_, open), (_, opened), (_, logged), (_, second), ..] = seen[..] else {
        panic!("every handler ran: {seen:?}");
    };
    assert_eq!(open.correlation_id(), open.message_id());
    assert_eq!(open.causation_id(), None);
    assert_eq!(opened.correlation_id(), open.message_id());
    assert_eq!(opened.causation_id(), Some(open.message_id()));
    assert_eq!(logged.correlation_id(), open.message_id());
    assert_eq!(logged.causation_id(), Some(opened.message_id()));
    assert_ne!(
        second.correlation_id(),
        open.correlation_id(),
        "a new dispatch, a new flow"
    );
}
