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
//! connections and on those of one client address keeps a flood of this
//! port from taking the descriptors the proxy and Raft need.
//!
//! In cluster mode the registry's authenticated `/v1` routes are served too
//! (by [`crate::api`]; listed in [`lbmesh_api`]). Any other path is `404`;
//! another method on a known path is `405`. `/metrics`, `/live` and `/ready`
//! are open.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use lbmesh_proxy::limit::ClientCounts;
use lbmesh_proxy::routing::RoutingTable;

use crate::metrics::DaemonMetrics;

/// What the admin routes read.
pub struct AdminState {
    pub metrics: Arc<DaemonMetrics>,
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// Set once the proxy serves; cleared when shutdown begins.
    pub ready: AtomicBool,
    /// The registry, in cluster mode.
    pub registry: Option<Arc<raft_state::registry::RegistryNode>>,
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

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            // Prometheus, lbctl and load balancers' probes send a request
            // at once; nginx allows 60 s, but nothing here needs that.
            header_read_timeout: Duration::from_secs(10),
            // A few hundred operators, scrapers and probes at most; a small
            // share of the raised descriptor limit.
            max_connections: 512,
            // A scraper or an lbctl loop keeps a handful open.
            max_per_client: 32,
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
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(ClientCounts::default());
    loop {
        // A place first: over the cap, connections wait in the backlog
        // instead of being accepted only to be dropped.
        let permit = tokio::select! {
            permit = Arc::clone(&open).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => return,
            },
            () = &mut shutdown => return,
        };
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
        let state = Arc::clone(&state);
        let per_client = Arc::clone(&per_client);
        tokio::spawn(async move {
            let _permit = permit;
            let Some(_place) = per_client.try_take(peer.ip(), limits.max_per_client) else {
                debug!(%peer, "admin connection refused: too many from this client");
                return;
            };
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(respond(&state, request).await) }
            });
            if let Err(error) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, %error, "admin connection ended");
            }
        });
    }
}

async fn respond(state: &AdminState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if path.starts_with("/v1/") {
        if let Some(registry) = &state.registry {
            // Labels from fixed sets only: a path or method a client made
            // up must not grow /metrics.
            let route = crate::api::route_template(path);
            let method = crate::api::method_label(request.method());
            let response = crate::api::handle(registry, request).await;
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
            let mut response = Response::new(Full::new(Bytes::from(state.metrics.render())));
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
    if let Some(registry) = &state.registry {
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
    }
    for (_, backend) in state.table.load().backends() {
        backend.metrics.up.set(i64::from(!backend.is_ejected()));
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
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
            registry: None,
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
}
