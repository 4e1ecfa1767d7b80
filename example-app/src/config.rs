//! Settings, from the command line or the environment.

use std::net::SocketAddr;

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

    /// Database to use; the SQLite file is created when missing.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "sqlite://allocation.db"
    )]
    pub database_url: String,

    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Prints the bus's wiring (every message, its handlers, their
    /// dependencies and the events they release) as a table, then as a
    /// Mermaid flowchart; touches no database.
    Describe,
}
