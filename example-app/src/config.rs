//! Settings, from the command line or the environment.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::adapters::storage::Storage;
use crate::entrypoints::http::{self, AdminToken, BadAdminToken};

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

    /// How a new database keeps the products: `state`, as rows of their
    /// current state (the default for a new database), or `events`, as a
    /// stream of events per product, the allocations view then kept by a
    /// catch-up projection. A database keeps what it was created with:
    /// without this setting the service follows it, and asking for the
    /// other one is refused at start.
    #[arg(long = "storage", env = "STORAGE")]
    pub storage: Option<Storage>,

    /// Redis, for the broker entrypoint: relays the outbox to the stream
    /// `line_allocated` and consumes `change_batch_quantity`. Without it the
    /// app runs alone (external events stay in the outbox).
    #[arg(long = "redis-url", env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// This instance's name in the consumer group (default: host and pid).
    #[arg(long = "consumer-name", env = "CONSUMER_NAME")]
    pub consumer_name: Option<String>,

    /// How long an order's allocations wait for its shipment to be
    /// confirmed (`POST /orders/<orderid>/shipped`, or the stream
    /// `shipment_confirmed`), from its first allocation: then they are
    /// released, their units returned to their batches. In seconds; 0
    /// turns the watch off (no new order is watched, and confirming one is
    /// a 404; a watch started before goes on to its deadline with the
    /// lines it knew, see the guide's chapter 12).
    #[arg(
        long = "shipment-deadline-secs",
        env = "SHIPMENT_DEADLINE_SECS",
        default_value_t = 2 * 24 * 60 * 60,
        value_parser = clap::value_parser!(u64).range(0..=365 * 24 * 60 * 60)
    )]
    pub shipment_deadline_secs: u64,

    /// How long an event handler that failed waits for its first retry,
    /// in milliseconds; each next one waits twice as long (at most 5
    /// minutes). The retries wait in the database's scheduler, not in the
    /// request that raised the event.
    #[arg(
        long = "event-retry-wait-ms",
        env = "EVENT_RETRY_WAIT_MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(1..=300_000)
    )]
    pub event_retry_wait_ms: u64,

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

    /// How long a client has to send a request's line and headers, from
    /// the moment its connection waits for one: a new connection, or one
    /// kept alive after an answer (so this is also the idle keep-alive
    /// timeout). Then the connection is closed.
    #[arg(
        long = "header-timeout-ms",
        env = "HEADER_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(100..=3_600_000)
    )]
    pub header_timeout_ms: u64,

    /// How long a request may take from its headers to its answer, its body
    /// included: then it is answered 408. A command still running goes on
    /// to its end (its task is not cancelled).
    #[arg(
        long = "request-timeout-ms",
        env = "REQUEST_TIMEOUT_MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(100..=3_600_000)
    )]
    pub request_timeout_ms: u64,

    /// How long an answer's write may make no progress (a client that
    /// stops reading): then the connection is closed.
    #[arg(
        long = "write-timeout-ms",
        env = "WRITE_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(100..=3_600_000)
    )]
    pub write_timeout_ms: u64,

    /// How many connections are open at once: the next ones wait in the
    /// listen backlog until one closes. Lowered at start to what the
    /// process's open-files limit leaves room for.
    #[arg(
        long = "max-connections",
        env = "MAX_CONNECTIONS",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub max_connections: u32,

    /// How many commands may be in progress at once (a command whose client
    /// hung up or timed out still runs to its end, and counts): the next
    /// ones are answered 503 with `Retry-After: 1`.
    #[arg(
        long = "max-commands",
        env = "MAX_COMMANDS",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub max_commands: u32,

    /// The largest request body, in bytes: a larger one is answered 413.
    #[arg(
        long = "max-body-bytes",
        env = "MAX_BODY_BYTES",
        default_value_t = 65_536,
        value_parser = clap::value_parser!(u32).range(64..=1_073_741_824)
    )]
    pub max_body_bytes: u32,

    /// The token of the operations routes (`/dead_letters`), sent as
    /// `Authorization: Bearer <token>`; at least 16 characters. Without it
    /// those routes do not exist (404). Prefer the environment variable:
    /// a command-line argument is visible to every user of the machine
    /// (`ps`, `/proc/<pid>/cmdline`).
    #[arg(long = "admin-token", env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Config {
    /// How long an order's allocations wait for its shipment.
    pub fn shipment_deadline(&self) -> crate::service_layer::shipment::ShipmentDeadline {
        crate::service_layer::shipment::ShipmentDeadline(Duration::from_secs(
            self.shipment_deadline_secs,
        ))
    }

    /// How long an event handler's first retry waits.
    pub fn event_retry_wait(&self) -> Duration {
        Duration::from_millis(self.event_retry_wait_ms)
    }

    /// The timings of the durable messaging store.
    pub fn store_settings(&self) -> arch_events_sqlx::Settings {
        let node_timeout = Duration::from_millis(self.node_timeout_ms);
        arch_events_sqlx::Settings::default()
            .relay_pause(Duration::from_millis(self.relay_pause_ms))
            .heartbeat_every((node_timeout / 4).min(Duration::from_secs(1)))
            .node_timeout(node_timeout)
    }
}

impl Config {
    /// The HTTP server's settings; an error for an admin token that is too
    /// short to be one.
    pub fn http_settings(&self) -> Result<http::Settings, BadAdminToken> {
        Ok(http::Settings {
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            max_connections: self.max_connections as usize,
            max_body_bytes: self.max_body_bytes as usize,
            admin_token: self
                .admin_token
                .as_ref()
                .map(|token| AdminToken::new(&token.0))
                .transpose()?,
        })
    }
}

/// A setting that `Debug` does not show.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl FromStr for Secret {
    type Err = Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Secret(text.to_owned()))
    }
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Prints the bus's wiring (every message, its handlers, their
    /// dependencies and the events they release) as a table, then as a
    /// Mermaid flowchart; touches no database.
    Describe,
    /// With `--storage events`: rebuilds the allocations view from the
    /// products' streams, beside the live one, swaps it in, then exits
    /// (services running on the database serve the live view meanwhile).
    RebuildView,
    /// Runs only the outbox relay (needs `--redis-url`): publishes the
    /// external events committed by any instance, until Ctrl-C. Several
    /// relays, in app instances or on their own, never publish one row at
    /// once.
    Relay,
}
