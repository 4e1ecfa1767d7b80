//! The transactional outbox: external events are written by the unit of
//! work in its commit's transaction ([`Store::stage`]); a relay publishes
//! the unsent ones, oldest first, in batches, and marks them sent once the
//! broker has them. A crash between the commit and the publish loses
//! nothing: the row is still unsent when a relay runs again (at-least-once;
//! each message keeps its id, for the consumers' inboxes).
//!
//! Any number of relays, in any number of processes, share one outbox: on
//! PostgreSQL a relay locks the rows it publishes (`FOR UPDATE SKIP
//! LOCKED`), and one that dies releases them with its connection; on SQLite
//! it claims them for a lease ([`Settings::outbox_lease`](crate::Settings::outbox_lease)).
//! One relay publishes in commit order; several interleave their batches.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arch_events::transport::{OutboundMessage, Publisher};
use arch_events::MessageId;
use chrono::{DateTime, Utc};

use crate::backend::Backend;
use crate::error::RelayError;
use crate::store::{Lag, Store};

/// The outbox of a store's database, as a relay sees it.
pub struct Outbox<DB: Backend> {
    store: Store<DB>,
    /// This relay's name in its claims (SQLite).
    relay: String,
}

impl<DB: Backend> Clone for Outbox<DB> {
    fn clone(&self) -> Self {
        Outbox {
            store: self.store.clone(),
            relay: self.relay.clone(),
        }
    }
}

impl<DB: Backend> std::fmt::Debug for Outbox<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("database", &DB::LABEL)
            .field("relay", &self.relay)
            .finish()
    }
}

impl<DB: Backend> Outbox<DB> {
    pub(crate) fn new(store: Store<DB>) -> Self {
        Outbox {
            store,
            relay: MessageId::new().to_string(),
        }
    }

    /// The messages not yet sent, oldest first (at most `max`): for a look,
    /// not for publishing.
    pub async fn unsent(&self, max: u32) -> Result<Vec<OutboundMessage>, RelayError> {
        Ok(DB::unsent(self.store.pool(), max).await?)
    }

    /// Publishes up to `max` unsent messages that no other relay holds,
    /// oldest first, as one batch ([`Publisher::publish_batch`]), and marks
    /// the ones the broker has sent. Returns how many it published; on a
    /// failure, what the broker has is marked sent and the rest waits for
    /// the next round.
    pub async fn relay_once(
        &self,
        publisher: &dyn Publisher,
        max: u32,
    ) -> Result<usize, RelayError> {
        let inner = &self.store.inner;
        DB::relay_round(
            &inner.pool,
            &inner.writer,
            &self.relay,
            max,
            inner.settings.outbox_lease,
            publisher,
            inner.settings.publish_timeout,
        )
        .await
    }

    /// Deletes the rows sent before `before`; returns how many. Unsent rows
    /// are never deleted.
    pub async fn purge_sent(&self, before: DateTime<Utc>) -> Result<u64, RelayError> {
        let _turn = self.store.writer_turn().await;
        Ok(DB::purge_sent(self.store.pool(), before).await?)
    }

    /// How many messages wait to be published, and for how long the oldest
    /// has: for monitoring (a relay that is down, or too slow).
    pub async fn lag(&self) -> Result<Lag, RelayError> {
        let (count, oldest) = DB::outbox_lag(self.store.pool()).await?;
        Ok(Lag::new(count, oldest))
    }

    /// Relays to `publisher` until `stop` resolves: rounds of
    /// [`relay_batch`](crate::Settings::relay_batch) messages back to back
    /// while there are some, then one every
    /// [`relay_pause`](crate::Settings::relay_pause); a failed round is
    /// logged and tried again (after the pause, at least a second). At start
    /// and every [`purge_every`](crate::Settings::purge_every), the rows
    /// sent more than [`keep_sent`](crate::Settings::keep_sent) ago are
    /// deleted.
    pub async fn run(&self, publisher: Arc<dyn Publisher>, stop: impl Future<Output = ()>) {
        let settings = self.store.settings().clone();
        let relay = async {
            let mut purged: Option<tokio::time::Instant> = None;
            loop {
                if purged.is_none_or(|at| at.elapsed() >= settings.purge_every) {
                    purged = Some(tokio::time::Instant::now());
                    let keep = chrono::Duration::from_std(settings.keep_sent).unwrap_or_default();
                    match self.purge_sent(Utc::now() - keep).await {
                        Ok(deleted) => tracing::debug!(deleted, "outbox: old sent rows deleted"),
                        Err(error) => tracing::warn!(%error, "outbox: old sent rows not deleted"),
                    }
                }
                match self.relay_once(&*publisher, settings.relay_batch).await {
                    Ok(0) => tokio::time::sleep(settings.relay_pause).await,
                    Ok(sent) => tracing::debug!(sent, "outbox relayed"),
                    Err(error) => {
                        tracing::error!(%error, "outbox relay failed; trying again");
                        let pause = settings.relay_pause.max(Duration::from_secs(1));
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        };
        tokio::select! {
            () = relay => {}
            () = stop => {}
        }
    }
}
