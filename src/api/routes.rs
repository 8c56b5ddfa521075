//! One handler per `/v1` route (the table is lbmesh-api's crate doc): reads
//! answer from a linearizable read of the registry, writes propose a
//! command; either way the answer is an lbmesh-api type built by
//! [`convert`](super::convert).

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use lb_config::ServiceSpec;
use lbmesh_api::{
    ClusterInfo, JoinRequest, JoinToken, NodeUpdate, RaftRole, Removed, Scale, ServiceStatus,
};
use raft_state::registry::RegistryNode;
use raft_state::state::{Command, NodeRecord, NodeStatus, Outcome, RegistryState, RejectKind};
use raft_state::state::{Rejection, ServiceRecord};
use raft_state::store::Applied;
use raft_state::task::TaskRecord;

use super::convert;
use super::respond::{error, json_response, parse, ApiResponse};
use crate::cluster::{self, JoinRefusal};

/// Largest service spec, as the log stores it (compact JSON): each version
/// is one Raft entry, and four of them make one replication batch
/// (`raft_state::store::MAX_BATCH_BYTES`).
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;

/// Runs the route `method` and the decoded `segments` (after `/v1/`) name.
pub async fn route(
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
            Ok(spec) => match spec_too_large(&spec).or_else(|| node_port_clash(registry, &spec)) {
                Some(clash) => clash,
                None => propose(registry, Command::CreateService { spec }, true).await,
            },
            Err(response) => *response,
        },
        (&Method::PUT, ["services", name]) => match parse::<ServiceSpec>(body) {
            Ok(spec) if spec.name == *name => {
                match spec_too_large(&spec).or_else(|| node_port_clash(registry, &spec)) {
                    Some(clash) => clash,
                    None => propose(registry, Command::UpdateService { spec }, false).await,
                }
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
            let command = Command::RemoveService {
                name: (*name).to_owned(),
            };
            remove(registry, command, name).await
        }
        _ => error(StatusCode::NOT_FOUND, "path", "no such route"),
    }
}

fn rejected(rejection: Rejection) -> ApiResponse {
    let status = match rejection.kind {
        RejectKind::Invalid => StatusCode::BAD_REQUEST,
        RejectKind::NotFound => StatusCode::NOT_FOUND,
        RejectKind::Conflict => StatusCode::CONFLICT,
    };
    error(status, &rejection.field, rejection.reason)
}

/// An outcome no command of these routes answers: the registry broke its
/// contract, so the client learns of it rather than getting `{}`.
fn unexpected(outcome: &Outcome) -> ApiResponse {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "registry",
        format!("unexpected outcome {outcome:?}"),
    )
}

fn no_service(name: &str) -> ApiResponse {
    error(
        StatusCode::NOT_FOUND,
        "name",
        format!("no service named {name:?}"),
    )
}

fn no_node(name: &str) -> ApiResponse {
    error(StatusCode::NOT_FOUND, "node", format!("no node {name:?}"))
}

/// Proposes a change of a service or a node and answers what was stored.
async fn propose(registry: &Arc<RegistryNode>, command: Command, created: bool) -> ApiResponse {
    match registry.propose(command).await {
        Ok(Outcome::Service { service }) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_response(status, &convert::service(&service))
        }
        Ok(Outcome::Node { node }) => json_response(StatusCode::OK, &convert::member(&node)),
        Ok(Outcome::Rejected { rejection }) => rejected(rejection),
        Ok(other) => unexpected(&other),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "registry", e.to_string()),
    }
}

/// Proposes a removal and answers [`Removed`] with `name`.
async fn remove(registry: &Arc<RegistryNode>, command: Command, name: &str) -> ApiResponse {
    match registry.propose(command).await {
        Ok(Outcome::Removed) => json_response(
            StatusCode::OK,
            &Removed {
                removed: name.to_owned(),
            },
        ),
        Ok(Outcome::Rejected { rejection }) => rejected(rejection),
        Ok(other) => unexpected(&other),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "registry", e.to_string()),
    }
}

async fn read(registry: &Arc<RegistryNode>) -> Result<Applied, Box<ApiResponse>> {
    registry.linearizable().await.map_err(|e| {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry",
            e.to_string(),
        ))
    })
}

async fn cluster_info(registry: &Arc<RegistryNode>) -> ApiResponse {
    let applied = match read(registry).await {
        Ok(applied) => applied,
        Err(response) => return *response,
    };
    let metrics = registry.metrics();
    let membership = metrics.membership_config.membership();
    let info = ClusterInfo {
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
    json_response(StatusCode::OK, &info)
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
    let token = match role {
        "manager" => &cluster.manager_token,
        "worker" => &cluster.worker_token,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                "role",
                format!("{other:?} is not a role; use manager or worker"),
            )
        }
    };
    json_response(
        StatusCode::OK,
        &JoinToken {
            token: token.clone(),
        },
    )
}

async fn join(registry: &Arc<RegistryNode>, body: &Bytes) -> ApiResponse {
    let request = match parse::<JoinRequest>(body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    match cluster::admit(registry, request).await {
        Ok(node) => json_response(StatusCode::OK, &convert::member(&node)),
        Err(JoinRefusal::BadToken(reason)) => error(StatusCode::UNAUTHORIZED, "token", reason),
        Err(JoinRefusal::Invalid { field, reason }) => error(StatusCode::CONFLICT, &field, reason),
        Err(JoinRefusal::Failed(reason)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "registry", reason)
        }
    }
}

async fn nodes(registry: &Arc<RegistryNode>, name: Option<&str>) -> ApiResponse {
    let applied = match read(registry).await {
        Ok(applied) => applied,
        Err(response) => return *response,
    };
    let metrics = registry.metrics();
    let membership = metrics.membership_config.membership();
    let view = |node: &NodeRecord| {
        let raft = if metrics.current_leader == Some(node.id) {
            RaftRole::Leader
        } else if membership.voter_ids().any(|v| v == node.id) {
            RaftRole::Voter
        } else {
            RaftRole::Learner
        };
        convert::node(node, raft)
    };
    match name {
        None => {
            let all: Vec<_> = applied.state.nodes.values().map(view).collect();
            json_response(StatusCode::OK, &all)
        }
        Some(name) => match applied.state.find_node(name) {
            Some(node) => json_response(StatusCode::OK, &view(node)),
            None => no_node(name),
        },
    }
}

async fn update_node(registry: &Arc<RegistryNode>, name: &str, body: &Bytes) -> ApiResponse {
    let update = match parse::<NodeUpdate>(body) {
        Ok(update) => update,
        Err(response) => return *response,
    };
    let Some(id) = registry.local().state.find_node(name).map(|n| n.id) else {
        return no_node(name);
    };
    let command = Command::UpdateNode {
        id,
        availability: update.availability.map(convert::registry_availability),
        role: None,
        labels_add: update.labels_add,
        labels_remove: update.labels_remove,
    };
    propose(registry, command, false).await
}

async fn remove_node(registry: &Arc<RegistryNode>, name: &str, query: &str) -> ApiResponse {
    let Some(node) = registry.local().state.find_node(name).cloned() else {
        return no_node(name);
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
    remove(registry, Command::RemoveNode { id: node.id }, &node.name).await
}

/// A service with its running and desired task counts.
fn service_status(state: &RegistryState, record: &ServiceRecord) -> ServiceStatus {
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
    ServiceStatus {
        service: convert::service(record),
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
            let all: Vec<ServiceStatus> = state
                .services
                .values()
                .map(|record| service_status(state, record))
                .collect();
            json_response(StatusCode::OK, &all)
        }
        Some(name) => match state.services.get(name) {
            Some(service) => json_response(StatusCode::OK, &service_status(state, service)),
            None => no_service(name),
        },
    }
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
    let selected: Vec<&TaskRecord> = match filter {
        TaskFilter::Service(name) => {
            if !state.services.contains_key(name) {
                return no_service(name);
            }
            state.tasks_of(name).collect()
        }
        TaskFilter::Node(name) => {
            let Some(node) = state.find_node(name) else {
                return no_node(name);
            };
            state
                .tasks
                .values()
                .filter(|t| t.node == Some(node.id))
                .collect()
        }
    };
    let mut named: Vec<(&TaskRecord, Option<String>)> = selected
        .into_iter()
        .map(|task| {
            let node_name = task
                .node
                .and_then(|id| state.nodes.get(&id))
                .map(|n| n.name.clone());
            (task, node_name)
        })
        .collect();
    // Like `docker service ps`: by slot, live before dead, newest first.
    named.sort_by(|(a, a_node), (b, b_node)| {
        (
            &a.service,
            a.slot,
            a_node.as_deref(),
            !a.is_live(),
            std::cmp::Reverse(a.created_at),
        )
            .cmp(&(
                &b.service,
                b.slot,
                b_node.as_deref(),
                !b.is_live(),
                std::cmp::Reverse(b.created_at),
            ))
    });
    let tasks: Vec<_> = named
        .into_iter()
        .map(|(task, node_name)| convert::task(task, node_name))
        .collect();
    json_response(StatusCode::OK, &tasks)
}

async fn scale(registry: &Arc<RegistryNode>, name: &str, body: &Bytes) -> ApiResponse {
    let scale = match parse::<Scale>(body) {
        Ok(scale) => scale,
        Err(response) => return *response,
    };
    let Some(service) = registry.local().state.services.get(name).cloned() else {
        return no_service(name);
    };
    let mut spec = service.spec;
    spec.replicas = Some(scale.replicas);
    propose(registry, Command::UpdateService { spec }, false).await
}

/// A 413 naming the limit when `spec`, encoded as the log stores it, is over
/// [`MAX_SPEC_BYTES`]: every version of a spec is a Raft entry that each
/// follower must receive, and replication sends entries in batches of at
/// most `raft_state::store::MAX_BATCH_BYTES`. Checked before the write.
fn spec_too_large(spec: &ServiceSpec) -> Option<ApiResponse> {
    let bytes = match serde_json::to_vec(spec) {
        Ok(encoded) => encoded.len(),
        Err(e) => {
            return Some(error(
                StatusCode::BAD_REQUEST,
                "spec",
                format!("the spec does not encode: {e}"),
            ))
        }
    };
    (bytes > MAX_SPEC_BYTES).then(|| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "spec",
            format!(
                "the spec is {bytes} bytes as JSON; at most {MAX_SPEC_BYTES} bytes are allowed"
            ),
        )
    })
}

/// A 409 when a published port of `spec` is a node's API or Raft port:
/// every node binds every published port, so such a service could never be
/// served there, and could keep that node from restarting. Checked here,
/// before the write, rather than in the state machine, so that lbd
/// versions with and without the rule apply the same log alike.
fn node_port_clash(registry: &RegistryNode, spec: &ServiceSpec) -> Option<ApiResponse> {
    let state = registry.local().state;
    for (i, port) in spec.ports.iter().enumerate() {
        for node in state.nodes.values() {
            let held = [("API", node.api_addr), ("Raft", node.raft_addr)]
                .into_iter()
                .find(|(_, addr)| i64::from(addr.port()) == port.published);
            if let Some((what, addr)) = held {
                return Some(error(
                    StatusCode::CONFLICT,
                    &format!("ports[{i}].published"),
                    format!(
                        "port {} is node {:?}'s {what} port ({addr})",
                        port.published, node.name
                    ),
                ));
            }
        }
    }
    None
}
