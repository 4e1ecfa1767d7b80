//! Notifications: how the service tells people things.

use std::sync::{Mutex, PoisonError};

/// A notification could not be sent; sending it again may work.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot notify {destination}: {reason}")]
pub struct NotificationError {
    /// Where it was going.
    pub destination: String,
    /// What went wrong.
    pub reason: String,
}

/// Sends a message to a destination.
pub trait Notifications: Send + Sync {
    /// Sends `message` to `destination`.
    fn send(&self, destination: &str, message: &str) -> Result<(), NotificationError>;
}

/// Writes notifications to the log (target `notifications`, level WARN).
#[derive(Debug, Default)]
pub struct LogNotifications;

impl Notifications for LogNotifications {
    fn send(&self, destination: &str, message: &str) -> Result<(), NotificationError> {
        tracing::warn!(target: "notifications", destination, text = message, "notification");
        Ok(())
    }
}

/// Records notifications, for tests; [`fail`](Self::fail) makes it refuse
/// them until [`recover`](Self::recover), like a mail server that is down.
#[derive(Debug, Default)]
pub struct RecordingNotifications {
    sent: Mutex<Vec<(String, String)>>,
    down: Mutex<Option<String>>,
    refused: Mutex<u32>,
}

impl RecordingNotifications {
    /// Every `(destination, message)` sent so far.
    pub fn sent(&self) -> Vec<(String, String)> {
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Refuses every notification with `reason` from now on.
    pub fn fail(&self, reason: &str) {
        *self.down.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.to_owned());
    }

    /// Sends again.
    pub fn recover(&self) {
        *self.down.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// How many notifications were refused.
    pub fn refused(&self) -> u32 {
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Notifications for RecordingNotifications {
    fn send(&self, destination: &str, message: &str) -> Result<(), NotificationError> {
        if let Some(reason) = self
            .down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            *self.refused.lock().unwrap_or_else(PoisonError::into_inner) += 1;
            return Err(NotificationError {
                destination: destination.to_owned(),
                reason,
            });
        }
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((destination.to_owned(), message.to_owned()));
        Ok(())
    }
}
