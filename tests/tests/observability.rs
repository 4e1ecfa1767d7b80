//! Handlers keep their real names in logs and spans.

use arch_events::{handler, Bus, Command, Event, EventReleaser, Registrations};
use arch_events_tests::LogBuffer;

#[derive(Debug, Command)]
#[command(name = "shop.checkout")]
struct Checkout;

#[derive(Debug, Clone, Event)]
#[event(name = "shop.checked_out")]
struct CheckedOut;

#[handler]
fn checkout(_: Checkout, events: EventReleaser) -> Result<(), std::convert::Infallible> {
    tracing::info!("inside the command handler");
    events.release(CheckedOut);
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("smtp timed out")]
struct SmtpTimeout;

#[handler]
fn send_receipt(_: &CheckedOut) -> Result<(), SmtpTimeout> {
    tracing::info!("sending the receipt");
    Err(SmtpTimeout)
}

#[test]
fn spans_and_failure_logs_name_the_message_and_the_handler() {
    let buffer = LogBuffer::default();
    let subscriber = buffer.subscriber();
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<checkout>()
                .handler::<send_receipt>(),
        )
        .build()
        .expect("valid wiring");
    tracing::subscriber::with_default(subscriber, || {
        bus.dispatch_blocking(Checkout)
            .expect("the command succeeds");
    });
    let output = buffer.text();
    println!("{output}");

    let inside = output
        .lines()
        .find(|line| line.contains("inside the command handler"))
        .expect("the handler's own log line");
    assert!(
        inside.contains("dispatch{kind=\"command\" message_name=\"shop.checkout\" message_id="),
        "{inside}"
    );
    assert!(
        inside.contains(
            "handler{handler=\"observability::checkout\" message_name=\"shop.checkout\" attempt=1 message_id="
        ),
        "{inside}"
    );
    // The command's id correlates the dispatch; it was caused by nothing.
    let command_id = field(inside, "message_id");
    assert_eq!(field(inside, "correlation_id"), command_id, "{inside}");
    assert!(inside.contains("causation_id=none"), "{inside}");

    let failure = output
        .lines()
        .find(|line| line.contains("event handler failed"))
        .expect("the failure is logged");
    assert!(failure.contains("ERROR"), "{failure}");
    assert!(
        failure.contains("dispatch{kind=\"command\" message_name=\"shop.checkout\" message_id="),
        "the failure is logged inside the dispatch that caused it: {failure}"
    );
    // The event carries the command's correlation id, and names the command
    // as its cause.
    let event_handler_span = output
        .lines()
        .find(|line| line.contains("handler{handler=\"observability::send_receipt\""))
        .map(|line| {
            &line[line
                .find("handler{handler=\"observability::send_receipt\"")
                .unwrap_or(0)..]
        })
        .expect("the event handler's span");
    assert_eq!(field(event_handler_span, "correlation_id"), command_id);
    assert_eq!(field(event_handler_span, "causation_id"), command_id);
    assert_ne!(field(event_handler_span, "message_id"), command_id);
    assert!(
        failure.contains(&format!("correlation_id={command_id}")),
        "{failure}"
    );
    assert!(
        failure.contains(&format!("causation_id={command_id}")),
        "{failure}"
    );
    assert!(
        failure.contains("message_name=\"shop.checked_out\""),
        "{failure}"
    );
    assert!(
        failure.contains("handler=\"observability::send_receipt\""),
        "{failure}"
    );
    assert!(failure.contains("cause=smtp timed out"), "{failure}");
    assert!(
        failure.contains("tests/tests/observability.rs:"),
        "{failure}"
    );
}

/// The first value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no `{key}` in {line}"))
        + key.len()
        + 1;
    let rest = &line[start..];
    let end = rest.find([' ', '}']).unwrap_or(rest.len());
    &rest[..end]
}
