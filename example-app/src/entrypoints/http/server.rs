//! Serving the API over HTTP/1.1 (hyper), with every wait bounded, so that
//! idle or slow clients cannot hold the server:
//!
//! - a connection has [`Settings::header_timeout`] to send a request's line
//!   and headers, counted from the moment it waits for one (a new
//!   connection, or one kept alive after an answer): a client that sends
//!   nothing, or half a head, is cut off then;
//! - a request has [`Settings::request_timeout`] from its headers to its
//!   answer, its body included: a client that sends half a body gets a 408
//!   and is cut off;
//! - an answer's write may make no progress for at most
//!   [`Settings::write_timeout`] (a client that stops reading an answer
//!   larger than the kernel's buffers): then the connection is closed;
//! - at most [`Settings::max_connections`] connections are open at once: the
//!   accept loop takes a slot before it accepts, so the next connections
//!   wait in the kernel's listen backlog (served in turn as slots free up,
//!   or refused by the kernel once the backlog is full) instead of using up
//!   the process's file descriptors. HTTP/1.1 carries one request at a time
//!   per connection, so this also bounds the requests being read and
//!   answered (a command whose client hung up or timed out still runs to
//!   its end, on a task of its own);
//! - at shutdown, the connections still open after the request timeout and
//!   the header timeout are dropped.
//!
//! HTTP/2 is not served (HTTPS and HTTP/2 belong to the proxy in front).
//! What hyper answers itself, before the API sees a request: a head (request
//! line and headers) over [`HYPER_MAX_HEAD_BYTES`] (a URI over 64 KiB
//! included), or with more than [`HYPER_MAX_HEADERS`] headers, gets hyper's
//! own 431 with an empty body, and the connection is closed; so does a head
//! that is not HTTP (a 400). Anything smaller reaches the API, whose own,
//! lower limits answer in JSON ([`MAX_URI_BYTES`](super::MAX_URI_BYTES),
//! [`MAX_HEADER_BYTES`](super::MAX_HEADER_BYTES),
//! [`MAX_HEADERS`](super::MAX_HEADERS)).

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_io_timeout::TimeoutStream;

use super::{router, AdminToken, AppState};

/// The largest request head hyper reads (request line and headers): well
/// above the API's own limits, so that those answer first, in JSON.
pub const HYPER_MAX_HEAD_BYTES: usize = 64 * 1024;

/// The most headers hyper parses in a request: above the API's own limit.
pub const HYPER_MAX_HEADERS: usize = 2 * super::MAX_HEADERS;

/// File descriptors kept for everything but client connections (the
/// listener, the database pool, the broker, logs).
const FILES_KEPT: u64 = 128;

/// How the server treats its clients: see the module's documentation.
/// [`Config::http_settings`](crate::config::Config::http_settings) makes
/// one from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a connection may take to send a request's line and headers,
    /// from the moment it waits for one (also the idle keep-alive timeout).
    pub header_timeout: Duration,
    /// How long a request may take from its headers to its answer.
    pub request_timeout: Duration,
    /// How long a write of an answer may make no progress.
    pub write_timeout: Duration,
    /// How many connections are open at once.
    pub max_connections: usize,
    /// The largest request body, in bytes.
    pub max_body_bytes: usize,
    /// The token of the operations routes; `None`: they do not exist.
    pub admin_token: Option<AdminToken>,
}

impl Settings {
    /// Raises this process's soft limit on open files to its hard limit,
    /// and lowers [`max_connections`](Self::max_connections) if the limit
    /// still leaves no room for them (an accept that fails for want of a
    /// file descriptor would stall every client).
    pub fn fit_open_files_limit(mut self) -> Self {
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => {
                let room =
                    usize::try_from(limit.saturating_sub(FILES_KEPT).max(1)).unwrap_or(usize::MAX);
                if room < self.max_connections {
                    tracing::warn!(
                        open_files_limit = limit,
                        "at most {room} connections, not {}: the open-files limit leaves no room for more",
                        self.max_connections
                    );
                    self.max_connections = room;
                }
            }
            Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
        }
        self
    }
}

/// Serves the API on `listener` until `shutdown` completes; then stops
/// accepting, lets the requests in flight finish (each is bounded by the
/// request timeout; an idle connection closes at once, one that sent half
/// a head within the header timeout) and returns, dropping what is still
/// open after both timeouts.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = router(state, &settings);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_header_size(HYPER_MAX_HEAD_BYTES)
        .max_headers(HYPER_MAX_HEADERS);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let connections = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let Some((stream, slot)) = accepted else {
            continue;
        };
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(settings.write_timeout));
        let connection = http.serve_connection(
            TokioIo::new(Box::pin(stream)),
            TowerToHyperService::new(app.clone()),
        );
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            // A client that went silent, sent garbage or hung up: nothing
            // to report above debug (an attacker would fill the logs).
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed");
            }
            drop(slot);
        });
    }
    // Connections still in the backlog are refused from now on.
    drop(listener);
    let grace = settings.request_timeout + settings.header_timeout;
    if tokio::time::timeout(grace, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "connections still open after the grace period are dropped"
        );
    }
}

/// Takes a connection slot, then accepts a connection; `None` after an
/// accept error (logged, and followed by a pause when it is not about that
/// one connection: out of file descriptors, say).
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    let slot = Arc::clone(slots).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _)) => Some((stream, slot)),
        Err(error) if is_connection_error(&error) => None,
        Err(error) => {
            tracing::error!(%error, "cannot accept a connection");
            tokio::time::sleep(Duration::from_secs(1)).await;
            None
        }
    }
}

/// An accept error about the one connection, not the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
