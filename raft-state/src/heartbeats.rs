//! Heartbeats from this node to every voter, not only to the leader.
//!
//! A voter records when it last heard each node (in memory, not in the
//! log). Because every voter hears every node, a voter elected leader
//! already knows how long each node has been silent: it counts a dead
//! node's silence from its last heartbeat rather than from the election,
//! so the tasks of a killed leader move after the grace, not after an
//! election plus the grace.
//!
//! A heartbeat carries this node's drain report while it has one
//! (`crate::drains`); the leader's answer names this node's tasks that
//! have drained.
//!
//! # Flow of one round
//!
//! ```text
//! send(voters, leader, report, timeout)
//!   for each voter but this node, at once:
//!     its idle connection, or a new one ─> Heartbeat(report), wait at most `timeout`
//!       ├─ answered            ─> the connection is kept for the next round
//!       ├─ Malformed (an older voter cannot read the report)
//!       │                      ─> the plain heartbeat on a new connection, same deadline
//!       └─ failed or timed out ─> the connection is dropped (the next round dials again)
//!   ─> Delivered { answered, tried, drained: the leader's answer }
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

use crate::drains::{DrainReport, Drained};
use crate::network::{Credentials, Peer, Request, Response};
use crate::types::NodeId;

/// How one round went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Voters that acknowledged the heartbeat.
    pub answered: usize,
    /// Voters it was sent to (every voter but this node).
    pub tried: usize,
    /// This node's drained tasks, as the leader answered (empty without a
    /// report, or when the leader is this node or did not answer).
    pub drained: Vec<String>,
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
    /// this node, with `report` when it says anything, waiting at most
    /// `timeout` for all of them; the drained tasks are `leader`'s answer.
    pub async fn send(
        &self,
        voters: &[(NodeId, String)],
        leader: Option<NodeId>,
        report: &DrainReport,
        timeout: Duration,
    ) -> Delivered {
        let peers: Vec<Peer> = voters
            .iter()
            .filter(|(id, _)| *id != self.self_id)
            .map(|(id, addr)| self.take(*id, addr))
            .collect();
        let tried = peers.len();
        let request = Request::Heartbeat((!report.is_empty()).then(|| report.clone()));
        let request = &request;
        let deadline = tokio::time::Instant::now() + timeout;
        let answers = join_all(
            peers
                .into_iter()
                .map(|peer| self.call(peer, request, deadline)),
        )
        .await;
        let mut delivered = Delivered {
            tried,
            ..Delivered::default()
        };
        let mut kept = HashMap::new();
        for (peer, answer) in answers {
            let Some(drained) = answer else { continue };
            delivered.answered += 1;
            if Some(peer.target) == leader {
                delivered.drained = drained.map(|d| d.tasks).unwrap_or_default();
            }
            kept.insert(peer.target, peer);
        }
        // Only this round's answered voters are kept: the others dial again.
        if let Ok(mut idle) = self.idle.lock() {
            *idle = kept;
        }
        delivered
    }

    /// One heartbeat to `peer` by `deadline`: `Some(answer)` when it was
    /// acknowledged. A voter that cannot read the report (an older lbd
    /// answers `Malformed` and closes) gets the plain heartbeat on a new
    /// connection, so it still hears this node is alive.
    async fn call(
        &self,
        mut peer: Peer,
        request: &Request,
        deadline: tokio::time::Instant,
    ) -> (Peer, Option<Option<Drained>>) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match peer.call(request, left).await {
            Ok(Response::Heartbeat(drained)) => (peer, Some(drained)),
            Ok(Response::Malformed(_)) if matches!(request, Request::Heartbeat(Some(_))) => {
                let mut plain = Peer::new(
                    peer.target,
                    peer.addr().to_owned(),
                    self.credentials.clone(),
                );
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let acknowledged = matches!(
                    plain.call(&Request::Heartbeat(None), left).await,
                    Ok(Response::Heartbeat(_))
                );
                (plain, acknowledged.then_some(None))
            }
            _ => (peer, None),
        }
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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
            let delivered = calls
                .send(
                    &voters,
                    None,
                    &DrainReport::default(),
                    Duration::from_millis(300),
                )
                .await;
            assert_eq!(
                delivered,
                Delivered {
                    answered: 2,
                    tried: 3,
                    drained: Vec::new(),
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

    /// A voter of the version before drain reports: it reads the plain
    /// heartbeat only, answers anything else `Malformed` and closes, as
    /// that version's server did. Counts the plain heartbeats it heard.
    async fn older_voter(id: NodeId) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        use futures_util::{SinkExt, StreamExt};
        #[derive(serde::Deserialize)]
        #[serde(tag = "rpc", content = "body", rename_all = "snake_case")]
        enum Older {
            Heartbeat,
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let heard = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&heard);
        let acceptor = tokio_rustls::TlsAcceptor::from(credentials(id).raft_server());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(stream) = acceptor.accept(stream).await else {
                    continue;
                };
                let mut framed = tokio_util::codec::Framed::new(
                    stream,
                    tokio_util::codec::LengthDelimitedCodec::new(),
                );
                while let Some(Ok(frame)) = framed.next().await {
                    let answer = match serde_json::from_slice::<Older>(&frame) {
                        Ok(Older::Heartbeat) => {
                            counted.fetch_add(1, Ordering::SeqCst);
                            Response::Heartbeat(None)
                        }
                        Err(error) => Response::Malformed(error.to_string()),
                    };
                    let bytes = serde_json::to_vec(&answer).expect("json");
                    let malformed = matches!(answer, Response::Malformed(_));
                    if framed.send(bytes::Bytes::from(bytes)).await.is_err() || malformed {
                        break;
                    }
                }
            }
        });
        (addr, heard, task)
    }

    /// During an upgrade an older voter still hears every heartbeat of a
    /// node that has a drain report (the plain form, resent at once), and
    /// the drained tasks are the leader's answer, not another voter's.
    #[tokio::test]
    async fn an_older_voter_still_hears_a_node_that_reports_drains() {
        let (older_addr, older_heard, older_task) = older_voter(2).await;
        let leader = Stuck::default();
        let (leader_addr, leader_task) = server(3, leader.clone()).await;
        let calls = HeartbeatCalls::new(1, credentials(1));
        let voters = vec![(2, older_addr), (3, leader_addr)];
        let report = DrainReport {
            open: [("t1".to_owned(), 0)].into(),
        };
        for round in 1..=2 {
            let delivered = calls
                .send(&voters, Some(3), &report, Duration::from_secs(5))
                .await;
            assert_eq!(delivered.answered, 2, "round {round}");
            assert_eq!(delivered.drained, ["t1"], "the leader's answer");
            assert_eq!(older_heard.load(Ordering::SeqCst), round);
            assert_eq!(leader.heartbeats.load(Ordering::SeqCst), round);
        }
        // With the older voter leading, nothing is drained early.
        let delivered = calls
            .send(&voters, Some(2), &report, Duration::from_secs(5))
            .await;
        assert_eq!(delivered.answered, 2);
        assert!(delivered.drained.is_empty());
        older_task.abort();
        leader_task.abort();
    }
}
