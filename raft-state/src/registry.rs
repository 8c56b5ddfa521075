//! The registry handle the rest of lbmesh uses: start a node, form or grow
//! the cluster, propose changes from any node, read locally or
//! linearizably, and watch applied changes.
//!
//! # Flow of a write
//!
//! ```text
//! propose(cmd) on any node ─> raft.client_write
//!     leader:   committed, applied ─> Outcome
//!     follower: ForwardToLeader ─> Request::Propose to the leader Raft names
//!               now (`leader`: a connection per call, given up when Raft names
//!               another leader, then retried there at once) ─> leader's
//!               client_write ─> Outcome
//!     no leader yet (election): wait and retry, bounded by PROPOSE_DEADLINE
//!     (every wait for a commit is bounded by it too)
//! ```
//!
//! Every proposal carries one request id, made once (by the API for a
//! client's request, by [`RegistryNode::propose`] otherwise) and sent again
//! on every retry, so a write whose answer was lost and which is resent
//! gets its first answer instead of applying twice (`crate::requests`).
//!
//! A command that encodes to more than one replication batch
//! (`store::MAX_BATCH_BYTES`) is refused before it is proposed.
//!
//! A read is either local (this node's last applied state: may lag the
//! leader by a heartbeat) or linearizable (the leader confirms it still leads
//! and names its commit index; this node waits until it has applied that
//! index, then reads locally).
//!
//! The transport's server calls back into this node through the
//! [`RpcHandler`] that `Served` implements: Raft's RPCs, forwarded writes
//! and reads, and heartbeats (recorded in memory, not in the log).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, Infallible, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use lbmesh_tls::{CertRole, NodeIdentity};

use crate::authority;
use crate::command::{Command, Proposal, RequestId};
use crate::drains::{DrainReport, DrainReports, Drained};
use crate::election::{self, LeaderContact};
use crate::heartbeats::{Delivered, HeartbeatCalls};
use crate::leader::{self, LeaderCallError, LeaderCalls};
use crate::network::{
    self, Answer, Caller, Credentials, Network, Peer, RemoteFailure, Request, Response, RpcHandler,
};
use crate::outcome::Outcome;
use crate::store::{self, Applied};
use crate::types::{NodeId, Raft, TypeConfig};

/// How long a proposal may wait for a leader before it fails.
pub const PROPOSE_DEADLINE: Duration = Duration::from_secs(10);

/// Entries between two snapshots by default; the log behind a snapshot is
/// purged but for a fifth of this, kept for slow followers.
pub const SNAPSHOT_EVERY: u64 = 500;

/// Raft timing. The defaults suit a loaded 2-core machine: heartbeats every
/// 200 ms, and a follower that hears none for 1–2 s starts an election, so a
/// new leader is in place about 2–3 s after the old one dies, while a busy
/// machine's scheduling hiccups (tens to hundreds of ms) do not trigger
/// needless elections.
#[derive(Debug, Clone)]
pub struct Timing {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Build a snapshot (and allow purging the log behind it) after this
    /// many entries.
    pub snapshot_every: u64,
    /// Log entries kept behind the last snapshot for slow followers.
    pub keep_after_snapshot: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(200),
            election_min: Duration::from_millis(1000),
            election_max: Duration::from_millis(2000),
            snapshot_every: SNAPSHOT_EVERY,
            keep_after_snapshot: SNAPSHOT_EVERY / 5,
        }
    }
}

impl Timing {
    /// The default timing with a snapshot every `entries` entries, keeping a
    /// fifth of that behind it (the default keeps 100 behind 500). A small
    /// value makes a node that was away for a few hundred writes catch up
    /// through a snapshot, as tests of that path need.
    pub fn with_snapshot_every(entries: u64) -> Self {
        Self {
            snapshot_every: entries,
            keep_after_snapshot: entries / 5,
            ..Self::default()
        }
    }

    fn config(&self) -> Result<Arc<Config>, RegistryError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = Config {
            cluster_name: "lbmesh".to_owned(),
            heartbeat_interval: millis(self.heartbeat),
            election_timeout_min: millis(self.election_min),
            election_timeout_max: millis(self.election_max),
            install_snapshot_timeout: 5_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_after_snapshot,
            // A replication batch holds at most this many entries, and at
            // most `store::MAX_BATCH_BYTES` of them (the store's limited
            // read); a batch over the frame limit anyway is answered
            // `PayloadTooLarge` by the transport, and openraft splits it.
            max_payload_entries: 300,
            ..Default::default()
        };
        config
            .validate()
            .map(Arc::new)
            .map_err(|e| RegistryError::Config(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("raft configuration: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("no leader answered within {0:?}")]
    NoLeader(Duration),
    #[error("the write was not confirmed within {0:?}; it may or may not have taken effect")]
    Unconfirmed(Duration),
    #[error("{0}")]
    Remote(#[from] RemoteFailure),
    #[error("forwarding to the leader failed: {0}")]
    Forward(#[from] LeaderCallError),
    #[error("the command is {bytes} bytes encoded; at most {limit} bytes fit a log entry")]
    TooLarge { bytes: usize, limit: usize },
}

/// What a node needs to start its registry.
pub struct NodeOptions {
    pub id: NodeId,
    /// Bound listener for Raft RPCs.
    pub raft_listener: TcpListener,
    /// Address other nodes dial for Raft RPCs.
    pub raft_addr: String,
    /// The redb file of this node.
    pub data_file: PathBuf,
    pub credentials: Credentials,
    pub timing: Timing,
}

/// A running registry node.
pub struct RegistryNode {
    pub id: NodeId,
    raft: Raft,
    raft_addr: String,
    credentials: Credentials,
    applied: watch::Receiver<Applied>,
    /// Connections to the leader for forwarded writes and read indexes:
    /// one per call in flight, so none waits behind another.
    leader: LeaderCalls,
    /// Connections to every voter for this node's heartbeats.
    heartbeats: HeartbeatCalls,
    /// Heartbeats received (every voter hears every node; the leader judges
    /// from them).
    liveness: Liveness,
    /// The drain report each node sent with its last heartbeat.
    drains: DrainReports,
    /// The longest election timeout: how recently a quorum must have
    /// acknowledged a leader for it to judge the others.
    election_timeout: Duration,
    /// Makes this node's request ids: unique per node and start, counted.
    request_ids: RequestIds,
    /// Held over each membership change on this node: openraft refuses a
    /// change while another is in flight ("undergoing a configuration
    /// change"), so two nodes joining at once had one of them refused.
    /// Here the second waits for the first.
    membership_changes: Mutex<()>,
    stop: Arc<Notify>,
    server: JoinHandle<()>,
    /// Turns elections off while this voter cannot reach a quorum.
    election_guard: JoinHandle<()>,
    /// Fires once Raft and every task using the store have stopped and the
    /// file is closed.
    database_closed: store::DatabaseClosed,
}

impl RegistryNode {
    /// Opens the store, starts Raft and serves RPCs. A node with state on
    /// disk rejoins its cluster as it was; a new one waits to be bootstrapped
    /// or added.
    pub async fn start(options: NodeOptions) -> Result<Self, RegistryError> {
        let (log, state_machine) = store::open(&options.data_file)
            .await
            .map_err(|e| RegistryError::Storage(e.to_string()))?;
        let applied = state_machine.subscribe();
        let database_closed = log.database_closed();
        let network = Network {
            credentials: options.credentials.clone(),
        };
        let raft = Raft::new(
            options.id,
            options.timing.config()?,
            network,
            log,
            state_machine,
        )
        .await
        .map_err(|e| RegistryError::Raft(e.to_string()))?;
        let stop = Arc::new(Notify::new());
        let liveness = Liveness::default();
        let drains = DrainReports::default();
        let contact = LeaderContact::new();
        let election_guard = tokio::spawn(election::guard(
            raft.clone(),
            options.id,
            options.credentials.clone(),
            contact.clone(),
            options.timing.election_min,
        ));
        let server = {
            let stop = Arc::clone(&stop);
            let handler = Served {
                raft: raft.clone(),
                applied: applied.clone(),
                id: options.id,
                liveness: liveness.clone(),
                drains: drains.clone(),
                contact,
            };
            tokio::spawn(network::serve(
                options.raft_listener,
                handler,
                options.credentials.clone(),
                async move { stop.notified().await },
            ))
        };
        Ok(Self {
            id: options.id,
            raft,
            raft_addr: options.raft_addr,
            applied,
            leader: LeaderCalls::new(options.credentials.clone()),
            heartbeats: HeartbeatCalls::new(options.id, options.credentials.clone()),
            credentials: options.credentials,
            liveness,
            drains,
            election_timeout: options.timing.election_max,
            request_ids: RequestIds::new(options.id),
            membership_changes: Mutex::new(()),
            stop,
            server,
            election_guard,
            database_closed,
        })
    }

    /// Makes this pristine node a one-node cluster; a node that already
    /// belongs to a cluster is left as it is.
    pub async fn bootstrap(&self) -> Result<(), RegistryError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| RegistryError::Raft(e.to_string()))?
        {
            return Ok(());
        }
        let members = BTreeMap::from([(self.id, BasicNode::new(&self.raft_addr))]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| RegistryError::Raft(e.to_string()))?;
        info!(node = %self.id, "bootstrapped a new cluster");
        Ok(())
    }

    /// On the leader: adds a node as a learner (it receives the log) and,
    /// with `voter`, promotes it to voter once it has caught up.
    pub async fn add_member(
        &self,
        id: NodeId,
        raft_addr: &str,
        voter: bool,
    ) -> Result<(), RegistryError> {
        let _one_at_a_time = self.membership_changes.lock().await;
        self.raft
            .add_learner(id, BasicNode::new(raft_addr), true)
            .await
            .map_err(|e| RegistryError::Raft(e.to_string()))?;
        if voter {
            self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
                .await?;
        }
        info!(node = %id, voter, "member added");
        Ok(())
    }

    /// Makes learners voters (they must have caught up).
    pub async fn promote(&self, ids: &[NodeId]) -> Result<(), RegistryError> {
        let _one_at_a_time = self.membership_changes.lock().await;
        self.change_membership(ChangeMembers::AddVoterIds(ids.iter().copied().collect()))
            .await?;
        info!(?ids, "promoted to voter");
        Ok(())
    }

    /// Makes voters learners: they keep a full copy of the log but no
    /// longer vote.
    pub async fn demote(&self, ids: &[NodeId]) -> Result<(), RegistryError> {
        let _one_at_a_time = self.membership_changes.lock().await;
        self.change_membership_retaining(
            ChangeMembers::RemoveVoters(ids.iter().copied().collect()),
            true,
        )
        .await?;
        info!(?ids, "demoted to learner");
        Ok(())
    }

    /// Removes a node from Raft: a voter is demoted and dropped, a learner
    /// dropped.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), RegistryError> {
        let _one_at_a_time = self.membership_changes.lock().await;
        let membership = self.metrics().membership_config.membership().clone();
        if membership.voter_ids().any(|v| v == id) {
            self.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
                .await?;
        } else if membership.learner_ids().any(|l| l == id) {
            self.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                .await?;
        }
        Ok(())
    }

    /// A membership change, its commit waited for at most
    /// [`PROPOSE_DEADLINE`] like every other write.
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, BasicNode>,
    ) -> Result<(), RegistryError> {
        self.change_membership_retaining(change, false).await
    }

    /// [`Self::change_membership`]; with `retain`, removed voters stay as
    /// learners.
    async fn change_membership_retaining(
        &self,
        change: ChangeMembers<NodeId, BasicNode>,
        retain: bool,
    ) -> Result<(), RegistryError> {
        tokio::time::timeout(
            PROPOSE_DEADLINE,
            self.raft.change_membership(change, retain),
        )
        .await
        .map_err(|_| RegistryError::Unconfirmed(PROPOSE_DEADLINE))?
        .map(drop)
        .map_err(|e| RegistryError::Raft(e.to_string()))
    }

    /// Starts adding a node as a learner without waiting for it to catch up.
    pub async fn add_learner_nonblocking(
        &self,
        id: NodeId,
        raft_addr: &str,
    ) -> Result<(), RegistryError> {
        let _one_at_a_time = self.membership_changes.lock().await;
        self.raft
            .add_learner(id, BasicNode::new(raft_addr), false)
            .await
            .map(|_| ())
            .map_err(|e| RegistryError::Raft(e.to_string()))
    }

    /// Checks that node `id` answers at `raft_addr` holding its certificate
    /// from the cluster CA (the TLS handshake checks the name of the node
    /// it expects, then one heartbeat), within `timeout`: what a join checks before the node
    /// becomes a learner the leader would replicate to.
    pub async fn probe(
        &self,
        id: NodeId,
        raft_addr: &str,
        timeout: Duration,
    ) -> Result<(), RegistryError> {
        let mut peer = Peer::new(id, raft_addr.to_owned(), self.credentials.clone());
        let answer = peer.call(&Request::Heartbeat(None), timeout).await;
        match answer.map_err(|e| RegistryError::Forward(e.into()))? {
            Response::Heartbeat(_) => Ok(()),
            other => Err(RegistryError::Raft(format!(
                "unexpected probe answer {other:?}"
            ))),
        }
    }

    /// Commits `command` through the leader (forwarding from a follower) and
    /// returns the state machine's answer, which may be a rejection. Its
    /// retries carry one request id, so it applies at most once.
    pub async fn propose(&self, command: Command) -> Result<Outcome, RegistryError> {
        self.propose_request(self.request_id(), command).await
    }

    /// A fresh request id, for a caller that may send its request again.
    pub fn request_id(&self) -> RequestId {
        self.request_ids.next()
    }

    /// [`propose`](Self::propose) for request `request`: if a proposal with
    /// this id was applied already (a resend whose first answer was lost),
    /// the answer is that first one and nothing is applied again.
    pub async fn propose_request(
        &self,
        request: RequestId,
        command: Command,
    ) -> Result<Outcome, RegistryError> {
        fits_an_entry(&command)?;
        let command = Proposal::keyed(request, command);
        let deadline = tokio::time::Instant::now() + PROPOSE_DEADLINE;
        loop {
            // Bounded: an entry proposed while this node briefly believed it
            // led can be discarded (a snapshot from the real leader replaces
            // the log), and its answer then never comes.
            let write = tokio::time::timeout_at(deadline, self.raft.client_write(command.clone()));
            let Ok(written) = write.await else {
                return Err(RegistryError::Unconfirmed(PROPOSE_DEADLINE));
            };
            match written {
                Ok(response) => return Ok(response.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    let forwarded = tokio::time::timeout_at(deadline, self.forward(&command));
                    match forwarded.await {
                        Ok(Ok(outcome)) => return Ok(outcome),
                        // Retry at once: the registry already names the new leader.
                        Ok(Err(RegistryError::Forward(LeaderCallError::LeaderChanged))) => continue,
                        Ok(Err(error)) => debug!(%error, "forwarding failed; retrying"),
                        Err(_) => return Err(RegistryError::Unconfirmed(PROPOSE_DEADLINE)),
                    }
                }
                Err(error) => return Err(RegistryError::Raft(error.to_string())),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RegistryError::NoLeader(PROPOSE_DEADLINE));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Passes a write to the leader the registry names now (the caller
    /// bounds the wait).
    async fn forward(&self, command: &Proposal) -> Result<Outcome, RegistryError> {
        let request = Request::Propose(Box::new(command.clone()));
        let response = self.call_leader(&request, PROPOSE_DEADLINE).await?;
        match response {
            Response::Propose(result) => Ok(result?),
            other => Err(RegistryError::Raft(format!(
                "unexpected response {other:?}"
            ))),
        }
    }

    /// Tells every voter this node is alive (not through the log), each
    /// waiting at most `timeout` for its answer, all at once: whichever voter
    /// leads next knows when it last heard this node. With it goes
    /// `report`, the connections this node holds to departing tasks; the
    /// answer names this node's tasks that have drained, as the leader
    /// judges (`crate::drains`). This node's own records are kept directly,
    /// and judged here when it leads.
    pub async fn heartbeat(&self, timeout: Duration, report: DrainReport) -> Delivered {
        self.liveness.heard(self.id);
        self.drains.record(self.id, report.clone());
        let (voters, leader): (Vec<(NodeId, String)>, Option<NodeId>) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let voters = membership
                .voter_ids()
                .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
                .collect();
            (voters, metrics.current_leader)
        };
        let mut delivered = self
            .heartbeats
            .send(&voters, leader, &report, timeout)
            .await;
        if leader == Some(self.id) && !report.is_empty() {
            let state = &self.applied.borrow().state;
            delivered.drained = self.drains.drained(state, self.id).tasks;
        }
        delivered
    }

    /// When each node last sent a heartbeat to this node (every voter
    /// receives them; the leader judges from them).
    pub fn last_heard(&self) -> HashMap<NodeId, tokio::time::Instant> {
        self.liveness.snapshot()
    }

    /// Proposes on this node only if it leads: never forwards. The
    /// scheduler uses it, so a deposed leader's round cannot land through
    /// the new leader.
    pub async fn propose_as_leader(&self, command: Command) -> Result<Outcome, RegistryError> {
        fits_an_entry(&command)?;
        write_locally(&self.raft, self.id, Proposal::once(command))
            .await
            .map_err(RegistryError::Remote)
    }

    /// One call to the leader Raft names now, on a connection of its own,
    /// waiting at most `timeout` and given up as soon as Raft names another
    /// leader (`LeaderCallError::LeaderChanged`: retry at once).
    async fn call_leader(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, RegistryError> {
        let id = self.id;
        let mut metrics = self.raft.metrics();
        Ok(self
            .leader
            .call(&mut metrics, |m| named_leader(id, m), request, timeout)
            .await?)
    }

    /// Runs `work` (a call to the leader `leader`, such as an API request
    /// passed on to it) while Raft names that leader: `None` as soon as it
    /// names another or none, so the caller can retry at once.
    pub async fn while_leader_is<F: std::future::Future>(
        &self,
        leader: NodeId,
        work: F,
    ) -> Option<F::Output> {
        let id = self.id;
        let mut metrics = self.raft.metrics();
        leader::while_leader_is(&mut metrics, |m| named_leader(id, m), leader, work).await
    }

    /// This node's last applied state.
    pub fn local(&self) -> Applied {
        self.applied.borrow().clone()
    }

    /// A receiver woken on every applied change.
    pub fn watch(&self) -> watch::Receiver<Applied> {
        self.applied.clone()
    }

    /// A state that includes every write acknowledged before the call.
    pub async fn linearizable(&self) -> Result<Applied, RegistryError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_DEADLINE;
        let index = loop {
            match read_index_locally(&self.raft, self.id).await {
                Ok(index) => break index,
                Err(RemoteFailure::NotLeader {
                    leader: Some(_), ..
                }) => {
                    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let timeout = remaining.min(network::CALL_TIMEOUT);
                    match self.call_leader(&Request::ReadIndex, timeout).await {
                        Ok(Response::ReadIndex(Ok(index))) => break index,
                        Ok(other) => debug!(?other, "read index not served; retrying"),
                        // Retry at once: the registry already names the new leader.
                        Err(RegistryError::Forward(LeaderCallError::LeaderChanged)) => continue,
                        Err(error) => debug!(%error, "read index failed; retrying"),
                    }
                }
                Err(error) => debug!(%error, "no leader for a read; retrying"),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RegistryError::NoLeader(PROPOSE_DEADLINE));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut applied = self.applied.clone();
        let caught_up =
            tokio::time::timeout_at(deadline, applied.wait_for(|a| a.index >= index)).await;
        match caught_up {
            Ok(Ok(state)) => Ok(state.clone()),
            _ => Err(RegistryError::NoLeader(PROPOSE_DEADLINE)),
        }
    }

    /// Raft's own view: term, leader, indexes, membership.
    pub fn metrics(&self) -> openraft::RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Whether this node leads and a quorum acknowledged it within the
    /// longest election timeout. A leader cut off from its peers answers
    /// false well before it steps down; a sole voter is its own quorum.
    pub fn leads_with_quorum(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return false;
        }
        let sole_voter = metrics.membership_config.membership().voter_ids().count() <= 1;
        let within = u64::try_from(self.election_timeout.as_millis()).unwrap_or(u64::MAX);
        sole_voter
            || metrics
                .millis_since_quorum_ack
                .is_some_and(|ms| ms <= within)
    }

    /// Raft's metrics as they change: who leads, in which term.
    pub fn raft_metrics(&self) -> watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>> {
        self.raft.metrics()
    }

    /// Stops serving RPCs and stops Raft, then waits (up to 5 s) until the
    /// store is closed, so the same file can be opened again.
    pub async fn shutdown(&self) {
        self.stop.notify_one();
        self.server.abort();
        self.election_guard.abort();
        if let Err(error) = self.raft.shutdown().await {
            debug!(%error, "raft shutdown");
        }
        let closed = self.database_closed.clone().wait();
        if tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .is_err()
        {
            warn!("registry store still open 5 s after shutdown");
        }
    }
}

/// The leader Raft names in `metrics` and its Raft address, unless that is
/// this node or none is known.
fn named_leader(
    self_id: NodeId,
    metrics: &openraft::RaftMetrics<NodeId, BasicNode>,
) -> Option<leader::Leader> {
    let id = metrics.current_leader.filter(|id| *id != self_id)?;
    let node = metrics.membership_config.membership().get_node(&id)?;
    Some((id, node.addr.clone()))
}

/// Refuses a command larger than one replication batch before it is
/// proposed: an entry that big could hold up the log for every follower.
/// The API caps what users send well below this; this is the guard for
/// every other writer.
fn fits_an_entry(command: &Command) -> Result<(), RegistryError> {
    let bytes = serde_json::to_vec(command)
        .map_err(|e| RegistryError::Raft(e.to_string()))?
        .len();
    if bytes > store::MAX_BATCH_BYTES {
        return Err(RegistryError::TooLarge {
            bytes,
            limit: store::MAX_BATCH_BYTES,
        });
    }
    Ok(())
}

/// Request ids of one node: `<node id>.<start time>.<count>` in hex, so
/// ids of different nodes, and of one node's starts, never meet.
struct RequestIds {
    prefix: String,
    count: AtomicU64,
}

impl RequestIds {
    fn new(node: NodeId) -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            prefix: format!("{node:x}.{started:x}"),
            count: AtomicU64::new(0),
        }
    }

    fn next(&self) -> RequestId {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n:x}", self.prefix)
    }
}

/// When each node was last heard from, kept in memory by every node that
/// receives heartbeats (the voters). Never held across an await.
#[derive(Clone, Default)]
struct Liveness(Arc<std::sync::Mutex<HashMap<NodeId, tokio::time::Instant>>>);

impl Liveness {
    fn heard(&self, node: NodeId) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(node, tokio::time::Instant::now());
        }
    }

    /// Every node heard from, with the time of its last heartbeat.
    fn snapshot(&self) -> HashMap<NodeId, tokio::time::Instant> {
        self.0.lock().map(|map| map.clone()).unwrap_or_default()
    }
}

/// What this node's transport server serves: Raft's own RPCs, the writes
/// and reads followers forward, and heartbeats.
#[derive(Clone)]
struct Served {
    raft: Raft,
    /// What this node has applied: who is removed, and each node's role.
    applied: watch::Receiver<Applied>,
    /// This node, named in a `NotLeader` answer.
    id: NodeId,
    liveness: Liveness,
    drains: DrainReports,
    /// Stamped by every request only a leader sends, for the election guard.
    contact: LeaderContact,
}

impl RpcHandler for Served {
    async fn append_entries(
        &self,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Answer<AppendEntriesResponse<NodeId>, Infallible> {
        self.contact.touch();
        self.raft.append_entries(rpc).await
    }

    async fn vote(&self, rpc: VoteRequest<NodeId>) -> Answer<VoteResponse<NodeId>, Infallible> {
        self.raft.vote(rpc).await
    }

    async fn install_snapshot(
        &self,
        rpc: InstallSnapshotRequest<TypeConfig>,
    ) -> Answer<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.contact.touch();
        self.raft.install_snapshot(rpc).await
    }

    fn authorize(&self, identity: &NodeIdentity) -> Result<CertRole, String> {
        authority::effective_role(&self.applied.borrow().state, identity)
    }

    async fn propose(&self, caller: Caller, proposal: Proposal) -> Result<Outcome, RemoteFailure> {
        if caller.role == CertRole::Worker {
            let state = &self.applied.borrow().state;
            authority::worker_may_propose(state, caller.id, &proposal.command)
                .map_err(RemoteFailure::Forbidden)?;
        }
        write_locally(&self.raft, self.id, proposal).await
    }

    async fn read_index(&self) -> Result<u64, RemoteFailure> {
        read_index_locally(&self.raft, self.id).await
    }

    fn heartbeat(&self, from: NodeId, report: Option<DrainReport>) -> Option<Drained> {
        self.liveness.heard(from);
        let answer = report.is_some();
        self.drains.record(from, report.unwrap_or_default());
        answer.then(|| self.drains.drained(&self.applied.borrow().state, from))
    }
}

/// Serves a write on this node if it leads.
async fn write_locally(
    raft: &Raft,
    node_id: NodeId,
    proposal: Proposal,
) -> Result<Outcome, RemoteFailure> {
    let Ok(written) = tokio::time::timeout(PROPOSE_DEADLINE, raft.client_write(proposal)).await
    else {
        return Err(RemoteFailure::Unavailable(format!(
            "the write was not confirmed within {PROPOSE_DEADLINE:?}"
        )));
    };
    match written {
        Ok(response) => Ok(response.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(RemoteFailure::NotLeader {
                node: node_id,
                leader: forward.leader_id.zip(forward.leader_node.map(|n| n.addr)),
            })
        }
        Err(error) => Err(RemoteFailure::Unavailable(error.to_string())),
    }
}

/// The commit index a linearizable read must wait for, if this node leads.
async fn read_index_locally(raft: &Raft, node_id: NodeId) -> Result<u64, RemoteFailure> {
    match tokio::time::timeout(network::CALL_TIMEOUT, raft.ensure_linearizable()).await {
        Ok(Ok(log_id)) => Ok(log_id.map_or(0, |id| id.index)),
        Ok(Err(error)) => match error.forward_to_leader() {
            Some(forward) => Err(RemoteFailure::NotLeader {
                node: node_id,
                leader: forward
                    .leader_id
                    .zip(forward.leader_node.as_ref().map(|n| n.addr.clone())),
            }),
            None => Err(RemoteFailure::Unavailable(error.to_string())),
        },
        Err(_) => Err(RemoteFailure::Unavailable(
            "leadership check timed out".to_owned(),
        )),
    }
}
