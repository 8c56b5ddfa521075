//! UDP published ports and VIPs: a session per client flow, relayed to
//! one backend.
//!
//! # Layout and flow
//!
//! ```text
//! Proxy::start_listener (UDP address) ─> bind one SO_REUSEPORT socket per proxy thread
//!   (listeners::bind_udp_copies): the kernel hashes each flow to one of them
//! serve (one per proxy thread and address)
//!   readable ─> load the table, route for ADDR/udp ─> up to BATCH datagrams:
//!     recv_from into the loop's buffer ─> Sessions::forward (session.rs)
//!   every sweep tick ─> Sessions::expire (udp_idle_timeout; dead sessions)
//!   stop ─> the table drops: every session's socket closes, its relay is aborted
//! ```
//!
//! - [`session`]: the flow table, a session's connected socket to its
//!   backend, and the relay that sends the backend's replies back from the
//!   published socket (so the client hears the address it sent to).
//! - [`service`]: a service's open-session count (`max_udp_sessions`, per
//!   node over all its UDP ports and threads) and UDP metric handles,
//!   carried over by identity like the rest of the service's state.
//! - [`metrics`]: the UDP families; a UDP backend also has the data plane's
//!   per-backend series under `backend="ADDR/udp"`.
//!
//! # Invariants
//!
//! - A flow (client address and port) sticks to one backend while its
//!   session lives, chosen by the service's algorithm with the client's IP
//!   as Maglev's key, so Maglev keeps a client on its backend on every
//!   node. A session ends after `udp_idle_timeout` without a datagram
//!   either way, when its backend refuses (ejected like a refused TCP
//!   connect; the next datagram picks again), is ejected by another flow's
//!   refusal, or leaves the route's set.
//! - The loop loads the table once per batch; a route change never needs
//!   the loop's help, and a removed route stops the loop (its listener's
//!   token).
//! - No lock, no allocation per datagram: buffers are the loop's and the
//!   thread's, counters are resolved handles. Batching: each readable
//!   wake-up drains up to [`session::BATCH`] datagrams before the loop
//!   yields; `recvmmsg`/`sendmmsg` are not used (each reply goes to its
//!   own client, and each request to its own session socket).

pub mod metrics;
pub mod service;
mod session;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::discovery::ProtoAddr;
use crate::routing::RoutingTable;
use session::{Clock, Sessions, BATCH, MAX_DATAGRAM};

/// Longest time between two sweeps of the session table; a short
/// `udp_idle_timeout` sweeps four times per timeout (at least every
/// [`SWEEP_MIN`]), so a session outlives its timeout by at most a quarter.
const SWEEP_MAX: Duration = Duration::from_secs(1);
const SWEEP_MIN: Duration = Duration::from_millis(5);

/// Pause after a socket error before the loop waits on it again.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);

fn sweep_period(idle: Duration) -> Duration {
    (idle / 4).clamp(SWEEP_MIN, SWEEP_MAX)
}

/// Serves the UDP route of `listen_addr` on `socket` (this thread's
/// SO_REUSEPORT copy), picking on cursor `lane`, until `stop` fires.
pub async fn serve(
    socket: std::net::UdpSocket,
    listen_addr: SocketAddr,
    lane: usize,
    table: Arc<ArcSwap<RoutingTable>>,
    stop: CancellationToken,
) {
    let socket = match UdpSocket::from_std(socket) {
        Ok(socket) => Arc::new(socket),
        Err(error) => {
            error!(%listen_addr, %error, "cannot register udp socket");
            return;
        }
    };
    let key = ProtoAddr::udp(listen_addr);
    let clock = Clock::start();
    let mut sessions = Sessions::new(Arc::clone(&socket), lane, clock);
    let mut buffer = vec![0u8; MAX_DATAGRAM].into_boxed_slice();
    let mut next_sweep = Instant::now() + SWEEP_MAX;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next_sweep) => {
                let idle = table.load().route(&key).map(|route| route.settings.udp_idle_timeout);
                let idle = idle.unwrap_or(SWEEP_MAX);
                let expired = sessions.expire(clock.now_ms(), idle);
                if expired > 0 {
                    debug!(%listen_addr, expired, open = sessions.len(), "udp sessions expired");
                }
                next_sweep = Instant::now() + sweep_period(idle);
            }
            ready = socket.readable() => {
                if let Err(error) = ready {
                    warn!(%listen_addr, %error, "udp socket failed; retrying");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                    continue;
                }
                let table = table.load();
                let Some(route) = table.route(&key) else {
                    // The change that removed this route stops this loop.
                    stop.cancelled().await;
                    return;
                };
                let now = clock.now_ms();
                for _ in 0..BATCH {
                    match socket.try_recv_from(&mut buffer) {
                        Ok((len, client)) => sessions.forward(&buffer[..len], client, route, now),
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        Err(error) => {
                            // An unconnected socket reports no ICMP errors;
                            // anything else is one datagram's trouble.
                            debug!(%listen_addr, %error, "udp receive failed");
                            break;
                        }
                    }
                }
            }
        }
    }
}
