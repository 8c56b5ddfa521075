//! Accept loops: one per proxy thread and listen address.
//!
//! ```text
//! listener readable ─> load table, route for this address ─> place from the service's limit
//!   ─> accept4 ─> register ─> spawn the connection (on this thread) ─> every 8th: yield
//! ```
//!
//! # Invariants
//!
//! - A loop takes a place from the service's limit *before* `accept` (and
//!   only once a connection is pending), so a service never holds more than
//!   `max_connections` client connections. Over the cap, connections wait in
//!   the kernel's listen backlog until one closes; when the backlog is full
//!   the kernel drops further SYNs and clients retry.
//! - An accept error (out of file descriptors, a connection reset before
//!   accept) is logged, backed off and survived; only the stop signal ends a
//!   loop. Stopping a loop drops its listener, so new connections are
//!   refused while accepted ones finish.
//! - A service with `max_connections_per_client` also gives each client
//!   address a share: a connection over it is closed right after `accept`
//!   (counted in `lbmesh_connections_refused_total{reason="per_client"}`).
//!   Only such a service touches the per-client counts.
//! - The loop loads the routing table once per connection and hands the
//!   route's `Arc` to it: a reload never changes a connection in flight.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use crate::access_log::AccessLog;
use crate::connection::serve_connection;
use crate::discovery::ProtoAddr;
use crate::fd;
use crate::routing::RoutingTable;

/// First and longest pause after an accept error.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// An accept loop yields to the connections already being served after
/// every this many accepts.
const ACCEPT_BATCH: u32 = 8;

static NEXT_LANE: AtomicUsize = AtomicUsize::new(0);

/// A cursor lane (see `balance`) for one listen address, shared by its
/// accept loops on every proxy thread so that its connections see one exact
/// round-robin.
pub fn next_lane() -> usize {
    NEXT_LANE.fetch_add(1, Ordering::Relaxed)
}

/// What an accept loop shares with the rest of the proxy.
#[derive(Clone)]
pub struct ProxyContext {
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// Tracks every connection task so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Where a service with `access_log` on sends its closed connections.
    pub access_log: Option<AccessLog>,
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
    let key = ProtoAddr::tcp(listen_addr);
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
        let Some(route) = ctx.table.load().route(&key).cloned() else {
            // The reload that removed this route stops this loop right after.
            stop.cancelled().await;
            return;
        };
        let permit = match route.service.limit.try_acquire() {
            Some(permit) => permit,
            None => {
                route.service.metrics.max_reached.inc();
                tokio::select! {
                    permit = route.service.limit.acquire() => permit,
                    () = stop.cancelled() => return,
                }
            }
        };
        match ready.try_io(|listener| accept_nonblocking(listener.get_ref())) {
            Ok(Ok((stream, peer))) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let client = match route.settings.max_connections_per_client {
                    0 => None,
                    max => match route.service.clients.try_take(peer.ip(), max) {
                        Some(place) => Some(place),
                        None => {
                            // Closed at once: this address holds its share.
                            route.service.metrics.refused_per_client.inc();
                            debug!(%listen_addr, %peer, max, "over the per-client cap; closed");
                            continue;
                        }
                    },
                };
                match fd::register_connection(stream) {
                    Ok(stream) => {
                        let access_log = if route.settings.access_log {
                            ctx.access_log.clone()
                        } else {
                            None
                        };
                        ctx.connections.spawn(serve_connection(
                            stream,
                            peer,
                            listen_addr,
                            route,
                            lane,
                            (permit, client),
                            access_log,
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

#[cfg(test)]
mod tests {
    use socket2::SockRef;

    use super::*;
    use crate::listeners::{bind_listener, ListenOptions};
    use crate::tcp::KEEPALIVE_IDLE;

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
