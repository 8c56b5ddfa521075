//! Heartbeats from this node to every voter, not only to the leader.
//!
//! A voter records when it last heard each node (in memory, not in the
//! log). Because every voter hears every node, a voter elected leader
//! already knows how long each node has been silent: it counts a dead
//! node's silence from its last heartbeat rather than from the election,
//! so the tasks of a killed leader move after the grace, not after an
//! election plus the grace.
//!
//! # Flow of one round
//!
//! ```text
//! send(voters, timeout)
//!   for each voter but this node, at once:
//!     its idle connection, or a new one ─> Heartbeat, wait at most `timeout`
//!       ├─ answered            ─> the connection is kept for the next round
//!       └─ failed or timed out ─> the connection is dropped (the next round dials again)
//!   ─> Delivered { answered, tried }
//! ```
//!
//! # Invariants
//!
//! - A silent or black-holed voter delays no other: the calls run at once
//!   and each has the caller's deadline.
//! - At most one connection per voter is kept; connections to nodes that are
//!   no longer voters, or that moved, are dropped on the next round.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;

use crate::network::{Credentials, Peer, Request, Response};
use crate::types::NodeId;

/// How one round went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Voters that acknowledged the heartbeat.
    pub answered: usize,
    /// Voters it was sent to (every voter but this node).
    pub tried: usize,
}

/// Connections for heartbeats, one per voter, kept between rounds.
pub struct HeartbeatCalls {
    self_id: NodeId,
    credentials: Credentials,
    idle: std::sync::Mutex<HashMap<NodeId, Peer>>,
}

impl HeartbeatCalls {
    pub fn new(self_id: NodeId, credentials: Credentials) -> Self {
        Self {
            self_id,
            credentials,
            idle: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Sends one heartbeat to each of `voters` (id and Raft address) but
    /// this node, waiting at most `timeout` for all of them.
    pub async fn send(&self, voters: &[(NodeId, String)], timeout: Duration) -> Delivered {
        let peers: Vec<Peer> = voters
            .iter()
            .filter(|(id, _)| *id != self.self_id)
            .map(|(id, addr)| self.take(*id, addr))
            .collect();
        let tried = peers.len();
        let answers = join_all(peers.into_iter().map(|mut peer| async move {
            let answer = peer.call(&Request::Heartbeat, timeout).await;
            (peer, matches!(answer, Ok(Response::Heartbeat)))
        }))
        .await;
        let mut answered = 0;
        let mut kept = HashMap::new();
        for (peer, ok) in answers {
            if ok {
                answered += 1;
                kept.insert(peer.target, peer);
            }
        }
        // Only this round's answered voters are kept: the others dial again.
        if let Ok(mut idle) = self.idle.lock() {
            *idle = kept;
        }
        Delivered { answered, tried }
    }

    /// The kept connection to `id` if it still dials `addr`, or a new one.
    fn take(&self, id: NodeId, addr: &str) -> Peer {
        let kept = self
            .idle
            .lock()
            .ok()
            .and_then(|mut idle| idle.remove(&id))
            .filter(|peer| peer.addr() == addr);
        kept.unwrap_or_else(|| Peer::new(id, addr.to_owned(), self.credentials.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::tests::{credentials, server, Stuck};
    use std::sync::atomic::Ordering;

    /// Every voter but this node hears each round, over the connection kept
    /// from the last one; a voter that accepts and never answers costs its
    /// round nothing but that voter's answer.
    #[tokio::test]
    async fn every_voter_but_this_node_hears_each_round() {
        let two = Stuck::default();
        let three = Stuck::default();
        let (two_addr, two_task) = server(2, two.clone()).await;
        let (three_addr, three_task) = server(3, three.clone()).await;
        // Accepts connections and never answers: a black-holed voter.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let silent_addr = silent.local_addr().expect("addr").to_string();
        let calls = HeartbeatCalls::new(1, credentials(1));
        let voters = vec![
            (1, "127.0.0.1:9".to_owned()), // fixed-port-ok: this node, never dialled
            (2, two_addr),
            (3, three_addr),
            (4, silent_addr),
        ];
        for round in 1..=3 {
            let delivered = calls.send(&voters, Duration::from_millis(300)).await;
            assert_eq!(
                delivered,
                Delivered {
                    answered: 2,
                    tried: 3
                },
                "round {round}"
            );
            assert_eq!(two.heartbeats.load(Ordering::SeqCst), round);
            assert_eq!(three.heartbeats.load(Ordering::SeqCst), round);
        }
        // The answering voters' connections are kept; the silent one's not.
        let kept = calls.idle.lock().map(|idle| idle.len()).unwrap_or(0);
        assert_eq!(kept, 2);
        two_task.abort();
        three_task.abort();
    }
}
