//! Placement: which node a new task goes to, and whether a task may stay
//! where it is.
//!
//! Among ready, active nodes that meet the constraints and the per-node
//! maximum, the one with the fewest tasks of the service wins, then the
//! fewest tasks overall, then the lowest id.

use std::collections::HashMap;

use lb_config::{NodeFacts, TaskSpec};
use raft_state::state::{Availability, NodeId, NodeRecord, NodeStatus, RegistryState, Role};

pub(super) fn facts(node: &NodeRecord) -> NodeFacts<'_> {
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
pub(super) struct Load {
    pub(super) total: HashMap<NodeId, usize>,
    pub(super) service: HashMap<NodeId, usize>,
}

impl Load {
    pub(super) fn add(&mut self, node: NodeId) {
        *self.total.entry(node).or_default() += 1;
        *self.service.entry(node).or_default() += 1;
    }

    pub(super) fn remove(&mut self, node: NodeId) {
        for map in [&mut self.total, &mut self.service] {
            if let Some(count) = map.get_mut(&node) {
                *count = count.saturating_sub(1);
            }
        }
    }
}

/// Chooses a node for a new task of `spec`, or says why none fits.
pub(super) fn place(state: &RegistryState, spec: &TaskSpec, load: &Load) -> Result<NodeId, String> {
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
pub(super) fn may_stay(node: &NodeRecord, spec: &TaskSpec) -> Result<(), String> {
    if node.availability == Availability::Drain {
        return Err("node drained".to_owned());
    }
    if let Some(c) = spec.constraints.iter().find(|c| !c.matches(&facts(node))) {
        return Err(format!("node no longer meets constraint {c}"));
    }
    Ok(())
}
