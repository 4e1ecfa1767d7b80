//! Snapshots: an aggregate's state saved at a version, so that a load
//! applies only the events after it. A snapshot is only ever a shortcut:
//! one written by another shape of the state (its schema version differs
//! from the code's) or that no longer reads is ignored, and the state is
//! rebuilt from the events.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::aggregate::EventSourced;

/// An event-sourced aggregate whose state can be saved as a snapshot.
///
/// Skip the recorder (`#[serde(skip)]`): the snapshot is the state only.
/// Bump [`STATE_VERSION`](Self::STATE_VERSION) whenever the state's shape
/// changes: snapshots of the old shape are then ignored (and replaced at
/// the next one taken), never misread.
pub trait Snapshotted: EventSourced + Serialize + DeserializeOwned {
    /// The schema version of the state's stored shape.
    const STATE_VERSION: u32;

    /// A snapshot is taken when a commit brings the stream to a multiple
    /// of this many events (or past one).
    const SNAPSHOT_EVERY: u64;
}

/// A snapshot as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// The stream version the state stands at.
    pub version: u64,
    /// The schema version of the state's shape.
    pub state_version: u32,
    /// The state, as JSON.
    pub state: String,
}
