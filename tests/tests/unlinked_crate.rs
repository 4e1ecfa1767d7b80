//! A command whose handler crate is not linked is reported at build as having
//! no handler, not silently lost. This binary uses `fixture-messages` but never
//! names `fixture-handlers`, although it is a dependency of this package.

use arch_events::{Bus, Problem};
use fixture_messages::Greet;

#[test]
fn command_of_an_unlinked_handler_crate_is_reported_unhandled() {
    // Naming the command links its crate, and with it its registration.
    let _ = std::any::type_name::<Greet>();
    let error = Bus::builder()
        .build()
        .expect_err("Greet has no handler in this binary");
    let problems = error.problems();
    assert!(
        problems.iter().any(|p| matches!(
            p,
            Problem::NoHandler { message, .. } if *message == "fixture_messages::Greet"
        )),
        "{error}"
    );
    let text = error.to_string();
    assert!(text.contains("command `fixture_messages::Greet`"), "{text}");
    assert!(text.contains("fixture-messages/src/lib.rs:"), "{text}");
    assert!(text.contains("use that_crate as _;"), "{text}");
}

#[test]
fn allowing_the_command_unhandled_lets_the_bus_start() {
    let bus = Bus::builder()
        .allow_unhandled::<Greet>()
        .build()
        .expect("allowed explicitly");
    let error = bus
        .dispatch_blocking(Greet { name: "x".into() })
        .expect_err("no handler here");
    assert!(matches!(
        error,
        arch_events::DispatchError::Unhandled { .. }
    ));
    assert_eq!(
        error.to_string(),
        "command `fixture_messages::Greet` has no handler in this bus"
    );
}
