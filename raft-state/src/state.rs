//! The registry: the value the Raft log replicates, and how commands change it.
//!
//! The records, [`Command`] and [`Outcome`] live in files of their own that
//! never import this one (the crate doc shows the order); this file applies
//! the node and service commands, and its child `tasks` the task commands.
//!
//! [`RegistryState`] is a plain value: nodes, services, tasks, the VIP
//! range and the listen addresses each node reports it cannot bind.
//! [`RegistryState::apply`] is the only way the registry changes it (the
//! public task helpers it uses, which keep the task index, are for states
//! built outside the log: tests and benchmarks). Beside the maps it keeps
//! two derived indexes, never stored: the VIPs and ports in use (`taken`)
//! and the tasks of each service and node (`task_index`). It is deterministic
//! (every node applies the same commands in the same order and reaches the
//! same state) and it validates every command: a command that
//! would break an invariant is answered with [`Outcome::Rejected`] naming the
//! field and the reason, and changes nothing. It never panics on a command's
//! content.
//!
//! Invariants:
//! - service names are unique lowercase DNS labels and every stored spec
//!   passes `ServiceSpec::validate`;
//! - a published port belongs to at most one service (every node binds every
//!   published port: the mesh);
//! - each service holds one VIP from the range, and no two services share one;
//! - node ids and node names are unique.

mod taken;
mod task_index;
mod tasks;

use std::collections::{BTreeMap, BTreeSet};

use imbl::OrdMap;
use lb_config::{check_dns_label, ServiceSpec};
use serde::{Deserialize, Serialize};

use crate::outcome::reject;
use crate::requests::{Answer, RecentRequests};
use crate::task::{DesiredState, TaskRecord, TaskState, UpdateState, UpdateStatus};
use taken::{port_key, TakenCell};
use task_index::{Placement, TaskIndexCell};

// The records have files of their own; these keep the paths callers use
// (`raft_state::state::Command`, ...).
pub use crate::cluster::{
    ClusterInfo, TokenKind, TokenSeed, VipRange, VipRangeV6, DEFAULT_DNS_DOMAIN, DEFAULT_VIP_RANGE,
    DEFAULT_VIP_RANGE_V6,
};
pub use crate::command::{Command, Proposal, RequestId};
pub use crate::node::{Availability, ListenerFailure, NodeId, NodeRecord, NodeStatus, Role};
pub use crate::outcome::{Outcome, RejectKind, Rejection};
pub use crate::service::{CheckedSpec, ServiceRecord};

/// The replicated registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryState {
    pub cluster: Option<ClusterInfo>,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub services: OrdMap<String, ServiceRecord>,
    pub vip_range: VipRange,
    /// Where services' IPv6 VIPs come from; `None` in a cluster
    /// bootstrapped before v6 VIPs, whose services have v4 VIPs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_range_v6: Option<VipRangeV6>,
    /// The cluster's DNS domain; `None` in a cluster bootstrapped before
    /// the registry kept it (see [`RegistryState::dns_domain`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<String>,
    /// Every task by id, live ones and a short history of dead ones
    /// (read with [`RegistryState::tasks`]; changed only through the
    /// task helpers, which keep `task_index`).
    #[serde(default)]
    tasks: OrdMap<String, TaskRecord>,
    /// What each node last reported it cannot bind; a node with none has
    /// no entry.
    #[serde(default)]
    pub listener_failures: BTreeMap<NodeId, Vec<ListenerFailure>>,
    /// The last request ids applied and their answers, so a resent write
    /// gets its first answer instead of being applied again.
    #[serde(default)]
    pub requests: RecentRequests,
    /// Nodes removed from the cluster: their certificates are refused
    /// from then on, whatever their expiry (the deny list).
    #[serde(default)]
    pub removed_nodes: BTreeSet<NodeId>,
    /// The VIPs and published ports in use, derived from `services` (see
    /// [`taken`]); `services` changes only through `apply`, which keeps it.
    #[serde(skip)]
    taken: TakenCell,
    /// The tasks of each service and node, derived from `tasks` (see
    /// [`task_index`]).
    #[serde(skip)]
    task_index: TaskIndexCell,
}

impl Default for RegistryState {
    fn default() -> Self {
        Self {
            cluster: None,
            nodes: BTreeMap::new(),
            services: OrdMap::new(),
            vip_range: DEFAULT_VIP_RANGE,
            vip_range_v6: None,
            dns_domain: None,
            tasks: OrdMap::new(),
            listener_failures: BTreeMap::new(),
            requests: RecentRequests::default(),
            removed_nodes: BTreeSet::new(),
            taken: TakenCell::default(),
            task_index: TaskIndexCell::default(),
        }
    }
}

impl RegistryState {
    /// Applies one log entry. A proposal whose request id is remembered is
    /// a resend: it gets the first answer and changes nothing. One without
    /// an id applies as a bare command always did.
    pub fn apply_proposal(&mut self, proposal: &Proposal) -> Outcome {
        let Some(request) = &proposal.request else {
            return self.apply_entry(proposal);
        };
        if let Some(outcome) = self.remembered(request) {
            return outcome;
        }
        let outcome = self.apply_entry(proposal);
        self.requests.remember(request.clone(), &outcome);
        outcome
    }

    /// The answer a resend of `request` gets, if the id is remembered: the
    /// record the first answer carried, as it is now (see
    /// [`crate::requests`]).
    pub fn remembered(&self, request: &str) -> Option<Outcome> {
        let gone = |what: &str| {
            reject(
                RejectKind::NotFound,
                "request",
                format!("the write took effect, but {what} is gone since"),
            )
        };
        Some(match self.requests.answer(request)? {
            Answer::Node { id } => match self.nodes.get(id) {
                Some(node) => Outcome::Node {
                    node: Box::new(node.clone()),
                },
                None => gone(&format!("node {id}")),
            },
            Answer::Service { name } => match self.services.get(name) {
                Some(service) => Outcome::Service {
                    service: Box::new(service.clone()),
                },
                None => gone(&format!("service {name:?}")),
            },
            Answer::Task { id } => match self.tasks.get(id) {
                Some(task) => Outcome::Task {
                    task: Box::new(task.clone()),
                },
                None => gone(&format!("task {id}")),
            },
            Answer::Removed => Outcome::Removed,
            Answer::Nothing => Outcome::Nothing,
            Answer::Rejected { rejection } => Outcome::Rejected {
                rejection: rejection.clone(),
            },
        })
    }

    /// Applies one command; a rejected command changes nothing.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        self.apply_with(command, true)
    }

    /// One log entry: a service spec with a UDP port applies only from an
    /// lbd that routes UDP (`Proposal::udp`); in an entry written before,
    /// it is refused as it was then.
    fn apply_entry(&mut self, proposal: &Proposal) -> Outcome {
        self.apply_with(&proposal.command, proposal.udp)
    }

    fn apply_with(&mut self, command: &Command, udp: bool) -> Outcome {
        self.index_tasks();
        match command {
            Command::InitCluster {
                cluster,
                vip_range,
                vip_range_v6,
                dns_domain,
            } => {
                if self.cluster.is_some() {
                    return reject(
                        RejectKind::Conflict,
                        "cluster",
                        "the cluster is already initialised",
                    );
                }
                if let Some(Err(reason)) = dns_domain.as_deref().map(lb_config::check_dns_domain) {
                    return reject(RejectKind::Invalid, "dns_domain", reason);
                }
                self.cluster = Some(cluster.clone());
                self.vip_range = *vip_range;
                self.vip_range_v6 = *vip_range_v6;
                self.taken.reset();
                self.dns_domain.clone_from(dns_domain);
                Outcome::Nothing
            }
            Command::RegisterNode { node } => self.register_node(node),
            Command::UpdateNode {
                id,
                availability,
                role,
                labels_add,
                labels_remove,
            } => self.update_node(*id, *availability, *role, labels_add, labels_remove),
            Command::SetNodeStatus { id, status } => match self.nodes.get_mut(id) {
                Some(node) => {
                    node.status = *status;
                    Outcome::Node {
                        node: Box::new(node.clone()),
                    }
                }
                None => reject(RejectKind::NotFound, "id", format!("no node with id {id}")),
            },
            Command::RemoveNode { id } => match self.nodes.remove(id) {
                Some(_) => {
                    self.listener_failures.remove(id);
                    self.removed_nodes.insert(*id);
                    // Its tasks' fate is unknown; the scheduler replaces them.
                    let on_node = self.tasks_on(*id).map(|t| t.id.clone()).collect();
                    self.change_tasks(on_node, |task| {
                        task.desired = DesiredState::Shutdown;
                        if !task.state.is_terminal() {
                            task.state = TaskState::Orphaned;
                            task.message = "its node was removed".to_owned();
                        }
                    });
                    Outcome::Removed
                }
                None => reject(RejectKind::NotFound, "id", format!("no node with id {id}")),
            },
            Command::CreateService { spec, id } => self.create_service(spec, id, udp),
            Command::UpdateService { spec } => self.change_service(spec, false, udp),
            Command::RollbackService { name } => self.rollback_service(name),
            Command::Schedule { ops, at } => self.schedule(ops, *at),
            Command::ReportTask { report } => self.report(report),
            Command::ReportListeners { node, failures } => self.report_listeners(*node, failures),
            Command::RotateToken { kind, seed } => match self.cluster.as_mut() {
                None => reject(
                    RejectKind::Conflict,
                    "cluster",
                    "the cluster is not initialised",
                ),
                Some(cluster) => {
                    cluster.rotate(*kind, seed.clone());
                    Outcome::Nothing
                }
            },
            Command::RemoveService { name } => match self.services.remove(name) {
                Some(record) => {
                    if let Some(taken) = self.taken.built() {
                        taken.remove(&record);
                    }
                    // Out of every routing table now; agents drain and stop.
                    let of_service = self.tasks_of(name).map(|t| t.id.clone()).collect();
                    self.change_tasks(of_service, |task| {
                        task.desired = DesiredState::Shutdown;
                        task.message = "service removed".to_owned();
                    });
                    Outcome::Removed
                }
                None => reject(
                    RejectKind::NotFound,
                    "name",
                    format!("no service named {name:?}"),
                ),
            },
        }
    }

    /// The cluster's DNS domain: the one it was bootstrapped with, or
    /// [`DEFAULT_DNS_DOMAIN`] for a cluster made before the registry kept
    /// it.
    pub fn dns_domain(&self) -> &str {
        self.dns_domain.as_deref().unwrap_or(DEFAULT_DNS_DOMAIN)
    }

    /// Applies `change` to each task of `ids`.
    fn change_tasks(&mut self, ids: Vec<String>, change: impl Fn(&mut TaskRecord)) {
        for id in ids {
            self.change_task(&id, &change);
        }
    }

    /// Every task by id.
    pub fn tasks(&self) -> &OrdMap<String, TaskRecord> {
        &self.tasks
    }

    /// Puts `task` in the state (replacing the task of its id), keeping
    /// the index, without a command's checks. `apply` changes tasks
    /// through this, [`RegistryState::remove_task`] and
    /// [`RegistryState::change_task`]; outside it they are for states made
    /// outside the log (tests, benchmarks).
    pub fn insert_task(&mut self, task: TaskRecord) {
        if let Some(index) = self.task_index.built() {
            if let Some(old) = self.tasks.get(&task.id) {
                index.remove(old);
            }
            index.add(&task);
        }
        self.tasks.insert(task.id.clone(), task);
    }

    /// Removes task `id`, keeping the index.
    pub fn remove_task(&mut self, id: &str) -> Option<TaskRecord> {
        let task = self.tasks.remove(id)?;
        if let Some(index) = self.task_index.built() {
            index.remove(&task);
        }
        Some(task)
    }

    /// Applies `change` to task `id`, keeping the index; `None` when there
    /// is no such task. (A task's id and service never change.) The task
    /// map is persistent: the task is copied on write.
    pub fn change_task<R>(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut TaskRecord) -> R,
    ) -> Option<R> {
        let task = self.tasks.get_mut(id)?;
        let before = Placement::of(task);
        let result = change(task);
        let after = Placement::of(task);
        if let Some(index) = self.task_index.built() {
            index.moved(id, before, after);
        }
        Some(result)
    }

    /// Builds the task index if this state has none, so the states the
    /// registry publishes after an apply carry one (see [`task_index`]).
    fn index_tasks(&self) {
        self.task_index.get(&self.tasks);
    }

    /// Finds a node by name or by id written in decimal.
    pub fn find_node(&self, name_or_id: &str) -> Option<&NodeRecord> {
        self.nodes
            .values()
            .find(|n| n.name == name_or_id)
            .or_else(|| name_or_id.parse().ok().and_then(|id| self.nodes.get(&id)))
    }

    /// Tasks of one service, by id.
    pub fn tasks_of<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a TaskRecord> + 'a {
        self.tasks_in(self.task_index.get(&self.tasks).of_service(service))
    }

    /// Tasks placed on node `node` (any state), by id.
    pub fn tasks_on(&self, node: NodeId) -> impl Iterator<Item = &TaskRecord> + '_ {
        self.tasks_in(self.task_index.get(&self.tasks).on_node(node))
    }

    /// How many live tasks (desired running, not terminal) each node runs;
    /// a node with none is absent.
    pub fn live_tasks_per_node(&self) -> &OrdMap<NodeId, usize> {
        self.task_index.get(&self.tasks).live_on()
    }

    fn tasks_in<'a>(
        &'a self,
        ids: Option<&'a imbl::OrdSet<String>>,
    ) -> impl Iterator<Item = &'a TaskRecord> + 'a {
        ids.into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
    }

    fn register_node(&mut self, node: &NodeRecord) -> Outcome {
        if let Err(reason) = check_dns_label(&node.name) {
            return reject(RejectKind::Invalid, "name", reason);
        }
        if let Some(other) = self
            .nodes
            .values()
            .find(|n| n.name == node.name && n.id != node.id)
        {
            return reject(
                RejectKind::Conflict,
                "name",
                format!("node id {} is already named {:?}", other.id, node.name),
            );
        }
        for (key, value) in &node.labels {
            if let Err(reason) = check_label(key, value) {
                return reject(RejectKind::Invalid, format!("labels.{key}"), reason);
            }
        }
        // A rejoining node keeps what operators set on it.
        let mut record = node.clone();
        if let Some(existing) = self.nodes.get(&node.id) {
            record.availability = existing.availability;
            record.labels = existing.labels.clone();
            record.role = existing.role;
        }
        self.nodes.insert(record.id, record.clone());
        Outcome::Node {
            node: Box::new(record),
        }
    }

    fn report_listeners(&mut self, node: NodeId, failures: &[ListenerFailure]) -> Outcome {
        if !self.nodes.contains_key(&node) {
            return reject(
                RejectKind::NotFound,
                "node",
                format!("no node with id {node}"),
            );
        }
        if failures.is_empty() {
            self.listener_failures.remove(&node);
        } else {
            self.listener_failures.insert(node, failures.to_vec());
        }
        Outcome::Nothing
    }

    fn update_node(
        &mut self,
        id: NodeId,
        availability: Option<Availability>,
        role: Option<Role>,
        labels_add: &BTreeMap<String, String>,
        labels_remove: &[String],
    ) -> Outcome {
        for (key, value) in labels_add {
            if let Err(reason) = check_label(key, value) {
                return reject(RejectKind::Invalid, format!("labels_add.{key}"), reason);
            }
        }
        let Some(node) = self.nodes.get_mut(&id) else {
            return reject(RejectKind::NotFound, "id", format!("no node with id {id}"));
        };
        if let Some(availability) = availability {
            node.availability = availability;
        }
        if let Some(role) = role {
            node.role = role;
        }
        for key in labels_remove {
            node.labels.remove(key);
        }
        for (key, value) in labels_add {
            node.labels.insert(key.clone(), value.clone());
        }
        Outcome::Node {
            node: Box::new(node.clone()),
        }
    }

    fn create_service(&mut self, spec: &ServiceSpec, id: &str, udp: bool) -> Outcome {
        let checked = match validate(spec, udp) {
            Ok(service) => CheckedSpec::new(service),
            Err(error) => return reject(RejectKind::Invalid, error.field, error.reason),
        };
        if self.services.contains_key(&spec.name) {
            return reject(
                RejectKind::Conflict,
                "name",
                format!("a service named {:?} already exists", spec.name),
            );
        }
        if let Some(outcome) = self.port_clash(spec) {
            return outcome;
        }
        let vip_range = self.vip_range;
        let taken = self.taken.get(&self.services);
        let Some(vip) = taken.lowest_free_vip(vip_range) else {
            return reject(
                RejectKind::Conflict,
                "vip",
                format!("the VIP range {} is exhausted", self.vip_range),
            );
        };
        let vip_v6 = match self.vip_range_v6 {
            Some(range) => match taken.lowest_free_vip_v6(range) {
                Some(vip) => Some(vip),
                None => {
                    return reject(
                        RejectKind::Conflict,
                        "vip_v6",
                        format!("the IPv6 VIP range {range} is exhausted"),
                    )
                }
            },
            None => None,
        };
        let record = ServiceRecord {
            id: id.to_owned(),
            spec: spec.clone(),
            version: 1,
            vip,
            vip_v6,
            previous: None,
            task_version: 1,
            previous_task_version: 0,
            update: None,
            validated: checked,
        };
        taken.add(&record);
        self.services.insert(spec.name.clone(), record.clone());
        Outcome::Service {
            service: Box::new(record),
        }
    }

    /// Replaces a service's spec. A new task template starts a rolling
    /// update (or, for a rollback, a rollback) that the scheduler carries out.
    fn change_service(&mut self, spec: &ServiceSpec, rollback: bool, udp: bool) -> Outcome {
        let checked = match validate(spec, udp) {
            Ok(service) => CheckedSpec::new(service),
            Err(error) => return reject(RejectKind::Invalid, error.field, error.reason),
        };
        if !self.services.contains_key(&spec.name) {
            return reject(
                RejectKind::NotFound,
                "name",
                format!("no service named {:?}", spec.name),
            );
        }
        if let Some(outcome) = self.port_clash(spec) {
            return outcome;
        }
        let Some(record) = self.services.get_mut(&spec.name) else {
            return reject(RejectKind::NotFound, "name", "vanished");
        };
        let previous = std::mem::replace(&mut record.spec, spec.clone());
        if let Some(taken) = self.taken.built() {
            taken.respec(&previous, spec);
        }
        record.validated = checked;
        let template_changed = !previous.same_task_template(spec);
        record.previous = Some(Box::new(previous));
        record.version += 1;
        let previous_task_version = record.task_version;
        if template_changed {
            record.task_version = if rollback && record.previous_task_version != 0 {
                record.previous_task_version
            } else {
                record.version
            };
            record.update = Some(UpdateStatus {
                state: if rollback {
                    UpdateState::RollbackStarted
                } else {
                    UpdateState::Updating
                },
                task_version: record.task_version,
                started_at: None,
                completed_at: None,
                message: if rollback {
                    "rolling back to the previous spec".to_owned()
                } else {
                    "update in progress".to_owned()
                },
            });
        }
        record.previous_task_version = previous_task_version;
        Outcome::Service {
            service: Box::new(record.clone()),
        }
    }

    fn rollback_service(&mut self, name: &str) -> Outcome {
        let Some(record) = self.services.get(name) else {
            return reject(
                RejectKind::NotFound,
                "name",
                format!("no service named {name:?}"),
            );
        };
        let Some(previous) = record.previous.as_deref().cloned() else {
            return reject(
                RejectKind::Conflict,
                "name",
                format!("service {name:?} has no previous spec to roll back to"),
            );
        };
        // A stored spec was accepted once, by the rules of its own entry.
        self.change_service(&previous, true, true)
    }

    /// A published port already owned by another service: a look-up per
    /// published port of `spec` in the index of owners.
    fn port_clash(&mut self, spec: &ServiceSpec) -> Option<Outcome> {
        let taken = self.taken.get(&self.services);
        for (i, port) in spec.ports.iter().enumerate() {
            let Some(key) = port_key(port) else { continue };
            match taken.owner(key) {
                Some(owner) if owner != spec.name => {
                    return Some(reject(
                        RejectKind::Conflict,
                        format!("ports[{i}].published"),
                        format!(
                            "port {}{} is already published by service {owner:?}",
                            port.published,
                            if key.1 { "/udp" } else { "" }
                        ),
                    ))
                }
                _ => {}
            }
        }
        None
    }

    /// Gives every service its checked form now rather than on first use:
    /// a state read from disk or from a snapshot has none, and the next
    /// applied batch clones this state, so filling it before it is shared
    /// validates each spec once instead of once per clone.
    pub fn check_services(&self) {
        for record in self.services.values() {
            if let Err(error) = record.checked() {
                tracing::warn!(service = %record.spec.name, %error, "stored spec fails validation");
            }
        }
    }
}

/// Label keys: 1–63 of `[a-z0-9._-]`; values up to 253 printable characters.
fn check_label(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty()
        || key.len() > 63
        || !key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "label key {key:?} must be 1 to 63 of lowercase letters, digits, '.', '_', '-'"
        ));
    }
    if value.len() > 253 || value.chars().any(|c| c.is_control()) {
        return Err(format!(
            "label value {value:?} must be up to 253 printable characters"
        ));
    }
    Ok(())
}

/// A spec's checked form by the rules of its entry: with `udp` false
/// (an entry written before UDP ports) a udp port is refused as then.
fn validate(spec: &ServiceSpec, udp: bool) -> Result<lb_config::Service, lb_config::FieldError> {
    if udp {
        spec.validate()
    } else {
        spec.validate_without_udp()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::requests::REMEMBERED_REQUESTS;
    use lb_config::{EndpointSpec, PortSpec};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn spec(name: &str, port: i64) -> ServiceSpec {
        ServiceSpec {
            name: name.to_owned(),
            ports: vec![PortSpec {
                published: port,
                target: Some(80),
                protocol: None,
            }],
            endpoints: vec![EndpointSpec {
                address: "10.0.0.1".to_owned(),
                weight: None,
            }],
            ..ServiceSpec::default()
        }
    }

    fn rejected(outcome: Outcome) -> Rejection {
        match outcome {
            Outcome::Rejected { rejection } => rejection,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn rotating_a_token_replaces_that_tokens_seed_only() {
        use crate::cluster::{TokenKind, TokenSeed};
        let seed = |text: &str| TokenSeed {
            seed: text.to_owned(),
            hash: format!("hash of {text}"),
        };
        let mut state = RegistryState::default();
        let rotate = |kind, text: &str| Command::RotateToken {
            kind,
            seed: seed(text),
        };
        let before = state.clone();
        let rejection = rejected(state.apply(&rotate(TokenKind::Worker, "w2")));
        assert_eq!(rejection.field, "cluster");
        assert_eq!(state, before, "refused before the cluster exists");
        let info = ClusterInfo {
            id: "c".to_owned(),
            ca_cert: "ca".to_owned(),
            cert_lifetime_ms: 1000,
            manager_token: seed("m1"),
            worker_token: seed("w1"),
            control_token: seed("c1"),
        };
        state.apply(&Command::InitCluster {
            cluster: info.clone(),
            vip_range: crate::cluster::DEFAULT_VIP_RANGE,
            vip_range_v6: None,
            dns_domain: None,
        });
        assert_eq!(
            state.apply(&rotate(TokenKind::Worker, "w2")),
            Outcome::Nothing
        );
        let cluster = state.cluster.clone().unwrap();
        assert_eq!(
            (
                cluster.manager_token.seed.as_str(),
                cluster.worker_token.seed.as_str()
            ),
            ("m1", "w2")
        );
        state.apply(&rotate(TokenKind::Manager, "m2"));
        let cluster = state.cluster.clone().unwrap();
        assert_eq!(cluster.manager_token.seed, "m2");
        assert_eq!(cluster.control_token.seed, "c1");
        // The command's JSON form, which the log keeps.
        let json = serde_json::to_string(&rotate(TokenKind::Worker, "w3")).unwrap();
        assert_eq!(
            json,
            r#"{"op":"rotate_token","kind":"worker","seed":{"seed":"w3","hash":"hash of w3"}}"#
        );
    }

    #[test]
    fn a_nodes_listener_report_replaces_the_last_and_goes_with_the_node() {
        let mut state = RegistryState::default();
        let failure = ListenerFailure {
            service: "web".to_owned(),
            address: "127.0.0.2:8080".parse().unwrap(), // fixed-port-ok: a record, nothing bound
            protocol: lb_config::Protocol::Tcp,
            error: "address in use".to_owned(),
        };
        let report =
            |failures: Vec<ListenerFailure>| Command::ReportListeners { node: 7, failures };
        let before = state.clone();
        let rejection = rejected(state.apply(&report(vec![failure.clone()])));
        assert_eq!(
            (rejection.kind, rejection.field.as_str()),
            (RejectKind::NotFound, "node")
        );
        assert_eq!(state, before, "an unknown node's report changes nothing");

        state.apply(&Command::RegisterNode {
            node: NodeRecord {
                id: 7,
                name: "node-a".to_owned(),
                raft_addr: "127.0.0.2:9901".parse().unwrap(), // fixed-port-ok: a record, nothing bound
                api_addr: "127.0.0.2:9900".parse().unwrap(), // fixed-port-ok: a record, nothing bound
                ingress_addr: "127.0.0.2".parse().unwrap(),
                role: Role::Manager,
                availability: Availability::Active,
                status: NodeStatus::Ready,
                labels: BTreeMap::new(),
            },
        });
        assert_eq!(
            state.apply(&report(vec![failure.clone()])),
            Outcome::Nothing
        );
        assert_eq!(
            state.listener_failures.get(&7),
            Some(&vec![failure.clone()])
        );
        state.apply(&report(Vec::new()));
        assert!(state.listener_failures.is_empty(), "all bound: no entry");
        state.apply(&report(vec![failure]));
        state.apply(&Command::RemoveNode { id: 7 });
        assert!(state.listener_failures.is_empty(), "gone with its node");

        // The new field and command read alike without the new parts.
        let command: Command =
            serde_json::from_str(r#"{"op":"report_listeners","node":7}"#).expect("command");
        assert_eq!(command, report(Vec::new()));
        let mut old = serde_json::to_value(RegistryState::default()).expect("state");
        old.as_object_mut()
            .expect("object")
            .remove("listener_failures");
        let read: RegistryState = serde_json::from_value(old).expect("an older state");
        assert_eq!(read, RegistryState::default());
    }

    #[test]
    fn services_get_distinct_vips_and_versions() {
        let mut state = RegistryState::default();
        let a = state.apply(&Command::CreateService {
            spec: spec("a", 80),
            id: String::new(),
        });
        let b = state.apply(&Command::CreateService {
            spec: spec("b", 81),
            id: String::new(),
        });
        let (Outcome::Service { service: a }, Outcome::Service { service: b }) = (a, b) else {
            panic!("both created");
        };
        assert_eq!(a.vip, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(b.vip, Ipv4Addr::new(198, 18, 0, 2));
        let updated = state.apply(&Command::UpdateService {
            spec: spec("a", 82),
        });
        let Outcome::Service { service } = updated else {
            panic!("updated")
        };
        assert_eq!(service.version, 2);
        assert_eq!(service.vip, a.vip, "an update keeps the VIP");
        let rolled = state.apply(&Command::RollbackService { name: "a".into() });
        let Outcome::Service { service } = rolled else {
            panic!("rolled back")
        };
        assert_eq!(service.spec.ports[0].published, 80);
        assert_eq!(service.version, 3);
    }

    /// The VIP and port index (`state/taken.rs`) gives the answers a scan
    /// of every service gives, whether kept since the first command or
    /// built afresh from a state read back (as after a restart or a
    /// snapshot): the lowest free host, and a port free once its owner
    /// moves off it or is removed.
    #[test]
    fn vips_and_ports_follow_the_services_however_the_index_was_built() {
        use crate::cluster::{VipRange, VipRangeV6};
        let mut kept = RegistryState::default();
        kept.apply(&Command::InitCluster {
            cluster: ClusterInfo::default(),
            vip_range: VipRange::parse("10.9.0.0/28").unwrap(),
            vip_range_v6: Some(VipRangeV6::parse("fd09::/124").unwrap()),
            dns_domain: None,
        });
        let mut read_back = kept.clone();
        let (mut created, mut clashed, mut freed) = (0, 0, 0);
        let mut seed = 7u32;
        let mut next = |below: u32| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 16) % below
        };
        for step in 0..400 {
            let name = format!("s{}", next(20));
            let port = 8000 + i64::from(next(12)); // fixed-port-ok: records, nothing bound
            let command = match next(3) {
                0 => Command::CreateService {
                    spec: spec(&name, port),
                    id: String::new(),
                },
                1 => Command::UpdateService {
                    spec: spec(&name, port),
                },
                _ => Command::RemoveService { name: name.clone() },
            };
            let scanned: BTreeSet<Ipv4Addr> = kept.services.values().map(|s| s.vip).collect();
            let lowest_free = (1..15u8)
                .map(|h| Ipv4Addr::new(10, 9, 0, h))
                .find(|ip| !scanned.contains(ip));
            let owner = kept
                .services
                .values()
                .find(|s| s.spec.name != name && s.spec.ports[0].published == port)
                .map(|s| s.spec.name.clone());
            let exists = kept.services.contains_key(&name);
            let outcome = kept.apply(&command);
            read_back = serde_json::from_value(serde_json::to_value(&read_back).unwrap()).unwrap();
            assert_eq!(
                read_back.apply(&command),
                outcome,
                "step {step}: {command:?}"
            );
            let is_create = matches!(command, Command::CreateService { .. });
            let checks_ports =
                matches!(command, Command::UpdateService { .. }) && exists || is_create && !exists;
            match (&owner, &outcome) {
                (Some(owner), _) if checks_ports => {
                    let rejection = rejected(outcome.clone());
                    assert_eq!(rejection.kind, RejectKind::Conflict, "step {step}");
                    assert!(
                        rejection.reason.contains(&format!("{owner:?}")),
                        "step {step}: {rejection:?}"
                    );
                    clashed += 1;
                }
                (None, Outcome::Service { service }) if is_create => {
                    assert_eq!(Some(service.vip), lowest_free, "step {step}");
                    created += 1;
                }
                (_, Outcome::Removed) => freed += 1,
                _ => {}
            }
        }
        // The sequence reuses freed VIPs and ports and meets clashes.
        assert!(
            created > 30 && clashed > 30 && freed > 30,
            "{created} {clashed} {freed}"
        );
        assert_eq!(kept, read_back);
        let vips: BTreeSet<Ipv4Addr> = kept.services.values().map(|s| s.vip).collect();
        assert_eq!(vips.len(), kept.services.len(), "no VIP is shared");
        let v6: BTreeSet<Ipv6Addr> = kept.services.values().filter_map(|s| s.vip_v6).collect();
        assert_eq!(v6.len(), kept.services.len(), "no v6 VIP is shared");
    }

    /// The task index answers as a scan of every task does, whether it was
    /// kept through every command or built afresh from a state read back
    /// (a restart, a snapshot), and in the same order.
    #[test]
    fn tasks_by_service_and_node_follow_the_tasks_however_the_index_was_built() {
        use crate::task::{NewTask, TaskHealth, TaskOp, TaskReport};
        let node_record = |id: NodeId| NodeRecord {
            id,
            name: format!("n{id}"),
            raft_addr: format!("127.0.0.{id}:1").parse().unwrap(), // fixed-port-ok: a record
            api_addr: format!("127.0.0.{id}:2").parse().unwrap(),  // fixed-port-ok: a record
            ingress_addr: format!("127.0.0.{id}").parse().unwrap(),
            role: Role::Worker,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            labels: BTreeMap::new(),
        };
        let mut kept = RegistryState::default();
        kept.apply(&Command::InitCluster {
            cluster: ClusterInfo::default(),
            vip_range: crate::cluster::DEFAULT_VIP_RANGE,
            vip_range_v6: None,
            dns_domain: None,
        });
        for (n, name) in ["a", "b", "c"].iter().enumerate() {
            kept.apply(&Command::CreateService {
                spec: spec(name, 8000 + n as i64), // fixed-port-ok: records, nothing bound
                id: String::new(),
            });
        }
        let mut read_back = kept.clone();
        let mut seed = 11u32;
        let mut next = |below: u32| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 16) % below
        };
        let mut applied = 0;
        for step in 0..600u32 {
            let id = format!("t{}", next(40));
            let node = NodeId::from(next(4) + 1);
            let service = ["a", "b", "c", "gone"][next(4) as usize].to_owned();
            let op = |op| Command::Schedule {
                ops: vec![op],
                at: u64::from(step),
            };
            let command = match next(9) {
                0 | 1 => op(TaskOp::Create {
                    task: NewTask {
                        id,
                        service,
                        slot: 1,
                        spec_version: 1,
                        node: (next(3) > 0).then_some(node),
                        attempt: 0,
                        message: String::new(),
                    },
                }),
                2 => op(TaskOp::Assign { id, node }),
                3 => op(TaskOp::Shutdown {
                    id,
                    reason: "test".to_owned(),
                }),
                4 => op(TaskOp::Orphan { id }),
                5 => op(TaskOp::Remove { id }),
                6 => Command::ReportTask {
                    report: Box::new(TaskReport {
                        id,
                        node,
                        state: [TaskState::Running, TaskState::Failed][next(2) as usize],
                        health: TaskHealth::None,
                        endpoint: None,
                        runtime_id: None,
                        message: String::new(),
                        at: u64::from(step),
                    }),
                },
                7 => Command::RegisterNode {
                    node: node_record(node),
                },
                _ => match next(3) {
                    0 => Command::RemoveNode { id: node },
                    1 => Command::RemoveService { name: service },
                    _ => Command::CreateService {
                        spec: spec(&service, 8100 + i64::from(next(50))), // fixed-port-ok: records
                        id: String::new(),
                    },
                },
            };
            let outcome = kept.apply(&command);
            if !matches!(outcome, Outcome::Rejected { .. }) {
                applied += 1;
            }
            read_back = serde_json::from_value(serde_json::to_value(&read_back).unwrap()).unwrap();
            assert_eq!(
                read_back.apply(&command),
                outcome,
                "step {step}: {command:?}"
            );
            for state in [&kept, &read_back] {
                for service in ["a", "b", "c", "gone"] {
                    let indexed: Vec<&str> =
                        state.tasks_of(service).map(|t| t.id.as_str()).collect();
                    let scanned: Vec<&str> = state
                        .tasks()
                        .values()
                        .filter(|t| t.service == service)
                        .map(|t| t.id.as_str())
                        .collect();
                    assert_eq!(indexed, scanned, "step {step}: tasks of {service}");
                }
                let mut live: BTreeMap<NodeId, usize> = BTreeMap::new();
                for node in 1..=4 {
                    let indexed: Vec<&str> = state.tasks_on(node).map(|t| t.id.as_str()).collect();
                    let on_node: Vec<&TaskRecord> = state
                        .tasks()
                        .values()
                        .filter(|t| t.node == Some(node))
                        .collect();
                    let scanned: Vec<&str> = on_node.iter().map(|t| t.id.as_str()).collect();
                    assert_eq!(indexed, scanned, "step {step}: tasks on {node}");
                    let count = on_node.iter().filter(|t| t.is_live()).count();
                    if count > 0 {
                        live.insert(node, count);
                    }
                }
                let indexed: BTreeMap<NodeId, usize> = state
                    .live_tasks_per_node()
                    .iter()
                    .map(|(node, count)| (*node, *count))
                    .collect();
                assert_eq!(indexed, live, "step {step}: live tasks per node");
            }
        }
        // The sequence reaches tasks in every state on several nodes.
        assert!(applied > 200, "{applied} commands applied");
        assert!(
            kept.tasks().len() > 10,
            "{} tasks at the end",
            kept.tasks().len()
        );
        assert_eq!(kept, read_back);
    }

    #[test]
    fn a_cluster_with_a_v6_range_gives_every_service_a_v6_vip_too() {
        use crate::cluster::{VipRangeV6, DEFAULT_VIP_RANGE, DEFAULT_VIP_RANGE_V6};
        let init = |vip_range_v6| Command::InitCluster {
            cluster: ClusterInfo::default(),
            vip_range: DEFAULT_VIP_RANGE,
            vip_range_v6,
            dns_domain: None,
        };
        let create = |name: &str, port| Command::CreateService {
            spec: spec(name, port),
            id: String::new(),
        };
        let v6_vip = |outcome: Outcome| match outcome {
            Outcome::Service { service } => service.vip_v6,
            other => panic!("created? {other:?}"),
        };
        let mut state = RegistryState::default();
        state.apply(&init(Some(DEFAULT_VIP_RANGE_V6)));
        assert_eq!(
            v6_vip(state.apply(&create("a", 80))),
            Some("fd77::1".parse().unwrap())
        );
        assert_eq!(
            v6_vip(state.apply(&create("b", 81))),
            Some("fd77::2".parse().unwrap())
        );
        let updated = state.apply(&Command::UpdateService {
            spec: spec("a", 82),
        });
        assert_eq!(
            v6_vip(updated),
            Some("fd77::1".parse().unwrap()),
            "an update keeps it"
        );

        // A full range refuses the create and changes nothing.
        let mut small = RegistryState::default();
        small.apply(&init(Some(VipRangeV6::parse("fd00::/126").unwrap())));
        small.apply(&create("a", 80));
        small.apply(&create("b", 81));
        let before = small.clone();
        let rejection = rejected(small.apply(&create("c", 82)));
        assert_eq!(rejection.field, "vip_v6");
        assert_eq!(small, before);

        // An InitCluster entry of an lbd before v6 VIPs applies as it did:
        // a v4-only cluster, whose services have no v6 VIP.
        let old: Command = serde_json::from_str(
            r#"{"op":"init_cluster","cluster":{"id":"c","ca_cert":"","cert_lifetime_ms":0,
                "manager_token":{"seed":"","hash":""},"worker_token":{"seed":"","hash":""},
                "control_token":{"seed":"","hash":""}},
                "vip_range":{"base":"127.77.0.0","prefix_len":16}}"#,
        )
        .expect("an older entry");
        let mut old_cluster = RegistryState::default();
        old_cluster.apply(&old);
        assert_eq!(old_cluster.vip_range_v6, None);
        assert_eq!(v6_vip(old_cluster.apply(&create("a", 80))), None);
        let json = serde_json::to_value(&old_cluster).expect("state");
        assert!(json.get("vip_range_v6").is_none(), "old states read alike");
        assert!(json["services"]["a"].get("vip_v6").is_none());
    }

    #[test]
    fn the_dns_domain_is_the_clusters_and_old_clusters_keep_the_default() {
        let init = |dns_domain: Option<&str>| Command::InitCluster {
            cluster: ClusterInfo::default(),
            vip_range: DEFAULT_VIP_RANGE,
            vip_range_v6: None,
            dns_domain: dns_domain.map(str::to_owned),
        };
        let mut state = RegistryState::default();
        assert_eq!(state.apply(&init(Some("corp.test"))), Outcome::Nothing);
        assert_eq!(state.dns_domain(), "corp.test");

        // A domain that is no DNS name is refused and initialises nothing.
        let mut bad = RegistryState::default();
        let rejection = rejected(bad.apply(&init(Some("Corp_test"))));
        assert_eq!(rejection.field, "dns_domain");
        assert_eq!(bad, RegistryState::default());

        // A cluster bootstrapped before the registry kept the domain (no
        // field in its entry or its state) answers under the default.
        let mut old = RegistryState::default();
        old.apply(&init(None));
        assert_eq!(old.dns_domain(), DEFAULT_DNS_DOMAIN);
        let json = serde_json::to_value(&old).expect("state");
        assert!(json.get("dns_domain").is_none(), "old states read alike");
    }

    #[test]
    fn a_service_keeps_the_id_it_was_created_with() {
        let mut state = RegistryState::default();
        state.apply(&Command::CreateService {
            spec: spec("a", 80),
            id: "0123456789ab".to_owned(),
        });
        state.apply(&Command::UpdateService {
            spec: spec("a", 82),
        });
        state.apply(&Command::RollbackService { name: "a".into() });
        assert_eq!(state.services["a"].id, "0123456789ab");
        // An entry written before ids has none and applies as it did.
        let b = serde_json::to_value(spec("b", 81)).expect("spec");
        let entry = serde_json::json!({"op": "create_service", "spec": b});
        let old: Command = serde_json::from_value(entry.clone()).expect("an older entry");
        assert_eq!(
            serde_json::to_value(&old).expect("json"),
            entry,
            "no id, no field: the entry's JSON is unchanged"
        );
        state.apply(&old);
        assert_eq!(state.services["b"].id, "");
        let record = serde_json::to_value(&state.services["b"]).expect("record");
        assert!(
            record.get("id").is_none(),
            "a record without an id writes none"
        );
    }

    #[test]
    fn an_entry_written_before_udp_ports_is_refused_as_it_was() {
        let mut udp = spec("dns", 53);
        udp.ports[0].protocol = Some("udp".to_owned());
        let create = Command::CreateService {
            spec: udp,
            id: String::new(),
        };
        // What an older lbd wrote: the bare command, no `udp` mark.
        let old: Proposal =
            serde_json::from_value(serde_json::to_value(&create).expect("json")).expect("entry");
        assert!(!old.udp);
        let mut state = RegistryState::default();
        match state.apply_proposal(&old) {
            Outcome::Rejected { rejection } => {
                assert_eq!(rejection.field, "ports[0].protocol");
                assert_eq!(
                    rejection.reason,
                    "udp is not supported yet; only tcp is forwarded"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(state.services.is_empty());
        // This lbd marks it, and it applies.
        let new = Proposal::once(create);
        assert!(new.udp);
        let text = serde_json::to_string(&new).expect("json");
        assert!(text.contains("\"udp\":true"), "{text}");
        assert!(matches!(
            state.apply_proposal(&new),
            Outcome::Service { .. }
        ));
        // Other entries carry no mark.
        let plain = Proposal::once(Command::RemoveService {
            name: "x".to_owned(),
        });
        assert!(!serde_json::to_string(&plain).expect("json").contains("udp"));
    }

    #[test]
    fn a_port_number_is_owned_per_protocol() {
        let mut state = RegistryState::default();
        let udp = |name: &str, port: i64| {
            let mut spec = spec(name, port);
            spec.ports[0].protocol = Some("udp".to_owned());
            spec
        };
        let create = |spec| Command::CreateService {
            spec,
            id: String::new(),
        };
        assert!(matches!(
            state.apply(&create(spec("web", 53))),
            Outcome::Service { .. }
        ));
        // Another service's 53/udp beside web's 53/tcp.
        assert!(matches!(
            state.apply(&create(udp("dns", 53))),
            Outcome::Service { .. }
        ));
        let before = state.clone();
        match state.apply(&create(udp("other", 53))) {
            Outcome::Rejected { rejection } => {
                assert_eq!(rejection.kind, RejectKind::Conflict);
                assert_eq!(rejection.field, "ports[0].published");
                assert!(rejection.reason.contains("53/udp"), "{}", rejection.reason);
                assert!(
                    rejection.reason.ends_with("service \"dns\""),
                    "{}",
                    rejection.reason
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(state, before);
        // A service keeps its own port through an update.
        let mut web = spec("web", 53);
        web.ports[0].target = Some(8053);
        let outcome = state.apply(&Command::UpdateService { spec: web });
        assert!(!matches!(outcome, Outcome::Rejected { .. }), "{outcome:?}");
    }

    #[test]
    fn rejections_name_the_field_and_change_nothing() {
        let mut state = RegistryState::default();
        state.apply(&Command::CreateService {
            spec: spec("web", 80),
            id: String::new(),
        });
        let before = state.clone();
        let cases = [
            (
                Command::CreateService {
                    spec: spec("web", 81),
                    id: String::new(),
                },
                RejectKind::Conflict,
                "name",
            ),
            (
                Command::CreateService {
                    spec: spec("api", 80),
                    id: String::new(),
                },
                RejectKind::Conflict,
                "ports[0].published",
            ),
            (
                Command::CreateService {
                    spec: spec("Bad", 81),
                    id: String::new(),
                },
                RejectKind::Invalid,
                "name",
            ),
            (
                Command::CreateService {
                    spec: spec("api", 70_000),
                    id: String::new(),
                },
                RejectKind::Invalid,
                "ports[0].published",
            ),
            (
                Command::UpdateService {
                    spec: spec("nope", 90),
                },
                RejectKind::NotFound,
                "name",
            ),
            (
                Command::RemoveService {
                    name: "nope".into(),
                },
                RejectKind::NotFound,
                "name",
            ),
            (
                Command::RollbackService { name: "web".into() },
                RejectKind::Conflict,
                "name",
            ),
            (Command::RemoveNode { id: 9 }, RejectKind::NotFound, "id"),
        ];
        for (command, kind, field) in cases {
            let rejection = rejected(state.apply(&command));
            assert_eq!(
                (rejection.kind, rejection.field.as_str()),
                (kind, field),
                "{command:?}"
            );
            assert_eq!(state, before, "{command:?} changed the state");
        }
    }

    #[test]
    fn a_resent_request_gets_its_first_answer_and_applies_once() {
        let mut state = RegistryState::default();
        let create = Proposal::keyed(
            "req-1".to_owned(),
            Command::CreateService {
                spec: spec("web", 80),
                id: String::new(),
            },
        );
        let first = state.apply_proposal(&create);
        assert!(matches!(first, Outcome::Service { .. }), "{first:?}");
        let after_first = state.clone();
        let second = state.apply_proposal(&create);
        assert_eq!(second, first, "a resend gets the first answer");
        assert_eq!(state, after_first, "a resend changes nothing");
        assert_eq!(state.services.len(), 1);
        assert_eq!(state.services["web"].version, 1);

        // The same command under a new id is a new write, refused as before.
        let again = state.apply_proposal(&Proposal::keyed(
            "req-2".to_owned(),
            Command::CreateService {
                spec: spec("web", 80),
                id: String::new(),
            },
        ));
        assert_eq!(rejected(again).kind, RejectKind::Conflict);
        // A rejection is remembered too: its resend is still that rejection,
        // even once the conflict is gone.
        state.apply_proposal(&Proposal::once(Command::RemoveService {
            name: "web".into(),
        }));
        let resent = state.apply_proposal(&Proposal::keyed(
            "req-2".to_owned(),
            Command::CreateService {
                spec: spec("web", 80),
                id: String::new(),
            },
        ));
        assert_eq!(rejected(resent).kind, RejectKind::Conflict);
        assert!(state.services.is_empty());
    }

    #[test]
    fn an_entry_without_an_id_applies_every_time() {
        let mut state = RegistryState::default();
        let update = Proposal::once(Command::UpdateService {
            spec: spec("web", 81),
        });
        state.apply(&Command::CreateService {
            spec: spec("web", 80),
            id: String::new(),
        });
        state.apply_proposal(&update);
        state.apply_proposal(&update);
        assert_eq!(state.services["web"].version, 3, "both applied");
        assert!(state.requests.is_empty(), "nothing remembered");
    }

    #[test]
    fn the_oldest_request_ids_are_forgotten_first() {
        let mut state = RegistryState::default();
        let remove = |id: usize| {
            Proposal::keyed(
                format!("req-{id}"),
                Command::RemoveService {
                    name: format!("s{id}"),
                },
            )
        };
        for id in 0..=REMEMBERED_REQUESTS {
            state.apply_proposal(&remove(id));
        }
        assert_eq!(state.requests.len(), REMEMBERED_REQUESTS);
        assert!(state.remembered("req-0").is_none(), "the oldest went");
        assert!(state.remembered("req-1").is_some());
        assert!(state
            .remembered(&format!("req-{REMEMBERED_REQUESTS}"))
            .is_some());
    }

    #[test]
    fn entries_written_before_request_ids_read_and_write_as_they_were() {
        let command = Command::RemoveService { name: "web".into() };
        let old = serde_json::to_string(&command).expect("encode");
        assert_eq!(old, r#"{"op":"remove_service","name":"web"}"#);
        let read: Proposal = serde_json::from_str(&old).expect("an old entry reads");
        assert_eq!(read, Proposal::once(command.clone()));
        assert_eq!(serde_json::to_string(&read).expect("encode"), old);
        let keyed = serde_json::to_string(&Proposal::keyed("r".into(), command)).expect("encode");
        assert_eq!(
            keyed,
            r#"{"request":"r","op":"remove_service","name":"web"}"#
        );
        // A state saved before request ids reads with none remembered.
        let mut saved = serde_json::to_value(RegistryState::default()).expect("encode");
        saved.as_object_mut().expect("an object").remove("requests");
        let state: RegistryState = serde_json::from_value(saved).expect("an old state reads");
        assert!(state.requests.is_empty());
    }

    #[test]
    fn a_stored_spec_carries_the_checked_form_it_was_validated_into() {
        let mut state = RegistryState::default();
        state.apply(&Command::CreateService {
            spec: spec("web", 8080),
            id: String::new(),
        });
        // Corrupt the stored spec behind the state machine's back: the
        // checked form made when it was stored is what readers get, so
        // nothing validates it again (that would fail: port 0).
        let mut copy = state.clone();
        let record = copy.services.get_mut("web").expect("stored");
        record.spec.ports[0].published = 0;
        let checked = record.checked().expect("checked when stored");
        assert_eq!(checked.ports[0].published, Some(8080));
        // A clone shares it, and an update replaces it.
        let before = Arc::clone(state.services["web"].checked().expect("checked"));
        let shared = state.clone();
        assert!(Arc::ptr_eq(
            shared.services["web"].checked().expect("checked"),
            &before
        ));
        state.apply(&Command::UpdateService {
            spec: spec("web", 8081),
        });
        assert_eq!(
            state.services["web"].checked().expect("checked").ports[0].published,
            Some(8081)
        );
        // It is not part of the replicated value: the JSON is the record's.
        let json = serde_json::to_value(&state.services["web"]).expect("json");
        assert!(json.get("checked").is_none(), "{json}");
        let read: RegistryState =
            serde_json::from_value(serde_json::to_value(&state).expect("json")).expect("state");
        assert_eq!(read, state);
        assert_eq!(
            read.services["web"]
                .checked()
                .expect("checked on first use")
                .ports[0]
                .published,
            Some(8081)
        );
    }
}
