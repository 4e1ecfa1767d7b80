//! The inbox: the ids of the inbound messages whose effects committed,
//! written by [`Store::stage`] in the unit of work's transaction, so that a
//! redelivered message is recognised: the
//! [`Consumer`](arch_events::transport::Consumer) acknowledges it without
//! dispatching it again, and a second commit of it fails.
//!
//! The inbox keeps every id: a redelivery can come as long as the broker
//! keeps the message, so trim it together with the stream.

use arch_events::transport::TransportError;
use arch_events::{async_trait, MessageId};

use crate::backend::Backend;
use crate::store::Store;

/// The inbox of a store's database.
pub struct Inbox<DB: Backend> {
    store: Store<DB>,
}

impl<DB: Backend> Clone for Inbox<DB> {
    fn clone(&self) -> Self {
        Inbox {
            store: self.store.clone(),
        }
    }
}

impl<DB: Backend> std::fmt::Debug for Inbox<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("database", &DB::LABEL)
            .finish()
    }
}

impl<DB: Backend> Inbox<DB> {
    pub(crate) fn new(store: Store<DB>) -> Self {
        Inbox { store }
    }
}

#[async_trait]
impl<DB: Backend> arch_events::transport::Inbox for Inbox<DB> {
    async fn handled(&self, id: MessageId) -> Result<bool, TransportError> {
        DB::inbox_has(self.store.pool(), &id.to_string())
            .await
            .map_err(|e| TransportError::new("reading the inbox", e))
    }
}
