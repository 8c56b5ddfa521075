//! Raft RPCs between nodes: TCP, mutual TLS with certificates of the
//! cluster CA, then length-delimited JSON frames.
//!
//! # Protocol
//!
//! ```text
//! client                                   server
//!   ──── connect, TLS ClientHello ──────────>   server name node-<to>.lbmesh.internal: the client
//!   <─── TLS: both certificates checked ────    checks it reached the node it meant; the server
//!                                               requires a client certificate of the cluster CA
//!   ──── Request ──> <── Response ──  (one at a time, connection reused)
//! ```
//!
//! The caller is the node its certificate names ([`lbmesh_tls::NodeIdentity`]):
//! before every request the server asks its [`RpcHandler`] what that node
//! may do now ([`RpcHandler::authorize`]: refused once it is removed; its
//! role is the lesser of its certificate's and its registry record's, so a
//! demotion counts at once). Only a manager may send appends, votes and
//! snapshots; a worker's proposals are checked by the handler to concern
//! that worker alone; anyone may send heartbeats (as itself) and ask for a
//! read index. A refused request is answered [`Response::Refused`] and the
//! connection closed.
//!
//! # Limits before and after authentication
//!
//! Until TLS is established a connection costs a handshake buffer (rustls
//! bounds a handshake message at 64 KiB); a server holds at most
//! [`MAX_HANDSHAKES`] connections in their handshake
//! ([`MAX_HANDSHAKES_PER_ADDRESS`] per client address) and closes one
//! more at once; each must finish within `HANDSHAKE_TIMEOUT`. A plain TCP
//! client, or one with a certificate of another CA, fails the handshake
//! and no frame of it is read. Afterwards frames are at most
//! [`MAX_FRAME_BYTES`]. An append-entries batch that still encodes over the
//! frame limit is answered `PayloadTooLarge` (openraft resends it split);
//! a frame that does not decode gets an error response and the connection
//! is closed.
//!
//! # Layering
//!
//! The server hands every authenticated request to an [`RpcHandler`], which
//! the registry implements; this module knows nothing of the node it serves.
//! The client side is [`Peer`] (one connection, reused) and [`Network`]
//! (openraft's factory of peers).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use lbmesh_tls::{node_server_name, CertRole, NodeCredentials, NodeIdentity};
use openraft::error::{
    Infallible, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError,
    RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tracing::{debug, warn};

use crate::command::Proposal;
use crate::drains::{DrainReport, Drained};
use crate::outcome::Outcome;
use crate::types::{NodeId, TypeConfig};

/// Largest frame either side accepts once the handshake succeeded: well
/// above openraft's 3 MiB snapshot chunks and the store's 4 MiB replication
/// batches (`store::MAX_BATCH_BYTES`).
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// Connections a node serves at once before their handshake succeeded;
/// one more is closed at once. Peers authenticate within a round trip, so
/// the slots are free but for a flood.
pub const MAX_HANDSHAKES: usize = 64;
/// Of [`MAX_HANDSHAKES`], how many one client address may hold, so one
/// flooding host cannot take every slot from the real peers.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 8;
/// How long a TLS handshake may take: two round trips and a few signatures,
/// so this only bounds how long a silent connection holds a handshake slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of calls that openraft does not bound itself.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

type FramedStream<S> = Framed<S, LengthDelimitedCodec>;
type ClientStream = FramedStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// This node's certificate and the cluster CA: what every Raft connection
/// authenticates with (swapped in place on renewal).
pub type Credentials = Arc<NodeCredentials>;

/// The node that sent a request, as its certificate and the registry say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub id: NodeId,
    /// The role it may act in now.
    pub role: CertRole,
}

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "rpc", content = "body", rename_all = "snake_case")]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A write proposed on a follower, forwarded to the leader with its
    /// request id (the same on every resend).
    Propose(Box<Proposal>),
    /// "What index must I have applied to serve a linearizable read?"
    ReadIndex,
    /// "I am alive", sent to every voter every heartbeat interval. The
    /// sender is the node its certificate names; it is not in the log.
    /// With a report (only while the sender has departing tasks in view)
    /// it also says how many connections it holds to each
    /// (`crate::drains`). Without one it is `{"rpc":"heartbeat"}`, the
    /// frame older nodes send, and reads as `None`.
    Heartbeat(#[serde(default)] Option<DrainReport>),
}

/// Why a forwarded proposal or read failed on the remote node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteFailure {
    #[error("node {node} is not the leader (leader: {leader:?})")]
    NotLeader {
        node: NodeId,
        leader: Option<(NodeId, String)>,
    },
    #[error("{0}")]
    Unavailable(String),
    /// The caller may not make this write (a worker's write about another
    /// node, or a change only managers make).
    #[error("forbidden: {0}")]
    Forbidden(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "rpc", content = "body", rename_all = "snake_case")]
pub enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Propose(Result<Outcome, RemoteFailure>),
    ReadIndex(Result<u64, RemoteFailure>),
    /// The sender's drained tasks, in answer to a heartbeat with a report
    /// only (an older node's plain heartbeat gets the plain answer).
    Heartbeat(#[serde(default)] Option<Drained>),
    /// The request frame was malformed; the server closes the connection.
    Malformed(String),
    /// The caller may not send this request (a worker's append or vote, or
    /// a removed node's anything); the server closes the connection.
    Refused(String),
}

/// The codec of an authenticated connection.
fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec()
}

async fn send<T: Serialize, S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut FramedStream<S>,
    value: &T,
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    stream.send(Bytes::from(bytes)).await
}

async fn receive<T: DeserializeOwned, S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut FramedStream<S>,
) -> std::io::Result<T> {
    match stream.next().await {
        Some(Ok(frame)) => serde_json::from_slice(&frame).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("malformed frame: {e}"),
            )
        }),
        Some(Err(e)) => Err(e),
        None => Err(std::io::ErrorKind::UnexpectedEof.into()),
    }
}

/// What the server does with each authenticated request: the node behind
/// the transport (the registry) implements it, so the transport depends on
/// nothing of the node but these operations.
pub trait RpcHandler: Clone + Send + Sync + 'static {
    fn append_entries(
        &self,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> impl Future<Output = Answer<AppendEntriesResponse<NodeId>, Infallible>> + Send;

    fn vote(
        &self,
        rpc: VoteRequest<NodeId>,
    ) -> impl Future<Output = Answer<VoteResponse<NodeId>, Infallible>> + Send;

    fn install_snapshot(
        &self,
        rpc: InstallSnapshotRequest<TypeConfig>,
    ) -> impl Future<Output = Answer<InstallSnapshotResponse<NodeId>, InstallSnapshotError>> + Send;

    /// What the node a certificate names may do now: the role it acts in,
    /// or why it is refused (it was removed).
    fn authorize(&self, identity: &NodeIdentity) -> Result<CertRole, String>;

    /// A write a follower forwarded: served only if this node leads, and
    /// only if `caller` may make it.
    fn propose(
        &self,
        caller: Caller,
        proposal: Proposal,
    ) -> impl Future<Output = Result<Outcome, RemoteFailure>> + Send;

    /// The commit index a linearizable read must wait for, if this node
    /// leads.
    fn read_index(&self) -> impl Future<Output = Result<u64, RemoteFailure>> + Send;

    /// `from` (the node its certificate names) says it is alive, and, with
    /// a report, what it holds open to departing tasks; the answer names
    /// those of its tasks that have drained.
    fn heartbeat(&self, from: NodeId, report: Option<DrainReport>) -> Option<Drained>;
}

/// Serves Raft RPCs with `handler` on `listener` until `shutdown` resolves;
/// then closes every open connection too.
pub async fn serve(
    listener: TcpListener,
    handler: impl RpcHandler,
    credentials: Credentials,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // Dropping the set when this function returns aborts the connections.
    let mut connections = tokio::task::JoinSet::new();
    let handshakes = Handshakes::default();
    loop {
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "raft accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let Some(slot) = handshakes.admit(peer.ip()) else {
            debug!(%peer, "too many raft handshakes in flight; connection closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let acceptor = TlsAcceptor::from(credentials.raft_server());
        connections.spawn(async move {
            if let Err(error) = serve_connection(stream, slot, handler, acceptor).await {
                debug!(%peer, %error, "raft connection closed");
            }
        });
    }
}

/// The handshakes in flight, in all and per client address. Never held
/// across an await.
#[derive(Clone, Default)]
struct Handshakes(Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>);

impl Handshakes {
    /// A slot for one more handshake from `addr`, or `None` over a cap.
    fn admit(&self, addr: IpAddr) -> Option<HandshakeSlot> {
        let mut counts = self.0.lock().ok()?;
        let total: usize = counts.values().sum();
        let here = counts.entry(addr).or_default();
        if total >= MAX_HANDSHAKES || *here >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *here += 1;
        Some(HandshakeSlot {
            handshakes: self.clone(),
            addr,
        })
    }
}

/// One handshake in flight; dropping it (handshake done, failed or timed
/// out) frees the slot.
struct HandshakeSlot {
    handshakes: Handshakes,
    addr: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.handshakes.0.lock() {
            if let Some(count) = counts.get_mut(&self.addr) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&self.addr);
                }
            }
        }
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    slot: HandshakeSlot,
    handler: impl RpcHandler,
    acceptor: TlsAcceptor,
) -> std::io::Result<()> {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(result) => result.map_err(|error| {
            debug!(%error, "raft TLS handshake failed");
            error
        })?,
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
    };
    drop(slot);
    let identity = lbmesh_tls::config::peer_identity(stream.get_ref().1.peer_certificates())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the client certificate names no node",
            )
        })?;
    let mut stream = Framed::new(stream, codec());
    loop {
        let request: Request = match receive(&mut stream).await {
            Ok(request) => request,
            Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                let _ = send(&mut stream, &Response::Malformed(error.to_string())).await;
                return Err(error);
            }
            Err(error) => return Err(error),
        };
        let caller = match handler.authorize(&identity) {
            Ok(role) => Caller {
                id: identity.node_id,
                role,
            },
            Err(reason) => return refuse(&mut stream, identity.node_id, reason).await,
        };
        let manager_only = matches!(
            request,
            Request::AppendEntries(_) | Request::Vote(_) | Request::InstallSnapshot(_)
        );
        if manager_only && caller.role != CertRole::Manager {
            let reason = format!(
                "node {} is a worker: only managers send Raft appends, votes and snapshots",
                caller.id
            );
            return refuse(&mut stream, caller.id, reason).await;
        }
        let response = match request {
            Request::AppendEntries(rpc) => {
                Response::AppendEntries(handler.append_entries(rpc).await)
            }
            Request::Vote(rpc) => Response::Vote(handler.vote(rpc).await),
            Request::InstallSnapshot(rpc) => {
                Response::InstallSnapshot(handler.install_snapshot(rpc).await)
            }
            Request::Propose(proposal) => {
                Response::Propose(handler.propose(caller, *proposal).await)
            }
            Request::ReadIndex => Response::ReadIndex(handler.read_index().await),
            Request::Heartbeat(report) => Response::Heartbeat(handler.heartbeat(caller.id, report)),
        };
        send(&mut stream, &response).await?;
    }
}

/// Answers a request the caller may not send, and ends the connection.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut FramedStream<S>,
    node: NodeId,
    reason: String,
) -> std::io::Result<()> {
    warn!(node, %reason, "raft request refused");
    let _ = send(stream, &Response::Refused(reason.clone())).await;
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        reason,
    ))
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made (or the TLS handshake failed).
    #[error("node unreachable: {0}")]
    Unreachable(std::io::Error),
    /// The connection failed mid-call.
    #[error("network error: {0}")]
    Network(std::io::Error),
    #[error("call timed out")]
    Timeout,
}

/// A connection to one peer, made on first use and reused; a failed call
/// drops it and the next call reconnects.
pub struct Peer {
    pub target: NodeId,
    addr: String,
    credentials: Credentials,
    stream: Option<ClientStream>,
}

impl Peer {
    pub fn new(target: NodeId, addr: String, credentials: Credentials) -> Self {
        Self {
            target,
            addr,
            credentials,
            stream: None,
        }
    }

    /// The address this peer dials.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn connect(&self) -> std::io::Result<ClientStream> {
        let stream = TcpStream::connect(&self.addr).await?;
        let _ = stream.set_nodelay(true);
        let name = ServerName::try_from(node_server_name(self.target))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let connector = TlsConnector::from(self.credentials.client());
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        Ok(Framed::new(stream, codec()))
    }

    /// Opens a connection and completes the TLS handshake, then drops it:
    /// the peer is reachable and holds node `target`'s certificate.
    pub async fn probe(&self) -> std::io::Result<()> {
        self.connect().await.map(drop)
    }

    /// Sends one request and waits for its response.
    pub async fn call(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let frame = serde_json::to_vec(request)
            .map_err(|e| CallError::Network(std::io::Error::other(e)))?;
        self.call_frame(Bytes::from(frame), timeout).await
    }

    /// Sends one encoded request and waits for its response.
    async fn call_frame(&mut self, frame: Bytes, timeout: Duration) -> Result<Response, CallError> {
        let result = tokio::time::timeout(timeout, async {
            if self.stream.is_none() {
                self.stream = Some(self.connect().await.map_err(CallError::Unreachable)?);
            }
            let Some(stream) = self.stream.as_mut() else {
                return Err(CallError::Unreachable(
                    std::io::ErrorKind::NotConnected.into(),
                ));
            };
            stream.send(frame).await.map_err(CallError::Network)?;
            receive(stream).await.map_err(CallError::Network)
        })
        .await
        .unwrap_or(Err(CallError::Timeout));
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn rpc_error<E: std::error::Error>(&self, error: CallError) -> RPCError<NodeId, BasicNode, E> {
        match error {
            CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Network(e) => RPCError::Network(NetworkError::new(&e)),
            CallError::Timeout => RPCError::Network(NetworkError::new(&std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            ))),
        }
    }
}

fn unexpected<E: std::error::Error>(response: Response) -> RPCError<NodeId, BasicNode, E> {
    let message = match response {
        Response::Malformed(reason) => format!("peer refused the frame: {reason}"),
        Response::Refused(reason) => format!("peer refused the request: {reason}"),
        other => format!("unexpected response {other:?}"),
    };
    RPCError::Network(NetworkError::new(&std::io::Error::other(message)))
}

impl Peer {
    /// One Raft RPC: `unpack` takes this RPC's answer out of the response,
    /// or hands back any other response as unexpected.
    async fn rpc<T, E>(
        &mut self,
        request: Request,
        option: RPCOption,
        unpack: Unpack<T, E>,
    ) -> Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error,
        RaftError<NodeId, E>: std::error::Error,
    {
        let frame =
            serde_json::to_vec(&request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.rpc_frame(Bytes::from(frame), option, unpack).await
    }

    /// [`Peer::rpc`] of a request already encoded.
    async fn rpc_frame<T, E>(
        &mut self,
        frame: Bytes,
        option: RPCOption,
        unpack: Unpack<T, E>,
    ) -> Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error,
        RaftError<NodeId, E>: std::error::Error,
    {
        match self.call_frame(frame, option.hard_ttl()).await {
            Ok(response) => match unpack(response) {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
                Err(other) => Err(unexpected(*other)),
            },
            Err(error) => Err(self.rpc_error(error)),
        }
    }
}

/// What a node answers to one Raft RPC.
pub type Answer<T, E> = Result<T, RaftError<NodeId, E>>;

/// Takes one RPC's answer out of a response, or hands the response back.
type Unpack<T, E> = fn(Response) -> Result<Answer<T, E>, Box<Response>>;

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let entries = rpc.entries.len();
        let request = Request::AppendEntries(rpc);
        let frame =
            serde_json::to_vec(&request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if let Some(too_large) = too_large(entries, frame.len()) {
            return Err(too_large);
        }
        self.rpc_frame(Bytes::from(frame), option, |response| match response {
            Response::AppendEntries(answer) => Ok(answer),
            other => Err(Box::new(other)),
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(
            Request::InstallSnapshot(rpc),
            option,
            |response| match response {
                Response::InstallSnapshot(answer) => Ok(answer),
                other => Err(Box::new(other)),
            },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc(Request::Vote(rpc), option, |response| match response {
            Response::Vote(answer) => Ok(answer),
            other => Err(Box::new(other)),
        })
        .await
    }
}

/// What to answer openraft for an append-entries batch of `entries` that
/// encodes to `bytes`, when that is over [`MAX_FRAME_BYTES`]: a batch of
/// several is `PayloadTooLarge` with a hint of how many entries fit (with
/// room to spare), so openraft resends it smaller at once; a single entry
/// that big cannot be split and is a network error (openraft backs off).
/// The store's byte cap keeps batches well under the limit; this is the
/// guard for whatever gets past it.
fn too_large<E: std::error::Error>(
    entries: usize,
    bytes: usize,
) -> Option<RPCError<NodeId, BasicNode, E>> {
    if bytes <= MAX_FRAME_BYTES {
        return None;
    }
    if entries <= 1 {
        let reason = format!(
            "one log entry encodes to {bytes} bytes, over the {MAX_FRAME_BYTES}-byte frame limit"
        );
        warn!(%reason, "append-entries not sent");
        return Some(RPCError::Network(NetworkError::new(
            &std::io::Error::other(reason),
        )));
    }
    let fit = (entries as u128 * (MAX_FRAME_BYTES / 2) as u128 / bytes as u128).max(1);
    let hint = u64::try_from(fit).unwrap_or(1);
    debug!(
        entries,
        bytes, hint, "append-entries batch too large; asking openraft to split it"
    );
    Some(RPCError::PayloadTooLarge(
        PayloadTooLarge::new_entries_hint(hint),
    ))
}

/// Makes a [`Peer`] for each node openraft talks to.
#[derive(Clone)]
pub struct Network {
    pub credentials: Credentials,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer::new(target, node.addr.clone(), self.credentials.clone())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The tests' cluster CA, made once per test binary.
    fn test_ca() -> &'static lbmesh_tls::ClusterCa {
        static CA: std::sync::OnceLock<lbmesh_tls::ClusterCa> = std::sync::OnceLock::new();
        CA.get_or_init(|| lbmesh_tls::ClusterCa::generate("test").expect("a CA"))
    }

    /// Credentials of node `id` in `role`, signed by `ca`.
    pub(crate) fn credentials_from(
        ca: &lbmesh_tls::ClusterCa,
        id: NodeId,
        role: CertRole,
    ) -> Credentials {
        ca.node_credentials(id, role, "test", Duration::from_secs(3600))
            .expect("credentials")
    }

    /// Manager credentials of node `id` from the tests' CA.
    pub(crate) fn credentials(id: NodeId) -> Credentials {
        credentials_from(test_ca(), id, CertRole::Manager)
    }

    /// A node that answers heartbeats (counting them) and never answers
    /// anything else: a leader whose forwarded calls are stuck. The nodes
    /// in `removed` are refused.
    #[derive(Clone, Default)]
    pub(crate) struct Stuck {
        pub heartbeats: Arc<AtomicUsize>,
        pub served: Arc<AtomicUsize>,
        pub removed: Vec<NodeId>,
    }

    impl RpcHandler for Stuck {
        async fn append_entries(
            &self,
            _: AppendEntriesRequest<TypeConfig>,
        ) -> Answer<AppendEntriesResponse<NodeId>, Infallible> {
            self.served.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        }
        async fn vote(&self, _: VoteRequest<NodeId>) -> Answer<VoteResponse<NodeId>, Infallible> {
            self.served.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        }
        async fn install_snapshot(
            &self,
            _: InstallSnapshotRequest<TypeConfig>,
        ) -> Answer<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
            std::future::pending().await
        }
        fn authorize(&self, identity: &NodeIdentity) -> Result<CertRole, String> {
            if self.removed.contains(&identity.node_id) {
                return Err(format!("node {} was removed", identity.node_id));
            }
            Ok(identity.role)
        }
        async fn propose(&self, _: Caller, _: Proposal) -> Result<Outcome, RemoteFailure> {
            std::future::pending().await
        }
        async fn read_index(&self) -> Result<u64, RemoteFailure> {
            std::future::pending().await
        }
        /// Answers a report with every task it lists closed.
        fn heartbeat(&self, _: NodeId, report: Option<DrainReport>) -> Option<Drained> {
            self.heartbeats.fetch_add(1, Ordering::SeqCst);
            report.map(|report| Drained {
                tasks: report
                    .open
                    .into_iter()
                    .filter(|(_, open)| *open == 0)
                    .map(|(id, _)| id)
                    .collect(),
            })
        }
    }

    /// Serves node `id` with `handler` on 127.0.0.1; the address, and the
    /// task to abort.
    pub(crate) async fn server(
        id: NodeId,
        handler: impl RpcHandler,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let task = tokio::spawn(serve(
            listener,
            handler,
            credentials(id),
            std::future::pending(),
        ));
        (addr, task)
    }

    /// A plain TCP client is refused before any RPC of it is read: it
    /// sends a well-formed heartbeat frame in the clear (what a client
    /// holding only the old cluster secret could do), the server fails the
    /// TLS handshake on it and closes, and the handler never hears it.
    #[tokio::test]
    async fn a_plain_tcp_client_is_refused_before_any_rpc_is_read() {
        let handler = Stuck::default();
        let (addr, server) = server(1, handler.clone()).await;
        let mut raw = TcpStream::connect(&addr).await.expect("connect");
        let frame = serde_json::to_vec(&Request::Heartbeat(None)).expect("json");
        let length = u32::try_from(frame.len()).expect("small");
        raw.write_all(&length.to_be_bytes()).await.expect("header");
        raw.write_all(&frame).await.expect("body");
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest))
            .await
            .expect("the server closes the connection within 5 s");
        // Closed (or reset); at most a TLS alert came back, never a response.
        assert!(
            read.is_err() || !String::from_utf8_lossy(&rest).contains("heartbeat"),
            "{rest:?}"
        );
        assert_eq!(handler.heartbeats.load(Ordering::SeqCst), 0);
        server.abort();
    }

    /// A client whose certificate comes from another CA fails the handshake
    /// (the server requires the cluster CA), and so does a server of another
    /// CA for a client; nothing reaches the handler.
    #[tokio::test]
    async fn a_certificate_of_another_ca_is_refused() {
        let handler = Stuck::default();
        let (addr, server) = server(1, handler.clone()).await;
        let other = lbmesh_tls::ClusterCa::generate("test").expect("another CA");
        let mut stranger = Peer::new(
            1,
            addr.clone(),
            credentials_from(&other, 2, CertRole::Manager),
        );
        let answer = stranger
            .call(&Request::Heartbeat(None), Duration::from_secs(5))
            .await;
        assert!(
            matches!(answer, Err(CallError::Unreachable(_))),
            "{answer:?}"
        );
        assert_eq!(handler.heartbeats.load(Ordering::SeqCst), 0);
        // A client dialling node 3 at node 1's address is refused too: the
        // certificate names another node.
        let mut misdirected = Peer::new(3, addr.clone(), credentials(2));
        let answer = misdirected
            .call(&Request::Heartbeat(None), Duration::from_secs(5))
            .await;
        assert!(
            matches!(answer, Err(CallError::Unreachable(_))),
            "{answer:?}"
        );
        let mut member = Peer::new(1, addr, credentials(2));
        let answer = member
            .call(&Request::Heartbeat(None), Duration::from_secs(5))
            .await;
        assert!(matches!(answer, Ok(Response::Heartbeat(_))), "{answer:?}");
        assert_eq!(handler.heartbeats.load(Ordering::SeqCst), 1);
        server.abort();
    }

    /// A worker certificate may send heartbeats but not votes or appends:
    /// each is answered `Refused` before the handler sees it, while a
    /// manager's reach the handler. A removed node is refused anything.
    #[tokio::test]
    async fn workers_cannot_vote_or_append_and_removed_nodes_nothing() {
        use openraft::Vote;
        let handler = Stuck {
            removed: vec![9],
            ..Stuck::default()
        };
        let (addr, server) = server(1, handler.clone()).await;
        let vote = || Request::Vote(VoteRequest::new(Vote::new(5, 2), None));
        let append = || {
            Request::AppendEntries(AppendEntriesRequest {
                vote: Vote::new_committed(5, 2),
                prev_log_id: None,
                entries: Vec::new(),
                leader_commit: None,
            })
        };
        let worker = credentials_from(test_ca(), 2, CertRole::Worker);
        for request in [vote(), append()] {
            let mut peer = Peer::new(1, addr.clone(), worker.clone());
            let answer = peer.call(&request, Duration::from_secs(5)).await;
            match answer {
                Ok(Response::Refused(reason)) => {
                    assert!(reason.contains("worker"), "{reason}")
                }
                other => panic!("a worker's {request:?} got {other:?}"),
            }
        }
        let mut peer = Peer::new(1, addr.clone(), worker);
        let answer = peer
            .call(&Request::Heartbeat(None), Duration::from_secs(5))
            .await;
        assert!(matches!(answer, Ok(Response::Heartbeat(_))), "{answer:?}");
        assert_eq!(handler.served.load(Ordering::SeqCst), 0);

        let mut manager = Peer::new(1, addr.clone(), credentials(3));
        let answer = manager.call(&vote(), Duration::from_millis(300)).await;
        assert!(matches!(answer, Err(CallError::Timeout)), "{answer:?}");
        let mut removed = Peer::new(1, addr, credentials(9));
        let answer = removed
            .call(&Request::Heartbeat(None), Duration::from_secs(5))
            .await;
        assert!(
            matches!(&answer, Ok(Response::Refused(reason)) if reason.contains("removed")),
            "{answer:?}"
        );
        assert_eq!(handler.heartbeats.load(Ordering::SeqCst), 1);
        assert_eq!(
            handler.served.load(Ordering::SeqCst),
            1,
            "the manager's vote"
        );
        server.abort();
    }

    /// Whether a new connection to `addr` is closed at once (over the
    /// handshake cap) or held open waiting for its TLS hello. The stream
    /// is returned to keep the connection open. The wait is short: a cap's
    /// close comes at once on loopback, and eight of these must fit in
    /// one `HANDSHAKE_TIMEOUT`.
    async fn closed_at_once(addr: &str) -> (bool, TcpStream) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(150), stream.read(&mut byte)).await;
        (matches!(read, Ok(Ok(0)) | Ok(Err(_))), stream)
    }

    /// Silent connections hold at most `MAX_HANDSHAKES_PER_ADDRESS` slots
    /// of one address: the next is closed before any handshake (there used
    /// to be no cap at all). An authenticated connection frees its slot,
    /// and a real peer still gets through while one address floods.
    #[tokio::test]
    async fn handshakes_in_flight_are_capped() {
        let handler = Stuck::default();
        let (addr, server) = server(1, handler.clone()).await;
        let mut silent = Vec::new();
        for n in 0..MAX_HANDSHAKES_PER_ADDRESS {
            let (closed, stream) = closed_at_once(&addr).await;
            assert!(!closed, "connection {n} was closed");
            silent.push(stream);
        }
        let (over, _closed) = closed_at_once(&addr).await;
        assert!(over, "a connection over the cap was held open");

        // Freeing one slot admits one more.
        silent.pop();
        let admitted = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match closed_at_once(&addr).await {
                    (false, stream) => break stream,
                    (true, _) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await
        .expect("a freed slot is reused");
        silent.push(admitted);
        server.abort();

        // A peer from another address authenticates while this one is full,
        // and its slot is freed once it has.
        let handshakes = Handshakes::default();
        let flood = IpAddr::from([127, 0, 0, 9]);
        let held: Vec<_> = (0..MAX_HANDSHAKES_PER_ADDRESS)
            .map(|_| handshakes.admit(flood).expect("a slot"))
            .collect();
        assert!(handshakes.admit(flood).is_none());
        let peer = IpAddr::from([127, 0, 0, 2]);
        let slot = handshakes.admit(peer).expect("another address has room");
        drop(slot);
        drop(held);
        let total: Vec<_> = (0..MAX_HANDSHAKES)
            .map(|n| handshakes.admit(IpAddr::from([10, 0, (n / 250) as u8, (n % 250) as u8])))
            .collect();
        assert!(total.iter().all(Option::is_some), "freed slots are free");
        assert!(
            handshakes.admit(IpAddr::from([10, 9, 9, 9])).is_none(),
            "{MAX_HANDSHAKES} in all"
        );
    }

    /// A real peer authenticates and is served while the other slots of
    /// its address are held, and its slot is free again once it has
    /// authenticated: one more silent connection fits, the next does not.
    #[tokio::test]
    async fn an_authenticated_peer_frees_its_handshake_slot() {
        let handler = Stuck::default();
        let (addr, server) = server(1, handler.clone()).await;
        let mut silent = Vec::new();
        for _ in 1..MAX_HANDSHAKES_PER_ADDRESS {
            silent.push(closed_at_once(&addr).await.1);
        }
        let mut peer = Peer::new(1, addr.clone(), credentials(2));
        for _ in 0..3 {
            let answer = peer
                .call(&Request::Heartbeat(None), Duration::from_secs(5))
                .await
                .expect("heartbeat");
            assert!(matches!(answer, Response::Heartbeat(_)));
        }
        assert_eq!(handler.heartbeats.load(Ordering::SeqCst), 3);
        let (last, _held) = closed_at_once(&addr).await;
        assert!(!last, "the freed slot was not free");
        let (over, _closed) = closed_at_once(&addr).await;
        assert!(over, "a connection over the cap was held open");
        server.abort();
    }

    /// A batch over the frame limit is answered so that openraft splits
    /// it (it used to fail with "frame size too big" and be resent as it
    /// was, forever); one entry that big is a plain network error, since
    /// openraft would resend a one-entry hint at once, in a loop.
    #[test]
    fn an_oversized_batch_asks_openraft_to_split_it() {
        type E = RPCError<NodeId, BasicNode, RaftError<NodeId>>;
        assert!(too_large::<RaftError<NodeId>>(300, MAX_FRAME_BYTES).is_none());
        match too_large::<RaftError<NodeId>>(25, 25 * 1_000_000) {
            Some(E::PayloadTooLarge(too_large)) => {
                assert_eq!(
                    too_large.action(),
                    openraft::network::RPCTypes::AppendEntries
                );
                // Half the frame limit's worth of 1 MB entries.
                assert_eq!(too_large.entries_hint(), 8);
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        match too_large::<RaftError<NodeId>>(1, MAX_FRAME_BYTES + 1) {
            Some(E::Network(error)) => {
                assert!(error.to_string().contains("one log entry"), "{error}")
            }
            other => panic!("expected a network error, got {other:?}"),
        }
    }

    /// The heartbeat frames of the version before drain reports, as it
    /// declared them.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "rpc", content = "body", rename_all = "snake_case")]
    enum OlderHeartbeat {
        Heartbeat,
    }

    /// Mixed versions during an upgrade: each side reads the other's plain
    /// heartbeat and its answer; only a report is new to an older voter,
    /// which answers `Malformed` (and the sender falls back).
    #[test]
    fn plain_heartbeats_read_the_same_in_both_versions() {
        let older = serde_json::to_vec(&OlderHeartbeat::Heartbeat).expect("json");
        assert_eq!(older, br#"{"rpc":"heartbeat"}"#);
        let request: Request = serde_json::from_slice(&older).expect("an older heartbeat");
        assert!(matches!(request, Request::Heartbeat(None)), "{request:?}");
        let response: Response = serde_json::from_slice(&older).expect("an older answer");
        assert!(
            matches!(response, Response::Heartbeat(None)),
            "{response:?}"
        );
        for plain in [
            serde_json::to_vec(&Request::Heartbeat(None)).expect("json"),
            serde_json::to_vec(&Response::Heartbeat(None)).expect("json"),
        ] {
            let read: Result<OlderHeartbeat, _> = serde_json::from_slice(&plain);
            assert!(read.is_ok(), "an older node cannot read {plain:?}");
        }
        let report = DrainReport {
            open: [("t1".to_owned(), 0)].into(),
        };
        let with = serde_json::to_vec(&Request::Heartbeat(Some(report.clone()))).expect("json");
        assert!(serde_json::from_slice::<OlderHeartbeat>(&with).is_err());
        match serde_json::from_slice::<Request>(&with) {
            Ok(Request::Heartbeat(Some(read))) => assert_eq!(read, report),
            other => panic!("expected the report back, got {other:?}"),
        }
    }
}
