//! What a message does to a saga: kept apart from the sagas' runtime (it
//! needs JSON) because the wiring report shows it whatever the features.

use std::fmt;

/// What a continuing message that finds no saga does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotFound {
    /// Logged, and done.
    Ignore,
    /// An error: a command's caller gets it, an event's handler is retried
    /// by its policy, then dead-lettered.
    Error,
    /// Dead-lettered at once (an event), never retried.
    DeadLetter,
}

/// What a message does to a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Starts an instance (or continues the one it finds).
    Starts,
    /// Continues an instance.
    Continues(NotFound),
    /// A timeout the saga requested; one that finds no saga is ignored.
    Timeout,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Starts => "starts",
            Role::Continues(NotFound::Ignore) => "continues (not found: ignore)",
            Role::Continues(NotFound::Error) => "continues (not found: error)",
            Role::Continues(NotFound::DeadLetter) => "continues (not found: dead letter)",
            Role::Timeout => "timeout",
        })
    }
}
