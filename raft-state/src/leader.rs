//! Calls from a follower to the leader: forwarded writes and read-index
//! requests (heartbeats go to every voter: `crate::heartbeats`).
//!
//! # Flow of one call
//!
//! ```text
//! call(leaders, request) ─> the leader the registry names now (Raft's metrics)
//!     none, or this node ─> Err(NoLeader): the caller acts locally or waits
//!     leader L ─> an idle connection to L, or a new one ─> send, wait for the answer
//!                 ├─ answered            ─> the connection goes back to the pool
//!                 ├─ failed or timed out ─> the connection is dropped
//!                 └─ the registry names another leader first
//!                                        ─> Err(LeaderChanged) at once, connection dropped
//! ```
//!
//! # Invariants
//!
//! - No head-of-line blocking: a call takes a connection of its own (an
//!   idle one or a new one), so a call stuck on a dead or black-holed leader
//!   delays no other call. Only idle connections are kept, at most
//!   [`MAX_IDLE`], all to one leader; the pool lock is never held across an
//!   await.
//! - The leader is picked from the registry's view on every call, and a call
//!   in flight is given up as soon as that view changes, so the caller's
//!   retry reaches a new leader as soon as this node learns of it.
//! - Every call has a deadline (its caller's).

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::network::{CallError, Credentials, Peer, Request, Response};
use crate::types::NodeId;

/// Idle connections kept to the leader: about the number of calls a node
/// makes at once (reports, writes, reads); more are opened when needed
/// and closed after their call.
pub const MAX_IDLE: usize = 4;

/// The leader to call: its id and Raft address.
pub type Leader = (NodeId, String);

/// Why a call to the leader did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum LeaderCallError {
    /// No other node is known to lead (an election, or this node leads).
    #[error("no leader is known")]
    NoLeader,
    /// The registry named another leader (or none) while the call waited.
    #[error("the leader changed while the call waited")]
    LeaderChanged,
    #[error(transparent)]
    Call(#[from] CallError),
}

/// A pool of authenticated connections to the current leader.
pub struct LeaderCalls {
    credentials: Credentials,
    /// Idle connections, all to one leader (those to an old leader are
    /// dropped when a call to a new one returns).
    idle: std::sync::Mutex<Vec<Peer>>,
}

impl LeaderCalls {
    pub fn new(credentials: Credentials) -> Self {
        Self {
            credentials,
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Sends `request` to the leader `pick` names in `leaders` now and waits
    /// at most `timeout` for the answer, or until `leaders` names another.
    pub async fn call<T>(
        &self,
        leaders: &mut watch::Receiver<T>,
        pick: impl Fn(&T) -> Option<Leader>,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, LeaderCallError> {
        let leader = pick(&leaders.borrow_and_update()).ok_or(LeaderCallError::NoLeader)?;
        let mut peer = self.take(&leader);
        let answer = while_leader_is(leaders, &pick, leader.0, peer.call(request, timeout))
            .await
            .ok_or(LeaderCallError::LeaderChanged)?;
        let response = answer?;
        self.give_back(peer);
        Ok(response)
    }

    /// An idle connection to `leader`, or a new one (connected on use).
    fn take(&self, leader: &Leader) -> Peer {
        let pooled = self.idle.lock().ok().and_then(|mut idle| {
            idle.retain(|peer| peer.target == leader.0 && peer.addr() == leader.1);
            idle.pop()
        });
        pooled.unwrap_or_else(|| Peer::new(leader.0, leader.1.clone(), self.credentials.clone()))
    }

    /// Keeps a connection that answered, unless the pool is full.
    fn give_back(&self, peer: Peer) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(peer);
            }
        }
    }
}

/// Runs `work` while `pick` names `leader` in `leaders`: `None` as soon as
/// it names another or none, so a call to a leader that has gone is given
/// up then rather than at its timeout.
pub async fn while_leader_is<T, F: Future>(
    leaders: &mut watch::Receiver<T>,
    pick: impl Fn(&T) -> Option<Leader>,
    leader: NodeId,
    work: F,
) -> Option<F::Output> {
    let changed = leaders.wait_for(|view| pick(view).map(|l| l.0) != Some(leader));
    tokio::select! {
        output = work => Some(output),
        // A closed channel (the registry stopped) also ends the wait.
        _ = changed => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::tests::{credentials, server, Stuck};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use tokio::net::TcpListener;

    fn same(view: &Option<Leader>) -> Option<Leader> {
        view.clone()
    }

    /// A leader that accepts connections and never sends a byte (a
    /// black-holed or frozen node); the accepted sockets stay open.
    async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        (addr, task)
    }

    /// Sends a heartbeat (a call the test servers answer) to the leader
    /// `leaders` names and checks it is answered within 2 s.
    async fn answered_at_once(
        calls: &LeaderCalls,
        leaders: &watch::Receiver<Option<Leader>>,
        what: &str,
    ) {
        let mut leaders = leaders.clone();
        let call = calls.call(
            &mut leaders,
            same,
            &Request::Heartbeat(None),
            Duration::from_secs(30),
        );
        let answer = tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .expect(what)
            .expect("answered");
        assert!(matches!(answer, Response::Heartbeat(_)));
    }

    /// A call stuck on the leader (its read index never answered) does not
    /// delay another call to the same leader. Calls used to share one
    /// connection behind a lock held for the whole call (up to 10 s).
    #[tokio::test]
    async fn a_stuck_call_delays_no_other_call() {
        let handler = Stuck::default();
        let (addr, server) = server(1, handler.clone()).await;
        let calls = Arc::new(LeaderCalls::new(credentials(2)));
        let (_tx, leaders) = watch::channel(Some((1, addr)));
        let stuck = {
            let (calls, mut leaders) = (Arc::clone(&calls), leaders.clone());
            tokio::spawn(async move {
                let timeout = Duration::from_secs(30);
                calls
                    .call(&mut leaders, same, &Request::ReadIndex, timeout)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..3 {
            answered_at_once(&calls, &leaders, "a heartbeat while another call is stuck").await;
        }
        assert_eq!(handler.heartbeats.load(Ordering::SeqCst), 3);
        assert!(!stuck.is_finished(), "the read index was never answered");
        stuck.abort();
        server.abort();
    }

    /// A call stuck on a black-holed leader is given up as soon as the
    /// registry names a new leader, and calls reach the new one at once.
    #[tokio::test]
    async fn calls_follow_a_new_leader_at_once() {
        let (dead, hole) = black_hole().await;
        let handler = Stuck::default();
        let (live, server) = server(3, handler.clone()).await;
        let calls = Arc::new(LeaderCalls::new(credentials(2)));
        let (tx, leaders) = watch::channel(Some((1, dead)));
        let stuck = {
            let (calls, mut leaders) = (Arc::clone(&calls), leaders.clone());
            tokio::spawn(async move {
                let timeout = Duration::from_secs(30);
                calls
                    .call(&mut leaders, same, &Request::Heartbeat(None), timeout)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!stuck.is_finished());
        tx.send_replace(None);
        let given_up = tokio::time::timeout(Duration::from_secs(2), stuck)
            .await
            .expect("the stuck call ends when the leader is gone")
            .expect("the call's task");
        assert!(
            matches!(given_up, Err(LeaderCallError::LeaderChanged)),
            "{given_up:?}"
        );
        let none = calls
            .call(
                &mut leaders.clone(),
                same,
                &Request::Heartbeat(None),
                Duration::from_secs(1),
            )
            .await;
        assert!(matches!(none, Err(LeaderCallError::NoLeader)), "{none:?}");
        tx.send_replace(Some((3, live)));
        answered_at_once(&calls, &leaders, "the new leader answers at once").await;
        assert_eq!(handler.heartbeats.load(Ordering::SeqCst), 1);
        hole.abort();
        server.abort();
    }
}
