//! The registry's HTTP/JSON API, served by the admin server under `/v1`.
//!
//! # Routes
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/v1/cluster` | | cluster id, this node, leader, term, indexes, voters, learners |
//! | GET | `/v1/cluster/join-token/{manager,worker}` | | `{"token": ...}` |
//! | POST | `/v1/cluster/join` | `{"token", "node"}` | the admitted node (the join token authenticates; no bearer token) |
//! | GET | `/v1/nodes` | | every node with its Raft role |
//! | GET | `/v1/nodes/{name or id}` | | one node |
//! | POST | `/v1/nodes/{name or id}` | `{"availability", "labels_add", "labels_remove"}` | the updated node |
//! | DELETE | `/v1/nodes/{name or id}` | | removes a down node (`?force=true` for one that is not down) |
//! | GET | `/v1/nodes/{name or id}/tasks` | | the tasks assigned to the node |
//! | GET | `/v1/services` | | every service, with running/desired task counts |
//! | GET | `/v1/services/{name}` | | one service, with its update status |
//! | GET | `/v1/services/{name}/tasks` | | its tasks, live and recent history (`service ps`) |
//! | POST | `/v1/services` | a `[[service]]` spec as JSON | `201` and the service |
//! | PUT | `/v1/services/{name}` | the whole new spec | the service, version + 1 |
//! | POST | `/v1/services/{name}/scale` | `{"replicas": N}` | the service |
//! | POST | `/v1/services/{name}/rollback` | | the service on its previous spec |
//! | DELETE | `/v1/services/{name}` | | `{"removed": name}` |
//!
//! Every route but `join` needs `Authorization: Bearer <control token>`.
//! Bodies over 1 MiB are refused with 413. Errors are
//! `{"error": {"field": ..., "reason": ...}}` with 400 (invalid), 401 (token),
//! 404 (unknown), 409 (conflict), 413, 503 (no leader). Reads are
//! linearizable. A write that reaches a follower is passed to the leader's
//! API unchanged.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use lb_config::ServiceSpec;
use raft_state::registry::RegistryNode;
use raft_state::state::{Availability, Command, NodeStatus, Outcome, RejectKind};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cluster::{self, JoinRefusal, JoinRequest};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

type ApiResponse = Response<Full<Bytes>>;

fn json_response(status: StatusCode, value: &impl Serialize) -> ApiResponse {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, field: &str, reason: impl Into<String>) -> ApiResponse {
    json_response(
        status,
        &json!({"error": {"field": field, "reason": reason.into()}}),
    )
}

fn outcome_response(outcome: Outcome, created: bool) -> ApiResponse {
    match outcome {
        Outcome::Service { service } => json_response(
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            &service,
        ),
        Outcome::Node { node } => json_response(StatusCode::OK, &node),
        Outcome::Task { task } => json_response(StatusCode::OK, &task),
        Outcome::Removed | Outcome::Nothing => json_response(StatusCode::OK, &json!({})),
        Outcome::Rejected { rejection } => {
            let status = match rejection.kind {
                RejectKind::Invalid => StatusCode::BAD_REQUEST,
                RejectKind::NotFound => StatusCode::NOT_FOUND,
                RejectKind::Conflict => StatusCode::CONFLICT,
            };
            error(status, &rejection.field, rejection.reason)
        }
    }
}

/// Serves one `/v1` request.
pub async fn handle(registry: &Arc<RegistryNode>, request: Request<Incoming>) -> ApiResponse {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let segments: Vec<String> = path
        .trim_start_matches("/v1/")
        .split('/')
        .map(str::to_owned)
        .collect();
    let is_join = method == Method::POST && path == "/v1/cluster/join";
    if !is_join {
        let state = registry.local().state;
        let expected = state.cluster.as_ref().map(|c| c.control_token.as_str());
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match (expected, presented) {
            (Some(expected), Some(presented)) if constant_time_eq(expected, presented) => {}
            (_, None) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "authorization",
                    "missing bearer token (lbctl --token or LBCTL_TOKEN)",
                )
            }
            _ => return error(StatusCode::UNAUTHORIZED, "authorization", "wrong token"),
        }
    }
    let headers = request.headers().clone();
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
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    if method == Method::GET {
        return route(registry, &method, &segments, &query, &body).await;
    }
    // Writes run on the leader. During an election there is none, or the one
    // this node knows is gone: retry until a leader answers or the deadline
    // passes.
    let deadline = tokio::time::Instant::now() + WRITE_DEADLINE;
    loop {
        if registry.is_leader() {
            return route(registry, &method, &segments, &query, &body).await;
        }
        match forward_to_leader(registry, &method, &path, &query, &headers, &body).await {
            Ok(response) => return response,
            Err(reason) if tokio::time::Instant::now() >= deadline => {
                return error(StatusCode::SERVICE_UNAVAILABLE, "leader", reason)
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

/// How long a write waits for a reachable leader.
const WRITE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

async fn route(
    registry: &Arc<RegistryNode>,
    method: &Method,
    segments: &[&str],
    query: &str,
    body: &Bytes,
) -> ApiResponse {
    match (method, segments) {
        (&Method::GET, ["cluster"]) => cluster_info(registry).await,
        (&Method::GET, ["cluster", "join-token", role]) => join_token(registry, role).await,
        (&Method::POST, ["cluster", "join"]) => join(registry, body).await,
        (&Method::GET, ["nodes"]) => nodes(registry, None).await,
        (&Method::GET, ["nodes", name]) => nodes(registry, Some(name)).await,
        (&Method::GET, ["nodes", name, "tasks"]) => tasks(registry, TaskFilter::Node(name)).await,
        (&Method::GET, ["services", name, "tasks"]) => {
            tasks(registry, TaskFilter::Service(name)).await
        }
        (&Method::POST, ["nodes", name]) => update_node(registry, name, body).await,
        (&Method::DELETE, ["nodes", name]) => remove_node(registry, name, query).await,
        (&Method::GET, ["services"]) => services(registry, None).await,
        (&Method::GET, ["services", name]) => services(registry, Some(name)).await,
        (&Method::POST, ["services"]) => match parse::<ServiceSpec>(body) {
            Ok(spec) => propose(registry, Command::CreateService { spec }, true).await,
            Err(response) => *response,
        },
        (&Method::PUT, ["services", name]) => match parse::<ServiceSpec>(body) {
            Ok(spec) if spec.name == *name => {
                propose(registry, Command::UpdateService { spec }, false).await
            }
            Ok(spec) => error(
                StatusCode::BAD_REQUEST,
                "name",
                format!("the body names {:?}, the path {name:?}", spec.name),
            ),
            Err(response) => *response,
        },
        (&Method::POST, ["services", name, "scale"]) => scale(registry, name, body).await,
        (&Method::POST, ["services", name, "rollback"]) => {
            propose(
                registry,
                Command::RollbackService {
                    name: (*name).to_owned(),
                },
                false,
            )
            .await
        }
        (&Method::DELETE, ["services", name]) => {
            let outcome = registry
                .propose(Command::RemoveService {
                    name: (*name).to_owned(),
                })
                .await;
            match outcome {
                Ok(Outcome::Removed) => json_response(StatusCode::OK, &json!({"removed": name})),
                Ok(other) => outcome_response(other, false),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "registry", e.to_string()),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "path", "no such route"),
    }
}

/// Parses a JSON body; the error names the field path.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Box<ApiResponse>> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." {
            "body".to_owned()
        } else {
            field
        };
        Box::new(error(
            StatusCode::BAD_REQUEST,
            &field,
            e.into_inner().to_string(),
        ))
    })
}

async fn propose(registry: &Arc<RegistryNode>, command: Command, created: bool) -> ApiResponse {
    match registry.propose(command).await {
        Ok(outcome) => outcome_response(outcome, created),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "registry", e.to_string()),
    }
}

async fn read(
    registry: &Arc<RegistryNode>,
) -> Result<raft_state::store::Applied, Box<ApiResponse>> {
    registry.linearizable().await.map_err(|e| {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry",
            e.to_string(),
        ))
    })
}

/// `GET /v1/cluster`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterView {
    pub id: String,
    pub node_id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub nodes: usize,
    pub services: usize,
}

async fn cluster_info(registry: &Arc<RegistryNode>) -> ApiResponse {
    let applied = match read(registry).await {
        Ok(applied) => applied,
        Err(response) => return *response,
    };
    let metrics = registry.metrics();
    let membership = metrics.membership_config.membership();
    let view = ClusterView {
        id: applied
            .state
            .cluster
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default(),
        node_id: registry.id,
        leader: metrics.current_leader,
        term: metrics.current_term,
        commit_index: metrics.last_log_index.unwrap_or(0),
        applied_index: applied.index,
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        nodes: applied.state.nodes.len(),
        services: applied.state.services.len(),
    };
    json_response(StatusCode::OK, &view)
}

async fn join_token(registry: &Arc<RegistryNode>, role: &str) -> ApiResponse {
    let applied = match read(registry).await {
        Ok(applied) => applied,
        Err(response) => return *response,
    };
    let Some(cluster) = &applied.state.cluster else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster",
            "not initialised",
        );
    };
    match role {
        "manager" => json_response(StatusCode::OK, &json!({"token": cluster.manager_token})),
        "worker" => json_response(StatusCode::OK, &json!({"token": cluster.worker_token})),
        other => error(
            StatusCode::BAD_REQUEST,
            "role",
            format!("{other:?} is not a role; use manager or worker"),
        ),
    }
}

async fn join(registry: &Arc<RegistryNode>, body: &Bytes) -> ApiResponse {
    let request = match parse::<JoinRequest>(body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    match cluster::admit(registry, request).await {
        Ok(node) => json_response(StatusCode::OK, &node),
        Err(JoinRefusal::BadToken(reason)) => error(StatusCode::UNAUTHORIZED, "token", reason),
        Err(JoinRefusal::Invalid { field, reason }) => error(StatusCode::CONFLICT, &field, reason),
        Err(JoinRefusal::Failed(reason)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "registry", reason)
        }
    }
}

/// A node as `GET /v1/nodes` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: raft_state::state::NodeRecord,
    /// `leader`, `voter` or `learner`.
    pub raft: String,
}

async fn nodes(registry: &Arc<RegistryNode>, name: Option<&str>) -> ApiResponse {
    let applied = match read(registry).await {
        Ok(applied) => applied,
        Err(response) => return *response,
    };
    let metrics = registry.metrics();
    let membership = metrics.membership_config.membership();
    let view = |node: &raft_state::state::NodeRecord| NodeView {
        node: node.clone(),
        raft: if metrics.current_leader == Some(node.id) {
            "leader"
        } else if membership.voter_ids().any(|v| v == node.id) {
            "voter"
        } else {
            "learner"
        }
        .to_owned(),
    };
    match name {
        None => {
            let all: Vec<NodeView> = applied.state.nodes.values().map(view).collect();
            json_response(StatusCode::OK, &all)
        }
        Some(name) => match applied.state.find_node(name) {
            Some(node) => json_response(StatusCode::OK, &view(node)),
            None => error(StatusCode::NOT_FOUND, "node", format!("no node {name:?}")),
        },
    }
}

/// `POST /v1/nodes/{name}`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeUpdate {
    pub availability: Option<Availability>,
    #[serde(default)]
    pub labels_add: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub labels_remove: Vec<String>,
}

async fn update_node(registry: &Arc<RegistryNode>, name: &str, body: &Bytes) -> ApiResponse {
    let update = match parse::<NodeUpdate>(body) {
        Ok(update) => update,
        Err(response) => return *response,
    };
    let Some(id) = registry.local().state.find_node(name).map(|n| n.id) else {
        return error(StatusCode::NOT_FOUND, "node", format!("no node {name:?}"));
    };
    propose(
        registry,
        Command::UpdateNode {
            id,
            availability: update.availability,
            role: None,
            labels_add: update.labels_add,
            labels_remove: update.labels_remove,
        },
        false,
    )
    .await
}

async fn remove_node(registry: &Arc<RegistryNode>, name: &str, query: &str) -> ApiResponse {
    let Some(node) = registry.local().state.find_node(name).cloned() else {
        return error(StatusCode::NOT_FOUND, "node", format!("no node {name:?}"));
    };
    let force = query.split('&').any(|kv| kv == "force=true");
    if node.status != NodeStatus::Down && !force {
        return error(
            StatusCode::CONFLICT,
            "node",
            format!(
                "node {:?} is not down; stop it first or use --force",
                node.name
            ),
        );
    }
    if node.id == registry.id {
        return error(
            StatusCode::CONFLICT,
            "node",
            "a node cannot remove itself; ask another",
        );
    }
    if let Err(e) = registry.remove_member(node.id).await {
        return error(StatusCode::SERVICE_UNAVAILABLE, "registry", e.to_string());
    }
    match registry.propose(Command::RemoveNode { id: node.id }).await {
        Ok(Outcome::Removed) => json_response(StatusCode::OK, &json!({"removed": node.name})),
        Ok(other) => outcome_response(other, false),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "registry", e.to_string()),
    }
}

/// A service as `GET /v1/services` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceView {
    #[serde(flatten)]
    pub record: raft_state::state::ServiceRecord,
    /// Tasks that serve traffic now.
    pub running: usize,
    /// Tasks wanted: the replicas, or the live tasks of a global service.
    pub desired: usize,
}

fn service_view(
    state: &raft_state::state::RegistryState,
    record: &raft_state::state::ServiceRecord,
) -> ServiceView {
    let tasks: Vec<_> = state.tasks_of(&record.spec.name).collect();
    let running = tasks.iter().filter(|t| t.serves()).count();
    let desired = match record.spec.validate() {
        Ok(service) => match &service.tasks {
            Some(spec) if spec.mode == lb_config::ServiceMode::Global => {
                tasks.iter().filter(|t| t.is_live()).count()
            }
            Some(_) => service.replicas as usize,
            None => 0,
        },
        Err(_) => 0,
    };
    ServiceView {
        record: record.clone(),
        running,
        desired,
    }
}

async fn services(registry: &Arc<RegistryNode>, name: Option<&str>) -> ApiResponse {
    let applied = match read(registry).await {
        Ok(applied) => applied,
        Err(response) => return *response,
    };
    let state = &applied.state;
    match name {
        None => {
            let all: Vec<ServiceView> = state
                .services
                .values()
                .map(|record| service_view(state, record))
                .collect();
            json_response(StatusCode::OK, &all)
        }
        Some(name) => match state.services.get(name) {
            Some(service) => json_response(StatusCode::OK, &service_view(state, service)),
            None => error(
                StatusCode::NOT_FOUND,
                "name",
                format!("no service named {name:?}"),
            ),
        },
    }
}

/// A task as `GET .../tasks` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskView {
    #[serde(flatten)]
    pub task: raft_state::task::TaskRecord,
    /// The name of its node, if it has one.
    pub node_name: Option<String>,
}

enum TaskFilter<'a> {
    Service(&'a str),
    Node(&'a str),
}

async fn tasks(registry: &Arc<RegistryNode>, filter: TaskFilter<'_>) -> ApiResponse {
    let applied = match read(registry).await {
        Ok(applied) => applied,
        Err(response) => return *response,
    };
    let state = &applied.state;
    let selected: Vec<&raft_state::task::TaskRecord> = match filter {
        TaskFilter::Service(name) => {
            if !state.services.contains_key(name) {
                return error(
                    StatusCode::NOT_FOUND,
                    "name",
                    format!("no service named {name:?}"),
                );
            }
            state.tasks_of(name).collect()
        }
        TaskFilter::Node(name) => {
            let Some(node) = state.find_node(name) else {
                return error(StatusCode::NOT_FOUND, "node", format!("no node {name:?}"));
            };
            state
                .tasks
                .values()
                .filter(|t| t.node == Some(node.id))
                .collect()
        }
    };
    let mut views: Vec<TaskView> = selected
        .into_iter()
        .map(|task| TaskView {
            task: task.clone(),
            node_name: task
                .node
                .and_then(|id| state.nodes.get(&id))
                .map(|n| n.name.clone()),
        })
        .collect();
    // Like `docker service ps`: by slot, live before dead, newest first.
    views.sort_by(|a, b| {
        (
            &a.task.service,
            a.task.slot,
            a.node_name.as_deref(),
            !a.task.is_live(),
            std::cmp::Reverse(a.task.created_at),
        )
            .cmp(&(
                &b.task.service,
                b.task.slot,
                b.node_name.as_deref(),
                !b.task.is_live(),
                std::cmp::Reverse(b.task.created_at),
            ))
    });
    json_response(StatusCode::OK, &views)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    pub replicas: i64,
}

async fn scale(registry: &Arc<RegistryNode>, name: &str, body: &Bytes) -> ApiResponse {
    let scale = match parse::<Scale>(body) {
        Ok(scale) => scale,
        Err(response) => return *response,
    };
    let Some(service) = registry.local().state.services.get(name).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "name",
            format!("no service named {name:?}"),
        );
    };
    let mut spec = service.spec;
    spec.replicas = Some(scale.replicas);
    propose(registry, Command::UpdateService { spec }, false).await
}

/// Passes a write to the leader's API; `Err` when no leader answered.
async fn forward_to_leader(
    registry: &Arc<RegistryNode>,
    method: &Method,
    path: &str,
    query: &str,
    headers: &hyper::HeaderMap,
    body: &Bytes,
) -> Result<ApiResponse, String> {
    let leader = registry.metrics().current_leader;
    let state = registry.local().state;
    let Some(api_addr) = leader
        .and_then(|id| state.nodes.get(&id))
        .map(|n| n.api_addr)
    else {
        return Err("no leader is known yet".to_owned());
    };
    let target = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    };
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let (status, body) = client::request(
        &api_addr.to_string(),
        method.as_str(),
        &target,
        token,
        Some(body),
    )
    .await?;
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
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
        [noun @ ("nodes" | "services"), _, rest @ ..] => {
            let mut t = vec![*noun, "{name}"];
            t.extend(rest.iter().take(1).map(|r| match *r {
                "scale" | "rollback" | "tasks" => *r,
                _ => "{other}",
            }));
            t
        }
        [first, ..]
            if segments.len() <= 2 && matches!(*first, "cluster" | "nodes" | "services") =>
        {
            segments.clone()
        }
        _ => vec!["{unknown}"],
    };
    format!("/v1/{}", template.join("/"))
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A small HTTP/1.1 client for the API: one request per connection.
pub mod client {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::cluster::JoinRequest;

    /// Longest wait for an answer: writes may wait for an election.
    const TIMEOUT: Duration = Duration::from_secs(30);

    /// Sends a request to `host` (`ip:port`, optionally `http://`) and
    /// returns the status and body.
    pub async fn request(
        host: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), String> {
        let host = host.trim_start_matches("http://").trim_end_matches('/');
        let exchange = async {
            let mut stream = TcpStream::connect(host)
                .await
                .map_err(|e| format!("cannot connect to {host}: {e}"))?;
            let body = body.unwrap_or_default();
            let mut head = format!(
                "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
            if let Some(token) = token {
                head.push_str(&format!("Authorization: Bearer {token}\r\n"));
            }
            head.push_str("\r\n");
            stream
                .write_all(head.as_bytes())
                .await
                .and(stream.write_all(body).await)
                .map_err(|e| format!("sending to {host}: {e}"))?;
            let mut response = Vec::new();
            stream
                .read_to_end(&mut response)
                .await
                .map_err(|e| format!("reading from {host}: {e}"))?;
            parse_response(&response)
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("{host} did not answer within {TIMEOUT:?}")))
    }

    fn parse_response(response: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("malformed HTTP response")?;
        let head = String::from_utf8_lossy(&response[..split]);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("malformed HTTP status line")?;
        let mut body = response[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body).ok_or("malformed chunked body")?;
        }
        Ok((status, body))
    }

    fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let line_end = data.windows(2).position(|w| w == b"\r\n")?;
            let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            data = &data[line_end + 2..];
            if size == 0 {
                return Some(out);
            }
            out.extend_from_slice(data.get(..size)?);
            data = data.get(size + 2..)?;
        }
    }

    /// `POST /v1/cluster/join` on `host`.
    pub async fn join(host: &str, request: &JoinRequest) -> Result<(), String> {
        let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        let (status, body) =
            self::request(host, "POST", "/v1/cluster/join", None, Some(&body)).await?;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_templates_hide_names() {
        assert_eq!(route_template("/v1/services"), "/v1/services");
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
        assert_eq!(route_template("/v1/cluster/join"), "/v1/cluster/join");
        assert_eq!(route_template("/v1/whatever/x"), "/v1/{unknown}");
    }
}
