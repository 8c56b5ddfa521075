//! The node's DNS responder: service names to VIPs, for containers and
//! host processes, other names to the node's own resolvers.
//!
//! # Layout and flow
//!
//! ```text
//! registry change ─> keep_names: NamesKeeper::next (diffed with the state before it)
//!                     ─> ArcSwap<Names> (one store)
//! UDP datagram ─> answer::decide(bytes, names.load())
//!                   ├ Answer ─> send_to the client (on the receive loop: no allocation
//!                   │           beyond the answer, no await but the send)
//!                   ├ Forward ─> a task (at most MAX_FORWARDS at once, else dropped: the
//!                   │            client retries) ─> upstream::forward ─> send_to the client
//!                   │            (SERVFAIL when no upstream answers)
//!                   └ Drop
//! TCP connection (a place taken before accept, at most MAX_TCP) ─> up to
//!   MAX_TCP_QUERIES length-framed queries, each within TCP_IDLE ─> the same decision
//! ```
//!
//! - [`names`]: the names of the cluster's services, stacks and domain.
//! - [`answer`]: one query to a decision (pure; FORMERR, NXDOMAIN, A/AAAA).
//! - [`upstream`]: resolv.conf's resolvers and forwarding to them.
//!
//! The responder listens on port 53 of the VIP range's first address
//! (`198.18.0.0` in the default range): made local on every node with the
//! range (see [`crate::vip_route`]), so containers reach it through their
//! bridge gateway as they reach VIPs, and host processes too. Sockets use
//! `SO_REUSEPORT`, so nodes sharing a machine share the address, as they
//! share VIPs. It runs on the control runtime, never on the proxy threads,
//! and every wait in it is bounded: a flood of queries costs dropped
//! queries, never a stalled proxy.

pub mod answer;
pub mod names;
pub mod upstream;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use lbmesh_proxy::listeners::{bind_listener, bind_udp_copies, ListenOptions};
use raft_state::store::Applied;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use answer::Decision;
use names::{Names, NamesKeeper};
use upstream::Transport;

/// The port the responder listens on: resolvers know no other.
pub const PORT: u16 = 53; // fixed-port-ok: DNS

/// Forwarded queries under way at once (each holds a socket for up to
/// two seconds per upstream); more are dropped and the client retries.
const MAX_FORWARDS: usize = 256;

/// TCP connections at once; more wait in the listen backlog.
const MAX_TCP: usize = 64;

/// Queries one TCP connection may send before it is closed.
const MAX_TCP_QUERIES: usize = 64;

/// How long a TCP connection may take to send its next query.
const TCP_IDLE: Duration = Duration::from_secs(5);

/// How long after a failed bind the responder tries again.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// The largest UDP query read (a query is one question: far smaller).
const MAX_UDP_QUERY: usize = 4096;

/// The responder's shared state: the names now and where others go.
pub struct Responder {
    pub names: Arc<ArcSwap<Names>>,
    pub upstreams: Vec<SocketAddr>,
}

/// The address the responder of a cluster whose VIP range starts at
/// `range_base` listens on.
pub fn listen_addr(range_base: IpAddr) -> SocketAddr {
    SocketAddr::new(range_base, PORT)
}

/// Binds UDP and TCP on `addr`, both with `SO_REUSEPORT`.
pub fn bind(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let udp = bind_udp_copies(addr, false, 1)?
        .pop()
        .ok_or_else(|| io::Error::other("no UDP socket"))?;
    let tcp = bind_listener(
        addr,
        ListenOptions {
            reuse_port: true,
            ..ListenOptions::default()
        },
    )?;
    Ok((UdpSocket::from_std(udp)?, TcpListener::from_std(tcp)?))
}

/// Serves `udp` and `tcp` until `shutdown` resolves.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    responder: Arc<Responder>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::select! {
        () = serve_udp(Arc::new(udp), Arc::clone(&responder)) => {}
        () = serve_tcp(tcp, responder) => {}
        () = shutdown => {}
    }
}

/// Binds `addr` (retrying every [`BIND_RETRY`], with one warning) and
/// serves it until `stop`.
pub async fn run(addr: SocketAddr, responder: Arc<Responder>, stop: CancellationToken) {
    let mut warned = false;
    let (udp, tcp) = loop {
        match bind(addr) {
            Ok(sockets) => break sockets,
            Err(error) => {
                if !warned {
                    warn!(%addr, %error, "cannot bind the DNS responder; retrying every 5s");
                    warned = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(BIND_RETRY) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    };
    info!(%addr, upstreams = ?responder.upstreams, "DNS responder serving");
    serve(udp, tcp, responder, stop.cancelled_owned()).await;
}

/// Updates `names` with each applied registry state that changes them
/// (see [`NamesKeeper`]) until `stop`.
pub async fn keep_names(
    names: Arc<ArcSwap<Names>>,
    mut changes: watch::Receiver<Applied>,
    stop: CancellationToken,
) {
    let mut keeper = NamesKeeper::default();
    loop {
        let state = Arc::clone(&changes.borrow_and_update().state);
        if let Some(next) = keeper.next(&names.load(), &state) {
            names.store(Arc::new(next));
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, responder: Arc<Responder>) {
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    let mut buf = vec![0; MAX_UDP_QUERY];
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                debug!(%error, "DNS receive failed");
                continue;
            }
        };
        let query = &buf[..len];
        let decision = answer::decide(query, &responder.names.load());
        match decision {
            Decision::Answer(bytes) => {
                let _ = socket.send_to(&bytes, client).await;
            }
            Decision::Drop => {}
            Decision::Forward => {
                let Ok(permit) = Arc::clone(&forwards).try_acquire_owned() else {
                    continue;
                };
                let (socket, responder, query) =
                    (Arc::clone(&socket), Arc::clone(&responder), query.to_vec());
                tokio::spawn(async move {
                    let reply = forwarded(&query, &responder.upstreams, Transport::Udp).await;
                    if let Some(reply) = reply {
                        let _ = socket.send_to(&reply, client).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// The upstream's answer to `query`, or SERVFAIL when none answered.
async fn forwarded(
    query: &[u8],
    upstreams: &[SocketAddr],
    transport: Transport,
) -> Option<Vec<u8>> {
    match upstream::forward(query, upstreams, transport).await {
        Some(reply) => Some(reply),
        None => answer::server_failure(query),
    }
}

async fn serve_tcp(listener: TcpListener, responder: Arc<Responder>) {
    let places = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let Ok(place) = Arc::clone(&places).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let responder = Arc::clone(&responder);
                tokio::spawn(async move {
                    serve_connection(stream, &responder).await;
                    drop(place);
                });
            }
            Err(error) => {
                debug!(%error, "DNS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Up to [`MAX_TCP_QUERIES`] length-framed queries on one connection.
async fn serve_connection(mut stream: TcpStream, responder: &Responder) {
    for _ in 0..MAX_TCP_QUERIES {
        let read = async {
            let len = stream.read_u16().await?;
            let mut query = vec![0; usize::from(len)];
            stream.read_exact(&mut query).await?;
            io::Result::Ok(query)
        };
        let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read).await else {
            return;
        };
        let decision = answer::decide(&query, &responder.names.load());
        let reply = match decision {
            Decision::Answer(bytes) => Some(bytes),
            Decision::Forward => forwarded(&query, &responder.upstreams, Transport::Tcp).await,
            Decision::Drop => None,
        };
        let Some(reply) = reply else { return };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}
