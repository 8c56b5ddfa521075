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
//! In cluster mode the registry's authenticated `/v1` routes are served too
//! (by [`crate::api`]; listed in [`lbmesh_api`]). Any other path is `404`;
//! another method on a known path is `405`. `/metrics`, `/live` and `/ready`
//! are open.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

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

/// Serves admin requests on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(respond(&state, request).await) }
            });
            if let Err(error) = http1::Builder::new()
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
        state
            .metrics
            .set_raft("leader_id", m.current_leader.unwrap_or(0));
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
