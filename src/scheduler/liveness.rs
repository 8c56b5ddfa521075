//! Node liveness: which nodes the leader marks down or ready again, from
//! the heartbeats it has heard (kept in memory, not in the log). Every node
//! sends its heartbeats to every voter (`raft_state::heartbeats`), so a
//! voter that becomes leader has heard each node while it followed.
//!
//! # Rules
//!
//! - A node's silence counts from the last heartbeat this node heard from
//!   it, whether this node led then or not: a killed leader's tasks move
//!   one grace after its last heartbeat, not an election plus a grace.
//! - A node this leader never heard from (it restarted, or the node is
//!   new) gets a full grace counted from this leader's election.
//! - The leader never marks itself down: it is running the judgement.
//! - A leader marks others down only while a quorum has acknowledged it
//!   within the last election timeout. A leader that cannot reach its peers
//!   is the one cut off, and what it would conclude about them is wrong.
//! - A brake for mass failure (as Kubernetes' node lifecycle controller has
//!   for a zone disruption): when more than half of the ready nodes are
//!   silent at once, none of them is marked down until the picture clears.
//! - A down node heard again since this leader's election comes back ready,
//!   whatever holds the other way.

use std::collections::HashMap;
use std::time::Duration;

use raft_state::state::{NodeId, NodeStatus, RegistryState};
use tokio::time::Instant;

/// What the leader knows when it judges its nodes.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// This node: it leads, so it is alive.
    pub leader: NodeId,
    pub last_heard: &'a HashMap<NodeId, Instant>,
    /// When this node became leader.
    pub leader_since: Instant,
    pub now: Instant,
    pub grace: Duration,
    /// Whether a quorum acknowledged this leader within the last election
    /// timeout.
    pub quorum_heard: bool,
}

/// Why silent nodes were not marked down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The leader has not heard from a quorum recently: it may be the one
    /// cut off.
    NoQuorum,
    /// More than half of the ready nodes went silent at once.
    MassSilence { silent: usize, ready: usize },
}

/// The status changes to write, and what was held back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Judgement {
    pub changes: Vec<(NodeId, NodeStatus)>,
    /// Set when silent nodes were left ready; how many is in `silent`.
    pub held: Option<Hold>,
    /// Ready nodes silent past the grace, whether marked down or held.
    pub silent: usize,
}

/// Judges every node of `state` by the rules in the module doc.
pub fn judge(state: &RegistryState, seen: &Observation<'_>) -> Judgement {
    let mut silent = Vec::new();
    let mut back = Vec::new();
    let mut ready = 0;
    for node in state.nodes.values() {
        let heard = if node.id == seen.leader {
            Some(seen.now)
        } else {
            seen.last_heard.get(&node.id).copied()
        };
        let last = heard.unwrap_or(seen.leader_since);
        let alive = seen.now.saturating_duration_since(last) < seen.grace;
        match node.status {
            NodeStatus::Ready => {
                ready += 1;
                if !alive {
                    silent.push(node.id);
                }
            }
            NodeStatus::Down if alive && heard.is_some_and(|h| h >= seen.leader_since) => {
                back.push(node.id);
            }
            NodeStatus::Down => {}
        }
    }
    let held = if silent.is_empty() {
        None
    } else if !seen.quorum_heard {
        Some(Hold::NoQuorum)
    } else if silent.len() * 2 > ready {
        Some(Hold::MassSilence {
            silent: silent.len(),
            ready,
        })
    } else {
        None
    };
    let mut changes: Vec<(NodeId, NodeStatus)> =
        back.into_iter().map(|id| (id, NodeStatus::Ready)).collect();
    if held.is_none() {
        changes.extend(silent.iter().map(|id| (*id, NodeStatus::Down)));
    }
    changes.sort_unstable_by_key(|(id, _)| *id);
    Judgement {
        changes,
        held,
        silent: silent.len(),
    }
}
