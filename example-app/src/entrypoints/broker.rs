//! The broker entrypoint (Redis Streams): the outbox relay publishes the
//! external events (`line_allocated`), and a consumer per stream dispatches
//! the external commands (`change_batch_quantity`, `shipment_confirmed`),
//! with poison messages kept in `<stream>.dead`.

use std::sync::Arc;
use std::time::Duration;

use arch_events::transport::{Consumer, TransportError};
use arch_events::Bus;
use arch_events_redis::{RedisPublisher, RedisSubscriber};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::adapters::database::{redacted, Database};

/// The stream of batch quantity changes the app consumes.
pub const INBOUND_STREAM: &str = "change_batch_quantity";

/// The stream of shipment confirmations the app consumes.
pub const SHIPMENTS_STREAM: &str = "shipment_confirmed";

/// The consumer group of every instance of the app.
pub const CONSUMER_GROUP: &str = "allocation";

/// How long a delivery may stay unacknowledged by an instance before another
/// one claims it (the first one died).
pub const CLAIM_AFTER: Duration = Duration::from_secs(10);

/// The relay and the consumer, running.
#[derive(Debug)]
pub struct BrokerTasks {
    stop_relay: Arc<Notify>,
    relay: JoinHandle<()>,
    consumers: Vec<JoinHandle<()>>,
}

/// Connects to Redis at `url`, then starts the outbox relay (arch-events-sqlx's:
/// batches back to back while there are rows, a round every relay pause
/// when idle) and a consumer per inbound stream (as `consumer` in the
/// group).
pub async fn start(
    url: &str,
    consumer: &str,
    database: &Database,
    bus: Bus,
) -> Result<BrokerTasks, TransportError> {
    let publisher = Arc::new(RedisPublisher::new(arch_events_redis::connect(url).await?));
    let mut subscribers = Vec::new();
    for stream in [INBOUND_STREAM, SHIPMENTS_STREAM] {
        subscribers
            .push(RedisSubscriber::join(url, stream, CONSUMER_GROUP, consumer, CLAIM_AFTER).await?);
    }
    let stop_relay = Arc::new(Notify::new());
    let stop = stop_relay.clone();
    let outbox = database.clone();
    let relay = tokio::spawn(async move {
        outbox
            .relay(publisher, async move { stop.notified().await })
            .await
    });
    let consumers = subscribers
        .into_iter()
        .map(|subscriber| {
            tokio::spawn(
                Consumer::new(bus.clone(), subscriber)
                    .with_inbox(database.inbox())
                    .run(),
            )
        })
        .collect();
    tracing::info!(
        url = %redacted(url),
        streams = ?[INBOUND_STREAM, SHIPMENTS_STREAM],
        "broker: relaying the outbox and consuming"
    );
    Ok(BrokerTasks {
        stop_relay,
        relay,
        consumers,
    })
}

/// Relays the outbox of `database` to Redis at `url` until `stop` resolves:
/// the relay as a process of its own (`example-app relay`), beside app
/// instances that relay too or not at all.
pub async fn relay_only(
    url: &str,
    database: &Database,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), TransportError> {
    let publisher = Arc::new(RedisPublisher::new(arch_events_redis::connect(url).await?));
    tracing::info!(url = %redacted(url), "relaying the outbox");
    database.relay(publisher, stop).await;
    Ok(())
}

impl BrokerTasks {
    /// Stops the relay (after its current round). The consumer stops by
    /// itself once the bus is closed.
    pub async fn stop_relay(&mut self) {
        self.stop_relay.notify_one();
        if let Err(error) = (&mut self.relay).await {
            tracing::error!(%error, "the outbox relay ended badly");
        }
    }

    /// Waits for the consumers, once the bus is closed.
    pub async fn join_consumer(self) {
        for consumer in self.consumers {
            if let Err(error) = consumer.await {
                tracing::error!(%error, "a consumer ended badly");
            }
        }
    }
}
