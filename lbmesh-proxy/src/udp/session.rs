//! One proxy thread's UDP sessions on one published address: the table
//! from client flow to backend socket, and each session's reply relay.
//!
//! ```text
//! client datagram (flow = client addr:port)
//!   ─> table hit, session alive, its backend still in the route's set ─> send on its socket
//!   ─> otherwise: place from the service's cap ─> pick (balance) ─> connected socket to the
//!      backend ─> spawn its reply relay ─> send
//! reply relay (one task per session, on this thread)
//!   backend socket readable ─> recv into the thread's buffer ─> send_to the client from the
//!   published socket   ──ECONNREFUSED──> eject the backend, mark the session dead
//! sweep (the serve loop, every tick) ─> drop sessions idle past udp_idle_timeout, and dead ones
//! ```
//!
//! # Invariants
//!
//! - The table belongs to one serve loop on one thread: no lock. A
//!   session's relay shares only atomics with it (its last activity, its
//!   dead flag) and is aborted when its entry leaves the table.
//! - A session's table entry holds a place of the service's cap
//!   ([`SessionPlace`]) and its backend's in-flight count
//!   ([`ActiveConnection`], which least-conn reads), and gives both back the
//!   moment it leaves the table; its socket closes when the aborted relay
//!   lets go of it.
//! - Nothing is allocated per datagram: the client side sends from the
//!   serve loop's buffer, every relay of a thread receives into that
//!   thread's one buffer (it is never held across an `.await`), and sends
//!   go straight to the non-blocking socket (a full buffer drops the
//!   datagram, as a router would, and counts it).
//! - A refused send or receive (ICMP port unreachable on the connected
//!   socket) ejects the backend as a refused TCP connect does; the flow's
//!   next datagram picks again, and so does the next datagram of every
//!   other flow on that backend while a pick would choose another.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, SockAddr, SockRef, Socket, Type};
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;
use tracing::{debug, info};

use crate::balance::{now_ms, ActiveConnection, Backend, BackendSet, PickContext};
use crate::connection::BACKEND_EVENTS;
use crate::error::ConnectFailure;
use crate::routing::Route;
use crate::udp::metrics::{DropReason, UdpBackendMetrics};
use crate::udp::service::{SessionPlace, UdpService};

/// Largest UDP payload (IPv4's 65,507 rounded up; IPv6 jumbograms aside):
/// a buffer this size never truncates a datagram.
pub const MAX_DATAGRAM: usize = 65_536;

/// Datagrams a relay moves before it yields to the thread's other tasks.
pub const BATCH: usize = 32;

thread_local! {
    /// The reply buffer of every relay on this proxy thread: a relay holds
    /// it only between one `recv` and its `send_to`, never across an await.
    static REPLY_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_DATAGRAM].into_boxed_slice());
}

/// Milliseconds on tokio's clock since the serve loop started (so tests
/// may pause it); read once per batch of datagrams.
#[derive(Clone, Copy)]
pub struct Clock(tokio::time::Instant);

impl Clock {
    pub fn start() -> Self {
        Self(tokio::time::Instant::now())
    }

    pub fn now_ms(self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// What a session's relay shares with the table.
struct Session {
    socket: UdpSocket,
    backend: Arc<Backend>,
    udp: Arc<UdpBackendMetrics>,
    service: Arc<UdpService>,
    /// [`Clock`] milliseconds of the last datagram either way.
    last_seen: AtomicU64,
    /// Set when the backend refused: the flow's next datagram picks again.
    dead: AtomicBool,
}

/// A session as the table holds it.
struct Entry {
    session: Arc<Session>,
    /// The set the backend was picked from: while the route's set is this
    /// one, the backend is known to be in it.
    set: Arc<BackendSet>,
    relay: AbortHandle,
    /// Counted against the backend (least-conn) and the service's cap
    /// while the entry is in the table.
    _active: ActiveConnection,
    _place: SessionPlace,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

impl Entry {
    /// Whether the flow may go on with this session under `route`: alive,
    /// its backend still one of the route's (checked once per change of the
    /// set), and not ejected (another flow's datagram was refused there)
    /// while a pick would choose another: so one refusal moves every flow
    /// of a dead backend, and while all are ejected (the pick fails open to
    /// this one) the session stays.
    fn usable(&mut self, route: &Route, ctx: PickContext) -> bool {
        if self.session.dead.load(Ordering::Relaxed) {
            return false;
        }
        let backend = &self.session.backend;
        if !Arc::ptr_eq(&self.set, &route.backends) {
            if !route
                .backends
                .backends()
                .iter()
                .any(|b| Arc::ptr_eq(b, backend))
            {
                return false;
            }
            self.set = Arc::clone(&route.backends);
        }
        if backend.is_ejected() {
            return route
                .backends
                .pick(ctx)
                .is_none_or(|other| Arc::ptr_eq(other, backend));
        }
        true
    }
}

/// One serve loop's sessions.
pub struct Sessions {
    table: HashMap<SocketAddr, Entry>,
    /// The published socket replies leave from.
    published: Arc<UdpSocket>,
    lane: usize,
    clock: Clock,
}

impl Sessions {
    pub fn new(published: Arc<UdpSocket>, lane: usize, clock: Clock) -> Self {
        Self {
            table: HashMap::new(),
            published,
            lane,
            clock,
        }
    }

    /// Sessions open in this table.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Sends one client datagram on to its flow's backend, opening (or
    /// re-opening) the flow's session first when it needs one. A flow with
    /// a usable session costs one look-up and one send.
    pub fn forward(&mut self, data: &[u8], client: SocketAddr, route: &Route, now: u64) {
        let Some(udp) = route.udp.as_ref() else {
            return;
        };
        let ctx = PickContext {
            client: client.ip(),
            lane: self.lane,
        };
        if let Some(entry) = self.table.get_mut(&client) {
            if entry.usable(route, ctx) {
                match send(&entry.session, data, now) {
                    Ok(()) => return,
                    // The backend refused an earlier datagram of this flow
                    // (ICMP port unreachable): eject it, and this datagram
                    // goes to a fresh pick below.
                    Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                        refused(&entry.session, route);
                    }
                    Err(error) => {
                        debug!(service = %route.service.name, %client, %error, "udp send to backend failed");
                        udp.metrics.count_drop(DropReason::Error);
                        return;
                    }
                }
            }
        }
        // No session, or one that may not go on: its places go back first.
        self.table.remove(&client);
        let Some(entry) = self.open(client, route, udp) else {
            return;
        };
        if let Err(error) = send(&entry.session, data, now) {
            debug!(service = %route.service.name, %client, %error, "udp send to backend failed");
            udp.metrics.count_drop(DropReason::Error);
        }
        self.table.insert(client, entry);
    }

    /// A new session for `client`: a place, a backend, a connected socket
    /// and its relay; `None` (counted) when one of them is not to be had.
    fn open(&self, client: SocketAddr, route: &Route, udp: &Arc<UdpService>) -> Option<Entry> {
        let Some(place) = udp.try_open(route.settings.max_udp_sessions) else {
            udp.metrics.count_drop(DropReason::OverCap);
            return None;
        };
        let ctx = PickContext {
            client: client.ip(),
            lane: self.lane,
        };
        let Some(backend) = route.backends.pick(ctx) else {
            udp.metrics.count_drop(DropReason::NoBackend);
            return None;
        };
        let socket = match connected_socket(backend) {
            Ok(socket) => socket,
            Err(error) => {
                debug!(service = %route.service.name, backend = %backend.addr, %error, "cannot open a udp session socket");
                backend.metrics.connect_failed(ConnectFailure::of(&error));
                udp.metrics.count_drop(DropReason::Error);
                return None;
            }
        };
        let udp_metrics = backend.metrics.udp.clone()?;
        backend.metrics.connections.inc();
        let session = Arc::new(Session {
            socket,
            backend: Arc::clone(backend),
            udp: udp_metrics,
            service: Arc::clone(udp),
            last_seen: AtomicU64::new(self.clock.now_ms()),
            dead: AtomicBool::new(false),
        });
        let relay = tokio::spawn(relay_replies(
            Arc::clone(&session),
            Arc::clone(&self.published),
            client,
            route.settings.eject_time,
            Arc::clone(&route.service.name),
            self.clock,
        ))
        .abort_handle();
        Some(Entry {
            session,
            set: Arc::clone(&route.backends),
            relay,
            _active: backend.track_connection(),
            _place: place,
        })
    }

    /// Drops the sessions idle for `idle` or longer at `now`, counting
    /// them as expired, and the dead ones. Returns how many expired.
    pub fn expire(&mut self, now: u64, idle: Duration) -> usize {
        let idle = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let mut expired = 0;
        self.table.retain(|_, entry| {
            let session = &entry.session;
            if session.dead.load(Ordering::Relaxed) {
                return false;
            }
            let last = session.last_seen.load(Ordering::Relaxed);
            if now.saturating_sub(last) < idle {
                return true;
            }
            session.service.metrics.expired.inc();
            expired += 1;
            false
        });
        expired
    }
}

/// A non-blocking UDP socket connected to `backend`, registered with this
/// thread's reactor; the kernel binds it to an ephemeral port.
fn connected_socket(backend: &Backend) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(backend.addr),
        Type::DGRAM.nonblocking().cloexec(),
        None,
    )?;
    socket.connect(&backend.addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Sends one client datagram on the session's socket, straight to the
/// kernel (a full buffer is `WouldBlock`: the caller drops it).
fn send(session: &Session, data: &[u8], now: u64) -> io::Result<()> {
    SockRef::from(&session.socket).send(data)?;
    session.last_seen.store(now, Ordering::Relaxed);
    session.udp.datagrams_in.inc();
    session.backend.metrics.bytes_in.inc_by(data.len() as u64);
    Ok(())
}

/// The backend of `session` refused: count it, eject the backend (logged
/// once, within the process-wide budget) and end the session.
fn refused(session: &Session, route: &Route) {
    session.dead.store(true, Ordering::Relaxed);
    eject(
        &session.backend,
        route.settings.eject_time,
        &route.service.name,
    );
}

fn eject(backend: &Backend, eject_time: Duration, service: &str) {
    backend.metrics.connect_failed(ConnectFailure::Refused);
    if backend.eject(eject_time) {
        if let Some(suppressed) = BACKEND_EVENTS.admit(now_ms()) {
            info!(%service, backend = %backend.addr, protocol = "udp", failure = "refused", eject_for = ?eject_time, suppressed, "backend ejected");
        }
    }
}

/// Relays the backend's replies of one session to its client, from the
/// published socket, until the session is dropped (aborted) or refused.
async fn relay_replies(
    session: Arc<Session>,
    published: Arc<UdpSocket>,
    client: SocketAddr,
    eject_time: Duration,
    service: Arc<str>,
    clock: Clock,
) {
    let client = SockAddr::from(client);
    let mut answered = false;
    loop {
        if session.socket.readable().await.is_err() {
            session.dead.store(true, Ordering::Relaxed);
            return;
        }
        let now = clock.now_ms();
        let mut drained = false;
        for _ in 0..BATCH {
            let relayed = REPLY_BUFFER.with_borrow_mut(|buffer| {
                let len = session.socket.try_recv(buffer)?;
                let sent = SockRef::from(&*published).send_to(&buffer[..len], &client);
                Ok::<_, io::Error>((len, sent))
            });
            match relayed {
                Ok((len, Ok(_))) => {
                    session.last_seen.store(now, Ordering::Relaxed);
                    session.udp.datagrams_out.inc();
                    let backend = &session.backend;
                    backend.metrics.bytes_out.inc_by(len as u64);
                    if !answered {
                        answered = true;
                        if backend.connected() {
                            if let Some(suppressed) = BACKEND_EVENTS.admit(now_ms()) {
                                info!(%service, backend = %backend.addr, protocol = "udp", suppressed, "backend recovered");
                            }
                        }
                    }
                }
                Ok((_, Err(error))) => {
                    debug!(%service, client = ?client.as_socket(), %error, "udp reply to client failed");
                    session.service.metrics.count_drop(DropReason::Error);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                    session.dead.store(true, Ordering::Relaxed);
                    eject(&session.backend, eject_time, &service);
                    return;
                }
                Err(error) => {
                    debug!(%service, %error, "udp receive from backend failed; session ends");
                    session.dead.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
        if !drained {
            // A busy backend must not keep the thread's other flows waiting.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lb_config::{Algorithm, Protocol};

    use super::*;
    use crate::discovery::{Endpoint, PortRoutes, ProtoAddr, RouteSettings, ServiceRoutes, Update};
    use crate::metrics::Metrics;
    use crate::routing::RoutingTable;

    /// A UDP route to `backend` with idle timeout `idle`.
    fn route(backend: SocketAddr, idle: Duration, metrics: &Metrics) -> Arc<Route> {
        let listen: SocketAddr = "127.0.0.1:1".parse().expect("addr"); // fixed-port-ok: a table key, nothing bound
        let service = ServiceRoutes {
            name: "dns".to_owned(),
            algorithm: Algorithm::RoundRobin,
            max_connections: 10,
            settings: RouteSettings {
                retries: 0,
                udp_idle_timeout: idle,
                max_udp_sessions: 10,
                ..RouteSettings::default()
            },
            ports: vec![PortRoutes {
                protocol: Protocol::Udp,
                listen: vec![listen],
                vip: None,
                vip_v6: None,
                endpoints: vec![Endpoint {
                    addr: backend,
                    weight: 1,
                    labels: Default::default(),
                }],
            }],
        };
        let (table, _) = RoutingTable::build(
            &RoutingTable::default(),
            &[Update::Reset(vec![service])],
            metrics,
        );
        Arc::clone(table.route(&ProtoAddr::udp(listen)).expect("routed"))
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_expire_on_tokio_time_after_the_idle_timeout_and_give_back_their_places() {
        let metrics = Metrics::new(&prometheus::Registry::new()).expect("metrics");
        let backend = std::net::UdpSocket::bind("127.0.0.1:0").expect("backend");
        let idle = Duration::from_secs(60);
        let route = route(backend.local_addr().expect("addr"), idle, &metrics);
        let udp = Arc::clone(route.udp.as_ref().expect("a udp route"));
        let published = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("published"));
        let clock = Clock::start();
        let mut sessions = Sessions::new(published, 0, clock);
        let client = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

        for port in [40_001, 40_002, 40_003] {
            sessions.forward(b"q", client(port), &route, clock.now_ms());
        }
        assert_eq!((sessions.len(), udp.open()), (3, 3));
        // One flow speaks again half way: only the other two expire at
        // the timeout, and that one a half timeout later.
        tokio::time::advance(idle / 2).await;
        sessions.forward(b"q", client(40_001), &route, clock.now_ms());
        assert_eq!(sessions.len(), 3, "the same flow, the same session");
        tokio::time::advance(idle / 2 - Duration::from_millis(1)).await;
        assert_eq!(sessions.expire(clock.now_ms(), idle), 0);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(sessions.expire(clock.now_ms(), idle), 2);
        assert_eq!((sessions.len(), udp.open()), (1, 1));
        tokio::time::advance(idle / 2).await;
        assert_eq!(sessions.expire(clock.now_ms(), idle), 1);
        assert_eq!((sessions.len(), udp.open()), (0, 0));
        assert_eq!(udp.metrics.expired.get(), 3);
        assert_eq!(udp.metrics.sessions.get(), 0);
        // The backend got each flow's datagrams from its own socket.
        let mut buffer = [0u8; 8];
        backend.set_nonblocking(true).expect("non-blocking");
        let mut sources = std::collections::HashSet::new();
        while let Ok((_, from)) = backend.recv_from(&mut buffer) {
            sources.insert(from);
        }
        assert_eq!(sources.len(), 3);
    }
}
