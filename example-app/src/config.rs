//! Settings, from the command line or the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// The allocation service.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "example-app",
    version,
    about = "The allocation service, on arch-events"
)]
pub struct Config {
    /// Address to serve HTTP on.
    #[arg(long = "bind", env = "BIND_ADDR", default_value = "127.0.0.1:5005")]
    pub bind: SocketAddr,

    /// Database to use: `sqlite://<file>` (created when missing) or
    /// `postgres://<user>@<host>:<port>/<database>` (for several instances
    /// sharing one database). The schema is brought up to date at start.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "sqlite://allocation.db"
    )]
    pub database_url: String,

    /// Redis, for the broker entrypoint: relays the outbox to the stream
    /// `line_allocated` and consumes `change_batch_quantity`. Without it the
    /// app runs alone (external events stay in the outbox).
    #[arg(long = "redis-url", env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// This instance's name in the consumer group (default: host and pid).
    #[arg(long = "consumer-name", env = "CONSUMER_NAME")]
    pub consumer_name: Option<String>,

    /// How long the outbox relay waits between rounds when it found nothing.
    /// A large value is a fault-injection switch: events commit but are not
    /// relayed yet (kill the process, restart it, nothing is lost).
    #[arg(long = "relay-pause-ms", env = "RELAY_PAUSE_MS", default_value_t = 100)]
    pub relay_pause_ms: u64,

    /// How long a process may go silent before the others take over the
    /// events it was delivering (its heartbeat is every second, or every
    /// quarter of this when that is shorter).
    #[arg(
        long = "node-timeout-ms",
        env = "NODE_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1_000..=86_400_000)
    )]
    pub node_timeout_ms: u64,

    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Config {
    /// The timings of the durable messaging store.
    pub fn store_settings(&self) -> bus_sqlx::Settings {
        let node_timeout = Duration::from_millis(self.node_timeout_ms);
        bus_sqlx::Settings::default()
            .relay_pause(Duration::from_millis(self.relay_pause_ms))
            .heartbeat_every((node_timeout / 4).min(Duration::from_secs(1)))
            .node_timeout(node_timeout)
    }
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Prints the bus's wiring (every message, its handlers, their
    /// dependencies and the events they release) as a table, then as a
    /// Mermaid flowchart; touches no database.
    Describe,
    /// Runs only the outbox relay (needs `--redis-url`): publishes the
    /// external events committed by any instance, until Ctrl-C. Several
    /// relays, in app instances or on their own, never publish one row at
    /// once.
    Relay,
}
