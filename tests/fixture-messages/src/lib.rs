//! Messages whose handlers live in `fixture-handlers`, a crate of their own:
//! a binary that does not link that crate must report them as unhandled.

use arch_events::{Command, Event};

/// Greets someone; handled in `fixture-handlers`.
#[derive(Debug, Command)]
#[command(output = String)]
pub struct Greet {
    /// Who to greet.
    pub name: String,
}

/// Someone was greeted.
#[derive(Debug, Clone, PartialEq, Event)]
pub struct Greeted {
    /// Who was greeted.
    pub name: String,
}
