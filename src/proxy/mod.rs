//! The TCP proxy: listeners, accept loops and connections.
//!
//! # Flow of one connection
//!
//! ```text
//! accept loop: listener readable ─> place from the service's limit ─> accept ─> spawn
//! connection:  load table ─> route for this listen address
//!              ─> pick ─> connect (timeout) ──refused/timeout──> eject backend, pick again (≤ retries)
//!              ─> PROXY header (v1/v2, optional)
//!              ─> [retry_on_empty] first reply ──closed unanswered──> resend to the next, no ejection (≤ retries)
//!              ─> forward both ways (half-close, idle timeout) ─> close
//! ```
//!
//! `retries` bounds the further backends one client connection may try,
//! whether a connect failed or a backend closed without answering.
//!
//! Every listening socket is shared by the proxy threads ([`workers`]), each
//! running one accept loop for it on its own event loop; a connection is
//! served to its end on the thread that accepted it.
//!
//! # Invariants
//!
//! - An accept loop takes a place from the service's limit *before* `accept`
//!   (and only once a connection is pending), so a service never holds more
//!   than `max_connections` client connections. Over the cap,
//!   connections wait in the kernel's listen backlog until one closes; when the
//!   backlog is full the kernel drops further SYNs and clients retry.
//! - An accept error (out of file descriptors, a connection reset before
//!   accept) is logged, backed off and survived; only the stop signal ends a
//!   loop. Stopping a loop drops its listener, so new connections are refused
//!   while accepted ones finish.
//! - The hot path loads the routing table once per connection and keeps the
//!   route's `Arc`: a reload never changes a connection in flight.

mod fd;
pub mod forward;
pub mod proxy_protocol;
#[cfg(target_os = "linux")]
mod splice;
pub mod workers;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Socket, TcpKeepalive, Type};

use self::fd::Connection;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use crate::balance::{ActiveConnection, PickContext};
use crate::metrics::{ClientFailure, ConnectFailure};
use crate::routing::{ConnectionPermit, Route, RoutingTable};

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

/// An accept loop yields to the connections already being served after
/// every this many accepts.
const ACCEPT_BATCH: u32 = 8;

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

/// Binds a non-blocking listening TCP socket with `SO_REUSEADDR` (a
/// restarted lbd rebinds at once despite connections in TIME_WAIT).
pub fn bind_listener(
    addr: SocketAddr,
    options: ListenOptions,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if options.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Accepted connections inherit these from the listener on Linux, which
    // saves four setsockopt calls per client connection.
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_keepalive(&keepalive())?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(options.backlog)?;
    Ok(socket.into())
}

static NEXT_LANE: AtomicUsize = AtomicUsize::new(0);

/// A cursor lane (see `balance`) for one listen address, shared by its
/// accept loops on every proxy thread so that its connections see one exact
/// round-robin.
pub fn next_lane() -> usize {
    NEXT_LANE.fetch_add(1, Ordering::Relaxed)
}

/// What an accept loop shares with the rest of the daemon.
#[derive(Clone)]
pub struct ProxyContext {
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// Tracks every connection task so shutdown can wait for them.
    pub connections: TaskTracker,
}

/// Accepts connections on `listener` for the route at `listen_addr`, picking
/// on cursor `lane`, until `stop` fires, then drops the listener.
/// Connections already accepted keep running in `ctx.connections`.
///
/// The loop waits until a connection is pending, then takes a place from the
/// service's limit, then accepts. Waiting for readiness first means that a
/// service with several listeners never parks places in idle accept loops.
/// After every `ACCEPT_BATCH`-th accept the loop yields, so that on a proxy
/// thread a burst of new clients does not starve the connections already
/// being served. It does not yield after every accept: on tokio's
/// single-threaded runtime each yield costs an `epoll_wait` that a busy
/// proxy would otherwise pay once per connection.
pub async fn accept_loop(
    listener: std::net::TcpListener,
    listen_addr: SocketAddr,
    lane: usize,
    ctx: ProxyContext,
    stop: CancellationToken,
) {
    let listener = match fd::register_listener(listener) {
        Ok(listener) => listener,
        Err(error) => {
            error!(%listen_addr, %error, "cannot register listener");
            return;
        }
    };
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut accepted: u32 = 0;
    loop {
        let mut ready = tokio::select! {
            ready = listener.readable() => match ready {
                Ok(ready) => ready,
                Err(error) => {
                    warn!(%listen_addr, %error, "listener failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF_MAX).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        // One table load per connection: the route taken here serves it.
        let Some(route) = ctx.table.load().route(&listen_addr).cloned() else {
            // The reload that removed this route stops this loop right after.
            stop.cancelled().await;
            return;
        };
        let permit = tokio::select! {
            permit = route.service.limit.acquire() => permit,
            () = stop.cancelled() => return,
        };
        match ready.try_io(|listener| accept_nonblocking(listener.get_ref())) {
            Ok(Ok((stream, peer))) => {
                backoff = ACCEPT_BACKOFF_MIN;
                match fd::register_connection(stream) {
                    Ok(stream) => {
                        ctx.connections.spawn(serve_connection(
                            stream,
                            peer,
                            listen_addr,
                            route,
                            lane,
                            permit,
                        ));
                    }
                    Err(error) => {
                        warn!(%listen_addr, %peer, %error, "cannot register accepted connection");
                    }
                }
                accepted = accepted.wrapping_add(1);
                if accepted % ACCEPT_BATCH == 0 {
                    // Let the connections just accepted start, and the
                    // event loop run, before the next accept.
                    tokio::task::yield_now().await;
                }
            }
            Ok(Err(error)) => {
                warn!(%listen_addr, %error, ?backoff, "accept failed; backing off");
                drop(permit);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
            // Nothing was pending after all (another waker, or the client
            // gave up); readiness is cleared and the place given back.
            Err(_would_block) => {}
        }
    }
}

/// Accepts a pending connection as a non-blocking socket: on Linux in one
/// `accept4(SOCK_NONBLOCK)` instead of `accept` and an `ioctl`.
#[cfg(target_os = "linux")]
fn accept_nonblocking(
    listener: &std::net::TcpListener,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    use rustix::net::{acceptfrom_with, SocketFlags};
    let (socket, peer) = acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
    let peer = peer
        .and_then(|peer| SocketAddr::try_from(peer).ok())
        .ok_or_else(|| io::Error::other("accepted a connection without an IP peer address"))?;
    Ok((socket.into(), peer))
}

#[cfg(not(target_os = "linux"))]
fn accept_nonblocking(
    listener: &std::net::TcpListener,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let (stream, peer) = listener.accept()?;
    stream.set_nonblocking(true)?;
    Ok((stream, peer))
}

/// Serves one client connection to its end.
async fn serve_connection(
    client: Connection,
    peer: SocketAddr,
    listen_addr: SocketAddr,
    route: Arc<Route>,
    lane: usize,
    _permit: ConnectionPermit,
) {
    let service = &route.service;
    service.metrics.active.inc();
    let _active = scopeguard(|| service.metrics.active.dec());
    // The address the client reached: the real IP behind a wildcard
    // listener, asked for only by a PROXY header.
    let local_addr = || client.get_ref().local_addr().unwrap_or(listen_addr);
    let mut attempts_left = 1 + route.settings.retries;

    let Some(mut upstream) =
        open_upstream(&route, peer, &local_addr, lane, &mut attempts_left, &[]).await
    else {
        return;
    };
    if route.settings.retry_on_empty {
        let mut sent = forward::SentBytes::new();
        loop {
            let backend = upstream.connection.backend();
            let reply = forward::first_reply(
                &client,
                &upstream.stream,
                &mut sent,
                route.settings.idle_timeout,
                &backend.metrics.bytes_in,
                &backend.metrics.bytes_out,
            )
            .await;
            match reply {
                Ok(forward::FirstReply::Forward) => break,
                Ok(forward::FirstReply::IdleTimeout) => return,
                Ok(forward::FirstReply::Unanswered) => {
                    // Not ejected: a request that makes backends hang up
                    // must not take them all out. A dead backend refuses
                    // the next connect and is ejected for that.
                    backend.metrics.unanswered.inc();
                    debug!(service = %service.name, %peer, backend = %backend.addr, sent = sent.as_slice().len(), "closed before answering; resending elsewhere");
                    let Some(next) = open_upstream(
                        &route,
                        peer,
                        &local_addr,
                        lane,
                        &mut attempts_left,
                        sent.as_slice(),
                    )
                    .await
                    else {
                        return;
                    };
                    upstream = next;
                }
                Err(error) => {
                    debug!(service = %service.name, %peer, backend = %backend.addr, %error, "connection ended by error");
                    return;
                }
            }
        }
    }

    let backend = upstream.connection.backend();
    match forward::forward(
        &client,
        &upstream.stream,
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

/// A backend connection ready to forward on.
struct Upstream {
    stream: Connection,
    connection: ActiveConnection,
}

/// Connects to a backend (see [`connect_backend`]), sends the PROXY header
/// if the service wants one, then `replay`: what the client sent to a
/// backend that closed without answering. When the replay cannot be sent
/// the next backend is tried. `None` means the client is closed.
async fn open_upstream(
    route: &Route,
    peer: SocketAddr,
    local_addr: &impl Fn() -> SocketAddr,
    lane: usize,
    attempts_left: &mut u32,
    replay: &[u8],
) -> Option<Upstream> {
    loop {
        let (stream, connection) = connect_backend(route, peer, lane, attempts_left).await?;
        let backend = connection.backend();
        backend.metrics.connections.inc();
        if let Some(header) =
            proxy_protocol::header(route.settings.proxy_protocol, peer, local_addr)
        {
            if let Err(error) = forward::write_prelude(&stream, header.as_bytes()).await {
                debug!(service = %route.service.name, backend = %backend.addr, %error, "PROXY header not sent");
                return None;
            }
        }
        if replay.is_empty() {
            return Some(Upstream { stream, connection });
        }
        match forward::write_prelude(&stream, replay).await {
            Ok(()) => {
                backend.metrics.bytes_in.inc_by(replay.len() as u64);
                return Some(Upstream { stream, connection });
            }
            Err(error) => {
                backend.metrics.unanswered.inc();
                debug!(service = %route.service.name, backend = %backend.addr, %error, "replay not sent");
            }
        }
    }
}

/// Picks a backend and connects to it; a refused or timed-out connect ejects
/// that backend and tries another while `attempts_left` lasts. `None` means
/// the client gets closed without a backend (counted by reason).
async fn connect_backend(
    route: &Route,
    peer: SocketAddr,
    lane: usize,
    attempts_left: &mut u32,
) -> Option<(Connection, ActiveConnection)> {
    let ctx = PickContext {
        client: peer.ip(),
        lane,
    };
    while *attempts_left > 0 {
        *attempts_left -= 1;
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
                return Some((stream, connection));
            }
            Err(failure) => failure,
        };
        backend.metrics.connect_failed(failure);
        // A local shortage (descriptors, ephemeral ports) says nothing about
        // the backend, so it is not ejected for it.
        if failure != ConnectFailure::Local {
            backend.eject(route.settings.eject_time);
        }
        debug!(service = %route.service.name, backend = %backend.addr, ?failure, attempts_left = *attempts_left, "connect failed");
    }
    route
        .service
        .metrics
        .client_failed(ClientFailure::AllAttemptsFailed);
    None
}

/// Connects a non-blocking socket (TCP_NODELAY and keepalive set before
/// the handshake) and waits for the handshake up to `timeout`.
async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Connection, ConnectFailure> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)
        .map_err(|_| ConnectFailure::Local)?;
    // Failing to set these only costs the optimisations.
    let _ = socket.set_tcp_nodelay(true);
    let _ = socket.set_tcp_keepalive(&keepalive());
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) => return Err(classify(&e)),
    }
    let stream = fd::register_connection(socket.into()).map_err(|_| ConnectFailure::Local)?;
    let handshake = async {
        // A connecting socket turns writable when the handshake is done or
        // has failed. A failure (refused, reset, unreachable) also raises
        // EPOLLERR or EPOLLHUP, which tokio reports as write-closed; only
        // then is the error fetched (`SO_ERROR`), so a connect that worked
        // costs no system call for the check.
        let mut ready = stream.writable().await?;
        ready.retain_ready();
        if ready.ready().is_write_closed() {
            if let Some(error) = stream.get_ref().take_error()? {
                return Err(error);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(ConnectFailure::Timeout),
    }
}

fn classify(error: &io::Error) -> ConnectFailure {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
        io::ErrorKind::TimedOut => ConnectFailure::Timeout,
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse => ConnectFailure::Local,
        _ => ConnectFailure::Other,
    }
}

/// Keepalive probes on both sides of a proxied connection: dead peers are
/// noticed even on idle connections.
fn keepalive() -> TcpKeepalive {
    TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
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

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::SockRef;

    #[test]
    fn accepted_connections_are_non_blocking_know_their_peer_and_inherit_options() {
        let listener =
            bind_listener("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).expect("bind");
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, peer) = accept_nonblocking(&listener).expect("accept");
        assert_eq!(peer, client.local_addr().unwrap());
        let sock = SockRef::from(&accepted);
        assert!(sock.nonblocking().unwrap());
        // Inherited from the listener: no setsockopt per connection.
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
    }
}
