//! `Bus::describe`: the wiring as data, a table and a flowchart; and the
//! build's warning about a declared event nobody handles.
//!
//! (Its own test binary: it captures the build's log with a tracing
//! subscriber, and tracing caches callsite interest process-wide.)

use std::convert::Infallible;

use arch_events::{
    handler, Bus, Command, Dependencies, Event, EventReleaser, Lifetime, MessageKind, Query,
    Registrations, Scoped,
};
use arch_events_tests::LogBuffer;

#[derive(Debug, Command)]
#[command(name = "shop.checkout")]
struct Checkout;

#[derive(Debug, Clone, Event)]
#[event(name = "shop.checked_out")]
struct CheckedOut;

/// Declared by `checkout`, handled by nobody: a dead end.
#[derive(Debug, Clone, Event)]
#[event(name = "shop.audited")]
struct Audited;

#[derive(Debug, Query)]
#[query(name = "shop.basket", output = u32)]
struct Basket;

struct Till;
struct Receipt;

#[handler(releases(CheckedOut, Audited))]
fn checkout(
    _: Checkout,
    _till: &Till,
    _receipt: Scoped<Receipt>,
    events: EventReleaser,
) -> Result<(), Infallible> {
    events.release(CheckedOut);
    Ok(())
}

#[handler]
async fn email_receipt(_: &CheckedOut) -> Result<(), Infallible> {
    Ok(())
}

#[handler]
fn basket(_: Basket) -> Result<u32, Infallible> {
    Ok(3)
}

#[test]
fn the_bus_describes_its_wiring_and_warns_about_dead_ends() {
    let log = LogBuffer::default();
    let bus = tracing::subscriber::with_default(log.subscriber(), || {
        Bus::builder()
            .registrations(
                Registrations::new()
                    .handler::<checkout>()
                    .handler::<email_receipt>()
                    .handler::<basket>()
                    .message::<Audited>(),
            )
            .dependencies(Dependencies::new().shared(Till).scoped(|_| Receipt))
            .build()
            .expect("valid wiring")
    });
    let warning = log
        .text()
        .lines()
        .find(|line| line.contains("releases an event that has no handler"))
        .map(str::to_owned)
        .expect("the build warns about the dead end");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("handler=\"wiring_report::checkout\""),
        "{warning}"
    );
    assert!(warning.contains("event=\"shop.audited\""), "{warning}");

    let wiring = bus.describe();
    let names: Vec<(MessageKind, &str)> =
        wiring.messages.iter().map(|m| (m.kind, m.name)).collect();
    assert_eq!(
        names,
        [
            (MessageKind::Event, "shop.audited"),
            (MessageKind::Query, "shop.basket"),
            (MessageKind::Event, "shop.checked_out"),
            (MessageKind::Command, "shop.checkout"),
        ]
    );
    let checkout = &wiring.message("shop.checkout").expect("described").handlers[0];
    assert_eq!(checkout.name, "wiring_report::checkout");
    assert!(checkout
        .location
        .starts_with("tests/tests/wiring_report.rs:"));
    assert!(!checkout.is_async);
    let dependencies: Vec<(&str, Lifetime)> = checkout
        .dependencies
        .iter()
        .map(|d| (d.type_name, d.lifetime))
        .collect();
    assert_eq!(
        dependencies,
        [
            ("wiring_report::Till", Lifetime::Shared),
            ("wiring_report::Receipt", Lifetime::Scoped),
            ("arch_events::events::EventReleaser", Lifetime::Bus),
        ]
    );
    assert_eq!(checkout.releases, ["shop.checked_out", "shop.audited"]);
    assert!(
        wiring
            .message("shop.checked_out")
            .expect("described")
            .handlers[0]
            .is_async
    );
    let dead_ends = wiring.dead_ends();
    let ends: Vec<(&str, &[&str])> = dead_ends
        .iter()
        .map(|end| (end.event, &end.released_by[..]))
        .collect();
    assert_eq!(ends, [("shop.audited", &["wiring_report::checkout"][..])]);
    assert!(
        dead_ends[0]
            .location
            .starts_with("tests/tests/wiring_report.rs:"),
        "{dead_ends:?}"
    );

    let table = wiring.to_table();
    assert!(
        table.lines().any(|l| l.starts_with("event")
            && l.contains("shop.audited")
            && l.contains("(no handler)")),
        "{table}"
    );
    assert!(
        table.contains("wiring_report::email_receipt (async)"),
        "{table}"
    );
    assert!(
        table.contains("Till (shared), Receipt (scoped), EventReleaser (bus-provided)"),
        "{table}"
    );

    let mermaid = wiring.to_mermaid();
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    for expected in [
        "m_shop_checkout[\"shop.checkout\"]",
        "m_shop_basket{{\"shop.basket\"}}",
        "m_shop_checked_out([\"shop.checked_out\"])",
        "style m_shop_audited stroke-dasharray: 5 5",
        "m_shop_checkout --> h_wiring_report__checkout",
        "h_wiring_report__checkout -.-> m_shop_audited",
        "m_shop_checked_out --> h_wiring_report__email_receipt",
    ] {
        assert!(mermaid.contains(expected), "{expected} in\n{mermaid}");
    }
}
