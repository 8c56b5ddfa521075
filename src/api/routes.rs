//! One handler per `/v1` route (the table is lbmesh-api's crate doc): reads
//! answer from a linearizable read of the registry, writes propose a
//! command under the request's id; either way the answer is an lbmesh-api
//! type built by [`convert`](super::convert).
//!
//! A write whose request id this node has applied already (a resend whose
//! first answer was lost) is answered from the remembered outcome before any
//! check, since a check such as "no node named x" would otherwise refuse the
//! resend of the removal that made it true. A resend that arrives before
//! the first copy is applied here is caught where the entry is applied.

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use lb_config::ServiceSpec;
use lbmesh_api::{
    CertificateAnswer, CertificateRequest, ClusterInfo, JoinRequest, JoinToken, ListenerError,
    NodeUpdate, RaftRole, Removed, RenewAnswer, RenewRequest, Scale, ServiceStatus,
    IDEMPOTENCY_KEY,
};
use lbmesh_tls::{ClusterCa, NodeIdentity};
use raft_state::registry::RegistryNode;
use raft_state::state::{
    Command, NodeId, NodeRecord, NodeStatus, Outcome, RegistryState, RejectKind, Role, TokenKind,
};
use raft_state::state::{Rejection, ServiceRecord};
use raft_state::store::Applied;
use raft_state::task::TaskRecord;

use super::convert;
use super::respond::{error, json_response, parse, ApiResponse};
use crate::cluster::{self, JoinRefusal};
use crate::pki::{self, Pki};
use crate::tokens;

/// Largest service spec, as the log stores it (compact JSON): each version
/// is one Raft entry, and four of them make one replication batch
/// (`raft_state::store::MAX_BATCH_BYTES`).
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;

/// What a route may need besides the request: the registry, this node's
/// certificates (and the CA on a manager), and the node the caller's TLS
/// certificate names, if it presented one.
pub struct Context<'a> {
    pub registry: &'a Arc<RegistryNode>,
    pub pki: &'a Pki,
    pub peer: Option<&'a NodeIdentity>,
}

/// The routes that write no log entry of their own (a join's entries carry
/// their own ids), so a request id says nothing about them.
pub fn unkeyed(method: &Method, segments: &[&str]) -> bool {
    method == Method::POST
        && matches!(
            segments,
            ["cluster", "join"] | ["cluster", "certificate"] | ["cluster", "renew"]
        )
}

/// Runs the route `method` and the decoded `segments` (after `/v1/`) name.
pub async fn route(
    context: &Context<'_>,
    method: &Method,
    segments: &[&str],
    query: &str,
    body: &Bytes,
    request: &str,
) -> ApiResponse {
    let registry = context.registry;
    if method != Method::GET && !unkeyed(method, segments) {
        let remembered = registry.local().state.remembered(request);
        if let Some(outcome) = remembered {
            if let (["cluster", "join-token", role, "rotate"], Outcome::Nothing) =
                (segments, &outcome)
            {
                // A resent rotation: the token its first copy made (or a
                // later one) is current now.
                return join_token(context, role).await;
            }
            // A key reused for another kind of write is not its resend.
            return respond_to(outcome, shape(method, segments)).unwrap_or_else(|_| {
                error(
                    StatusCode::CONFLICT,
                    IDEMPOTENCY_KEY,
                    "this key was already used for a different request",
                )
            });
        }
    }
    let request = request.to_owned();
    match (method, segments) {
        (&Method::GET, ["cluster"]) => cluster_info(registry).await,
        (&Method::GET, ["cluster", "join-token", role]) => join_token(context, role).await,
        (&Method::POST, ["cluster", "join-token", role, "rotate"]) => {
            rotate_join_token(context, role, request).await
        }
        (&Method::POST, ["cluster", "join"]) => join(registry, body, &request).await,
        (&Method::POST, ["cluster", "certificate"]) => certificate(context, body).await,
        (&Method::POST, ["cluster", "renew"]) => renew(context, body),
        (&Method::GET, ["nodes"]) => nodes(registry, None).await,
        (&Method::GET, ["nodes", name]) => nodes(registry, Some(name)).await,
        (&Method::GET, ["nodes", name, "tasks"]) => tasks(registry, TaskFilter::Node(name)).await,
        (&Method::GET, ["services", name, "tasks"]) => {
            tasks(registry, TaskFilter::Service(name)).await
        }
        (&Method::POST, ["nodes", name]) => update_node(registry, name, body, request).await,
        (&Method::DELETE, ["nodes", name]) => remove_node(registry, name, query, request).await,
        (&Method::GET, ["services"]) => services(registry, None).await,
        (&Method::GET, ["services", name]) => services(registry, Some(name)).await,
        (&Method::POST, ["services"]) => match parse::<ServiceSpec>(body) {
            Ok(spec) => match spec_too_large(&spec)
                .or_else(|| over_limits(&spec))
                .or_else(|| node_port_clash(registry, &spec))
            {
                Some(clash) => clash,
                None => {
                    // Random like a task id; a resend with the same request
                    // id gets the first create's answer, id included.
                    let id = crate::scheduler::new_task_id();
                    let command = Command::CreateService { spec, id };
                    propose(registry, request, command, Shape::Created).await
                }
            },
            Err(response) => *response,
        },
        (&Method::PUT, ["services", name]) => match parse::<ServiceSpec>(body) {
            Ok(spec) if spec.name == *name => {
                match spec_too_large(&spec)
                    .or_else(|| over_limits(&spec))
                    .or_else(|| node_port_clash(registry, &spec))
                {
                    Some(clash) => clash,
                    None => {
                        let command = Command::UpdateService { spec };
                        propose(registry, request, command, Shape::Stored).await
                    }
                }
            }
            Ok(spec) => error(
                StatusCode::BAD_REQUEST,
                "name",
                format!("the body names {:?}, the path {name:?}", spec.name),
            ),
            Err(response) => *response,
        },
        (&Method::POST, ["services", name, "scale"]) => scale(registry, name, body, request).await,
        (&Method::POST, ["services", name, "rollback"]) => {
            let command = Command::RollbackService {
                name: (*name).to_owned(),
            };
            propose(registry, request, command, Shape::Stored).await
        }
        (&Method::DELETE, ["services", name]) => {
            let command = Command::RemoveService {
                name: (*name).to_owned(),
            };
            propose(registry, request, command, Shape::Removed(name)).await
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
/// A 500 naming the kind of outcome only: records carry specs, whose
/// environment may hold secrets.
fn unexpected(outcome: &Outcome) -> ApiResponse {
    let kind = match outcome {
        Outcome::Node { .. } => "a node record",
        Outcome::Service { .. } => "a service record",
        Outcome::Task { .. } => "a task record",
        Outcome::Removed => "a removal",
        Outcome::Nothing => "no answer",
        Outcome::Rejected { .. } => "a refusal",
    };
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "registry",
        format!("unexpected outcome: {kind}"),
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

/// How a write route answers its outcome.
#[derive(Clone, Copy)]
enum Shape<'a> {
    /// `201` and the record.
    Created,
    /// `200` and the record.
    Stored,
    /// `200` and [`Removed`] with this name.
    Removed(&'a str),
}

/// The shape of the write route `method` and `segments` name.
fn shape<'a>(method: &Method, segments: &[&'a str]) -> Shape<'a> {
    match (method, segments) {
        (&Method::POST, ["services"]) => Shape::Created,
        (&Method::DELETE, [_, name]) => Shape::Removed(name),
        _ => Shape::Stored,
    }
}

/// The answer to a write's outcome.
fn answer(outcome: Outcome, shape: Shape<'_>) -> ApiResponse {
    respond_to(outcome, shape).unwrap_or_else(|other| unexpected(&other))
}

/// The answer to an outcome of the kind the request expects (first or
/// remembered), or the outcome back when it is of another kind.
fn respond_to(outcome: Outcome, shape: Shape<'_>) -> Result<ApiResponse, Outcome> {
    Ok(match (outcome, shape) {
        (Outcome::Service { service }, Shape::Created) => {
            json_response(StatusCode::CREATED, &convert::service(&service))
        }
        (Outcome::Service { service }, Shape::Stored) => {
            json_response(StatusCode::OK, &convert::service(&service))
        }
        (Outcome::Node { node }, Shape::Stored) => {
            json_response(StatusCode::OK, &convert::member(&node))
        }
        (Outcome::Removed, Shape::Removed(name)) => json_response(
            StatusCode::OK,
            &Removed {
                removed: name.to_owned(),
            },
        ),
        (Outcome::Rejected { rejection }, _) => rejected(rejection),
        (other, _) => return Err(other),
    })
}

/// Proposes `command` for request `request` and answers its outcome.
async fn propose(
    registry: &Arc<RegistryNode>,
    request: String,
    command: Command,
    shape: Shape<'_>,
) -> ApiResponse {
    match registry.propose_request(request, command).await {
        Ok(outcome) => answer(outcome, shape),
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
        node_id: registry.id.into(),
        leader: metrics.current_leader.map(lbmesh_api::NodeId::from),
        term: metrics.current_term,
        commit_index: metrics.last_log_index.unwrap_or(0),
        applied_index: applied.index,
        voters: membership
            .voter_ids()
            .map(lbmesh_api::NodeId::from)
            .collect(),
        learners: membership
            .learner_ids()
            .map(lbmesh_api::NodeId::from)
            .collect(),
        nodes: applied.state.nodes.len(),
        services: applied.state.services.len(),
    };
    json_response(StatusCode::OK, &info)
}

/// The join token kind a role path segment names.
fn join_kind(role: &str) -> Result<TokenKind, Box<ApiResponse>> {
    match role {
        "manager" => Ok(TokenKind::Manager),
        "worker" => Ok(TokenKind::Worker),
        other => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "role",
            format!("{other:?} is not a role; use manager or worker"),
        ))),
    }
}

/// The answer while the registry holds no cluster record yet (before the
/// bootstrap's first commit has been applied here).
fn cluster_not_initialised() -> ApiResponse {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "cluster",
        "not initialised",
    )
}

/// The CA, which only a manager holds: tokens are derived and
/// certificates signed with it.
fn manager_ca(context: &Context<'_>) -> Result<Arc<ClusterCa>, Box<ApiResponse>> {
    context.pki.ca().ok_or_else(|| {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "node",
            format!(
                "node {} is not a manager holding the cluster CA key; ask a manager (--host)",
                context.registry.id
            ),
        ))
    })
}

async fn join_token(context: &Context<'_>, role: &str) -> ApiResponse {
    let kind = match join_kind(role) {
        Ok(kind) => kind,
        Err(response) => return *response,
    };
    let applied = match read(context.registry).await {
        Ok(applied) => applied,
        Err(response) => return *response,
    };
    let Some(cluster) = &applied.state.cluster else {
        return cluster_not_initialised();
    };
    let ca = match manager_ca(context) {
        Ok(ca) => ca,
        Err(response) => return *response,
    };
    let token = tokens::token_text(&ca, kind, cluster.token(kind));
    json_response(StatusCode::OK, &JoinToken { token })
}

/// A new join token for `role` (the old one stops admitting); the answer is
/// the new token. Nodes that joined with the old one are unaffected.
async fn rotate_join_token(context: &Context<'_>, role: &str, request: String) -> ApiResponse {
    let kind = match join_kind(role) {
        Ok(kind) => kind,
        Err(response) => return *response,
    };
    let ca = match manager_ca(context) {
        Ok(ca) => ca,
        Err(response) => return *response,
    };
    let seed = match tokens::new_seed(&ca, kind) {
        Ok(seed) => seed,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "token", e.to_string()),
    };
    let token = tokens::token_text(&ca, kind, &seed);
    let command = Command::RotateToken { kind, seed };
    match context.registry.propose_request(request, command).await {
        Ok(Outcome::Nothing) => json_response(StatusCode::OK, &JoinToken { token }),
        Ok(Outcome::Rejected { rejection }) => rejected(rejection),
        Ok(other) => unexpected(&other),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "registry", e.to_string()),
    }
}

/// A joiner's first certificate, of the role its join token gives, for
/// the id it picked (not a member's, nor a removed node's).
async fn certificate(context: &Context<'_>, body: &Bytes) -> ApiResponse {
    let request = match parse::<CertificateRequest>(body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let state = context.registry.local().state;
    let Some(cluster) = &state.cluster else {
        return cluster_not_initialised();
    };
    let role = match cluster::join_role(cluster, &request.token) {
        Ok(role) => role,
        Err(reason) => return error(StatusCode::UNAUTHORIZED, "token", reason),
    };
    let id = request.node_id.0;
    if state.nodes.contains_key(&id) || state.removed_nodes.contains(&id) {
        return error(
            StatusCode::CONFLICT,
            "node_id",
            format!("node id {id} is a member's or a removed node's"),
        );
    }
    let ca = match manager_ca(context) {
        Ok(ca) => ca,
        Err(response) => return *response,
    };
    match pki::issue(&ca, cluster, &request.csr, id, pki::cert_role(role)) {
        Ok(certificate) => json_response(
            StatusCode::OK,
            &CertificateAnswer {
                certificate,
                ca_certificate: cluster.ca_cert.clone(),
            },
        ),
        Err(e) => error(StatusCode::BAD_REQUEST, "csr", e.to_string()),
    }
}

/// A new certificate for the node whose certificate the caller presented,
/// of the role its registry record gives it now; a manager's comes with
/// the CA key. Served by any manager holding the CA key, never forwarded.
fn renew(context: &Context<'_>, body: &Bytes) -> ApiResponse {
    let Some(peer) = context.peer else {
        return error(
            StatusCode::UNAUTHORIZED,
            "certificate",
            "a renewal is made with the node's current certificate over TLS",
        );
    };
    let request = match parse::<RenewRequest>(body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let ca = match manager_ca(context) {
        Ok(ca) => ca,
        Err(response) => return *response,
    };
    let state = context.registry.local().state;
    let Some(cluster) = &state.cluster else {
        return cluster_not_initialised();
    };
    let id = peer.node_id;
    let record = match state.nodes.get(&id) {
        Some(record) if !state.removed_nodes.contains(&id) => record,
        _ => {
            return error(
                StatusCode::FORBIDDEN,
                "certificate",
                format!("node {id} is not a member of the cluster"),
            )
        }
    };
    let role = pki::cert_role(record.role);
    match pki::issue(&ca, cluster, &request.csr, id, role) {
        Ok(certificate) => json_response(
            StatusCode::OK,
            &RenewAnswer {
                certificate,
                ca_key: (record.role == Role::Manager).then(|| ca.key_pem()),
            },
        ),
        Err(e) => error(StatusCode::BAD_REQUEST, "csr", e.to_string()),
    }
}

async fn join(registry: &Arc<RegistryNode>, body: &Bytes, request_id: &str) -> ApiResponse {
    let request = match parse::<JoinRequest>(body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    match cluster::admit(registry, request, request_id).await {
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

async fn update_node(
    registry: &Arc<RegistryNode>,
    name: &str,
    body: &Bytes,
    request: String,
) -> ApiResponse {
    let update = match parse::<NodeUpdate>(body) {
        Ok(update) => update,
        Err(response) => return *response,
    };
    let state = registry.local().state;
    let Some(node) = state.find_node(name) else {
        return no_node(name);
    };
    let id = node.id;
    let role = update.role.map(convert::registry_role);
    if role == Some(Role::Worker) && node.role == Role::Manager {
        let managers = state
            .nodes
            .values()
            .filter(|n| n.role == Role::Manager)
            .count();
        if managers == 1 {
            return error(
                StatusCode::CONFLICT,
                "role",
                format!(
                    "node {:?} is the last manager; promote another first",
                    node.name
                ),
            );
        }
        if id == registry.id {
            return error(
                StatusCode::CONFLICT,
                "role",
                format!(
                    "node {:?} leads the cluster; demote it once another node leads",
                    node.name
                ),
            );
        }
    }
    let command = Command::UpdateNode {
        id,
        availability: update.availability.map(convert::registry_availability),
        role,
        labels_add: update.labels_add,
        labels_remove: update.labels_remove,
    };
    let answer = propose(registry, request, command, Shape::Stored).await;
    // The role is stored: now the votes follow it (again on a resend).
    if role.is_some() && answer.status() == StatusCode::OK {
        if let Err(e) = cluster::balance_voters(registry).await {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "registry",
                format!("the role is stored but the votes did not follow yet: {e}; send it again"),
            );
        }
    }
    answer
}

async fn remove_node(
    registry: &Arc<RegistryNode>,
    name: &str,
    query: &str,
    request: String,
) -> ApiResponse {
    let force = query.split('&').any(|kv| kv == "force=true");
    let Some(node) = registry.local().state.find_node(name).cloned() else {
        return remove_stray_member(registry, name, force).await;
    };
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
    let command = Command::RemoveNode { id: node.id };
    propose(registry, request, command, Shape::Removed(&node.name)).await
}

/// Removes a Raft member that has no node record, named by its id: a
/// learner a refused join left behind (before joins checked first), which
/// the leader would otherwise replicate to for ever. A voter needs `force`,
/// since it counts towards the quorum.
async fn remove_stray_member(registry: &Arc<RegistryNode>, name: &str, force: bool) -> ApiResponse {
    let Ok(id) = name.parse::<NodeId>() else {
        return no_node(name);
    };
    let metrics = registry.metrics();
    let membership = metrics.membership_config.membership();
    if membership.get_node(&id).is_none() {
        return no_node(name);
    }
    if id == registry.id {
        return error(
            StatusCode::CONFLICT,
            "node",
            "a node cannot remove itself; ask another",
        );
    }
    if membership.voter_ids().any(|v| v == id) && !force {
        return error(
            StatusCode::CONFLICT,
            "node",
            format!("member {id} has no node record but votes; use --force to remove it"),
        );
    }
    match registry.remove_member(id).await {
        Ok(()) => json_response(
            StatusCode::OK,
            &Removed {
                removed: name.to_owned(),
            },
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "registry", e.to_string()),
    }
}

/// A service with its running and desired task counts.
fn service_status(state: &RegistryState, record: &ServiceRecord) -> ServiceStatus {
    let tasks: Vec<_> = state.tasks_of(&record.spec.name).collect();
    let running = tasks.iter().filter(|t| t.serves()).count();
    let desired = match record.checked() {
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
        listener_errors: listener_errors(state, &record.spec.name),
    }
}

/// What the nodes report they cannot bind for `service`, by node name and
/// address.
fn listener_errors(state: &RegistryState, service: &str) -> Vec<ListenerError> {
    let mut errors: Vec<ListenerError> = state
        .listener_failures
        .iter()
        .filter_map(|(id, failures)| Some((state.nodes.get(id)?, failures)))
        .flat_map(|(node, failures)| {
            failures
                .iter()
                .filter(|failure| failure.service == service)
                .map(|failure| ListenerError {
                    node: node.name.clone(),
                    address: failure.address,
                    protocol: failure.protocol,
                    error: failure.error.clone(),
                })
        })
        .collect();
    errors.sort_by(|a, b| (&a.node, a.address).cmp(&(&b.node, b.address)));
    errors
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
            state.tasks_on(node.id).collect()
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

async fn scale(
    registry: &Arc<RegistryNode>,
    name: &str,
    body: &Bytes,
    request: String,
) -> ApiResponse {
    let scale = match parse::<Scale>(body) {
        Ok(scale) => scale,
        Err(response) => return *response,
    };
    let Some(service) = registry.local().state.services.get(name).cloned() else {
        return no_service(name);
    };
    let mut spec = service.spec;
    spec.replicas = Some(scale.replicas);
    propose(
        registry,
        request,
        Command::UpdateService { spec },
        Shape::Stored,
    )
    .await
}

/// A 400 when `spec` is over a limit of new specs (`check_limits`: the
/// ports per service). Checked before the write, not in the state machine,
/// so a spec an older lbd stored still applies alike.
fn over_limits(spec: &ServiceSpec) -> Option<ApiResponse> {
    spec.check_limits()
        .err()
        .map(|e| error(StatusCode::BAD_REQUEST, &e.field, e.reason))
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
    for (i, port) in spec
        .ports
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_published())
    {
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use http_body_util::BodyExt;
    use lbmesh_api::{Availability, Member, Role};
    use lbmesh_tls::{CertRole, NodeKey};
    use raft_state::registry::{NodeOptions, Timing};
    use raft_state::state::{ClusterInfo, DEFAULT_VIP_RANGE};
    use tokio::net::TcpListener;

    use super::*;

    /// The tests' CA and the cluster record made with it.
    fn cluster() -> &'static (ClusterCa, ClusterInfo) {
        static CLUSTER: std::sync::OnceLock<(ClusterCa, ClusterInfo)> = std::sync::OnceLock::new();
        CLUSTER.get_or_init(|| {
            let ca = ClusterCa::generate("test").expect("CA");
            let seed = |kind| tokens::new_seed(&ca, kind).expect("seed");
            let info = ClusterInfo {
                id: "test".to_owned(),
                ca_cert: ca.cert_pem().to_owned(),
                cert_lifetime_ms: 3_600_000,
                manager_token: seed(TokenKind::Manager),
                worker_token: seed(TokenKind::Worker),
                control_token: seed(TokenKind::Control),
            };
            (ca, info)
        })
    }

    fn worker_token() -> String {
        let (ca, info) = cluster();
        tokens::token_text(ca, TokenKind::Worker, &info.worker_token)
    }

    /// A registry node on 127.0.0.1:0 with a manager certificate, its
    /// certificates (the CA key with them), and its Raft address.
    async fn start(
        dir: &tempfile::TempDir,
        id: NodeId,
    ) -> (Arc<RegistryNode>, Arc<Pki>, SocketAddr) {
        let (ca, info) = cluster();
        let key = NodeKey::generate().expect("key");
        let cert =
            pki::issue(ca, info, &key.csr(id).expect("csr"), id, CertRole::Manager).expect("cert");
        let files = dir.path().join(format!("pki-{id}"));
        crate::files::private_dir(&files).expect("dir");
        let ca_copy = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).expect("CA copy");
        let pki = Pki::create(&files, key, &cert, ca.cert_pem(), Some(ca_copy)).expect("pki");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let node = RegistryNode::start(NodeOptions {
            id,
            raft_listener: listener,
            raft_addr: addr.to_string(),
            data_file: dir.path().join(format!("{id}.redb")),
            credentials: pki.credentials(),
            timing: Timing::default(),
        })
        .await
        .expect("registry starts");
        (Arc::new(node), pki, addr)
    }

    /// A one-node cluster, initialised, that leads.
    async fn leader(dir: &tempfile::TempDir) -> (Arc<RegistryNode>, Arc<Pki>) {
        let (node, pki, _) = start(dir, 1).await;
        node.bootstrap().await.expect("bootstrap");
        let started = std::time::Instant::now();
        while !node.is_leader() && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let init = Command::InitCluster {
            cluster: cluster().1.clone(),
            vip_range: DEFAULT_VIP_RANGE,
            vip_range_v6: None,
            dns_domain: None,
        };
        node.propose(init).await.expect("init");
        (node, pki)
    }

    async fn call(
        node: &Arc<RegistryNode>,
        pki: &Pki,
        method: Method,
        segments: &[&str],
        body: &Bytes,
        request: &str,
    ) -> ApiResponse {
        let context = Context {
            registry: node,
            pki,
            peer: None,
        };
        route(&context, &method, segments, "", body, request).await
    }

    fn join_body(id: NodeId, name: &str, raft_addr: SocketAddr) -> Bytes {
        let request = JoinRequest {
            token: worker_token(),
            node: Member {
                id: id.into(),
                name: name.to_owned(),
                raft_addr,
                api_addr: SocketAddr::new(raft_addr.ip(), 1),
                ingress_addr: raft_addr.ip(),
                role: Role::Worker,
                availability: Availability::Active,
                status: lbmesh_api::NodeStatus::Ready,
                labels: Default::default(),
            },
        };
        Bytes::from(serde_json::to_vec(&request).expect("encode"))
    }

    fn members(node: &RegistryNode) -> Vec<NodeId> {
        let metrics = node.metrics();
        let membership = metrics.membership_config.membership();
        membership.nodes().map(|(id, _)| *id).collect()
    }

    async fn post_join(
        (node, pki): &(Arc<RegistryNode>, Arc<Pki>),
        body: &Bytes,
        request: &str,
    ) -> ApiResponse {
        let join = tokio::time::timeout(
            Duration::from_secs(30),
            call(node, pki, Method::POST, &["cluster", "join"], body, request),
        );
        join.await.expect("a join is answered in bounded time")
    }

    /// A join refused for its record, or for its Raft address, leaves no
    /// Raft member behind (the learner used to be added before the record
    /// was checked, and stayed for ever); one that passes is a learner with
    /// a record, and its resend is answered with that record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_join_leaves_no_learner() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = leader(&dir).await;
        let leader = Arc::clone(&cluster.0);
        let (joiner, _, joiner_addr) = start(&dir, 7).await;
        let leader_raft: SocketAddr = leader
            .metrics()
            .membership_config
            .membership()
            .get_node(&1)
            .expect("the leader's own address")
            .addr
            .parse()
            .expect("an address");
        // fixed-port-ok: nothing listens on port 1.
        let nobody: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let refused = [
            (join_body(7, "Not A Label", joiner_addr), "node.name"),
            (join_body(7, "joiner", leader_raft), "node.raft_addr"),
            (join_body(7, "joiner", nobody), "node.raft_addr"),
            (join_body(8, "joiner", joiner_addr), "node.raft_addr"),
        ];
        for (i, (body, field)) in refused.iter().enumerate() {
            let response = post_join(&cluster, body, &format!("refused-{i}")).await;
            assert_eq!(response.status(), StatusCode::CONFLICT, "case {i}");
            let answer = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.contains(field), "case {i}: {answer}");
            assert_eq!(members(&leader), [1], "case {i} left a member behind");
        }
        assert_eq!(leader.local().state.nodes.len(), 0, "no record written");

        let body = join_body(7, "joiner", joiner_addr);
        let joined = post_join(&cluster, &body, "good").await;
        assert_eq!(joined.status(), StatusCode::OK);
        assert_eq!(members(&leader), [1, 7]);
        let first = joined.into_body().collect().await.expect("body").to_bytes();
        let resent = post_join(&cluster, &body, "good").await;
        assert_eq!(resent.status(), StatusCode::OK, "a resent join");
        let again = resent.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(again, first, "the first answer");
        joiner.shutdown().await;
        leader.shutdown().await;
    }

    /// `node rm` of a Raft member without a node record (what a refused
    /// join left behind) removes it from Raft; it used to answer "no node".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn node_rm_removes_a_stray_learner() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (leader, pki) = leader(&dir).await;
        let (stray, _, stray_addr) = start(&dir, 55).await;
        leader
            .add_learner_nonblocking(55, &stray_addr.to_string())
            .await
            .expect("learner added");
        assert_eq!(members(&leader), [1, 55]);
        let remove = |name: &'static str| {
            let leader = Arc::clone(&leader);
            let pki = Arc::clone(&pki);
            async move {
                call(
                    &leader,
                    &pki,
                    Method::DELETE,
                    &["nodes", name],
                    &Bytes::new(),
                    name,
                )
                .await
            }
        };
        let removed = remove("55").await;
        assert_eq!(removed.status(), StatusCode::OK);
        assert_eq!(members(&leader), [1], "the stray learner is gone");
        assert_eq!(remove("56").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            remove("1").await.status(),
            StatusCode::CONFLICT,
            "not itself"
        );
        assert_eq!(members(&leader), [1]);
        stray.shutdown().await;
        leader.shutdown().await;
    }
}
