//! Notifications: how the service tells people things.

use std::sync::{Mutex, PoisonError};

/// Sends a message to a destination.
pub trait Notifications: Send + Sync {
    /// Sends `message` to `destination`.
    fn send(&self, destination: &str, message: &str);
}

/// Writes notifications to the log (target `notifications`, level WARN).
#[derive(Debug, Default)]
pub struct LogNotifications;

impl Notifications for LogNotifications {
    fn send(&self, destination: &str, message: &str) {
        tracing::warn!(target: "notifications", destination, "{message}");
    }
}

/// Records notifications, for tests.
#[derive(Debug, Default)]
pub struct RecordingNotifications {
    sent: Mutex<Vec<(String, String)>>,
}

impl RecordingNotifications {
    /// Every `(destination, message)` sent so far.
    pub fn sent(&self) -> Vec<(String, String)> {
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Notifications for RecordingNotifications {
    fn send(&self, destination: &str, message: &str) {
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((destination.to_owned(), message.to_owned()));
    }
}
