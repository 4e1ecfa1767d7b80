//! How often and how long: the store's timings, with defaults that suit a
//! service of a few processes.

use std::time::Duration;

/// The store's timings. Start from [`Settings::default`] and change what
/// you need:
///
/// ```
/// use std::time::Duration;
/// use arch_events_sqlx::Settings;
///
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let settings = Settings::default()
///     .node_timeout(Duration::from_secs(5))
///     .relay_batch(1_000);
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let store = arch_events_sqlx::Store::open_with(pool, settings).await?;
/// # store.close().await;
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[derive(Debug, Clone)]
pub struct Settings {
    pub(crate) heartbeat_every: Duration,
    pub(crate) node_timeout: Duration,
    pub(crate) recover_every: Duration,
    pub(crate) recovery_batch: u32,
    pub(crate) max_recoveries: u32,
    pub(crate) relay_batch: u32,
    pub(crate) relay_pause: Duration,
    pub(crate) outbox_lease: Duration,
    pub(crate) keep_sent: Duration,
    pub(crate) purge_every: Duration,
    pub(crate) dead_letter_claim: Duration,
    pub(crate) publish_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_every: Duration::from_secs(1),
            node_timeout: Duration::from_secs(10),
            recover_every: Duration::from_secs(1),
            recovery_batch: 100,
            max_recoveries: 5,
            relay_batch: 500,
            relay_pause: Duration::from_millis(100),
            outbox_lease: Duration::from_secs(30),
            keep_sent: Duration::from_secs(7 * 24 * 60 * 60),
            purge_every: Duration::from_secs(60 * 60),
            dead_letter_claim: Duration::from_secs(5 * 60),
            publish_timeout: Duration::from_secs(30),
        }
    }
}

impl Settings {
    /// How often this process tells the others it is alive (default 1 s).
    pub fn heartbeat_every(mut self, every: Duration) -> Self {
        self.heartbeat_every = every;
        self
    }

    /// How long a process may go without a heartbeat before the others take
    /// over the events it was delivering (default 10 s). It is the setting
    /// of the process that takes over that counts; a process restarted
    /// after a crash is a new node, and takes over its predecessor's events
    /// once this long has passed. Longer than any pause a live process
    /// makes (a stop-the-world of its host), or two processes may deliver
    /// one event at once (a handler that commits a unit of work still has
    /// its effect once; others may run twice). Nodes silent for a day are
    /// forgotten.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// How often the recovery loop looks for events to deliver again
    /// (default 1 s); it also wakes at once when this process let go of an
    /// event it had not delivered.
    pub fn recover_every(mut self, every: Duration) -> Self {
        self.recover_every = every;
        self
    }

    /// How many events a recovery round takes up at most (default 100).
    pub fn recovery_batch(mut self, batch: u32) -> Self {
        self.recovery_batch = batch.max(1);
        self
    }

    /// After how many recoveries an event whose delivery never finishes (a
    /// handler that kills its process) goes to the dead letters, one letter
    /// per handler that never completed (default 5).
    pub fn max_recoveries(mut self, max: u32) -> Self {
        self.max_recoveries = max.max(1);
        self
    }

    /// How many outbox rows a relay round publishes at most (default 500).
    pub fn relay_batch(mut self, batch: u32) -> Self {
        self.relay_batch = batch.max(1);
        self
    }

    /// How long a relay waits after a round that found nothing (default
    /// 100 ms).
    pub fn relay_pause(mut self, pause: Duration) -> Self {
        self.relay_pause = pause;
        self
    }

    /// How long a SQLite relay's claim on the rows it publishes lasts: after
    /// that (the relay died), another relay may publish them (default
    /// 30 s). PostgreSQL relays hold row locks instead.
    pub fn outbox_lease(mut self, lease: Duration) -> Self {
        self.outbox_lease = lease;
        self
    }

    /// How long a sent outbox row is kept before a relay deletes it
    /// (default 7 days).
    pub fn keep_sent(mut self, keep: Duration) -> Self {
        self.keep_sent = keep;
        self
    }

    /// How often a relay deletes the sent rows older than
    /// [`keep_sent`](Self::keep_sent) (default 1 hour).
    pub fn purge_every(mut self, every: Duration) -> Self {
        self.purge_every = every;
        self
    }

    /// How long a relay waits for the broker to take a batch before it gives
    /// the round up (default 30 s): a PostgreSQL relay holds the batch's
    /// rows locked meanwhile.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Whether these timings can work: a heartbeat, a node timeout of
    /// several heartbeats, a recovery that runs.
    pub(crate) fn check(&self) -> Result<(), String> {
        let floor = Duration::from_millis(10);
        if self.heartbeat_every < floor || self.recover_every < floor {
            return Err(format!(
                "heartbeat_every ({:?}) and recover_every ({:?}) must be at least {floor:?}",
                self.heartbeat_every, self.recover_every
            ));
        }
        let ceiling = Duration::from_secs(24 * 60 * 60);
        if self.node_timeout > ceiling {
            return Err(format!(
                "node_timeout ({:?}) must be at most a day: a process silent that long is dead",
                self.node_timeout
            ));
        }
        if self.node_timeout < self.heartbeat_every * 3 {
            return Err(format!(
                "node_timeout ({:?}) must be at least three heartbeats ({:?} each): \
                 with less, live processes take each other for dead",
                self.node_timeout, self.heartbeat_every
            ));
        }
        if self.publish_timeout.is_zero() {
            return Err("publish_timeout must not be zero".into());
        }
        Ok(())
    }

    /// How long a replay's claim on its dead letter lasts: a replay whose
    /// process died frees its letter after that (default 5 min).
    pub fn dead_letter_claim(mut self, claim: Duration) -> Self {
        self.dead_letter_claim = claim;
        self
    }
}
