//! raft-state: lbmesh's replicated registry.
//!
//! # Layout and data flow
//!
//! ```text
//! propose(Command) ──> openraft leader ──append──> LogStore (redb, fsync before ack)
//!                          │ replicate over network (mutual TLS, length-delimited JSON)
//!                          ▼ committed
//!                     StateMachine::apply ──> RegistryState::apply_proposal (a resend: its first
//!                          │                  answer; else apply: validates, Outcome per entry)
//!                          │ (state, last applied and membership in one redb transaction)
//!                          ▼
//!                     watch channel ──> every reader on this node (routing, API)
//! ```
//!
//! Files, each importing only those above it:
//!
//! - [`node`], [`cluster`], [`random`]: node records; cluster settings and the
//!   VIP range; random bytes for secrets and nonces (fails closed).
//! - [`task`]: tasks, the scheduler's ops and the agents' reports, as records.
//! - [`service`]: the service record (its spec, versions, VIP, update).
//! - [`command`], [`outcome`]: what the log carries (a command and its
//!   request id), and the answer to each applied command (a record or a
//!   rejection).
//! - [`requests`]: the recent request ids and their answers, so a resent
//!   write gets its first answer.
//! - [`state`]: [`state::RegistryState`] and `apply`, pure, deterministic and
//!   validating; its child `state/tasks.rs` applies the task commands. It
//!   re-exports the records, so `raft_state::state::Command` and the like
//!   still name them.
//! - [`drains`]: drain reports (connections each node holds to departing
//!   tasks, sent with its heartbeats) and which tasks have drained.
//! - [`types`]: the openraft type configuration.
//! - [`store`]: the redb-backed log store and state machine (openraft's
//!   storage-v2 traits), snapshots included.
//! - [`authority`]: what a node may ask of the registry given its role
//!   (a worker writes facts about itself only; a removed node nothing).
//! - [`network`]: the mutual-TLS transport; its server answers through an
//!   [`network::RpcHandler`] and knows nothing of the registry.
//! - [`leader`]: a follower's calls to the leader (forwarded writes and read
//!   indexes) over a pool of connections, each call to the leader Raft
//!   names now, given up when that changes.
//! - [`heartbeats`]: every node's heartbeats, sent to every voter at once,
//!   so whichever voter leads next knows how long each node has been silent.
//! - [`registry`]: the handle the rest of lbmesh uses (start, join, propose,
//!   read, watch); it implements the transport's handler.
//!
//! Invariants: a log write is on disk before openraft is told it is; a
//! command the state machine rejects changes nothing and is answered with a
//! rejection, never a panic; every node that has applied index i holds the
//! same [`state::RegistryState`].
#![forbid(unsafe_code)]

pub mod authority;
pub mod cluster;
pub mod command;
pub mod drains;
mod election;
pub mod heartbeats;
pub mod leader;
pub mod network;
pub mod node;
pub mod outcome;
pub mod random;
pub mod registry;
pub mod requests;
pub mod service;
pub mod state;
pub mod store;
pub mod task;
pub mod types;
