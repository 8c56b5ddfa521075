//! The registry's `/v1` API server, under the admin server. Routes, bodies,
//! answers and the error body are lbmesh-api's types; its crate doc lists
//! every route.
//!
//! # Layout and flow
//!
//! ```text
//! request ─> who asks: the local socket (root on this node: no token), or TLS with the
//!            control token as bearer (join, certificate and renew have their own proof)
//!         ─> body (at most 2 MiB; a
//!            service spec at most 1 MiB once encoded, checked before its write)
//!         ─> path split on '/', then each segment percent-decoded
//!         ─> request id: the Idempotency-Key header, or a new one from this node
//!         ─> GET, renew: routes::route on this node (linearizable read; renew needs
//!                   this node's CA key)
//!         ─> write: routes::route on the leader; a follower passes the request to the
//!                   leader unchanged (lbmesh-api's Client) with the request id, retrying
//!                   through an election with the same id, and at once when Raft names a
//!                   new leader (a call to the old one is given up then)
//! ```
//!
//! The request id goes into the log with the command, so a write retried
//! after its first try took effect (the leader died before answering) gets
//! the first answer rather than a 409 or a second effect.
//!
//! - [`routes`]: one handler per route; [`logs`]: a task's output, read
//!   on the node that runs it.
//! - [`convert`]: registry records as lbmesh-api answers, and the request
//!   types back into records.
//! - [`respond`]: JSON answers, error bodies, body parsing.
//!
//! Decoding after the split keeps a name with an encoded `/` (`app%2Ftasks`)
//! one segment, so it names a service and never another route.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use lbmesh_api::{check_idempotency_key, Client, IDEMPOTENCY_KEY};
use lbmesh_tls::NodeIdentity;
use percent_encoding::percent_decode_str;
use raft_state::registry::RegistryNode;
use raft_state::state::TokenKind;

use crate::pki::Pki;
use crate::tokens::{self, Family, Token};

pub mod convert;
mod logs;
mod respond;
mod routes;

pub use logs::open_log_streams;
use respond::{error, ApiResponse};
pub use respond::{full, ApiBody};

/// Largest request body accepted: room for the largest spec
/// ([`routes::MAX_SPEC_BYTES`]) however it is laid out.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// How long a write waits for a reachable leader.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// How long a forwarded join may take: the leader checks the joiner's Raft
/// address, adds it as a learner, registers it and may promote it, each step
/// bounded, so a join needs longer than other writes. Still under the
/// joiner's own client timeout (30 s), so the joiner sees the leader's
/// answer, not its own timeout.
const JOIN_DEADLINE: Duration = Duration::from_secs(27);

/// Pause between tries to reach a leader during an election.
const LEADER_RETRY: Duration = Duration::from_millis(200);

/// How a request reached this node.
#[derive(Debug, Clone)]
pub enum Transport {
    /// The data dir's Unix socket: root (lbd's user) on this node.
    Local,
    /// TLS, with the node the client's certificate names if it sent one.
    Tls(Option<NodeIdentity>),
}

/// Serves one `/v1` request.
pub async fn handle(
    registry: &Arc<RegistryNode>,
    pki: &Pki,
    transport: &Transport,
    request: Request<Incoming>,
) -> ApiResponse {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let given_key = request
        .headers()
        .get(IDEMPOTENCY_KEY)
        .map(|v| v.to_str().map(str::to_owned));
    // These routes' segments need no decoding.
    let raw_segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let unkeyed = routes::unkeyed(&method, &raw_segments);
    if matches!(transport, Transport::Tls(_)) && !unkeyed {
        let state = registry.local().state;
        let Some(cluster) = &state.cluster else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster",
                "not initialised",
            );
        };
        let Some(presented) = presented.as_deref() else {
            return error(
                StatusCode::UNAUTHORIZED,
                "authorization",
                "missing bearer token (lbctl --token or LBCTL_TOKEN)",
            );
        };
        let valid = Token::parse(presented, Family::Control)
            .is_ok_and(|token| token.matches(&cluster.control_token));
        if !valid {
            return error(StatusCode::UNAUTHORIZED, "authorization", "wrong token");
        }
    }
    // What a forwarded write carries: the caller's token, or for root on
    // this node a token this manager derives (a worker derives none, so
    // root on a worker writes only with the control token).
    let presented = match (transport, presented) {
        (Transport::Local, _) => local_token(registry, pki),
        (_, presented) => presented,
    };
    let request_id = match given_key {
        None => registry.request_id(),
        Some(Ok(key)) => match check_idempotency_key(&key) {
            Ok(()) => key,
            Err(reason) => return error(StatusCode::BAD_REQUEST, IDEMPOTENCY_KEY, reason),
        },
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                IDEMPOTENCY_KEY,
                "the header is not visible ASCII",
            )
        }
    };
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body",
                format!("the body is larger than {MAX_BODY_BYTES} bytes or broken"),
            )
        }
    };
    let Some(segments) = decode_segments(&path) else {
        return error(
            StatusCode::BAD_REQUEST,
            "path",
            "a path segment is not UTF-8 once percent-decoded",
        );
    };
    let segments: Vec<&str> = segments.iter().map(|s| s.as_ref()).collect();
    let peer = match transport {
        Transport::Tls(peer) => peer.as_ref(),
        Transport::Local => None,
    };
    let context = routes::Context {
        registry,
        pki,
        peer,
    };
    if let (&Method::GET, ["tasks", id, "logs"]) = (&method, segments.as_slice()) {
        // Read where the task runs: the caller's token goes along.
        return logs::task_logs(&context, id, &query, presented).await;
    }
    if method == Method::GET || segments == ["cluster", "renew"] {
        return routes::route(&context, &method, &segments, &query, &body, &request_id).await;
    }
    // Writes run on the leader. During an election there is none, or the one
    // this node knows is gone: retry until a leader answers or the deadline
    // passes.
    let patience = if segments == ["cluster", "join"] {
        JOIN_DEADLINE
    } else {
        WRITE_DEADLINE
    };
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if registry.is_leader() {
            return routes::route(&context, &method, &segments, &query, &body, &request_id).await;
        }
        if presented.is_none() && !unkeyed {
            return error(
                StatusCode::FORBIDDEN,
                "authorization",
                "this node holds no CA key (a worker, or a manager still fetching it): writes \
                 through its local socket need the control token (--token)",
            );
        }
        let forwarded = tokio::time::timeout_at(
            deadline,
            forward_to_leader(
                &context,
                &method,
                &path,
                &query,
                presented.clone(),
                &body,
                &request_id,
            ),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no leader answered within {patience:?}")));
        match forwarded {
            Ok(response) => return response,
            Err(reason) if tokio::time::Instant::now() >= deadline => {
                return error(StatusCode::SERVICE_UNAVAILABLE, "leader", reason)
            }
            Err(_) => tokio::time::sleep(LEADER_RETRY).await,
        }
    }
}

/// The control token, derived on a manager holding the CA key.
fn local_token(registry: &RegistryNode, pki: &Pki) -> Option<String> {
    let state = registry.local().state;
    let (cluster, ca) = (state.cluster.as_ref()?, pki.ca()?);
    Some(tokens::token_text(
        &ca,
        TokenKind::Control,
        &cluster.control_token,
    ))
}

/// The segments after `/v1/`, each percent-decoded; `None` when one is not
/// UTF-8 once decoded.
fn decode_segments(path: &str) -> Option<Vec<Cow<'_, str>>> {
    path.trim_start_matches("/v1/")
        .split('/')
        .map(|segment| percent_decode_str(segment).decode_utf8().ok())
        .collect()
}

/// Passes a write to the leader's API as it came, with its request id;
/// `Err` when no leader answered, or as soon as the registry names another
/// leader than the one called (so the retry reaches the new leader without
/// waiting for the old one's timeout).
async fn forward_to_leader(
    context: &routes::Context<'_>,
    method: &Method,
    path: &str,
    query: &str,
    token: Option<String>,
    body: &Bytes,
    request_id: &str,
) -> Result<ApiResponse, String> {
    let (registry, pki) = (context.registry, context.pki);
    let leader = registry.metrics().current_leader;
    let state = registry.local().state;
    let Some((leader, api_addr)) =
        leader.and_then(|id| state.nodes.get(&id).map(|n| (id, n.api_addr)))
    else {
        return Err("no leader is known yet".to_owned());
    };
    let target = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    };
    let client = Client::new(&api_addr.to_string(), token)
        .map_err(|e| e.to_string())?
        .with_tls(pki.credentials().client());
    let (status, body) = registry
        .while_leader_is(
            leader,
            client.raw(method.clone(), &target, body.clone(), Some(request_id)),
        )
        .await
        .ok_or_else(|| format!("node {leader} stopped leading before it answered"))?
        .map_err(|e| e.to_string())?;
    let mut response = Response::new(respond::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// A path with its names replaced by placeholders, for metric labels that
/// stay few: `/v1/services/web/scale` → `/v1/services/{name}/scale`.
pub fn route_template(path: &str) -> String {
    let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let template: Vec<&str> = match segments.as_slice() {
        ["cluster", "join-token", _] => vec!["cluster", "join-token", "{role}"],
        ["cluster", "join-token", _, "rotate"] => {
            vec!["cluster", "join-token", "{role}", "rotate"]
        }
        [noun @ ("nodes" | "services"), _, rest @ ..] => {
            let mut t = vec![*noun, "{name}"];
            t.extend(rest.iter().take(1).map(|r| match *r {
                "scale" | "rollback" | "tasks" => *r,
                _ => "{other}",
            }));
            t
        }
        ["tasks", _, "logs"] => vec!["tasks", "{id}", "logs"],
        [noun @ ("cluster" | "nodes" | "services")] => vec![*noun],
        ["cluster", sub @ ("join" | "certificate" | "renew")] => vec!["cluster", *sub],
        _ => vec!["{unknown}"],
    };
    format!("/v1/{}", template.join("/"))
}

/// A request method as a metric label: the methods HTTP defines, and
/// `other` for anything a client made up, so labels stay a fixed set.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_templates_hide_names() {
        assert_eq!(route_template("/v1/services"), "/v1/services");
        assert_eq!(route_template("/v1/tasks/abc/logs"), "/v1/tasks/{id}/logs");
        assert_eq!(route_template("/v1/services/web"), "/v1/services/{name}");
        assert_eq!(
            route_template("/v1/services/web/scale"),
            "/v1/services/{name}/scale"
        );
        assert_eq!(
            route_template("/v1/services/web/evil"),
            "/v1/services/{name}/{other}"
        );
        assert_eq!(
            route_template("/v1/cluster/join-token/manager"),
            "/v1/cluster/join-token/{role}"
        );
        assert_eq!(
            route_template("/v1/cluster/join-token/worker/rotate"),
            "/v1/cluster/join-token/{role}/rotate"
        );
        assert_eq!(route_template("/v1/cluster/join"), "/v1/cluster/join");
        assert_eq!(route_template("/v1/whatever/x"), "/v1/{unknown}");
        assert_eq!(route_template("/v1/cluster"), "/v1/cluster");
        // Names under /v1/cluster used to become labels as they were.
        assert_eq!(
            route_template("/v1/cluster/anything-at-all"),
            "/v1/{unknown}"
        );
    }

    #[test]
    fn made_up_methods_are_one_label() {
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        let made_up = Method::from_bytes(b"XYZZY").expect("a token is a method");
        assert_eq!(method_label(&made_up), "other");
    }

    #[test]
    fn segments_are_decoded_after_the_split() {
        let decoded = decode_segments("/v1/services/app%2Ftasks").expect("utf-8");
        assert_eq!(decoded, ["services", "app/tasks"]);
        let decoded = decode_segments("/v1/services/a%20b/tasks").expect("utf-8");
        assert_eq!(decoded, ["services", "a b", "tasks"]);
        assert_eq!(decode_segments("/v1/nodes/%FF"), None);
    }
}
