//! The transactional outbox, whatever the database: external events are
//! written by the unit of work in its commit's transaction; a relay
//! publishes the unsent ones, oldest first, and marks each one sent once the
//! broker has it. A crash between the commit and the publish loses nothing:
//! the row is still unsent when a relay runs again (at-least-once; each
//! message keeps its id, for the consumers' inboxes).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::async_trait;
use bus_core::transport::{OutboundMessage, Publisher, TransportError};
use chrono::{DateTime, Utc};

/// Why a relay round stopped (the relay tries again next round).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database failed.
    #[error("the outbox could not be read or updated: {0}")]
    Storage(#[from] sqlx::Error),
    /// The broker failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// An outbox table, as its relay sees it.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// The messages not yet sent, oldest first (at most `max`); for a look,
    /// not for publishing.
    async fn unsent(&self, max: u32) -> Result<Vec<OutboundMessage>, RelayError>;

    /// Publishes up to `max` unsent messages that no other relay holds,
    /// oldest first, marking each one sent once the broker has it; stops at
    /// the first failure. Returns how many it published. Several relays (in
    /// several processes) never publish one row at the same time.
    async fn relay_once(&self, publisher: &dyn Publisher, max: u32) -> Result<usize, RelayError>;

    /// Deletes the rows sent before `before`; returns how many. Unsent rows
    /// are never deleted.
    async fn purge_sent(&self, before: DateTime<Utc>) -> Result<u64, RelayError>;
}

/// How many messages a relay round takes at most.
pub const RELAY_BATCH: u32 = 100;

/// How long a sent row stays in the outbox (to look into what left, and
/// when) before a relay deletes it.
pub const KEEP_SENT: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How often a relay deletes the rows sent more than [`KEEP_SENT`] ago.
pub const PURGE_EVERY: Duration = Duration::from_secs(60 * 60);

/// Relays `outbox` to `publisher` until `stop` resolves: a round every
/// `pause` while the outbox is empty, at once while it is not; a failure is
/// logged and the round tried again (after `pause`, at least a second).
/// At start and then every [`PURGE_EVERY`], the rows sent more than
/// [`KEEP_SENT`] ago are deleted, so the table does not grow without end.
pub async fn run(
    outbox: Arc<dyn Outbox>,
    publisher: Arc<dyn Publisher>,
    pause: Duration,
    stop: impl Future<Output = ()>,
) {
    let relay = async {
        let mut purged: Option<Instant> = None;
        loop {
            if purged.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                purged = Some(Instant::now());
                let before = Utc::now() - chrono::Duration::from_std(KEEP_SENT).unwrap_or_default();
                match outbox.purge_sent(before).await {
                    Ok(deleted) => tracing::debug!(deleted, "outbox: old sent rows deleted"),
                    Err(error) => tracing::warn!(%error, "outbox: old sent rows not deleted"),
                }
            }
            match outbox.relay_once(&*publisher, RELAY_BATCH).await {
                Ok(0) => tokio::time::sleep(pause).await,
                Ok(sent) => tracing::debug!(sent, "outbox relayed"),
                Err(error) => {
                    tracing::error!(%error, "outbox relay failed; trying again");
                    tokio::time::sleep(pause.max(Duration::from_secs(1))).await;
                }
            }
        }
    };
    tokio::select! {
        () = relay => {}
        () = stop => {}
    }
}
