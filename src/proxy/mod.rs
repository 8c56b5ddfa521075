//! The TCP proxy: listeners, accept loops and connections.
//!
//! # Flow of one connection
//!
//! ```text
//! accept loop: permit from the service's limit ─> accept ─> spawn
//! connection:  load table ─> route for this listen address
//!              ─> pick ─> connect (timeout) ──refused/timeout──> eject backend, pick again (≤ retries)
//!              ─> PROXY header (v1/v2, optional) ─> forward both ways (half-close, idle timeout) ─> close
//! ```
//!
//! # Invariants
//!
//! - An accept loop takes a connection permit *before* `accept`, so a service
//!   never holds more than `max_connections` client connections. Over the cap,
//!   connections wait in the kernel's listen backlog until one closes; when the
//!   backlog is full the kernel drops further SYNs and clients retry.
//! - An accept error (out of file descriptors, a connection reset before
//!   accept) is logged, backed off and survived; only the stop signal ends a
//!   loop. Stopping a loop drops its listener, so new connections are refused
//!   while accepted ones finish.
//! - The hot path loads the routing table once per connection and keeps the
//!   route's `Arc`: a reload never changes a connection in flight.

pub mod forward;
pub mod proxy_protocol;
#[cfg(target_os = "linux")]
mod splice;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::balance::{ActiveConnection, PickContext};
use crate::metrics::{ClientFailure, ConnectFailure};
use crate::routing::{Route, RoutingTable};

/// Listen backlog: room for a burst of connections while the cap is reached
/// or the accept loop is busy; the kernel clamps it to `somaxconn`.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Keepalive probes start after this much silence, so a peer that vanished
/// without a FIN or RST is found in minutes, not hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// First and longest pause after an accept error.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Options for a listening socket.
#[derive(Debug, Clone, Copy)]
pub struct ListenOptions {
    pub backlog: i32,
    /// Lets several sockets (in one process or several) share the address;
    /// the kernel spreads connections over them.
    pub reuse_port: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            backlog: LISTEN_BACKLOG,
            reuse_port: false,
        }
    }
}

/// Binds a listening TCP socket with `SO_REUSEADDR` (a restarted lbd rebinds
/// at once despite connections in TIME_WAIT).
pub fn bind_listener(addr: SocketAddr, options: ListenOptions) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if options.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(options.backlog)?;
    TcpListener::from_std(socket.into())
}

/// Hands each accept loop its own cursor lane (see `balance`).
static NEXT_LANE: AtomicUsize = AtomicUsize::new(0);

/// What an accept loop shares with the rest of the daemon.
#[derive(Clone)]
pub struct ProxyContext {
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// Tracks every connection task so shutdown can wait for them.
    pub connections: TaskTracker,
}

/// Accepts connections on `listener` for the route at `listen_addr` until
/// `stop` fires, then drops the listener. Connections already accepted keep
/// running in `ctx.connections`.
pub async fn accept_loop(
    listener: TcpListener,
    listen_addr: SocketAddr,
    ctx: ProxyContext,
    stop: CancellationToken,
) {
    let lane = NEXT_LANE.fetch_add(1, Ordering::Relaxed);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let Some(limit) = ctx
            .table
            .load()
            .route(&listen_addr)
            .map(|r| Arc::clone(&r.service.limit))
        else {
            // The reload that removed this route stops this loop right after.
            stop.cancelled().await;
            return;
        };
        let permit = tokio::select! {
            permit = limit.acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return, // the semaphore is never closed
            },
            () = stop.cancelled() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let table = ctx.table.load();
                let Some(route) = table.route(&listen_addr).cloned() else {
                    continue;
                };
                ctx.connections
                    .spawn(serve_connection(stream, peer, route, lane, permit));
            }
            Err(error) => {
                warn!(%listen_addr, %error, ?backoff, "accept failed; backing off");
                drop(permit);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Serves one client connection to its end.
async fn serve_connection(
    client: TcpStream,
    peer: SocketAddr,
    route: Arc<Route>,
    lane: usize,
    _permit: OwnedSemaphorePermit,
) {
    let service = &route.service;
    service.metrics.active.inc();
    let _active = scopeguard(|| service.metrics.active.dec());
    configure_socket(&client);

    let Some((backend_stream, connection)) = connect_backend(&route, peer, lane).await else {
        return;
    };
    let backend = connection.backend();
    backend.metrics.connections.inc();

    if let Some(header) = proxy_protocol::header(
        route.settings.proxy_protocol,
        peer,
        client.local_addr().unwrap_or(peer),
    ) {
        if let Err(error) = forward::write_all(&backend_stream, header.as_bytes()).await {
            debug!(service = %service.name, backend = %backend.addr, %error, "PROXY header not sent");
            return;
        }
    }

    match forward::forward(
        &client,
        &backend_stream,
        route.settings.idle_timeout,
        &backend.metrics.bytes_in,
        &backend.metrics.bytes_out,
    )
    .await
    {
        Ok(outcome) => {
            debug!(service = %service.name, %peer, backend = %backend.addr, ?outcome, "connection closed")
        }
        Err(error) => {
            debug!(service = %service.name, %peer, backend = %backend.addr, %error, "connection ended by error")
        }
    }
}

/// Picks a backend and connects to it; a refused or timed-out connect ejects
/// that backend and tries another, up to `retries` more times. `None` means
/// the client gets closed without a backend (counted by reason).
async fn connect_backend(
    route: &Route,
    peer: SocketAddr,
    lane: usize,
) -> Option<(TcpStream, ActiveConnection)> {
    let ctx = PickContext {
        client: peer.ip(),
        lane,
    };
    let attempts = 1 + route.settings.retries as usize;
    for attempt in 0..attempts {
        let Some(backend) = route.backends.pick(ctx) else {
            route
                .service
                .metrics
                .client_failed(ClientFailure::NoBackend);
            return None;
        };
        let connection = backend.track_connection();
        let started = std::time::Instant::now();
        let failure = match connect(backend.addr, route.settings.connect_timeout).await {
            Ok(stream) => {
                backend
                    .metrics
                    .connect_duration
                    .observe(started.elapsed().as_secs_f64());
                configure_socket(&stream);
                return Some((stream, connection));
            }
            Err(failure) => failure,
        };
        backend.metrics.connect_failed(failure);
        backend.eject(route.settings.eject_time);
        debug!(service = %route.service.name, backend = %backend.addr, ?failure, attempt, "connect failed; backend ejected");
    }
    route
        .service
        .metrics
        .client_failed(ClientFailure::AllAttemptsFailed);
    None
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectFailure> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|_| ConnectFailure::Other)?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Err(ConnectFailure::Refused),
        Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => Err(ConnectFailure::Timeout),
        Ok(Err(_)) => Err(ConnectFailure::Other),
        Err(_) => Err(ConnectFailure::Timeout),
    }
}

/// TCP_NODELAY (a proxy must not add Nagle delay to small writes) and
/// keepalive (dead peers are noticed even on idle connections). Failures only
/// cost those optimisations, so they are ignored.
fn configure_socket(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Runs `f` when dropped, whatever path leaves the scope.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
