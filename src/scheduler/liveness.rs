//! Node liveness: which nodes the leader marks down or ready again, from
//! the heartbeats it has heard (kept in memory, not in the log).

use std::collections::HashMap;
use std::time::Duration;

use raft_state::state::{NodeId, NodeStatus, RegistryState};
use tokio::time::Instant;

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
