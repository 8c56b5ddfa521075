//! Cluster membership: a node's identity on disk, bootstrap, join and
//! restart.
//!
//! # Flow
//!
//! ```text
//! first start, no --join:  new cluster id, CA (crate::pki), node key and certificate (manager)
//!                          ─> registry bootstrap (one voter) ─> InitCluster(CA certificate, token
//!                          seeds) ─> RegisterNode(self) ─> print the join tokens
//! first start, --join:     token ─> CA digest ─> TLS to the host, pinned to that CA
//!                          ─> POST /v1/cluster/certificate (token, id, CSR; forwarded to the leader,
//!                          which signs a certificate of the token's role) ─> start the registry
//!                          (empty) ─> POST /v1/cluster/join (the leader checks the token, our
//!                          record and our Raft address, then adds us as learner, registers us
//!                          and, for a manager, promotes managers to keep the voter count odd; a
//!                          failure after the learner was added removes it again) ─> save identity
//!                          (a manager then fetches the CA key: crate::pki's renewal)
//! restart:                 identity and certificate from the data dir ─> registry rejoins from its
//!                          file ─> RegisterNode(self)
//! ```
//!
//! The identity file (`node.json` in the data dir) holds the node id and
//! the cluster id; it is written only once the node belongs to a cluster.
//! The certificate files are `crate::pki`'s. `control-token` holds lbctl's
//! control token on a manager (written at bootstrap, and at a manager's
//! start when missing, derived with the CA key), so `lbctl cluster token`
//! recovers it on the node. The data dir is 0700 and every file in it 0600
//! (`crate::files`), and no secret is logged.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lbmesh_api::{ApiError, CertificateRequest, Client, JoinRequest};
use lbmesh_tls::{CaPin, CertRole, ClusterCa, NodeKey};
use raft_state::random::{self, RandomError};
use raft_state::registry::{NodeOptions, RegistryError, RegistryNode, Timing, PROPOSE_DEADLINE};
use raft_state::state::{
    Availability, ClusterInfo, Command, NodeId, NodeRecord, NodeStatus, Outcome, RegistryState,
    Role, TokenKind, VipRange, VipRangeV6,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::api::convert;
use crate::pki::{self, Pki, PkiError};
use crate::tokens::{self, Family, Token};

pub use crate::pki::CONTROL_TOKEN_FILE;
/// Most voters kept: 5 tolerate two failures; more only slow commits.
const MAX_VOTERS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Identity { path: PathBuf, reason: String },
    #[error("--token: {0}")]
    Token(String),
    #[error("cannot listen on {addr} for Raft: {source}")]
    RaftBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("joining through {host}: {source}")]
    Join { host: String, source: ApiError },
    #[error("cannot make the cluster's secrets: {0}")]
    Random(#[from] RandomError),
    #[error("certificates: {0}")]
    Pki(#[from] PkiError),
}

impl From<lbmesh_tls::TlsError> for ClusterError {
    fn from(error: lbmesh_tls::TlsError) -> Self {
        Self::Pki(PkiError::Tls(error))
    }
}

/// What this node is, as saved in its data dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub id: NodeId,
    pub cluster_id: String,
}

impl Identity {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("node.json")
    }

    pub fn load(data_dir: &Path) -> Result<Option<Self>, ClusterError> {
        let path = Self::path(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                let reason = if text.contains("\"secret\"") {
                    "made by an lbd from before cluster certificates, which cannot \
                     join this one's clusters: start this node with a new data dir"
                        .to_owned()
                } else {
                    format!("corrupt identity file: {e}")
                };
                ClusterError::Identity { path, reason }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ClusterError::DataDir { path, source }),
        }
    }

    fn save(&self, data_dir: &Path) -> Result<(), ClusterError> {
        let path = Self::path(data_dir);
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        crate::files::write_private(&path, text.as_bytes())
            .map_err(|source| ClusterError::DataDir { path, source })
    }
}

/// Addresses and settings of this node.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub name: String,
    pub advertise_addr: IpAddr,
    pub api_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    /// Where published ports bind: one address, or one per family on a
    /// dual-stack node (never empty). The first is the one registered.
    pub ingress_addrs: Vec<IpAddr>,
    pub data_dir: PathBuf,
    /// Where VIPs come from; used only when this node bootstraps a cluster.
    pub vip_range: VipRange,
    /// Where IPv6 VIPs come from (none: a cluster of IPv4 VIPs only); used
    /// only when this node bootstraps a cluster.
    pub vip_range_v6: Option<VipRangeV6>,
    /// The cluster's DNS domain; used only when this node bootstraps a
    /// cluster.
    pub dns_domain: String,
    /// Raft entries between two snapshots (the log behind one is purged).
    pub snapshot_every: u64,
    /// How long node certificates are valid; used only when this node
    /// bootstraps a cluster.
    pub cert_lifetime: Duration,
}

/// The tokens of a new cluster, as printed once at bootstrap.
pub struct NewTokens {
    pub cluster_id: String,
    pub manager: String,
    pub worker: String,
    pub control: String,
}

impl std::fmt::Debug for NewTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewTokens")
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

/// A fresh cluster: its CA and what the registry records of it.
fn new_cluster(cert_lifetime: Duration) -> Result<(ClusterCa, ClusterInfo), ClusterError> {
    let id = random::hex_secret(8)?;
    let ca = ClusterCa::generate(&id)?;
    let info = ClusterInfo {
        id,
        ca_cert: ca.cert_pem().to_owned(),
        cert_lifetime_ms: u64::try_from(cert_lifetime.as_millis()).unwrap_or(u64::MAX),
        manager_token: tokens::new_seed(&ca, TokenKind::Manager)?,
        worker_token: tokens::new_seed(&ca, TokenKind::Worker)?,
        control_token: tokens::new_seed(&ca, TokenKind::Control)?,
    };
    Ok((ca, info))
}

fn random_node_id() -> Result<NodeId, RandomError> {
    let mut id = [0u8; 8];
    random::fill(&mut id)?;
    // Ids are shown to users; keep them positive in every language's eyes.
    Ok(u64::from_be_bytes(id) >> 1 | 1)
}

fn record(settings: &NodeSettings, id: NodeId, role: Role) -> NodeRecord {
    NodeRecord {
        id,
        name: settings.name.clone(),
        raft_addr: settings.raft_addr,
        api_addr: settings.api_addr,
        ingress_addr: settings.ingress_addrs[0],
        role,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        labels: Default::default(),
    }
}

async fn start_registry(
    settings: &NodeSettings,
    id: NodeId,
    pki: &Pki,
) -> Result<RegistryNode, ClusterError> {
    let listener = TcpListener::bind(settings.raft_addr)
        .await
        .map_err(|source| ClusterError::RaftBind {
            addr: settings.raft_addr,
            source,
        })?;
    Ok(RegistryNode::start(NodeOptions {
        id,
        raft_listener: listener,
        raft_addr: settings.raft_addr.to_string(),
        data_file: settings.data_dir.join("registry.redb"),
        credentials: pki.credentials(),
        timing: Timing::with_snapshot_every(settings.snapshot_every),
    })
    .await?)
}

/// How this start went, for the caller to report.
pub enum Started {
    /// A new cluster; its tokens are to be printed.
    Bootstrapped(NewTokens),
    Joined,
    /// Rejoined from the data dir; the node's record still names its old
    /// addresses until [`reregister`] has written the current ones.
    Restarted,
}

/// Starts this node's registry: restart, bootstrap or join. `join` is the
/// host to join through and the join token.
pub async fn start(
    settings: &NodeSettings,
    join: Option<(&str, &str)>,
) -> Result<(RegistryNode, Arc<Pki>, Started), ClusterError> {
    crate::files::private_dir(&settings.data_dir)
        .and_then(|()| crate::files::lock_down(&settings.data_dir))
        .map_err(|source| ClusterError::DataDir {
            path: settings.data_dir.clone(),
            source,
        })?;
    if let Some(identity) = Identity::load(&settings.data_dir)? {
        let pki = Pki::load(&settings.data_dir)?.ok_or_else(|| ClusterError::Identity {
            path: settings.data_dir.join(pki::NODE_CERT_FILE),
            reason: "node.json names a cluster but the node's certificate files are missing"
                .to_owned(),
        })?;
        let node = start_registry(settings, identity.id, &pki).await?;
        info!(id = %identity.id, cluster = %identity.cluster_id, "rejoined the cluster from the data dir");
        pki::keep_control_token(&node.local().state, &pki, &settings.data_dir)
            .map_err(ClusterError::Pki)?;
        return Ok((node, pki, Started::Restarted));
    }
    match join {
        None => bootstrap(settings).await,
        Some((host, token)) => join_cluster(settings, host, token).await,
    }
}

async fn bootstrap(
    settings: &NodeSettings,
) -> Result<(RegistryNode, Arc<Pki>, Started), ClusterError> {
    let (ca, info) = new_cluster(settings.cert_lifetime)?;
    let id = random_node_id()?;
    let key = NodeKey::generate()?;
    let cert = pki::issue(&ca, &info, &key.csr(id)?, id, CertRole::Manager)?;
    let printed = NewTokens {
        cluster_id: info.id.clone(),
        manager: tokens::token_text(&ca, TokenKind::Manager, &info.manager_token),
        worker: tokens::token_text(&ca, TokenKind::Worker, &info.worker_token),
        control: tokens::token_text(&ca, TokenKind::Control, &info.control_token),
    };
    let ca_pem = ca.cert_pem().to_owned();
    let pki = Pki::create(&settings.data_dir, key, &cert, &ca_pem, Some(ca))?;
    let node = start_registry(settings, id, &pki).await?;
    node.bootstrap().await?;
    node.propose(Command::InitCluster {
        cluster: info.clone(),
        vip_range: settings.vip_range,
        vip_range_v6: settings.vip_range_v6,
        dns_domain: Some(settings.dns_domain.clone()),
    })
    .await?;
    register_self(&node, settings, Some(Role::Manager)).await?;
    Identity {
        id,
        cluster_id: info.id,
    }
    .save(&settings.data_dir)?;
    pki::save_control_token(&settings.data_dir, &printed.control)?;
    Ok((node, pki, Started::Bootstrapped(printed)))
}

async fn join_cluster(
    settings: &NodeSettings,
    host: &str,
    token: &str,
) -> Result<(RegistryNode, Arc<Pki>, Started), ClusterError> {
    let parsed = Token::parse(token, Family::Join).map_err(ClusterError::Token)?;
    let refused = |source| ClusterError::Join {
        host: host.to_owned(),
        source,
    };
    let pinned = CaPin::Digest(parsed.ca_digest().to_owned()).client_config()?;
    let client = Client::new(host, None).map_err(refused)?.with_tls(pinned);
    let id = random_node_id()?;
    let key = NodeKey::generate()?;
    let issued = client
        .certificate(&CertificateRequest {
            token: token.to_owned(),
            node_id: id.into(),
            csr: key.csr(id)?,
        })
        .await
        .map_err(refused)?;
    let ca_digest = lbmesh_tls::ca_digest(&lbmesh_tls::identity::cert_der(&issued.ca_certificate)?);
    if ca_digest != parsed.ca_digest() {
        return Err(ClusterError::Token(
            "the cluster answered with another CA than the token pins".to_owned(),
        ));
    }
    let pki = Pki::create(
        &settings.data_dir,
        key,
        &issued.certificate,
        &issued.ca_certificate,
        None,
    )?;
    let cluster_id = pki.credentials().identity()?.cluster_id;
    let node = start_registry(settings, id, &pki).await?;
    let request = JoinRequest {
        token: token.to_owned(),
        node: convert::member(&record(settings, id, Role::Worker)),
    };
    client.join(&request).await.map_err(refused)?;
    Identity { id, cluster_id }.save(&settings.data_dir)?;
    Ok((node, pki, Started::Joined))
}

/// How often a restarted node retries writing its record.
const REREGISTER_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// A restarted node's record, rewritten with its current addresses until a
/// write succeeds or `stop` fires. It runs beside the node rather than
/// before it serves, so a start never waits on a write (a node that still
/// believes it leads right after a restart can propose an entry the real
/// leader's snapshot then discards).
pub async fn reregister(
    node: std::sync::Arc<RegistryNode>,
    settings: NodeSettings,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match register_self(&node, &settings, None).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot record this node's addresses yet; retrying")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REREGISTER_RETRY) => {}
        }
    }
}

/// This node's record with its current addresses. A rejoining node keeps
/// its stored role and status: only the leader, once it hears the node's
/// heartbeat, marks a down node ready (writing ready here made a restarted
/// node go ready, down, ready). The command carries the status, so every
/// lbd version applies it alike.
fn own_record(
    settings: &NodeSettings,
    id: NodeId,
    role: Option<Role>,
    stored: Option<&NodeRecord>,
) -> NodeRecord {
    let role = role.or(stored.map(|n| n.role)).unwrap_or(Role::Worker);
    let mut own = record(settings, id, role);
    if let Some(stored) = stored {
        own.status = stored.status;
    }
    own
}

/// Records this node's current addresses in the registry (keeping what
/// operators set on it).
async fn register_self(
    node: &RegistryNode,
    settings: &NodeSettings,
    role: Option<Role>,
) -> Result<(), ClusterError> {
    let stored = node.local().state.nodes.get(&node.id).cloned();
    let record = own_record(settings, node.id, role, stored.as_ref());
    let outcome = node.propose(Command::RegisterNode { node: record }).await?;
    if let Outcome::Rejected { rejection } = outcome {
        return Err(ClusterError::Registry(RegistryError::Raft(
            rejection.to_string(),
        )));
    }
    Ok(())
}

/// Why a join was refused, for the API's answer.
#[derive(Debug)]
pub enum JoinRefusal {
    BadToken(String),
    Invalid { field: String, reason: String },
    Failed(String),
}

/// How long a joiner's Raft address has to answer the leader's probe.
const JOIN_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// On the leader: checks everything first (the token, the node's record as
/// the registry would apply it, its ports against the published ones, its
/// Raft address), then adds the node to
/// Raft as a learner and registers it; a manager is then promoted so voters
/// stay odd, at most five. If a step after the learner was added fails, the
/// learner (and the record, once written) is removed again, so a refused
/// join leaves no member the leader would replicate to for ever.
///
/// `request_id` is the join request's id: a join resent after its first try
/// took effect gets the node's record, not "already a member". It is
/// prefixed with the node's id, since a join is not authenticated by the
/// control token and must not reach another request's answer.
pub async fn admit(
    node: &RegistryNode,
    request: JoinRequest,
    request_id: &str,
) -> Result<NodeRecord, JoinRefusal> {
    let state = node.local().state;
    let Some(cluster) = &state.cluster else {
        return Err(JoinRefusal::Failed(
            "the cluster is not initialised".to_owned(),
        ));
    };
    let role = join_role(cluster, &request.token).map_err(JoinRefusal::BadToken)?;
    let mut record = convert::member_record(request.node);
    record.role = role;
    record.availability = Availability::Active;
    record.status = NodeStatus::Ready;
    let request_id = format!("join.{}.{request_id}", record.id);
    if let Some(outcome) = state.remembered(&request_id) {
        return match (outcome, state.nodes.get(&record.id)) {
            (Outcome::Node { .. }, Some(joined)) => {
                if role == Role::Manager {
                    balance_voters(node)
                        .await
                        .map_err(|e| JoinRefusal::Failed(e.to_string()))?;
                }
                Ok(joined.clone())
            }
            _ => Err(JoinRefusal::Failed(
                "this join was refused or rolled back; start the node again".to_owned(),
            )),
        };
    }
    check_record(&state, &record)?;
    if let Some(refusal) = published_port_clash(&state, &record) {
        return Err(refusal);
    }
    check_raft_addr(node, &state, &record).await?;
    let raft_addr = record.raft_addr.to_string();
    let added = tokio::time::timeout(
        PROPOSE_DEADLINE,
        node.add_member(record.id, &raft_addr, false),
    );
    match added.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            roll_back(node, record.id, false).await;
            return Err(JoinRefusal::Failed(e.to_string()));
        }
        Err(_) => {
            roll_back(node, record.id, false).await;
            return Err(JoinRefusal::Failed(format!(
                "node {} did not catch up within {PROPOSE_DEADLINE:?}",
                record.id
            )));
        }
    }
    let registered = node
        .propose_request(
            request_id,
            Command::RegisterNode {
                node: record.clone(),
            },
        )
        .await;
    match registered {
        Ok(Outcome::Node { node }) => record = *node,
        Ok(Outcome::Rejected { rejection }) => {
            roll_back(node, record.id, false).await;
            return Err(JoinRefusal::Invalid {
                field: format!("node.{}", rejection.field),
                reason: rejection.reason,
            });
        }
        Ok(_) => {}
        Err(e) => {
            // It may have been applied after all: remove the record too.
            roll_back(node, record.id, true).await;
            return Err(JoinRefusal::Failed(e.to_string()));
        }
    }
    if role == Role::Manager {
        if let Err(e) = balance_voters(node).await {
            roll_back(node, record.id, true).await;
            return Err(JoinRefusal::Failed(e.to_string()));
        }
    }
    Ok(record)
}

/// The role a join token admits to, or why it admits no one.
pub fn join_role(cluster: &ClusterInfo, token: &str) -> Result<Role, String> {
    let token = Token::parse(token, Family::Join)?;
    let ca_digest = lbmesh_tls::identity::cert_der(&cluster.ca_cert)
        .map(|der| lbmesh_tls::ca_digest(&der))
        .unwrap_or_default();
    let known = token.ca_digest() == ca_digest;
    if known && token.matches(&cluster.manager_token) {
        Ok(Role::Manager)
    } else if known && token.matches(&cluster.worker_token) {
        Ok(Role::Worker)
    } else {
        Err(
            "the join token is not valid for this cluster (rotated, or another cluster's)"
                .to_owned(),
        )
    }
}

/// The record a join would write, checked as the registry would apply it
/// (name, labels), and its id not a member's already.
fn check_record(state: &RegistryState, record: &NodeRecord) -> Result<(), JoinRefusal> {
    if state.nodes.contains_key(&record.id) {
        return Err(JoinRefusal::Invalid {
            field: "node.id".to_owned(),
            reason: format!("node id {} is already a member", record.id),
        });
    }
    // A trial on a copy: the same rules as the write, none restated here.
    let mut trial = state.clone();
    if let Outcome::Rejected { rejection } = trial.apply(&Command::RegisterNode {
        node: record.clone(),
    }) {
        return Err(JoinRefusal::Invalid {
            field: format!("node.{}", rejection.field),
            reason: rejection.reason,
        });
    }
    Ok(())
}

/// A joiner's Raft address: one other nodes can dial, not an address of
/// another node or Raft member, and answering as this node with the
/// cluster secret.
async fn check_raft_addr(
    node: &RegistryNode,
    state: &RegistryState,
    record: &NodeRecord,
) -> Result<(), JoinRefusal> {
    let addr = record.raft_addr;
    let invalid = |reason: String| JoinRefusal::Invalid {
        field: "node.raft_addr".to_owned(),
        reason,
    };
    let ip = addr.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast || addr.port() == 0 {
        return Err(invalid(format!(
            "{addr} is not an address other nodes can dial"
        )));
    }
    if addr == record.api_addr {
        return Err(invalid(format!("{addr} is also the node's API address")));
    }
    for other in state.nodes.values().filter(|n| n.id != record.id) {
        let held = [("Raft", other.raft_addr), ("API", other.api_addr)]
            .into_iter()
            .find(|(_, a)| *a == addr);
        if let Some((what, _)) = held {
            return Err(invalid(format!(
                "{addr} is node {:?}'s {what} address",
                other.name
            )));
        }
    }
    let metrics = node.metrics();
    let text = addr.to_string();
    let member = metrics
        .membership_config
        .membership()
        .nodes()
        .find(|(id, n)| **id != record.id && n.addr == text)
        .map(|(id, _)| *id);
    if let Some(member) = member {
        return Err(invalid(format!("{addr} is Raft member {member}'s address")));
    }
    node.probe(record.id, &text, JOIN_PROBE_TIMEOUT)
        .await
        .map_err(|e| invalid(format!("node {} does not answer at {addr}: {e}", record.id)))
}

/// Undoes a join that failed after its learner was added: the member, and
/// with `registered` the record. Failures are logged; `node rm` removes
/// what is left.
async fn roll_back(node: &RegistryNode, id: NodeId, registered: bool) {
    match tokio::time::timeout(PROPOSE_DEADLINE, node.remove_member(id)).await {
        Ok(Ok(())) => info!(node = %id, "refused join rolled back"),
        Ok(Err(error)) => warn!(node = %id, %error, "cannot remove a refused joiner from Raft"),
        Err(_) => warn!(node = %id, "removing a refused joiner from Raft timed out"),
    }
    if registered {
        if let Err(error) = node.propose(Command::RemoveNode { id }).await {
            warn!(node = %id, %error, "cannot remove a refused joiner's record");
        }
    }
}

/// A joiner whose API or Raft port some service publishes: every node binds
/// every published port, so one of the two could never be served there.
/// Checked before the node is added to Raft or written, so a refusal leaves
/// nothing behind (and, being outside the state machine, applies no new
/// rule to the log).
fn published_port_clash(state: &RegistryState, record: &NodeRecord) -> Option<JoinRefusal> {
    let own = [
        ("node.api_addr", "API", record.api_addr),
        ("node.raft_addr", "Raft", record.raft_addr),
    ];
    for (field, what, addr) in own {
        for service in state.services.values() {
            if service
                .spec
                .ports
                .iter()
                .any(|port| port.is_published() && port.published == i64::from(addr.port()))
            {
                return Some(JoinRefusal::Invalid {
                    field: field.to_owned(),
                    reason: format!(
                        "the {what} port {} ({addr}) is published by service {:?}, which every node binds",
                        addr.port(),
                        service.spec.name
                    ),
                });
            }
        }
    }
    None
}

/// Makes the voters the leader and other managers, as many as the largest
/// odd number not above the managers' count (and at most five): promotes
/// manager learners first, then demotes voters that are no longer managers
/// (`node demote`) or are over that number, never the leader. Runs on the
/// leader after a manager joins and after `node promote|demote`.
pub async fn balance_voters(node: &RegistryNode) -> Result<(), RegistryError> {
    let state = node.local().state;
    let metrics = node.metrics();
    let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
    let learners: Vec<NodeId> = metrics
        .membership_config
        .membership()
        .learner_ids()
        .collect();
    let managers: Vec<NodeId> = state
        .nodes
        .values()
        .filter(|n| n.role == Role::Manager)
        .map(|n| n.id)
        .collect();
    let mut target = managers.len().clamp(1, MAX_VOTERS);
    if target % 2 == 0 {
        target -= 1;
    }
    // The leader keeps its vote; then the other manager voters, in order.
    let mut keep: Vec<NodeId> = voters.iter().copied().filter(|v| *v == node.id).collect();
    keep.extend(
        voters
            .iter()
            .copied()
            .filter(|v| *v != node.id && managers.contains(v))
            .take(target.saturating_sub(keep.len())),
    );
    let promote: Vec<NodeId> = managers
        .iter()
        .filter(|id| !voters.contains(id) && learners.contains(id))
        .take(target.saturating_sub(keep.len()))
        .copied()
        .collect();
    if keep.len() + promote.len() != target {
        return Ok(());
    }
    if !promote.is_empty() {
        node.promote(&promote).await?;
    }
    let demote: Vec<NodeId> = voters.into_iter().filter(|v| !keep.contains(v)).collect();
    if !demote.is_empty() {
        node.demote(&demote).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_token_admits_to_its_role_until_rotated() {
        let (ca, mut info) = new_cluster(Duration::from_secs(60)).unwrap();
        let worker = tokens::token_text(&ca, TokenKind::Worker, &info.worker_token);
        let manager = tokens::token_text(&ca, TokenKind::Manager, &info.manager_token);
        let control = tokens::token_text(&ca, TokenKind::Control, &info.control_token);
        assert_eq!(join_role(&info, &worker), Ok(Role::Worker));
        assert_eq!(join_role(&info, &manager), Ok(Role::Manager));
        assert!(
            join_role(&info, &control).is_err(),
            "a control token joins no one"
        );
        info.worker_token = tokens::new_seed(&ca, TokenKind::Worker).unwrap();
        assert!(join_role(&info, &worker).unwrap_err().contains("not valid"));
        assert_eq!(join_role(&info, &manager), Ok(Role::Manager));
        // The registry's record of the cluster holds no token.
        let recorded = serde_json::to_string(&info).unwrap();
        for token in [&worker, &manager, &control] {
            let secret = token.rsplit('-').next().unwrap();
            assert!(!recorded.contains(secret), "{recorded}");
        }
    }

    #[test]
    fn a_rejoining_node_keeps_its_stored_status() {
        let settings = NodeSettings {
            name: "node-a".to_owned(),
            advertise_addr: "127.0.0.2".parse().unwrap(),
            api_addr: "127.0.0.2:9900".parse().unwrap(), // fixed-port-ok: a record, nothing bound
            raft_addr: "127.0.0.2:9901".parse().unwrap(), // fixed-port-ok: a record, nothing bound
            ingress_addrs: vec!["127.0.0.2".parse().unwrap()],
            data_dir: PathBuf::from("unused"),
            vip_range: raft_state::state::DEFAULT_VIP_RANGE,
            vip_range_v6: None,
            dns_domain: raft_state::state::DEFAULT_DNS_DOMAIN.to_owned(),
            snapshot_every: raft_state::registry::SNAPSHOT_EVERY,
            cert_lifetime: pki::DEFAULT_CERT_LIFETIME,
        };
        let mut stored = record(&settings, 7, Role::Manager);
        stored.status = NodeStatus::Down;
        let own = own_record(&settings, 7, None, Some(&stored));
        assert_eq!(
            own.status,
            NodeStatus::Down,
            "ready only once the leader hears it"
        );
        assert_eq!(own.role, Role::Manager);
        let new = own_record(&settings, 8, Some(Role::Worker), None);
        assert_eq!(new.status, NodeStatus::Ready);
    }

    #[test]
    fn a_joiner_on_a_published_port_is_refused_naming_the_service() {
        let settings = NodeSettings {
            name: "node-b".to_owned(),
            advertise_addr: "127.0.0.3".parse().unwrap(),
            api_addr: "127.0.0.3:9900".parse().unwrap(), // fixed-port-ok: a record, nothing bound
            raft_addr: "127.0.0.3:9901".parse().unwrap(), // fixed-port-ok: a record, nothing bound
            ingress_addrs: vec!["127.0.0.3".parse().unwrap()],
            data_dir: PathBuf::from("unused"),
            vip_range: raft_state::state::DEFAULT_VIP_RANGE,
            vip_range_v6: None,
            dns_domain: raft_state::state::DEFAULT_DNS_DOMAIN.to_owned(),
            snapshot_every: raft_state::registry::SNAPSHOT_EVERY,
            cert_lifetime: pki::DEFAULT_CERT_LIFETIME,
        };
        let joiner = record(&settings, 9, Role::Worker);
        let mut state = RegistryState::default();
        assert!(published_port_clash(&state, &joiner).is_none());
        for (name, port) in [("web", 8080), ("raftish", 9901)] {
            let outcome = state.apply(&Command::CreateService {
                spec: lb_config::ServiceSpec {
                    name: name.to_owned(),
                    ports: vec![lb_config::PortSpec {
                        published: port,
                        target: None,
                        protocol: None,
                    }],
                    ..lb_config::ServiceSpec::default()
                },
                id: String::new(),
            });
            assert!(matches!(outcome, Outcome::Service { .. }), "{outcome:?}");
        }
        let Some(JoinRefusal::Invalid { field, reason }) = published_port_clash(&state, &joiner)
        else {
            panic!("a joiner on a published Raft port was admitted");
        };
        assert_eq!(field, "node.raft_addr");
        assert_eq!(
            reason,
            "the Raft port 9901 (127.0.0.3:9901) is published by service \"raftish\", which every node binds"
        );
    }
}
