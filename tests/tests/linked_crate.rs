//! Handlers registered in a second crate reach a bus built from what the
//! binary links, once the binary names that crate.

use arch_events::{Bus, Dependencies};
use fixture_handlers::Greetings;
use fixture_messages::Greet;

// The composition root names the handler crate, so it is linked.
use fixture_handlers as _;

#[test]
fn handlers_from_a_linked_crate_are_registered() {
    let bus = Bus::builder()
        .dependencies(Dependencies::new().shared(Greetings::default()))
        .build()
        .expect("the linked handlers satisfy every command");
    let reply = bus
        .dispatch_blocking(Greet { name: "Ada".into() })
        .expect("greet succeeds");
    assert_eq!(reply, "Hello, Ada!");
}

#[test]
fn linked_event_handlers_run_with_their_dependencies() {
    let greetings = std::sync::Arc::new(Greetings::default());
    let bus = Bus::builder()
        .dependencies(Dependencies::new().shared_arc(greetings.clone()))
        .build()
        .expect("bus builds");
    bus.dispatch_blocking(Greet {
        name: "Grace".into(),
    })
    .expect("greet succeeds");
    assert_eq!(*greetings.0.lock().expect("lock"), vec!["Grace".to_owned()]);
}
