//! Shared helpers for the integration tests of arch-events.

use std::sync::{Mutex, MutexGuard};

/// An append-only log that handlers write to, so tests can assert what ran
/// and in which order.
#[derive(Debug, Default)]
pub struct Log(Mutex<Vec<String>>);

impl Log {
    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends an entry.
    pub fn push(&self, entry: impl Into<String>) {
        self.lock().push(entry.into());
    }

    /// A copy of every entry, oldest first.
    pub fn entries(&self) -> Vec<String> {
        self.lock().clone()
    }
}

/// The README's code blocks, compiled and run as doctests so the quick start
/// stays true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
