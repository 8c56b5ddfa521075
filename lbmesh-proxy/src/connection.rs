//! One client connection, from accept to close.
//!
//! ```text
//! pick ─> connect (timeout) ──refused/timeout──> eject backend, pick again (≤ retries)
//!      ─> PROXY header (v1/v2, optional)
//!      ─> [retry_on_empty] first reply ──closed unanswered──> resend to the next, no ejection (≤ retries)
//!                                      ──silent past reply_timeout──> eject, resend to the next (≤ retries)
//!      ─> forward both ways (half-close, idle timeout) ─> close
//! ```
//!
//! `retries` bounds the further backends one client connection may try,
//! whether a connect failed or a backend closed without answering. A
//! connection that ends in an error counts it against the side at fault
//! (`lbmesh_forward_errors_total{side}`); every connection's end and
//! duration are counted per service (`lbmesh_connections_closed_total{end}`,
//! `lbmesh_connection_duration_seconds`), and each backend tried after the
//! first in `lbmesh_retries_total`; a service with `access_log` on also
//! hands a [`Record`] of the connection to the access log at its close
//! (`access_log`). A backend's first ejection after
//! a success and its first success after an ejection are logged at INFO,
//! once each, within a process-wide rate limit (`log_limit`).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tracing::{debug, info};

use crate::access_log::{AccessLog, Ended, Record};
use crate::balance::{now_ms, ActiveConnection, PickContext};
use crate::connect::connect;
use crate::error::{ClientFailure, ConnectFailure, End, Side};
use crate::fd::Connection;
use crate::forward::{self, Tally};
use crate::limit::{ClientPlace, ConnectionPermit};
use crate::log_limit::RateLimit;
use crate::proxy_protocol;
use crate::routing::Route;

/// The budget of "backend ejected" and "backend recovered" lines, shared
/// by every service of the process.
pub(crate) static BACKEND_EVENTS: RateLimit = RateLimit::new();

/// Serves one client connection to its end, holding its places (the
/// service's permit and, under a per-client cap, the client's share) until
/// it closes; then, if the service logs access, offers its line to
/// `access_log`.
pub async fn serve_connection(
    client: Connection,
    peer: SocketAddr,
    listen_addr: SocketAddr,
    route: Arc<Route>,
    lane: usize,
    _places: (ConnectionPermit, Option<ClientPlace>),
    access_log: Option<AccessLog>,
) {
    let service = &route.service;
    service.metrics.active.inc();
    let _active = scopeguard(|| service.metrics.active.dec());
    let started = std::time::Instant::now();
    let mut trail = Trail::default();
    let end = forward_client(&client, peer, listen_addr, &route, lane, &mut trail).await;
    let duration = started.elapsed();
    service.metrics.connection_closed(end, duration);
    if let Some(log) = access_log {
        log.record(Record {
            at: std::time::SystemTime::now(),
            service: Arc::clone(&service.name),
            client: peer,
            listen: listen_addr,
            backend: trail.backend,
            bytes_in: trail.bytes_in.into_inner(),
            bytes_out: trail.bytes_out.into_inner(),
            duration,
            retries: (1 + route.settings.retries)
                .saturating_sub(trail.attempts_left)
                .saturating_sub(1),
            end: Ended::of(end, trail.closed_first),
        });
    }
}

/// What one connection did, for its access log line.
struct Trail {
    /// The client's bytes delivered to a backend (a replay counts once).
    bytes_in: AtomicU64,
    /// The backends' bytes delivered to the client.
    bytes_out: AtomicU64,
    /// The backend forwarded to last.
    backend: Option<SocketAddr>,
    /// Connect attempts left of `1 + retries` (set when forwarding starts).
    attempts_left: u32,
    /// The side whose EOF came first, for a connection that finished.
    closed_first: Side,
}

impl Default for Trail {
    fn default() -> Self {
        Self {
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            backend: None,
            attempts_left: 0,
            closed_first: Side::Client,
        }
    }
}

/// Takes one client connection through its backends to its end.
async fn forward_client(
    client: &Connection,
    peer: SocketAddr,
    listen_addr: SocketAddr,
    route: &Route,
    lane: usize,
    trail: &mut Trail,
) -> End {
    let service = &route.service;
    // The address the client reached: the real IP behind a wildcard
    // listener, asked for only by a PROXY header.
    let local_addr = || client.get_ref().local_addr().unwrap_or(listen_addr);
    trail.attempts_left = 1 + route.settings.retries;

    let Some(mut upstream) = open_upstream(
        route,
        peer,
        &local_addr,
        lane,
        &mut trail.attempts_left,
        &[],
    )
    .await
    else {
        return End::NoBackend;
    };
    trail.backend = Some(upstream.connection.backend().addr);
    if route.settings.retry_on_empty {
        let mut sent = forward::SentBytes::new();
        loop {
            let backend = upstream.connection.backend();
            let reply = forward::first_reply(
                client,
                &upstream.stream,
                &mut sent,
                forward::FirstReplyTimeouts {
                    idle: route.settings.idle_timeout,
                    reply: route.settings.reply_timeout,
                },
                Tally {
                    metric: &backend.metrics.bytes_in,
                    total: &trail.bytes_in,
                },
                Tally {
                    metric: &backend.metrics.bytes_out,
                    total: &trail.bytes_out,
                },
            )
            .await;
            match reply {
                Ok(forward::FirstReply::Forward) => break,
                Ok(forward::FirstReply::IdleTimeout) => return End::IdleTimeout,
                Ok(
                    unanswered @ (forward::FirstReply::Unanswered | forward::FirstReply::Silent),
                ) => {
                    // A backend that hung up is not ejected: a request that
                    // makes backends hang up must not take them all out, and
                    // a dead backend refuses the next connect and is ejected
                    // for that. A silent one is: its next connect may well
                    // succeed (a cut-off host's kernel still holds the
                    // listener), so only this says it is gone.
                    backend.metrics.unanswered.inc();
                    if unanswered == forward::FirstReply::Silent
                        && backend.eject(route.settings.eject_time)
                    {
                        if let Some(suppressed) = BACKEND_EVENTS.admit(now_ms()) {
                            info!(service = %service.name, backend = %backend.addr, failure = "silent", eject_for = ?route.settings.eject_time, suppressed, "backend ejected");
                        }
                    }
                    debug!(service = %service.name, %peer, backend = %backend.addr, sent = sent.as_slice().len(), ?unanswered, "not answered; resending elsewhere");
                    let Some(next) = open_upstream(
                        route,
                        peer,
                        &local_addr,
                        lane,
                        &mut trail.attempts_left,
                        sent.as_slice(),
                    )
                    .await
                    else {
                        return End::NoBackend;
                    };
                    upstream = next;
                    trail.backend = Some(upstream.connection.backend().addr);
                }
                Err(error) => {
                    service.metrics.forward_failed(error.side);
                    debug!(service = %service.name, %peer, backend = %backend.addr, %error, "connection ended by error");
                    return End::error(error.side);
                }
            }
        }
    }

    let backend = upstream.connection.backend();
    match forward::forward(
        client,
        &upstream.stream,
        route.settings.idle_timeout,
        Tally {
            metric: &backend.metrics.bytes_in,
            total: &trail.bytes_in,
        },
        Tally {
            metric: &backend.metrics.bytes_out,
            total: &trail.bytes_out,
        },
    )
    .await
    {
        Ok(outcome) => {
            debug!(service = %service.name, %peer, backend = %backend.addr, ?outcome, "connection closed");
            match outcome {
                forward::Outcome::Finished { closed_first } => {
                    trail.closed_first = closed_first;
                    End::Finished
                }
                forward::Outcome::IdleTimeout => End::IdleTimeout,
            }
        }
        Err(error) => {
            service.metrics.forward_failed(error.side);
            debug!(service = %service.name, %peer, backend = %backend.addr, %error, "connection ended by error");
            End::error(error.side)
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
        if *attempts_left < route.settings.retries {
            route.service.metrics.retries.inc();
        }
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
                if backend.connected() {
                    if let Some(suppressed) = BACKEND_EVENTS.admit(now_ms()) {
                        info!(service = %route.service.name, backend = %backend.addr, suppressed, "backend recovered");
                    }
                }
                return Some((stream, connection));
            }
            Err(failure) => failure,
        };
        backend.metrics.connect_failed(failure);
        // A local shortage (descriptors, ephemeral ports) says nothing about
        // the backend, so it is not ejected for it.
        if failure != ConnectFailure::Local && backend.eject(route.settings.eject_time) {
            if let Some(suppressed) = BACKEND_EVENTS.admit(now_ms()) {
                info!(service = %route.service.name, backend = %backend.addr, ?failure, eject_for = ?route.settings.eject_time, suppressed, "backend ejected");
            }
        }
        debug!(service = %route.service.name, backend = %backend.addr, ?failure, attempts_left = *attempts_left, "connect failed");
    }
    route
        .service
        .metrics
        .client_failed(ClientFailure::AllAttemptsFailed);
    None
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
