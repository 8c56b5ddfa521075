//! Drains that end when the last connection does.
//!
//! A task the scheduler shuts down leaves every routing table at once, then
//! its agent waits for the connections still open to it before stopping
//! it, at most the service's `drain_timeout`. Those connections are held
//! by the proxies of every node, so every node says, with each heartbeat,
//! how many it holds to each departing task; the voters keep the latest
//! word of each node in memory (not in the log, as heartbeats are), and
//! answer the heartbeat of a task's own node with those of its tasks that
//! every live node reports closed.
//!
//! # Flow
//!
//! ```text
//! every node, each heartbeat:
//!   departing tasks (desired shutdown, not ended, with an endpoint) that this node's
//!   routing table no longer sends to ─> DrainReport { open: task id ─> connections }
//!   ─> Heartbeat(report) to every voter
//! each voter, on a heartbeat from node N:
//!   DrainReports::record(N, report)           (replaces N's last one; a plain heartbeat
//!                                              replaces it with an empty one)
//!   ─> drained(state, reports, N): N's departing tasks that every ready node
//!      reports with 0 ─> the heartbeat's answer
//! node N's agent: takes the answer of the voter Raft names leader ─> stops those tasks
//!   now instead of at the end of their drain_timeout
//! ```
//!
//! # Who decides, and why there
//!
//! The counts are heard by the voters; the task is stopped by its own
//! node's agent. The voter that leads decides, in memory, and says so in
//! its answer to the node's next heartbeat: no log entry per drain, no new
//! command an older node could not apply, and no new round trip (the
//! heartbeat goes every interval anyway). Writing a "drained" fact through
//! the log would have replicated a transient, in-memory judgement to every
//! node and given older followers an entry they cannot read during an
//! upgrade. The leader's word is the one the agent takes because the
//! leader's registry copy is the newest, so its list of ready nodes is.
//!
//! # Invariants
//!
//! - A node lists a task only once its routing table no longer sends to it,
//!   so a count once reported only falls: a zero is final.
//! - A task is drained only when every node the registry holds ready lists
//!   it with zero: a node that is down does not block it; a ready node that
//!   has not reported since the drain began (it has not routed the change
//!   yet, or runs an older lbd that reports nothing) blocks it until it
//!   reports, or until the drain timeout, which the agent still keeps.
//! - Backward compatible on the wire: a heartbeat without a report is the
//!   plain heartbeat older nodes send and read; a node sends a report only
//!   while it has one, and resends the plain form to a voter that cannot
//!   read it (`crate::heartbeats`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::node::{NodeId, NodeStatus};
use crate::state::RegistryState;
use crate::task::{DesiredState, TaskRecord};

/// What a node tells the voters with its heartbeat about departing tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    /// Connections this node's proxy holds open to each departing task (by
    /// id), listed once its routing table no longer sends to the task.
    #[serde(default)]
    pub open: BTreeMap<String, u32>,
}

impl DrainReport {
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// A voter's answer to a heartbeat that carried a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drained {
    /// The sender's departing tasks that every ready node reports closed.
    #[serde(default)]
    pub tasks: Vec<String>,
}

/// Whether a task is leaving: the scheduler shut it down, it has not ended,
/// and it had an endpoint that proxies may still hold connections to.
pub fn departing(task: &TaskRecord) -> bool {
    task.desired == DesiredState::Shutdown && !task.state.is_terminal() && task.endpoint.is_some()
}

/// Every node's latest report, as one voter heard them. Never held across
/// an await.
#[derive(Clone, Default)]
pub struct DrainReports(Arc<Mutex<HashMap<NodeId, DrainReport>>>);

impl DrainReports {
    /// Keeps `report` as `node`'s word, replacing its last one.
    pub fn record(&self, node: NodeId, report: DrainReport) {
        if let Ok(mut reports) = self.0.lock() {
            if report.is_empty() {
                reports.remove(&node);
            } else {
                reports.insert(node, report);
            }
        }
    }

    /// [`drained`] over the reports heard so far.
    pub fn drained(&self, state: &RegistryState, node: NodeId) -> Drained {
        match self.0.lock() {
            Ok(reports) => drained(state, &reports, node),
            Err(_) => Drained::default(),
        }
    }
}

/// Of the departing tasks `node` runs and reports, those every ready node
/// reports with zero connections. Costs the sender's report times the
/// ready nodes, never a pass over every task.
pub fn drained(
    state: &RegistryState,
    reports: &HashMap<NodeId, DrainReport>,
    node: NodeId,
) -> Drained {
    let Some(own) = reports.get(&node) else {
        return Drained::default();
    };
    let tasks = own
        .open
        .keys()
        .filter(|id| {
            state
                .tasks()
                .get(id.as_str())
                .is_some_and(|task| task.node == Some(node) && departing(task))
        })
        .filter(|id| {
            state
                .nodes
                .values()
                .filter(|n| n.status == NodeStatus::Ready)
                .all(|n| {
                    reports
                        .get(&n.id)
                        .and_then(|report| report.open.get(id.as_str()))
                        == Some(&0)
                })
        })
        .cloned()
        .collect();
    Drained { tasks }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::node::{Availability, NodeRecord, Role};
    use crate::task::{TaskEndpoint, TaskHealth, TaskState};

    fn node(id: NodeId, status: NodeStatus) -> NodeRecord {
        NodeRecord {
            id,
            name: format!("n{id}"),
            raft_addr: "127.0.0.1:1".parse().unwrap(), // fixed-port-ok: a record, nothing bound
            api_addr: "127.0.0.1:2".parse().unwrap(),  // fixed-port-ok: a record, nothing bound
            ingress_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            role: Role::Manager,
            availability: Availability::Active,
            status,
            labels: BTreeMap::new(),
        }
    }

    fn task(id: &str, on: NodeId, desired: DesiredState) -> TaskRecord {
        TaskRecord {
            id: id.to_owned(),
            service: "web".to_owned(),
            slot: 1,
            spec_version: 1,
            node: Some(on),
            desired,
            state: TaskState::Running,
            health: TaskHealth::None,
            endpoint: Some(TaskEndpoint {
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                ports: vec![(80, 30_000)],
            }),
            runtime_id: Some("pid:1".to_owned()),
            message: String::new(),
            attempt: 0,
            created_at: 0,
            updated_at: 0,
            started_at: Some(0),
        }
    }

    /// Three ready nodes; node 1 runs the departing task `old` and the
    /// serving task `new`.
    fn cluster() -> RegistryState {
        let mut state = RegistryState::default();
        for id in 1..=3 {
            state.nodes.insert(id, node(id, NodeStatus::Ready));
        }
        for task in [
            task("old", 1, DesiredState::Shutdown),
            task("new", 1, DesiredState::Running),
        ] {
            state.insert_task(task);
        }
        state
    }

    fn report(open: &[(&str, u32)]) -> DrainReport {
        DrainReport {
            open: open.iter().map(|(id, n)| ((*id).to_owned(), *n)).collect(),
        }
    }

    fn answer(state: &RegistryState, reports: &DrainReports, node: NodeId) -> Vec<String> {
        reports.drained(state, node).tasks
    }

    #[test]
    fn a_task_is_drained_once_every_ready_node_reports_it_closed() {
        let state = cluster();
        let reports = DrainReports::default();
        reports.record(1, report(&[("old", 0)]));
        reports.record(2, report(&[("old", 0)]));
        assert!(
            answer(&state, &reports, 1).is_empty(),
            "node 3 has not reported since the drain began"
        );
        reports.record(3, report(&[("old", 2)]));
        assert!(answer(&state, &reports, 1).is_empty(), "node 3 holds two");
        reports.record(3, report(&[("old", 0)]));
        assert_eq!(answer(&state, &reports, 1), ["old"]);
        // Only the task's own node is told; a plain heartbeat forgets a
        // node's word, which then blocks again.
        assert!(answer(&state, &reports, 2).is_empty());
        reports.record(2, DrainReport::default());
        assert!(answer(&state, &reports, 1).is_empty());
    }

    #[test]
    fn a_down_node_does_not_block_a_drain() {
        let mut state = cluster();
        let reports = DrainReports::default();
        reports.record(1, report(&[("old", 0)]));
        reports.record(2, report(&[("old", 0)]));
        if let Some(three) = state.nodes.get_mut(&3) {
            three.status = NodeStatus::Down;
        }
        assert_eq!(answer(&state, &reports, 1), ["old"]);
    }

    #[test]
    fn only_departing_tasks_of_the_sender_are_answered() {
        let state = cluster();
        let reports = DrainReports::default();
        // A serving task and an unknown one listed by mistake or by a
        // newer registry copy are never answered.
        for id in 1..=3 {
            reports.record(id, report(&[("old", 0), ("new", 0), ("gone", 0)]));
        }
        assert_eq!(answer(&state, &reports, 1), ["old"]);
    }
}
