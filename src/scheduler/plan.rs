//! One scheduling round as a pure function of the registry state and the
//! time: per service, orphaned, failed and surplus tasks out, missing ones
//! in, placed by [`placement`](super::placement); rolling updates are
//! stepped by [`update`](super::update).
//!
//! A round plans every service ([`Scope::All`]) or only some
//! ([`Scope::Only`]: the ones whose record or tasks changed, from
//! [`dirty`](super::dirty)). Its cost is one pass over the tasks (each
//! node's load, and the tasks of the services in scope) plus the planning
//! of the services in scope. A service planned without a change may still
//! owe work that comes with time (a restart delay, an update's delay or
//! monitor window): the plan names it [`Plan::unsettled`], to be planned
//! again next round.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_config::{RestartCondition, ServiceMode, TaskSpec};
use raft_state::state::{Availability, NodeId, NodeStatus, RegistryState, ServiceRecord};
use raft_state::task::{Millis, NewTask, TaskOp, TaskRecord, TaskState};
use tracing::warn;

use super::clock::millis;
use super::placement::{facts, may_stay, place, Load};

/// Dead tasks kept per slot for `service ps`.
const TASK_HISTORY: usize = 3;

/// A new random task id: 12 lowercase hex digits. An id must be unique,
/// not secret, so a fast generator serves (secrets come from
/// `raft_state::random`, which fails closed).
pub fn new_task_id() -> String {
    format!("{:012x}", fastrand::u64(..1 << 48))
}

/// The changes of one round.
#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<TaskOp>,
    /// Services whose update failed with failure action rollback.
    pub rollbacks: Vec<String>,
    /// Planned services that wait on time, not on a change: an update in
    /// progress, a slot whose refill waits for its restart delay.
    pub unsettled: BTreeSet<String>,
    /// Services planned (the size of the round's work).
    pub planned: usize,
}

/// The services a round plans.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    All,
    /// These names: services to plan, or removed services whose tasks
    /// are left.
    Only(&'a BTreeSet<String>),
}

/// Which slot a task fills: its slot number (replicated) or its node
/// (global).
pub(super) type SlotKey = u64;

pub(super) fn slot_key(mode: ServiceMode, task: &TaskRecord) -> SlotKey {
    match mode {
        ServiceMode::Replicated => u64::from(task.slot),
        ServiceMode::Global => task.node.unwrap_or(0),
    }
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
    plan_scope(state, now, Scope::All, last_batch, new_id)
}

/// Plans one round over the services `scope` names.
pub fn plan_scope(
    state: &RegistryState,
    now: Millis,
    scope: Scope<'_>,
    last_batch: &mut HashMap<String, Millis>,
    new_id: &mut impl FnMut() -> String,
) -> Plan {
    let mut plan = Plan::default();
    // Every node's load (placement weighs all services) and the tasks of
    // the services in scope, from the registry's task index: a round over
    // a few services reads only their tasks.
    let mut total: HashMap<NodeId, usize> = state
        .live_tasks_per_node()
        .iter()
        .map(|(node, live)| (*node, *live))
        .collect();
    let mut of_service: BTreeMap<&str, Vec<&TaskRecord>> = BTreeMap::new();
    match scope {
        Scope::All => {
            for task in state.tasks().values() {
                of_service.entry(&task.service).or_default().push(task);
            }
        }
        Scope::Only(names) => {
            for name in names {
                let tasks: Vec<&TaskRecord> = state.tasks_of(name).collect();
                if !tasks.is_empty() {
                    of_service.insert(name, tasks);
                }
            }
        }
    }
    let records: Vec<&ServiceRecord> = match scope {
        Scope::All => state.services.values().collect(),
        Scope::Only(names) => names.iter().filter_map(|n| state.services.get(n)).collect(),
    };
    for record in records {
        // The checked form made when the spec was stored: a round never
        // validates a spec again.
        let spec = match record.checked() {
            Ok(service) => match &service.tasks {
                Some(spec) => (spec, service.replicas),
                None => continue,
            },
            Err(error) => {
                warn!(service = %record.spec.name, %error, "service skipped by the scheduler");
                continue;
            }
        };
        plan.planned += 1;
        let tasks = of_service
            .remove(record.spec.name.as_str())
            .unwrap_or_default();
        let mut service_plan = ServicePlan {
            state,
            record,
            spec: spec.0,
            replicas: spec.1,
            now,
            ops: &mut plan.ops,
            load: Load {
                total: total.clone(),
                service: HashMap::new(),
            },
            unsettled: false,
        };
        if let Some(rollback) = service_plan.run(tasks, last_batch, new_id) {
            plan.rollbacks.push(rollback);
        }
        if service_plan.unsettled {
            plan.unsettled.insert(record.spec.name.clone());
        }
        total = service_plan.load.total;
    }
    // Tasks of removed services (in scope, still grouped): orphan those on
    // lost nodes, drop the dead.
    for task in of_service.values().flatten() {
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

pub(super) struct ServicePlan<'a> {
    pub(super) state: &'a RegistryState,
    pub(super) record: &'a ServiceRecord,
    pub(super) spec: &'a TaskSpec,
    pub(super) replicas: u32,
    pub(super) now: Millis,
    pub(super) ops: &'a mut Vec<TaskOp>,
    pub(super) load: Load,
    /// Set when the service waits on time rather than on a change.
    pub(super) unsettled: bool,
}

impl ServicePlan<'_> {
    pub(super) fn name(&self) -> &str {
        &self.record.spec.name
    }

    pub(super) fn shutdown(&mut self, task: &TaskRecord, reason: impl Into<String>) {
        if let Some(node) = task.node {
            self.load.remove(node);
        }
        self.ops.push(TaskOp::Shutdown {
            id: task.id.clone(),
            reason: reason.into(),
        });
    }

    pub(super) fn create(
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
        tasks: Vec<&TaskRecord>,
        last_batch: &mut HashMap<String, Millis>,
        new_id: &mut impl FnMut() -> String,
    ) -> Option<String> {
        let mode = self.spec.mode;
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
            match refill(self.spec, last_dead.copied(), self.now) {
                Refill::Now { attempt } => {
                    let (slot, node) = match mode {
                        ServiceMode::Replicated => (u32::try_from(*key).unwrap_or(u32::MAX), None),
                        ServiceMode::Global => (0, Some(*key)),
                    };
                    self.create(new_id, slot, node, attempt);
                }
                Refill::Later => self.unsettled = true,
                Refill::Never => {}
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
}
