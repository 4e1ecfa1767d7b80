//! Streams: what an event belongs to, and what an append expects of it.

use std::fmt;

/// The stream of one aggregate: its kind (`"product"`) and its id
/// (`"LAMP"`). Versions count within a stream, from 1.
///
/// ```
/// use arch_events::event_store::StreamId;
///
/// let stream = StreamId::new("product", "LAMP");
/// assert_eq!(stream.to_string(), "product-LAMP");
/// assert_eq!((stream.kind(), stream.id()), ("product", "LAMP"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    kind: String,
    id: String,
}

impl StreamId {
    /// The stream of the aggregate of kind `kind` with the id `id`.
    pub fn new(kind: impl Into<String>, id: impl Into<String>) -> Self {
        StreamId {
            kind: kind.into(),
            id: id.into(),
        }
    }

    /// The aggregate kind: [`EventSourced::KIND`](super::EventSourced::KIND).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The aggregate's id within its kind.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.kind, self.id)
    }
}

/// What an append expects of its stream's current version: the optimistic
/// concurrency check. A stream that has no event has version 0.
///
/// ```
/// use arch_events::event_store::ExpectedVersion;
///
/// assert!(ExpectedVersion::NoStream.admits(0));
/// assert!(!ExpectedVersion::NoStream.admits(3));
/// assert!(ExpectedVersion::Exact(3).admits(3));
/// assert!(ExpectedVersion::Any.admits(7));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// Whatever it is: no check (a stream many writers add to, such as a log).
    Any,
    /// The stream has no event yet: the append creates it.
    NoStream,
    /// The stream is exactly at this version: nobody appended since it was
    /// read. `Exact(0)` is the same as `NoStream`.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `current` passes the check.
    pub fn admits(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(version) => current == version,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(version) => write!(f, "version {version}"),
        }
    }
}
