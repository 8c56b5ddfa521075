//! Raft RPCs between nodes: TCP, length-delimited JSON frames, and a mutual
//! HMAC handshake on the cluster secret before any RPC is served.
//!
//! # Protocol
//!
//! ```text
//! client                                   server
//!   ──── connect ───────────────────────────>
//!   <─── Challenge { nonce_s } ─────────────
//!   ──── Hello { from, to, nonce_c, proof_c } ─>   proof_c = HMAC(secret, "client" | nonce_s | nonce_c | from | to)
//!   <─── Welcome { proof_s } ───────────────       proof_s = HMAC(secret, "server" | nonce_c | nonce_s | to)
//!        (or Refused { reason } and close: wrong proof, or `to` is not this node)
//!   ──── Request ──> <── Response ──  (one at a time, connection reused)
//! ```
//!
//! The secret itself never crosses the wire; fresh nonces on both sides stop
//! replays, and a node without OS randomness fails the handshake rather than
//! send a predictable nonce.
//!
//! # Limits before and after authentication
//!
//! Until the handshake succeeds, either side refuses a frame longer than
//! [`HANDSHAKE_FRAME_BYTES`] from its length prefix, before buffering any
//! of it; afterwards the limit is [`MAX_FRAME_BYTES`]. A server holds at
//! most [`MAX_HANDSHAKES`] connections that have not authenticated yet
//! ([`MAX_HANDSHAKES_PER_ADDRESS`] per client address) and closes one more
//! at once; each must finish its handshake within `HANDSHAKE_TIMEOUT`. So
//! unauthenticated peers cost a node a few KiB each, and a bounded few.
//! An append-entries batch that still encodes over the frame limit is
//! answered `PayloadTooLarge` (openraft resends it split); a frame that does
//! not decode gets an error response and the connection is closed. Requests carry the target node id through the handshake, so a
//! connection that reaches the wrong node (stale address) is refused.
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
use hmac::{Hmac, Mac};
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
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tracing::{debug, warn};

use crate::command::Proposal;
use crate::outcome::Outcome;
use crate::random;
use crate::types::{NodeId, TypeConfig};

/// Largest frame either side accepts once the handshake succeeded: well
/// above openraft's 3 MiB snapshot chunks and the store's 4 MiB replication
/// batches (`store::MAX_BATCH_BYTES`).
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// Largest frame either side accepts before the handshake succeeded: a
/// handshake message is a few hundred bytes, so an unauthenticated peer
/// cannot make a node buffer more than this per connection.
pub const HANDSHAKE_FRAME_BYTES: usize = 4 * 1024;
/// Connections a node serves at once before their handshake succeeded;
/// one more is closed at once. Peers authenticate within a round trip, so
/// the slots are free but for a flood.
pub const MAX_HANDSHAKES: usize = 64;
/// Of [`MAX_HANDSHAKES`], how many one client address may hold, so one
/// flooding host cannot take every slot from the real peers.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 8;
/// 256 bits: a nonce repeats with negligible odds over a cluster's life.
const NONCE_BYTES: usize = 32;
/// How long a handshake may take: a round trip and two HMACs, so this only
/// bounds how long a silent connection holds a handshake slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of calls that openraft does not bound itself.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

type FramedStream<S = TcpStream> = Framed<S, LengthDelimitedCodec>;

/// The cluster secret that authenticates every Raft connection.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn new(bytes: &[u8]) -> Self {
        Self(Arc::from(bytes))
    }

    fn proof(&self, parts: &[&[u8]]) -> Vec<u8> {
        self.mac(parts).finalize().into_bytes().to_vec()
    }

    fn verify(&self, parts: &[&[u8]], proof: &[u8]) -> bool {
        self.mac(parts).verify_slice(proof).is_ok()
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(b"lbmesh-raft-v1");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Handshake {
    Challenge {
        nonce: Vec<u8>,
    },
    Hello {
        from: NodeId,
        to: NodeId,
        nonce: Vec<u8>,
        proof: Vec<u8>,
    },
    Welcome {
        proof: Vec<u8>,
    },
    Refused {
        reason: String,
    },
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
    /// "I am alive", sent to the leader every heartbeat interval. The sender
    /// is the node the handshake authenticated; it is not in the log.
    Heartbeat,
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
    Heartbeat,
    /// The request frame was malformed; the server closes the connection.
    Malformed(String),
}

/// A fresh handshake nonce. Without OS randomness the handshake fails: a
/// predictable nonce would let a recorded handshake be replayed.
fn nonce() -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; NONCE_BYTES];
    random::fill(&mut bytes).map_err(|error| {
        warn!(%error, "no handshake nonce; refusing the connection");
        std::io::Error::other(error)
    })?;
    Ok(bytes)
}

/// The codec of a connection whose handshake has not succeeded yet: a
/// longer frame is refused from its length prefix, before any of it is
/// buffered. [`authenticated`] lifts the limit.
fn handshake_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(HANDSHAKE_FRAME_BYTES)
        .new_codec()
}

/// Lifts a connection's frame limit once its handshake succeeded.
fn authenticated<S>(mut stream: FramedStream<S>) -> FramedStream<S> {
    stream.codec_mut().set_max_frame_length(MAX_FRAME_BYTES);
    stream
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

    /// A write a follower forwarded: served only if this node leads.
    fn propose(
        &self,
        proposal: Proposal,
    ) -> impl Future<Output = Result<Outcome, RemoteFailure>> + Send;

    /// The commit index a linearizable read must wait for, if this node
    /// leads.
    fn read_index(&self) -> impl Future<Output = Result<u64, RemoteFailure>> + Send;

    /// `from` (the node the handshake authenticated) says it is alive.
    fn heartbeat(&self, from: NodeId);
}

/// Serves Raft RPCs with `handler` on `listener` until `shutdown` resolves;
/// then closes every open connection too.
pub async fn serve(
    listener: TcpListener,
    node_id: NodeId,
    handler: impl RpcHandler,
    secret: Secret,
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
        let secret = secret.clone();
        connections.spawn(async move {
            if let Err(error) = serve_connection(stream, slot, node_id, handler, secret).await {
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
    node_id: NodeId,
    handler: impl RpcHandler,
    secret: Secret,
) -> std::io::Result<()> {
    let mut stream = Framed::new(stream, handshake_codec());
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let server_nonce = nonce()?;
        send(
            &mut stream,
            &Handshake::Challenge {
                nonce: server_nonce.clone(),
            },
        )
        .await?;
        let Handshake::Hello {
            from,
            to,
            nonce: client_nonce,
            proof,
        } = receive(&mut stream).await?
        else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "expected hello",
            ));
        };
        let from_bytes = from.to_be_bytes();
        let to_bytes = to.to_be_bytes();
        let parts: [&[u8]; 5] = [
            b"client",
            &server_nonce,
            &client_nonce,
            &from_bytes,
            &to_bytes,
        ];
        let refusal = if !secret.verify(&parts, &proof) {
            Some("wrong cluster secret".to_owned())
        } else if to != node_id {
            Some(format!("this is node {node_id}, not node {to}"))
        } else {
            None
        };
        if let Some(reason) = refusal {
            warn!(from, %reason, "raft connection refused");
            send(
                &mut stream,
                &Handshake::Refused {
                    reason: reason.clone(),
                },
            )
            .await?;
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                reason,
            ));
        }
        let proof = secret.proof(&[b"server", &client_nonce, &server_nonce, &to_bytes]);
        send(&mut stream, &Handshake::Welcome { proof }).await?;
        Ok(from)
    })
    .await;
    let peer_id = match handshake {
        Ok(result) => result?,
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
    };
    drop(slot);
    let mut stream = self::authenticated(stream);

    loop {
        let request: Request = match receive(&mut stream).await {
            Ok(request) => request,
            Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                let _ = send(&mut stream, &Response::Malformed(error.to_string())).await;
                return Err(error);
            }
            Err(error) => return Err(error),
        };
        let response = match request {
            Request::AppendEntries(rpc) => {
                Response::AppendEntries(handler.append_entries(rpc).await)
            }
            Request::Vote(rpc) => Response::Vote(handler.vote(rpc).await),
            Request::InstallSnapshot(rpc) => {
                Response::InstallSnapshot(handler.install_snapshot(rpc).await)
            }
            Request::Propose(proposal) => Response::Propose(handler.propose(*proposal).await),
            Request::ReadIndex => Response::ReadIndex(handler.read_index().await),
            Request::Heartbeat => {
                handler.heartbeat(peer_id);
                Response::Heartbeat
            }
        };
        send(&mut stream, &response).await?;
    }
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made (or the handshake was refused).
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
    self_id: NodeId,
    secret: Secret,
    stream: Option<FramedStream>,
}

impl Peer {
    pub fn new(self_id: NodeId, target: NodeId, addr: String, secret: Secret) -> Self {
        Self {
            target,
            addr,
            self_id,
            secret,
            stream: None,
        }
    }

    /// The address this peer dials.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn connect(&self) -> std::io::Result<FramedStream> {
        let stream = TcpStream::connect(&self.addr).await?;
        let _ = stream.set_nodelay(true);
        let mut stream = Framed::new(stream, handshake_codec());
        let Handshake::Challenge {
            nonce: server_nonce,
        } = receive(&mut stream).await?
        else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "expected challenge",
            ));
        };
        let client_nonce = nonce()?;
        let from = self.self_id.to_be_bytes();
        let to = self.target.to_be_bytes();
        let proof = self
            .secret
            .proof(&[b"client", &server_nonce, &client_nonce, &from, &to]);
        let hello = Handshake::Hello {
            from: self.self_id,
            to: self.target,
            nonce: client_nonce.clone(),
            proof,
        };
        send(&mut stream, &hello).await?;
        match receive(&mut stream).await? {
            Handshake::Welcome { proof }
                if self
                    .secret
                    .verify(&[b"server", &client_nonce, &server_nonce, &to], &proof) =>
            {
                Ok(authenticated(stream))
            }
            Handshake::Welcome { .. } => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the server does not know the cluster secret",
            )),
            Handshake::Refused { reason } => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("refused: {reason}"),
            )),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "unexpected handshake",
            )),
        }
    }

    /// Opens a connection and completes the handshake, then drops it: the
    /// peer is reachable and knows the cluster secret.
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
    pub self_id: NodeId,
    pub secret: Secret,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer::new(self.self_id, target, node.addr.clone(), self.secret.clone())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub(crate) fn secret() -> Secret {
        Secret::new(b"test secret")
    }

    /// A node that answers heartbeats (counting them) and never answers
    /// anything else: a leader whose forwarded calls are stuck.
    #[derive(Clone, Default)]
    pub(crate) struct Stuck {
        pub heartbeats: Arc<AtomicUsize>,
    }

    impl RpcHandler for Stuck {
        async fn append_entries(
            &self,
            _: AppendEntriesRequest<TypeConfig>,
        ) -> Answer<AppendEntriesResponse<NodeId>, Infallible> {
            std::future::pending().await
        }
        async fn vote(&self, _: VoteRequest<NodeId>) -> Answer<VoteResponse<NodeId>, Infallible> {
            std::future::pending().await
        }
        async fn install_snapshot(
            &self,
            _: InstallSnapshotRequest<TypeConfig>,
        ) -> Answer<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
            std::future::pending().await
        }
        async fn propose(&self, _: Proposal) -> Result<Outcome, RemoteFailure> {
            std::future::pending().await
        }
        async fn read_index(&self) -> Result<u64, RemoteFailure> {
            std::future::pending().await
        }
        fn heartbeat(&self, _: NodeId) {
            self.heartbeats.fetch_add(1, Ordering::SeqCst);
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
            id,
            handler,
            secret(),
            std::future::pending(),
        ));
        (addr, task)
    }

    /// A frame over the handshake limit, sent before authenticating, is
    /// refused from its length prefix: the server closes the connection
    /// without reading the rest. It used to accept frames up to 16 MiB
    /// here and buffer them (40 such connections took 430 MB). The pipe
    /// holds 64 KiB, so a 1 MiB body can only be written if the server
    /// keeps reading it.
    #[tokio::test]
    async fn a_big_frame_before_the_handshake_is_refused_unread() {
        let (client, server_side) = tokio::io::duplex(64 * 1024);
        let slot = Handshakes::default()
            .admit(IpAddr::from([127, 0, 0, 1]))
            .expect("a slot");
        let server = tokio::spawn(serve_connection(
            server_side,
            slot,
            1,
            Stuck::default(),
            secret(),
        ));
        let mut client = Framed::new(client, handshake_codec());
        let challenge: Handshake = receive(&mut client).await.expect("challenge");
        assert!(matches!(challenge, Handshake::Challenge { .. }));
        let mut raw = client.into_inner();
        let claimed = u32::try_from(8 * 1024 * 1024).expect("u32");
        raw.write_all(&claimed.to_be_bytes()).await.expect("header");
        let body = vec![b'x'; 1024 * 1024];
        let written = tokio::time::timeout(Duration::from_secs(5), raw.write_all(&body)).await;
        assert!(
            matches!(written, Ok(Err(_))),
            "the server read the unauthenticated frame's body: {written:?}"
        );
        let refused = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server ends the connection")
            .expect("the connection's task");
        let error = refused.expect_err("the frame is refused");
        assert!(error.to_string().contains("frame size too big"), "{error}");
        // Nothing more arrives: the connection is closed.
        let mut rest = Vec::new();
        let _ = raw.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "{rest:?}");
    }

    /// Reads the first frame a new connection to `addr` gets: `Some` with
    /// the challenge, `None` when the server closes it at once. The stream
    /// is returned to keep the connection open.
    async fn first_frame(addr: &str) -> (Option<Handshake>, FramedStream) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut stream = Framed::new(stream, handshake_codec());
        let first = tokio::time::timeout(Duration::from_secs(5), receive(&mut stream))
            .await
            .expect("an answer or a close within 5 s");
        (first.ok(), stream)
    }

    /// Silent connections hold at most `MAX_HANDSHAKES_PER_ADDRESS` slots
    /// of one address: the next is closed before any challenge (there used
    /// to be no cap at all). An authenticated connection frees its slot,
    /// and a real peer still gets through while one address floods.
    #[tokio::test]
    async fn handshakes_in_flight_are_capped() {
        let handler = Stuck::default();
        let (addr, server) = server(1, handler.clone()).await;
        let mut silent = Vec::new();
        for n in 0..MAX_HANDSHAKES_PER_ADDRESS {
            let (first, stream) = first_frame(&addr).await;
            assert!(
                matches!(first, Some(Handshake::Challenge { .. })),
                "connection {n}: {first:?}"
            );
            silent.push(stream);
        }
        let (over, _closed) = first_frame(&addr).await;
        assert!(over.is_none(), "connection over the cap got {over:?}");

        // Freeing one slot admits one more.
        silent.pop();
        let admitted = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match first_frame(&addr).await {
                    (Some(first), stream) => break (first, stream),
                    (None, _) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await
        .expect("a freed slot is reused");
        assert!(matches!(admitted.0, Handshake::Challenge { .. }));
        silent.push(admitted.1);
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
            silent.push(first_frame(&addr).await.1);
        }
        let mut peer = Peer::new(2, 1, addr.clone(), secret());
        for _ in 0..3 {
            let answer = peer
                .call(&Request::Heartbeat, Duration::from_secs(5))
                .await
                .expect("heartbeat");
            assert!(matches!(answer, Response::Heartbeat));
        }
        assert_eq!(handler.heartbeats.load(Ordering::SeqCst), 3);
        let (last, _held) = first_frame(&addr).await;
        assert!(
            matches!(last, Some(Handshake::Challenge { .. })),
            "{last:?}"
        );
        let (over, _closed) = first_frame(&addr).await;
        assert!(over.is_none(), "connection over the cap got {over:?}");
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
}
