//! The admin HTTP server (hyper, HTTP/1.1), on the node's `api_addr`.
//!
//! # Routes
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/metrics` | Prometheus text format (see `metrics` and `lbmesh_proxy::metrics` for the list) |
//! | GET | `/live` | `200 ok` while the process runs |
//! | GET | `/ready` | `200 ready` once listeners are bound; `503 not ready` before and while shutting down |
//!
//! Connections are bounded (see [`AdminLimits`]): a header must arrive in
//! time (also the idle bound of a keep-alive connection), and a cap on all
//! connections (a quarter of the descriptor limit, at most 512) and on those
//! of one client address keeps a flood of this port from taking the
//! descriptors the proxy and Raft need.
//!
//! ```text
//! accept ─> over its address's share? close at once
//!        ─> every place taken? close an idle connection of the address holding
//!           the most (its oldest; one still waiting for its first request
//!           before an idle keep-alive)
//!        ─> serve (hyper, header read timeout) ─> give the place back
//! ```
//!
//! Making room this way means a flood of slow headers from many addresses
//! delays a real client by one accept, not by the header timeout: the
//! flood's connections replace each other while a client's request, sent
//! at once, is read and answered.
//!
//! In cluster mode the registry's authenticated `/v1` routes are served too
//! (by [`crate::api`]; listed in [`lbmesh_api`]), over TLS only, on the
//! same port: the first byte of a connection tells (a TLS handshake starts
//! with 0x16, an HTTP request with a letter). Over plain HTTP, `/v1` is
//! `426 Upgrade Required`, while `/metrics`, `/live` and `/ready` answer
//! either way, so Prometheus scrapes without certificates. The data dir's
//! Unix socket ([`run_local`], mode 0600) serves everything, `/v1`
//! without a token, to lbd's own user on the node. Any other path is
//! `404`; another method on a known path is `405`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{Semaphore, TryAcquireError};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use lbmesh_proxy::limit::ClientCounts;
use lbmesh_proxy::routing::RoutingTable;

use crate::api::{full, ApiBody, Transport};
use crate::metrics::DaemonMetrics;
use crate::pki::Pki;

/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;
/// Connections the local socket serves at once.
const MAX_LOCAL_CONNECTIONS: usize = 16;

/// What the admin routes read.
pub struct AdminState {
    pub metrics: Arc<DaemonMetrics>,
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// Set once the proxy serves; cleared when shutdown begins.
    pub ready: AtomicBool,
    /// The registry and this node's certificates, in cluster mode.
    pub cluster: Option<(Arc<raft_state::registry::RegistryNode>, Arc<Pki>)>,
}

/// Bounds on the admin server's connections, so that a flood of its port
/// (slow headers, idle keep-alives, many sockets from one client) cannot
/// use up the descriptors the proxy and Raft need.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// A request's header must arrive within this; the same bound applies
    /// to an idle keep-alive connection waiting for its next request.
    pub header_read_timeout: Duration,
    /// Admin connections open at once; past it, new ones wait in the
    /// listen backlog.
    pub max_connections: usize,
    /// Admin connections open at once from one client address; past it, a
    /// new one is closed at once.
    pub max_per_client: u32,
}

/// Most admin connections at once, whatever the descriptor limit: a few
/// hundred operators, scrapers and probes at most.
const MAX_CONNECTIONS: usize = 512;
/// Most admin connections of one client address: a scraper or an lbctl
/// loop keeps a handful open.
const MAX_PER_CLIENT: u32 = 32;
/// The admin server's share of the descriptor limit is 1/this: the rest is
/// the reserve for proxied connections (two descriptors each), Raft, the
/// store and the runtime.
const DESCRIPTOR_SHARE: u64 = 4;

impl AdminLimits {
    /// The limits for a process allowed `descriptors` open files: at most a
    /// quarter of them for admin connections (and never more than 512).
    pub fn within(descriptors: u64) -> Self {
        let share = usize::try_from(descriptors / DESCRIPTOR_SHARE).unwrap_or(usize::MAX);
        let max_connections = share.clamp(1, MAX_CONNECTIONS);
        Self {
            // Prometheus, lbctl and load balancers' probes send a request
            // at once; nginx allows 60 s, but nothing here needs that.
            header_read_timeout: Duration::from_secs(10),
            max_connections,
            max_per_client: MAX_PER_CLIENT.min(u32::try_from(max_connections).unwrap_or(u32::MAX)),
        }
    }
}

/// The admin connections open now, oldest first, so that when every place
/// is taken the oldest idle one can make room for a new client.
#[derive(Default)]
struct Open {
    next: AtomicU64,
    connections: Mutex<BTreeMap<u64, Arc<Connection>>>,
}

/// What the accept loop knows of one open connection.
#[derive(Default)]
struct Connection {
    /// A request is being answered: never closed to make room.
    busy: AtomicBool,
    /// It has sent a whole request once (a real client, now idle at most).
    served: AtomicBool,
    /// Cancelled to close it and give its place back.
    close: CancellationToken,
    /// Its client's address: room is made from the address holding most.
    ip: Option<IpAddr>,
}

impl Open {
    fn insert(&self, ip: IpAddr) -> (u64, Arc<Connection>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            ip: Some(ip),
            ..Connection::default()
        });
        if let Ok(mut open) = self.connections.lock() {
            open.insert(id, Arc::clone(&connection));
        }
        (id, connection)
    }

    fn remove(&self, id: u64) {
        if let Ok(mut open) = self.connections.lock() {
            open.remove(&id);
        }
    }

    /// Closes an idle connection of the address that holds the most, the
    /// oldest of them, one still waiting for its first request before an
    /// idle keep-alive one; false when every one is busy. A flood's
    /// addresses hold many, so a real client's one connection is the last
    /// to go however fast the flood replaces its own.
    fn close_one_idle(&self) -> bool {
        let Ok(mut open) = self.connections.lock() else {
            return false;
        };
        let mut held: HashMap<Option<IpAddr>, usize> = HashMap::new();
        for connection in open.values() {
            *held.entry(connection.ip).or_default() += 1;
        }
        let pick = |served: bool| {
            open.iter()
                .filter(|(_, c)| {
                    !c.busy.load(Ordering::Relaxed) && c.served.load(Ordering::Relaxed) == served
                })
                .max_by_key(|(id, c)| (held.get(&c.ip).copied(), std::cmp::Reverse(**id)))
                .map(|(id, _)| *id)
        };
        let victim = pick(false).or_else(|| pick(true));
        match victim.and_then(|id| open.remove(&id)) {
            Some(connection) => {
                connection.close.cancel();
                true
            }
            None => false,
        }
    }
}

/// Serves admin requests on `listener` until `shutdown` resolves, within
/// `limits`.
pub async fn run(
    listener: TcpListener,
    state: Arc<AdminState>,
    limits: AdminLimits,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let open = Arc::new(Open::default());
    let per_client = Arc::new(ClientCounts::default());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        // The address's share first, so that a client over it never makes
        // another one's connection room.
        let Some(place) = per_client.try_take(peer.ip(), limits.max_per_client) else {
            debug!(%peer, "admin connection refused: too many from this client");
            continue;
        };
        let permit = match Arc::clone(&places).try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return,
            Err(TryAcquireError::NoPermits) => {
                if open.close_one_idle() {
                    debug!(%peer, "admin connections full: closed an idle one");
                }
                // Its place comes back as its task ends; when every
                // connection is busy, the next one to finish frees one.
                tokio::select! {
                    permit = Arc::clone(&places).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_closed) => return,
                    },
                    () = &mut shutdown => return,
                }
            }
        };
        let state = Arc::clone(&state);
        let (id, connection) = open.insert(peer.ip());
        let open = Arc::clone(&open);
        let acceptor = state
            .cluster
            .as_ref()
            .map(|(_, pki)| TlsAcceptor::from(pki.credentials().api_server()));
        tokio::spawn(async move {
            let _places = (permit, place);
            let serving = async {
                let tls = tokio::time::timeout(limits.header_read_timeout, starts_tls(&stream))
                    .await
                    .unwrap_or(false);
                match (tls, acceptor) {
                    (true, Some(acceptor)) => {
                        let accepted = tokio::time::timeout(
                            limits.header_read_timeout,
                            acceptor.accept(stream),
                        )
                        .await;
                        let stream = match accepted {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                debug!(%peer, %error, "admin TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                        let peer_identity = lbmesh_tls::config::peer_identity(
                            stream.get_ref().1.peer_certificates(),
                        );
                        let transport = Some(Transport::Tls(peer_identity));
                        serve_http(stream, &state, transport, &connection, limits).await
                    }
                    (true, None) => debug!(%peer, "TLS on a node without certificates; closed"),
                    (false, _) => serve_http(stream, &state, None, &connection, limits).await,
                }
            };
            tokio::select! {
                () = serving => {}
                () = connection.close.cancelled() => {
                    debug!(%peer, "admin connection closed to make room");
                }
            }
            open.remove(id);
        });
    }
}

/// Whether a connection's first byte opens a TLS handshake (without
/// reading it).
async fn starts_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0] == TLS_HANDSHAKE)
}

/// Serves HTTP/1.1 on one connection, plain (`transport` `None`), TLS or
/// local, until it ends.
async fn serve_http<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: I,
    state: &Arc<AdminState>,
    transport: Option<Transport>,
    connection: &Arc<Connection>,
    limits: AdminLimits,
) {
    let state = Arc::clone(state);
    let tracked = Arc::clone(connection);
    let transport = Arc::new(transport);
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        let tracked = Arc::clone(&tracked);
        let transport = Arc::clone(&transport);
        async move {
            tracked.busy.store(true, Ordering::Relaxed);
            let response = respond(&state, transport.as_ref().as_ref(), request).await;
            tracked.served.store(true, Ordering::Relaxed);
            tracked.busy.store(false, Ordering::Relaxed);
            Ok::<_, Infallible>(response)
        }
    });
    let serving = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), service);
    if let Err(error) = serving.await {
        debug!(%error, "admin connection ended");
    }
}

/// Serves the data dir's Unix socket until `shutdown` resolves: every
/// route, `/v1` without a token (the socket's mode admits lbd's user only).
pub async fn run_local(
    listener: UnixListener,
    state: Arc<AdminState>,
    limits: AdminLimits,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let places = Arc::new(Semaphore::new(MAX_LOCAL_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "local socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let Ok(permit) = Arc::clone(&places).try_acquire_owned() else {
            debug!("local socket: too many connections; closed");
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _permit = permit;
            let connection = Arc::new(Connection::default());
            serve_http(stream, &state, Some(Transport::Local), &connection, limits).await;
        });
    }
}

/// `426 Upgrade Required`: `/v1` over plain HTTP.
fn upgrade_required() -> Response<ApiBody> {
    let body = serde_json::json!({"error": {
        "field": "transport",
        "reason": "the /v1 API is served over TLS only; lbctl pins the cluster CA from the control token (or --ca)",
    }});
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("TLS/1.3, HTTP/1.1"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn respond(
    state: &AdminState,
    transport: Option<&Transport>,
    request: Request<Incoming>,
) -> Response<ApiBody> {
    let path = request.uri().path();
    if path.starts_with("/v1/") {
        if let Some((registry, pki)) = &state.cluster {
            // Labels from fixed sets only: a path or method a client made
            // up must not grow /metrics.
            let route = crate::api::route_template(path);
            let method = crate::api::method_label(request.method());
            let response = match transport {
                Some(transport) => crate::api::handle(registry, pki, transport, request).await,
                None => upgrade_required(),
            };
            state
                .metrics
                .api_request(&route, method, response.status().as_u16());
            return response;
        }
    }
    if !matches!(path, "/metrics" | "/live" | "/ready") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => {
            refresh_backend_up(state);
            let mut response = Response::new(full(state.metrics.render()));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/live" => text(StatusCode::OK, "ok\n"),
        _ if state.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
    }
}

/// Ejections expire by the clock, not by an event, so `backend_up` is brought
/// up to date when it is scraped; so is Raft's view in cluster mode.
fn refresh_backend_up(state: &AdminState) {
    if let Some((registry, _)) = &state.cluster {
        let m = registry.metrics();
        let membership = m.membership_config.membership();
        state.metrics.set_raft("term", m.current_term);
        state.metrics.set_raft_leader(m.current_leader);
        state.metrics.set_raft(
            "is_leader",
            u64::from(m.current_leader == Some(registry.id)),
        );
        state
            .metrics
            .set_raft("commit_index", m.last_log_index.unwrap_or(0));
        state
            .metrics
            .set_raft("applied_index", registry.local().index);
        state
            .metrics
            .set_raft("voters", membership.voter_ids().count() as u64);
        state
            .metrics
            .set_raft("learners", membership.learner_ids().count() as u64);
        let applied = registry.local();
        let ready = applied
            .state
            .nodes
            .values()
            .filter(|node| node.status == raft_state::node::NodeStatus::Ready)
            .count();
        state
            .metrics
            .set_nodes(ready, applied.state.nodes.len() - ready);
        state
            .metrics
            .set_log_streams(crate::api::open_log_streams());
        state.metrics.set_tasks(
            applied
                .state
                .tasks()
                .values()
                .map(|task| (task.service.as_str(), task.state.as_str())),
        );
    }
    for (_, backend) in state.table.load().backends() {
        backend.metrics.up.set(i64::from(!backend.is_ejected()));
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ApiBody> {
    let mut response = Response::new(full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    use super::*;
    use crate::metrics::DaemonMetrics;

    /// An admin server with `limits` on 127.0.0.1:0; stops when the token does.
    async fn serve(limits: AdminLimits) -> (SocketAddr, tokio_util::sync::CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(AdminState {
            metrics: Arc::new(DaemonMetrics::new().expect("metrics")),
            table: Arc::new(ArcSwap::from_pointee(RoutingTable::default())),
            ready: true.into(),
            cluster: None,
        });
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(run(listener, state, limits, async move {
            stopped.cancelled().await
        }));
        (addr, stop)
    }

    /// A connection from `source` that sends half a request header.
    async fn half_header(source: &str, addr: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{source}:0").parse().expect("source"))
            .expect("bind source");
        let mut stream = socket.connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /live HTTP/1.1\r\nHo")
            .await
            .expect("send");
        stream
    }

    /// Whether the server closes `stream` within `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 256];
        matches!(
            tokio::time::timeout(within, stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn slow_headers_and_floods_from_one_client_leave_the_others_served() {
        let limits = AdminLimits {
            header_read_timeout: Duration::from_millis(300),
            max_connections: 16,
            max_per_client: 4,
        };
        let (addr, stop) = serve(limits).await;
        let mut flood = Vec::new();
        for _ in 0..4 {
            flood.push(half_header("127.0.0.2", addr).await);
        }
        // The fifth from the same client is closed at once.
        let mut fifth = half_header("127.0.0.2", addr).await;
        assert!(closed_within(&mut fifth, Duration::from_millis(200)).await);

        // Another client is served meanwhile.
        let started = tokio::time::Instant::now();
        let mut other = TcpStream::connect(addr).await.expect("connect");
        other
            .write_all(b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut answer = String::new();
        other.read_to_string(&mut answer).await.expect("answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(1));

        // The half-sent headers are closed once the header timeout passes.
        for stream in &mut flood {
            assert!(closed_within(stream, Duration::from_secs(2)).await);
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn a_flood_from_many_addresses_makes_room_for_a_real_client() {
        let limits = AdminLimits {
            header_read_timeout: Duration::from_secs(30),
            max_connections: 8,
            max_per_client: 4,
        };
        let (addr, stop) = serve(limits).await;
        // Sixteen slow headers from four addresses, each within its share:
        // twice the connections the server keeps open.
        let mut flood = Vec::new();
        for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"] {
            for _ in 0..4 {
                flood.push(half_header(source, addr).await);
            }
        }
        let started = tokio::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(1), async {
            let mut client = TcpStream::connect(addr).await.expect("connect");
            client
                .write_all(b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .expect("send");
            let mut answer = String::new();
            client.read_to_string(&mut answer).await.expect("answer");
            answer
        })
        .await
        .expect("a real client is answered within 1 s while the flood holds every place");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // One made room per newcomer: eight for the flood's second half,
        // one for the real client.
        let mut closed = 0;
        for stream in &mut flood {
            if closed_within(stream, Duration::from_millis(100)).await {
                closed += 1;
            }
        }
        assert_eq!(closed, 9);
        stop.cancel();
    }

    #[test]
    fn the_admin_share_follows_the_descriptor_limit() {
        let small = AdminLimits::within(384);
        assert_eq!((small.max_connections, small.max_per_client), (96, 32));
        let tiny = AdminLimits::within(40);
        assert_eq!((tiny.max_connections, tiny.max_per_client), (10, 10));
        let large = AdminLimits::within(1 << 20);
        assert_eq!((large.max_connections, large.max_per_client), (512, 32));
        let unlimited = AdminLimits::within(u64::MAX);
        assert_eq!(unlimited.max_connections, 512);
    }
}
