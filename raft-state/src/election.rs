//! The election guard: a voter that cannot reach a quorum does not
//! campaign, so healing a cut-off follower does not depose a healthy leader.
//!
//! openraft 0.9 has no pre-vote. A follower that hears no leader starts an
//! election each election timeout, and each raises its term. Cut off from
//! its peers it can win none, yet its term keeps climbing, and on the first
//! answer it sends a leader after the cut heals, the leader sees the higher
//! term and steps down: seconds without a leader for no reason. The guard is
//! the part of pre-vote openraft lets us add from outside, through its
//! runtime switch for elections (`RuntimeConfigHandle::elect`):
//!
//! ```text
//! every CHECK (election_min / 10):
//!   leader, learner or sole voter ───────────────────────> elections on
//!   heard the leader within STALE (election_min / 3) ────> elections on
//!   otherwise: handshake with every other voter, each bounded by
//!   PROBE (election_min / 4), all at once
//!     this node + the reachable ones form a majority ────> elections on
//!     they do not ───────────────────────────────────────> elections off
//! ```
//!
//! The check runs at most STALE + CHECK + PROBE (about 0.68 of the shortest
//! election timeout) after the last contact, so a follower that is cut off
//! turns its elections off before its first timeout. When the leader dies,
//! the followers still reach each other and elect as before. What the guard
//! cannot see is a follower that reaches the other voters but not the
//! leader: it still campaigns, as without pre-vote (the other followers
//! reject it while their leader lease holds).
//!
//! Contact is any AppendEntries or InstallSnapshot this node serves, which
//! only the leader sends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::network::{Credentials, Peer};
use crate::types::{NodeId, Raft};

/// When this node last served a request from the leader.
#[derive(Clone)]
pub(crate) struct LeaderContact(Arc<Mutex<Instant>>);

impl LeaderContact {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }

    pub(crate) fn touch(&self) {
        if let Ok(mut last) = self.0.lock() {
            *last = Instant::now();
        }
    }

    fn since(&self) -> Duration {
        self.0.lock().map(|last| last.elapsed()).unwrap_or_default()
    }
}

/// Whether this voter and `reachable` other voters are a majority of
/// `voters`.
fn majority(voters: usize, reachable: usize) -> bool {
    (reachable + 1) * 2 > voters
}

/// Runs the guard of this node until the task is aborted.
pub(crate) async fn guard(
    raft: Raft,
    self_id: NodeId,
    credentials: Credentials,
    contact: LeaderContact,
    election_min: Duration,
) {
    let check = election_min / 10;
    let stale = election_min / 3;
    let probe = election_min / 4;
    let mut electing = true;
    loop {
        tokio::time::sleep(check).await;
        let metrics = raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<(NodeId, String)> = membership
            .voter_ids()
            .filter(|id| *id != self_id)
            .filter_map(|id| membership.get_node(&id).map(|node| (id, node.addr.clone())))
            .collect();
        let is_voter = membership.voter_ids().any(|id| id == self_id);
        let elect = if metrics.state == ServerState::Leader
            || !is_voter
            || voters.is_empty()
            || contact.since() < stale
        {
            true
        } else {
            let probes = voters.into_iter().map(|(id, addr)| {
                let peer = Peer::new(id, addr, credentials.clone());
                async move { tokio::time::timeout(probe, peer.probe()).await }
            });
            let reachable = futures_util::future::join_all(probes)
                .await
                .into_iter()
                .filter(|answer| matches!(answer, Ok(Ok(()))))
                .count();
            let voters = membership.voter_ids().count();
            debug!(reachable, voters, "no leader heard: probed the voters");
            majority(voters, reachable)
        };
        if elect != electing {
            if elect {
                info!("a quorum is reachable again: elections on");
            } else {
                info!("no quorum reachable: elections off until one is, so the term stays put");
            }
            raft.runtime_config().elect(elect);
            electing = elect;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::majority;

    #[test]
    fn a_voter_campaigns_only_with_a_reachable_majority() {
        assert!(majority(1, 0), "a sole voter is its own majority");
        assert!(!majority(3, 0), "cut off from both peers");
        assert!(
            majority(3, 1),
            "the leader died; the other follower answers"
        );
        assert!(!majority(5, 1));
        assert!(majority(5, 2));
        assert!(!majority(4, 1), "two of four is no majority");
    }
}
