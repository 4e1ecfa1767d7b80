//! Handlers registered from a crate of their own. A binary gets them by
//! linking this crate: `use fixture_handlers as _;`.

use std::convert::Infallible;
use std::sync::Mutex;

use arch_events::{handler, EventReleaser};
use fixture_messages::{Greet, Greeted};

/// Everyone greeted so far, recorded by [`remember_greeting`].
#[derive(Debug, Default)]
pub struct Greetings(pub Mutex<Vec<String>>);

/// Handles [`Greet`]: answers with a greeting and releases [`Greeted`].
#[handler(releases(Greeted))]
pub fn greet(cmd: Greet, events: EventReleaser) -> Result<String, Infallible> {
    events.release(Greeted {
        name: cmd.name.clone(),
    });
    Ok(format!("Hello, {}!", cmd.name))
}

/// Handles [`Greeted`]: records the name.
#[handler]
pub fn remember_greeting(event: &Greeted, greetings: &Greetings) {
    greetings
        .0
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(event.name.clone());
}
