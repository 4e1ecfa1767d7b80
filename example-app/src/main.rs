//! Runs the allocation service: `cargo run -p example-app`, then
//! `curl localhost:5005/allocations/order-1`. See `--help` for settings.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arch_events::BuildError;
use clap::Parser;
use example_app::adapters::database::{self, Database, DatabaseError};
use example_app::adapters::memory::InMemoryProducts;
use example_app::config::{Command, Config};
use example_app::entrypoints::{broker, http};
use example_app::{bootstrap, Adapters};
use tokio::net::TcpListener;

/// How long shutdown waits for dispatches still running.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error(transparent)]
    Wiring(#[from] BuildError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    AdminToken(#[from] http::BadAdminToken),
    #[error("cannot start the broker entrypoint: {0}")]
    Broker(arch_events::transport::TransportError),
    #[error("the relay publishes to Redis: give --redis-url or REDIS_URL")]
    RelayWithoutBroker,
    #[error("cannot rebuild the allocations view: {}", with_causes(.0.as_ref()))]
    Rebuild(arch_events::BoxError),
    #[error("cannot start the delivery of stored events: {0}")]
    Recovery(#[from] arch_events_sqlx::Error),
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Config::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), StartError> {
    if let Some(Command::Describe) = config.command {
        // The wiring does not depend on the adapters: describe it over
        // in-memory ones, without touching the database.
        let store = Arc::new(InMemoryProducts::default());
        let bus = bootstrap(Adapters::in_memory(&store))?;
        let wiring = bus.describe();
        println!("{}", wiring.to_table());
        print!("{}", wiring.to_mermaid());
        return Ok(());
    }
    let settings = config.store_settings();
    let http_settings = config.http_settings()?;
    if let Some(Command::RebuildView) = config.command {
        // The database's own storage: a rebuild never chooses it.
        let database = Database::connect_with(&config.database_url, settings).await?;
        let rebuilt = database.rebuild_view().await;
        database.close().await;
        let events = rebuilt.map_err(StartError::Rebuild)?;
        println!("rebuilt the allocations view from {events} events");
        return Ok(());
    }
    if let Some(Command::Relay) = config.command {
        let url = config
            .redis_url
            .as_deref()
            .ok_or(StartError::RelayWithoutBroker)?;
        let database = Database::connect_with(&config.database_url, settings).await?;
        let relayed = broker::relay_only(url, &database, shutdown_signal()).await;
        database.close().await;
        relayed.map_err(StartError::Broker)?;
        tracing::info!("relay stopped");
        return Ok(());
    }
    let database = Database::open(&config.database_url, settings, config.storage).await?;
    let adapters = Adapters::for_database(&database)
        .shipment_deadline(config.shipment_deadline())
        .event_retry_wait(config.event_retry_wait());
    let dead_letters = adapters.dead_letters.clone();
    let bus = bootstrap(adapters)?;
    // Events committed but not handled (a crash, a task torn down) are
    // delivered again, from now on.
    let recovery = database.start_recovery(&bus)?;
    // Shipment deadlines, and what the sagas send, fire when due.
    let scheduler = database.start_scheduler(&bus);
    // With `--storage events`, the allocations view follows the streams.
    let projection = database.start_projection();
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.bind,
            source,
        })?;
    let mut broker = match &config.redis_url {
        Some(url) => {
            let consumer = config
                .consumer_name
                .clone()
                .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
            Some(
                broker::start(url, &consumer, &database, bus.clone())
                    .await
                    .map_err(StartError::Broker)?,
            )
        }
        None => None,
    };
    let addr = listener.local_addr().unwrap_or(config.bind);
    tracing::info!(
        database = %database::redacted(&config.database_url),
        storage = %database.storage(),
        "listening on http://{addr}"
    );
    let state = http::AppState::new(bus.clone(), dead_letters, config.max_commands as usize);
    http::serve(
        listener,
        state,
        http_settings.fit_open_files_limit(),
        shutdown_signal(),
    )
    .await;
    // The server has stopped taking requests and finished those in flight;
    // the relay stops after its round; the bus now refuses new dispatches
    // and lets any still running finish (their events included); the
    // consumer and the recovery stop with it; the store leaves, so that
    // another process takes over at once whatever is left.
    if let Some(broker) = &mut broker {
        broker.stop_relay().await;
    }
    if let Err(error) = bus.shutdown(SHUTDOWN_GRACE).await {
        tracing::warn!(%error, "stopping anyway");
    }
    if let Some(broker) = broker {
        broker.join_consumer().await;
    }
    scheduler.stop().await;
    recovery.stop().await;
    if let Some(projection) = projection {
        projection.stop().await;
    }
    database.close().await;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// `error` and its sources, `: `-separated.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// This machine's name, for the consumer's name.
fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "allocation".to_owned())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
