//! The scheduler: turns services into tasks on nodes. Runs on every node,
//! acts only while this node leads the registry.
//!
//! # Flow of one round (every [`ROUND_INTERVAL`] or registry change)
//!
//! ```text
//! not leader ──> nothing (a deposed leader's proposals fail: it never forwards)
//! leader:
//!   heartbeats (in memory) ─> nodes silent for `heartbeat_grace` marked down, back ones ready
//!   registry state ─> plan():
//!     per service: tasks on down nodes orphaned, on drained/unsuitable nodes shut down
//!                  failed tasks retired; their slots refilled per restart policy (delay, attempts)
//!                  pending tasks placed when a node fits
//!                  replicated: missing slots created, surplus slots shut down
//!                              (most copies per node first, non-running first)
//!                  global:     one task per eligible node
//!                  rolling update: outdated slots replaced `parallelism` at a time,
//!                              `delay` apart, stop-first or start-first; a new task failing
//!                              within `monitor` triggers the failure action
//!     dead tasks beyond a short history removed
//!   ─> one Schedule entry (all or nothing); an automatic rollback is its own entry
//! ```
//!
//! Placement spreads: among ready, active nodes that meet the constraints
//! and the per-node maximum, the one with the fewest tasks of the service,
//! then the fewest tasks overall, then the lowest id. No fitting node: the
//! task is created pending with the reason, and placed in a later round.
//!
//! The plan is a pure function of the registry state and the time, so it is
//! tested without a cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lb_config::{FailureAction, NodeFacts, RestartCondition, ServiceMode, TaskSpec, UpdateOrder};
use raft_state::registry::RegistryNode;
use raft_state::state::{
    Availability, Command, NodeId, NodeRecord, NodeStatus, RegistryState, Role, ServiceRecord,
};
use raft_state::task::{Millis, NewTask, TaskOp, TaskRecord, TaskState, UpdateState, UpdateStatus};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often the leader re-plans even without registry changes (restart
/// delays, update delays and node liveness are time based).
pub const ROUND_INTERVAL: Duration = Duration::from_millis(500);
/// Dead tasks kept per slot for `service ps`.
const TASK_HISTORY: usize = 3;

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A new random task id: 12 lowercase hex digits. An id must be unique,
/// not secret, so a fast generator serves (secrets come from
/// `raft_state::random`, which fails closed).
pub fn new_task_id() -> String {
    format!("{:012x}", fastrand::u64(..1 << 48))
}

/// Scheduler settings.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerSettings {
    /// A node not heard from for this long is marked down.
    pub heartbeat_grace: Duration,
}

/// Runs the scheduler until `stop` is cancelled.
pub async fn run(
    registry: Arc<RegistryNode>,
    settings: SchedulerSettings,
    stop: CancellationToken,
) {
    let mut changes = registry.watch();
    let mut leader_since: Option<Instant> = None;
    let mut memory = Memory::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = changes.changed() => {}
            () = tokio::time::sleep(ROUND_INTERVAL) => {}
        }
        if !registry.is_leader() {
            if leader_since.take().is_some() {
                info!("no longer the leader: scheduler idle");
            }
            memory = Memory::default();
            continue;
        }
        let since = *leader_since.get_or_insert_with(|| {
            info!("leader: scheduler active");
            Instant::now()
        });
        if let Err(error) = round(&registry, &settings, since, &mut memory).await {
            debug!(%error, "scheduling round not applied; retrying");
        }
    }
}

/// What the scheduler remembers between rounds (lost on leader change, which
/// only restarts an update delay).
#[derive(Default)]
struct Memory {
    /// When each service's last update batch started.
    last_batch: HashMap<String, Millis>,
}

async fn round(
    registry: &RegistryNode,
    settings: &SchedulerSettings,
    leader_since: Instant,
    memory: &mut Memory,
) -> Result<(), String> {
    let state = registry.local().state;
    let changes = node_status_changes(
        &state,
        &registry.last_heard(),
        leader_since,
        Instant::now(),
        settings.heartbeat_grace,
    );
    for (id, status) in changes {
        let name = state
            .nodes
            .get(&id)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        match status {
            NodeStatus::Down => {
                warn!(node = %name, "no heartbeat within the grace period: node down")
            }
            NodeStatus::Ready => info!(node = %name, "heartbeats again: node ready"),
        }
        registry
            .propose_as_leader(Command::SetNodeStatus { id, status })
            .await
            .map_err(|e| e.to_string())?;
    }
    let state = registry.local().state;
    let now = now_millis();
    let plan = plan(&state, now, &mut memory.last_batch, &mut new_task_id);
    if !plan.ops.is_empty() {
        debug!(ops = plan.ops.len(), "scheduling round");
        let outcome = registry
            .propose_as_leader(Command::Schedule {
                ops: plan.ops,
                at: now,
            })
            .await
            .map_err(|e| e.to_string())?;
        if let raft_state::state::Outcome::Rejected { rejection } = outcome {
            return Err(format!("round rejected: {rejection}"));
        }
    }
    for name in plan.rollbacks {
        warn!(service = %name, "update failed: rolling back");
        registry
            .propose_as_leader(Command::RollbackService { name })
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Nodes whose status should change: silent ones go down, heard ones come
/// back. A new leader gives every node a full grace period first.
pub fn node_status_changes(
    state: &RegistryState,
    last_heard: &HashMap<NodeId, Instant>,
    leader_since: Instant,
    now: Instant,
    grace: Duration,
) -> Vec<(NodeId, NodeStatus)> {
    state
        .nodes
        .values()
        .filter_map(|node| {
            let heard = last_heard.get(&node.id).copied();
            let last = heard.unwrap_or(leader_since).max(leader_since);
            let alive = now.saturating_duration_since(last) < grace;
            match node.status {
                NodeStatus::Ready if !alive => Some((node.id, NodeStatus::Down)),
                NodeStatus::Down if alive && heard.is_some_and(|h| h >= leader_since) => {
                    Some((node.id, NodeStatus::Ready))
                }
                _ => None,
            }
        })
        .collect()
}

/// The changes of one round.
#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<TaskOp>,
    /// Services whose update failed with failure action rollback.
    pub rollbacks: Vec<String>,
}

/// Which slot a task fills: its slot number (replicated) or its node
/// (global).
type SlotKey = u64;

fn slot_key(mode: ServiceMode, task: &TaskRecord) -> SlotKey {
    match mode {
        ServiceMode::Replicated => u64::from(task.slot),
        ServiceMode::Global => task.node.unwrap_or(0),
    }
}

fn facts(node: &NodeRecord) -> NodeFacts<'_> {
    NodeFacts {
        name: &node.name,
        id: node.id,
        role: match node.role {
            Role::Manager => "manager",
            Role::Worker => "worker",
        },
        labels: &node.labels,
    }
}

/// Live task counts per node: of one service, and of all services.
struct Load {
    total: HashMap<NodeId, usize>,
    service: HashMap<NodeId, usize>,
}

impl Load {
    fn add(&mut self, node: NodeId) {
        *self.total.entry(node).or_default() += 1;
        *self.service.entry(node).or_default() += 1;
    }

    fn remove(&mut self, node: NodeId) {
        for map in [&mut self.total, &mut self.service] {
            if let Some(count) = map.get_mut(&node) {
                *count = count.saturating_sub(1);
            }
        }
    }
}

/// Chooses a node for a new task of `spec`, or says why none fits.
fn place(state: &RegistryState, spec: &TaskSpec, load: &Load) -> Result<NodeId, String> {
    let ready: Vec<&NodeRecord> = state
        .nodes
        .values()
        .filter(|n| n.status == NodeStatus::Ready && n.availability == Availability::Active)
        .collect();
    if ready.is_empty() {
        return Err("no ready, active node".to_owned());
    }
    let matching: Vec<&NodeRecord> = ready
        .iter()
        .copied()
        .filter(|n| spec.constraints.iter().all(|c| c.matches(&facts(n))))
        .collect();
    if matching.is_empty() {
        let constraints: Vec<String> = spec.constraints.iter().map(|c| c.to_string()).collect();
        return Err(format!(
            "no suitable node: 0 of {} ready, active nodes meet the constraints {}",
            ready.len(),
            constraints.join(", ")
        ));
    }
    let service_count = |id: NodeId| load.service.get(&id).copied().unwrap_or(0);
    matching
        .iter()
        .filter(|n| spec.max_per_node == 0 || service_count(n.id) < spec.max_per_node as usize)
        .min_by_key(|n| {
            (
                service_count(n.id),
                load.total.get(&n.id).copied().unwrap_or(0),
                n.id,
            )
        })
        .map(|n| n.id)
        .ok_or_else(|| {
            format!(
                "no suitable node: max replicas per node ({}) reached on all {} matching nodes",
                spec.max_per_node,
                matching.len()
            )
        })
}

/// Whether a task may stay on `node` (a pause keeps tasks; drain does not).
fn may_stay(node: &NodeRecord, spec: &TaskSpec) -> Result<(), String> {
    if node.availability == Availability::Drain {
        return Err("node drained".to_owned());
    }
    if let Some(c) = spec.constraints.iter().find(|c| !c.matches(&facts(node))) {
        return Err(format!("node no longer meets constraint {c}"));
    }
    Ok(())
}

/// What the restart policy says about refilling a slot whose newest dead
/// task is `last`.
enum Refill {
    Now {
        attempt: u32,
    },
    Later,
    /// The policy gives up on the slot.
    Never,
}

fn refill(spec: &TaskSpec, last: Option<&TaskRecord>, now: Millis) -> Refill {
    let Some(last) = last else {
        return Refill::Now { attempt: 0 };
    };
    let restart = spec.restart;
    let (restarts, failed) = match last.state {
        TaskState::Failed => (restart.condition != RestartCondition::None, true),
        // A task that ended on its own with status 0.
        TaskState::Shutdown if last.message.starts_with("completed") => {
            (restart.condition == RestartCondition::Any, true)
        }
        // Stopped on purpose, or lost with its node: replace at once.
        _ => return Refill::Now { attempt: 0 },
    };
    if !restarts {
        return Refill::Never;
    }
    let attempt = if failed { last.attempt + 1 } else { 0 };
    if restart.max_attempts > 0 && attempt > restart.max_attempts {
        return Refill::Never;
    }
    if now < last.updated_at.saturating_add(millis(restart.delay)) {
        return Refill::Later;
    }
    Refill::Now { attempt }
}

/// Plans one round over the whole registry.
pub fn plan(
    state: &RegistryState,
    now: Millis,
    last_batch: &mut HashMap<String, Millis>,
    new_id: &mut impl FnMut() -> String,
) -> Plan {
    let mut plan = Plan::default();
    let mut total: HashMap<NodeId, usize> = HashMap::new();
    for task in state.tasks.values().filter(|t| t.is_live()) {
        if let Some(node) = task.node {
            *total.entry(node).or_default() += 1;
        }
    }
    for record in state.services.values() {
        let spec = match record.spec.validate() {
            Ok(service) => match service.tasks {
                Some(spec) => (spec, service.replicas),
                None => continue,
            },
            Err(error) => {
                warn!(service = %record.spec.name, %error, "service skipped by the scheduler");
                continue;
            }
        };
        let mut service_plan = ServicePlan {
            state,
            record,
            spec: &spec.0,
            replicas: spec.1,
            now,
            ops: &mut plan.ops,
            load: Load {
                total: total.clone(),
                service: HashMap::new(),
            },
        };
        if let Some(rollback) = service_plan.run(last_batch, new_id) {
            plan.rollbacks.push(rollback);
        }
        total = service_plan.load.total;
    }
    // Tasks of removed services: orphan those on lost nodes, drop the dead.
    for task in state.tasks.values() {
        if state.services.contains_key(&task.service) {
            continue;
        }
        let node_up = task
            .node
            .and_then(|id| state.nodes.get(&id))
            .is_some_and(|n| n.status == NodeStatus::Ready);
        if task.state.is_terminal() || task.node.is_none() {
            plan.ops.push(TaskOp::Remove {
                id: task.id.clone(),
            });
        } else if !node_up {
            plan.ops.push(TaskOp::Orphan {
                id: task.id.clone(),
            });
        }
    }
    plan
}

struct ServicePlan<'a> {
    state: &'a RegistryState,
    record: &'a ServiceRecord,
    spec: &'a TaskSpec,
    replicas: u32,
    now: Millis,
    ops: &'a mut Vec<TaskOp>,
    load: Load,
}

impl ServicePlan<'_> {
    fn name(&self) -> &str {
        &self.record.spec.name
    }

    fn shutdown(&mut self, task: &TaskRecord, reason: impl Into<String>) {
        if let Some(node) = task.node {
            self.load.remove(node);
        }
        self.ops.push(TaskOp::Shutdown {
            id: task.id.clone(),
            reason: reason.into(),
        });
    }

    fn create(
        &mut self,
        new_id: &mut impl FnMut() -> String,
        slot: u32,
        node: Option<NodeId>,
        attempt: u32,
    ) {
        let (node, message) = match node {
            Some(node) => (Some(node), String::new()),
            None => match place(self.state, self.spec, &self.load) {
                Ok(node) => (Some(node), String::new()),
                Err(reason) => (None, reason),
            },
        };
        if let Some(node) = node {
            self.load.add(node);
        }
        self.ops.push(TaskOp::Create {
            task: NewTask {
                id: new_id(),
                service: self.name().to_owned(),
                slot,
                spec_version: self.record.task_version,
                node,
                attempt,
                message,
            },
        });
    }

    /// Plans this service; returns its name when it must roll back.
    fn run(
        &mut self,
        last_batch: &mut HashMap<String, Millis>,
        new_id: &mut impl FnMut() -> String,
    ) -> Option<String> {
        let mode = self.spec.mode;
        let (state, record) = (self.state, self.record);
        let tasks: Vec<&TaskRecord> = state.tasks_of(&record.spec.name).collect();
        for task in tasks.iter().filter(|t| t.is_live()) {
            if let Some(node) = task.node {
                *self.load.service.entry(node).or_default() += 1;
            }
        }

        // 1. Retire what cannot stay; place what waits.
        let mut live: Vec<&TaskRecord> = Vec::new();
        for task in &tasks {
            if task.desired == raft_state::task::DesiredState::Running && task.state.is_terminal() {
                // Failed or ended: retire it; its slot is refilled below.
                self.ops.push(TaskOp::Shutdown {
                    id: task.id.clone(),
                    reason: task.message.clone(),
                });
                continue;
            }
            if !task.is_live() {
                continue;
            }
            let Some(node_id) = task.node else {
                // Still no node: it waits, with the reason it was created with.
                if let Ok(node) = place(self.state, self.spec, &self.load) {
                    self.load.add(node);
                    self.ops.push(TaskOp::Assign {
                        id: task.id.clone(),
                        node,
                    });
                }
                live.push(task);
                continue;
            };
            match self.state.nodes.get(&node_id) {
                Some(node) if node.status == NodeStatus::Ready => {
                    if let Err(reason) = may_stay(node, self.spec) {
                        self.shutdown(task, reason);
                        continue;
                    }
                }
                _ => {
                    self.load.remove(node_id);
                    self.ops.push(TaskOp::Orphan {
                        id: task.id.clone(),
                    });
                    continue;
                }
            }
            live.push(task);
        }

        // 2. Which slots exist and which are wanted.
        let mut slots: BTreeMap<SlotKey, Vec<&TaskRecord>> = BTreeMap::new();
        for task in &live {
            slots.entry(slot_key(mode, task)).or_default().push(task);
        }
        let wanted: BTreeSet<SlotKey> = match mode {
            ServiceMode::Replicated => {
                let mut wanted: BTreeSet<SlotKey> = slots.keys().copied().collect();
                // Surplus: shut down whole slots, most crowded nodes and
                // non-running tasks first.
                while wanted.len() > self.replicas as usize {
                    let victim = wanted.iter().copied().max_by_key(|key| {
                        let tasks = slots.get(key).map(Vec::as_slice).unwrap_or_default();
                        let running = tasks.iter().any(|t| t.state == TaskState::Running);
                        let crowd = tasks
                            .iter()
                            .filter_map(|t| t.node)
                            .map(|n| self.load.service.get(&n).copied().unwrap_or(0))
                            .max()
                            .unwrap_or(usize::MAX);
                        (!running, crowd, *key)
                    });
                    let Some(victim) = victim else { break };
                    wanted.remove(&victim);
                    for task in slots.remove(&victim).unwrap_or_default() {
                        self.shutdown(task, "scaled down");
                    }
                }
                let mut next = 1u64;
                while wanted.len() < self.replicas as usize {
                    if !wanted.contains(&next) {
                        wanted.insert(next);
                    }
                    next += 1;
                }
                wanted
            }
            ServiceMode::Global => {
                let eligible: BTreeSet<SlotKey> = self
                    .state
                    .nodes
                    .values()
                    .filter(|n| {
                        n.status == NodeStatus::Ready
                            && n.availability == Availability::Active
                            && self.spec.constraints.iter().all(|c| c.matches(&facts(n)))
                    })
                    .map(|n| n.id)
                    .collect();
                // A paused node keeps its task but gets no new one.
                slots.keys().copied().chain(eligible).collect()
            }
        };

        // 3. Refill missing slots per the restart policy.
        for key in &wanted {
            if slots.contains_key(key) {
                continue;
            }
            let last_dead = tasks
                .iter()
                .filter(|t| !t.is_live() && slot_key(mode, t) == *key)
                .max_by_key(|t| t.updated_at);
            if let Refill::Now { attempt } = refill(self.spec, last_dead.copied(), self.now) {
                let (slot, node) = match mode {
                    ServiceMode::Replicated => (u32::try_from(*key).unwrap_or(u32::MAX), None),
                    ServiceMode::Global => (0, Some(*key)),
                };
                self.create(new_id, slot, node, attempt);
            }
        }

        // 4. Rolling update over the slots that exist.
        let rollback = self.update(&slots, &tasks, last_batch, new_id);

        // 5. History: keep the newest few dead tasks per slot.
        let mut dead: BTreeMap<SlotKey, Vec<&TaskRecord>> = BTreeMap::new();
        for task in tasks
            .iter()
            .filter(|t| !t.is_live() && t.state.is_terminal())
        {
            dead.entry(slot_key(mode, task)).or_default().push(task);
        }
        for (_, mut list) in dead {
            list.sort_by_key(|t| std::cmp::Reverse(t.updated_at));
            for task in list.into_iter().skip(TASK_HISTORY) {
                self.ops.push(TaskOp::Remove {
                    id: task.id.clone(),
                });
            }
        }
        rollback
    }

    fn set_update(&mut self, status: &UpdateStatus, state: UpdateState, message: String) {
        let done = matches!(
            state,
            UpdateState::Completed | UpdateState::RollbackCompleted
        );
        self.ops.push(TaskOp::SetUpdate {
            service: self.name().to_owned(),
            status: UpdateStatus {
                state,
                task_version: status.task_version,
                started_at: status.started_at.or(Some(self.now)),
                completed_at: done.then_some(self.now),
                message,
            },
        });
    }

    /// Replaces outdated tasks per the update policy. Returns the service's
    /// name when the failure action is a rollback.
    fn update(
        &mut self,
        slots: &BTreeMap<SlotKey, Vec<&TaskRecord>>,
        tasks: &[&TaskRecord],
        last_batch: &mut HashMap<String, Millis>,
        new_id: &mut impl FnMut() -> String,
    ) -> Option<String> {
        let version = self.record.task_version;
        let policy = self.spec.update;
        let status = self.record.update.clone().unwrap_or(UpdateStatus {
            state: UpdateState::Completed,
            task_version: version,
            started_at: None,
            completed_at: None,
            message: String::new(),
        });
        let current = |t: &TaskRecord| t.spec_version == version;
        // start-first: once a slot's new task serves, its old one leaves.
        for slot_tasks in slots.values() {
            if slot_tasks.iter().any(|t| current(t) && t.serves()) {
                for old in slot_tasks.iter().filter(|t| !current(t)) {
                    self.shutdown(old, "replaced by update");
                }
            }
        }
        let outdated: Vec<(&SlotKey, &Vec<&TaskRecord>)> = slots
            .iter()
            .filter(|(_, ts)| !ts.iter().any(|t| current(t)))
            .collect();
        if status.task_version != version || !status.state.in_progress() {
            // Nothing rolling out (or paused): only finish bookkeeping.
            return None;
        }
        if outdated.is_empty() {
            let pending_new = slots
                .values()
                .flatten()
                .any(|t| t.spec_version == version && !t.serves());
            if !pending_new {
                let state = if status.state.is_rollback() {
                    UpdateState::RollbackCompleted
                } else {
                    UpdateState::Completed
                };
                let message = if status.state.is_rollback() {
                    "rollback completed"
                } else {
                    "update completed"
                };
                self.set_update(&status, state, message.to_owned());
                last_batch.remove(self.name());
            }
            return None;
        }
        let started = status.started_at.unwrap_or(self.now);
        if status.started_at.is_none() {
            self.set_update(&status, status.state, status.message.clone());
        }
        // A new task that failed within the monitor window fails the update.
        let failed = tasks.iter().find(|t| {
            t.spec_version == version
                && t.state == TaskState::Failed
                && t.created_at >= started
                && t.started_at
                    .is_none_or(|s| t.updated_at.saturating_sub(s) <= millis(policy.monitor))
        });
        if let Some(failed) = failed {
            let message = format!(
                "task {} failed: {}",
                failed.id,
                if failed.message.is_empty() {
                    "unknown error"
                } else {
                    &failed.message
                }
            );
            match policy.failure_action {
                FailureAction::Continue => {}
                FailureAction::Pause => {
                    let state = if status.state.is_rollback() {
                        UpdateState::RollbackPaused
                    } else {
                        UpdateState::Paused
                    };
                    self.set_update(&status, state, format!("update paused: {message}"));
                    return None;
                }
                FailureAction::Rollback => {
                    if status.state.is_rollback() {
                        self.set_update(
                            &status,
                            UpdateState::RollbackPaused,
                            format!("rollback paused: {message}"),
                        );
                        return None;
                    }
                    self.set_update(
                        &status,
                        UpdateState::Paused,
                        format!("update failed, rolling back: {message}"),
                    );
                    return Some(self.name().to_owned());
                }
            }
        }
        // One batch at a time: wait until the last batch serves and the
        // delay has passed.
        let in_flight = slots
            .values()
            .flatten()
            .filter(|t| t.spec_version == version && !t.serves())
            .count()
            + tasks
                .iter()
                .filter(|t| !t.is_live() && !t.state.is_terminal())
                .count();
        let missing = match self.spec.mode {
            ServiceMode::Replicated => (self.replicas as usize).saturating_sub(slots.len()),
            ServiceMode::Global => 0,
        };
        let ready_for_batch = last_batch
            .get(self.name())
            .is_none_or(|at| self.now >= at.saturating_add(millis(policy.delay)));
        if in_flight + missing > 0 || !ready_for_batch {
            return None;
        }
        let batch = if policy.parallelism == 0 {
            outdated.len()
        } else {
            policy.parallelism as usize
        };
        let mut order: Vec<(&SlotKey, &Vec<&TaskRecord>)> = outdated;
        // Replace tasks that do not serve first.
        order.sort_by_key(|(key, ts)| (ts.iter().any(|t| t.serves()), **key));
        for (key, slot_tasks) in order.into_iter().take(batch) {
            match policy.order {
                UpdateOrder::StopFirst => {
                    for task in slot_tasks {
                        self.shutdown(task, "stopped for update");
                    }
                    // The slot is refilled with the new version next round.
                }
                UpdateOrder::StartFirst => {
                    let (slot, node) = match self.spec.mode {
                        ServiceMode::Replicated => (u32::try_from(*key).unwrap_or(u32::MAX), None),
                        ServiceMode::Global => (0, Some(*key)),
                    };
                    self.create(new_id, slot, node, 0);
                }
            }
        }
        last_batch.insert(self.name().to_owned(), self.now);
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use lb_config::{PortSpec, ServiceSpec};
    use raft_state::state::ClusterInfo;
    use raft_state::task::{DesiredState, TaskHealth, TaskReport};

    use super::*;

    fn node(id: NodeId, labels: &[(&str, &str)]) -> NodeRecord {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, id as u8));
        NodeRecord {
            id,
            name: format!("n{id}"),
            raft_addr: SocketAddr::new(ip, 1),
            api_addr: SocketAddr::new(ip, 2),
            ingress_addr: ip,
            role: Role::Manager,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn web(replicas: i64) -> ServiceSpec {
        ServiceSpec {
            name: "web".to_owned(),
            ports: vec![PortSpec {
                published: 8080,
                target: Some(80),
                protocol: None,
            }],
            image: Some("img:v1".to_owned()),
            replicas: Some(replicas),
            ..ServiceSpec::default()
        }
    }

    /// A registry with three ready nodes and `spec`, driven by `plan` the
    /// way the leader drives it.
    struct Sim {
        state: RegistryState,
        now: Millis,
        batches: HashMap<String, Millis>,
        next_id: u32,
    }

    impl Sim {
        fn new(spec: ServiceSpec) -> Self {
            let mut state = RegistryState::default();
            state.apply(&Command::InitCluster {
                cluster: ClusterInfo {
                    id: "c".into(),
                    manager_token: String::new(),
                    worker_token: String::new(),
                    control_token: String::new(),
                },
                vip_range: raft_state::state::DEFAULT_VIP_RANGE,
            });
            for id in 1..=3 {
                state.apply(&Command::RegisterNode {
                    node: node(id, &[]),
                });
            }
            let outcome = state.apply(&Command::CreateService { spec });
            assert!(
                matches!(outcome, raft_state::state::Outcome::Service { .. }),
                "{outcome:?}"
            );
            Self {
                state,
                now: 1_000_000,
                batches: HashMap::new(),
                next_id: 0,
            }
        }

        fn round(&mut self) -> Plan {
            let mut next = self.next_id;
            let plan = plan(&self.state, self.now, &mut self.batches, &mut || {
                next += 1;
                format!("t{next}")
            });
            self.next_id = next;
            let ops = plan.ops.clone();
            let outcome = self.state.apply(&Command::Schedule { ops, at: self.now });
            assert!(
                !matches!(outcome, raft_state::state::Outcome::Rejected { .. }),
                "{outcome:?}"
            );
            for name in &plan.rollbacks {
                self.state
                    .apply(&Command::RollbackService { name: name.clone() });
            }
            plan
        }

        /// Every agent does what it is told at once: assigned tasks run
        /// healthy, shut-down tasks stop.
        fn agents(&mut self) {
            let tasks: Vec<TaskRecord> = self.state.tasks.values().cloned().collect();
            for task in tasks {
                let Some(node) = task.node else { continue };
                let state = match (task.desired, task.state) {
                    (DesiredState::Running, TaskState::Assigned) => TaskState::Running,
                    (DesiredState::Shutdown, s) if !s.is_terminal() => TaskState::Shutdown,
                    _ => continue,
                };
                self.report(&task.id, node, state, &task.message);
            }
        }

        fn report(&mut self, id: &str, node: NodeId, state: TaskState, message: &str) {
            let outcome = self.state.apply(&Command::ReportTask {
                report: Box::new(TaskReport {
                    id: id.to_owned(),
                    node,
                    state,
                    health: TaskHealth::Healthy,
                    endpoint: Some(raft_state::task::TaskEndpoint {
                        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                        ports: vec![(80, 30000)],
                    }),
                    runtime_id: Some(format!("c-{id}")),
                    message: message.to_owned(),
                    at: self.now,
                }),
            });
            assert!(
                !matches!(outcome, raft_state::state::Outcome::Rejected { .. }),
                "{outcome:?}"
            );
        }

        /// Rounds and agents until nothing changes (bounded).
        fn settle(&mut self) {
            for _ in 0..50 {
                self.now += 1_000;
                let plan = self.round();
                self.agents();
                if plan.ops.is_empty() && plan.rollbacks.is_empty() {
                    return;
                }
            }
            panic!("the plan never settled: {:#?}", self.state.tasks);
        }

        fn live(&self) -> Vec<&TaskRecord> {
            self.state.tasks.values().filter(|t| t.is_live()).collect()
        }

        fn per_node(&self) -> BTreeMap<NodeId, usize> {
            let mut counts = BTreeMap::new();
            for task in self.live() {
                *counts.entry(task.node.unwrap_or(0)).or_default() += 1;
            }
            counts
        }

        fn update(&mut self, change: impl FnOnce(&mut ServiceSpec)) {
            let mut spec = self.state.services["web"].spec.clone();
            change(&mut spec);
            let outcome = self.state.apply(&Command::UpdateService { spec });
            assert!(
                !matches!(outcome, raft_state::state::Outcome::Rejected { .. }),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn replicas_spread_and_scale_down_takes_from_the_most_crowded() {
        let mut sim = Sim::new(web(3));
        sim.settle();
        assert_eq!(sim.per_node(), BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
        sim.update(|s| s.replicas = Some(6));
        sim.settle();
        assert_eq!(sim.per_node(), BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
        sim.update(|s| s.replicas = Some(2));
        sim.settle();
        let counts = sim.per_node();
        assert_eq!(counts.values().sum::<usize>(), 2);
        assert!(counts.values().all(|c| *c == 1), "{counts:?}");
        // The removed tasks were shut down, not forgotten mid-flight.
        assert!(sim
            .state
            .tasks
            .values()
            .any(|t| t.desired == DesiredState::Shutdown && t.message == "scaled down"));
    }

    #[test]
    fn a_down_node_loses_its_tasks_to_the_others() {
        let mut sim = Sim::new(web(3));
        sim.settle();
        sim.state.apply(&Command::SetNodeStatus {
            id: 2,
            status: NodeStatus::Down,
        });
        sim.settle();
        assert_eq!(sim.live().len(), 3);
        assert_eq!(sim.per_node().get(&2), None);
        assert!(sim
            .state
            .tasks
            .values()
            .any(|t| t.node == Some(2) && t.state == TaskState::Orphaned));
    }

    #[test]
    fn drain_moves_tasks_and_pause_keeps_them() {
        let mut sim = Sim::new(web(3));
        sim.settle();
        let availability = |sim: &mut Sim, a| {
            sim.state.apply(&Command::UpdateNode {
                id: 2,
                availability: Some(a),
                role: None,
                labels_add: BTreeMap::new(),
                labels_remove: Vec::new(),
            });
        };
        availability(&mut sim, Availability::Pause);
        sim.settle();
        assert_eq!(sim.per_node().get(&2), Some(&1), "pause keeps tasks");
        availability(&mut sim, Availability::Drain);
        sim.settle();
        assert_eq!(sim.per_node().get(&2), None);
        assert_eq!(sim.live().len(), 3);
        availability(&mut sim, Availability::Active);
        sim.update(|s| s.replicas = Some(6));
        sim.settle();
        assert_eq!(
            sim.per_node().get(&2),
            Some(&2),
            "active allows placement again"
        );
    }

    #[test]
    fn constraints_and_max_per_node() {
        let mut spec = web(2);
        spec.constraints = vec!["node.labels.zone==blue".to_owned()];
        let mut sim = Sim::new(spec);
        sim.settle();
        let pending: Vec<&TaskRecord> = sim
            .live()
            .into_iter()
            .filter(|t| t.state == TaskState::Pending)
            .collect();
        assert_eq!(pending.len(), 2);
        assert!(
            pending[0].message.contains("node.labels.zone==blue"),
            "{}",
            pending[0].message
        );
        sim.state.apply(&Command::UpdateNode {
            id: 3,
            availability: None,
            role: None,
            labels_add: BTreeMap::from([("zone".to_owned(), "blue".to_owned())]),
            labels_remove: Vec::new(),
        });
        sim.settle();
        assert_eq!(sim.per_node(), BTreeMap::from([(3, 2)]));
        sim.update(|s| s.max_replicas_per_node = Some(1));
        sim.settle();
        // Existing tasks stay; a new one would not fit.
        sim.update(|s| s.replicas = Some(3));
        sim.settle();
        let waiting = sim.live().into_iter().filter(|t| t.node.is_none()).count();
        assert_eq!(waiting, 1);
    }

    #[test]
    fn global_mode_follows_the_nodes() {
        let mut spec = web(1);
        spec.replicas = None;
        spec.mode = ServiceMode::Global;
        let mut sim = Sim::new(spec);
        sim.settle();
        assert_eq!(sim.per_node(), BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
        sim.state
            .apply(&Command::RegisterNode { node: node(4, &[]) });
        sim.settle();
        assert_eq!(sim.per_node().get(&4), Some(&1));
    }

    #[test]
    fn failed_tasks_restart_after_the_delay_and_give_up_after_max_attempts() {
        let mut spec = web(1);
        spec.restart.delay = Some(Duration::from_secs(5));
        spec.restart.max_attempts = Some(2);
        let mut sim = Sim::new(spec);
        sim.settle();
        for attempt in 1..=3u32 {
            let task = sim.live()[0].clone();
            sim.report(
                &task.id,
                task.node.unwrap(),
                TaskState::Failed,
                "exited with code 1",
            );
            sim.now += 1_000;
            sim.round();
            if attempt <= 2 {
                assert!(sim.live().is_empty(), "replaced before the delay");
                sim.now += 5_000;
                sim.round();
                sim.agents();
                assert_eq!(sim.live().len(), 1, "attempt {attempt}");
                assert_eq!(sim.live()[0].attempt, attempt);
            }
        }
        sim.now += 60_000;
        sim.round();
        assert!(sim.live().is_empty(), "gave up after two restarts");
    }

    #[test]
    fn start_first_update_keeps_every_slot_serving() {
        let mut spec = web(3);
        spec.update.order = Some(lb_config::UpdateOrder::StartFirst);
        let mut sim = Sim::new(spec);
        sim.settle();
        sim.update(|s| s.image = Some("img:v2".to_owned()));
        let new_version = sim.state.services["web"].task_version;
        for _ in 0..50 {
            sim.now += 1_000;
            sim.round();
            let serving = sim.state.tasks.values().filter(|t| t.serves()).count();
            assert!(serving >= 3, "only {serving} serving during the update");
            sim.agents();
            if sim.live().iter().all(|t| t.spec_version == new_version) {
                break;
            }
        }
        sim.settle();
        assert!(sim.live().iter().all(|t| t.spec_version == new_version));
        assert_eq!(sim.live().len(), 3);
        let status = sim.state.services["web"].update.clone().unwrap();
        assert_eq!(status.state, UpdateState::Completed);
    }

    #[test]
    fn a_failing_update_rolls_back_by_itself() {
        let mut spec = web(2);
        spec.update.order = Some(lb_config::UpdateOrder::StartFirst);
        spec.update.failure_action = Some(FailureAction::Rollback);
        let mut sim = Sim::new(spec);
        sim.settle();
        let old_version = sim.state.services["web"].task_version;
        sim.update(|s| s.image = Some("img:crash".to_owned()));
        sim.now += 1_000;
        sim.round();
        let new_task = sim
            .live()
            .into_iter()
            .find(|t| t.spec_version != old_version)
            .cloned()
            .expect("a new task");
        sim.report(
            &new_task.id,
            new_task.node.unwrap(),
            TaskState::Starting,
            "",
        );
        sim.report(
            &new_task.id,
            new_task.node.unwrap(),
            TaskState::Failed,
            "exited with code 1",
        );
        sim.settle();
        let record = &sim.state.services["web"];
        assert_eq!(record.spec.image.as_deref(), Some("img:v1"));
        assert_eq!(record.task_version, old_version);
        assert_eq!(
            record.update.as_ref().unwrap().state,
            UpdateState::RollbackCompleted
        );
        assert!(sim.live().iter().all(|t| t.spec_version == old_version));
        assert_eq!(sim.live().len(), 2);
    }

    #[test]
    fn silent_nodes_go_down_and_return() {
        let sim = Sim::new(web(1));
        let start = Instant::now();
        let grace = Duration::from_secs(5);
        let heard = HashMap::from([(1, start + Duration::from_secs(9)), (2, start)]);
        let changes = node_status_changes(
            &sim.state,
            &heard,
            start,
            start + Duration::from_secs(10),
            grace,
        );
        assert_eq!(changes, vec![(2, NodeStatus::Down), (3, NodeStatus::Down)]);
        // A fresh leader gives every node a full grace period.
        let changes = node_status_changes(
            &sim.state,
            &HashMap::new(),
            start,
            start + Duration::from_secs(4),
            grace,
        );
        assert!(changes.is_empty());
    }
}
