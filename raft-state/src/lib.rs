//! raft-state: lbmesh's replicated registry.
//!
//! # Layout and data flow
//!
//! ```text
//! propose(Command) ──> openraft leader ──append──> LogStore (redb, fsync before ack)
//!                          │ replicate over network (TCP, length-delimited JSON, HMAC-authenticated)
//!                          ▼ committed
//!                     StateMachine::apply ──> RegistryState::apply (validates; Outcome per entry)
//!                          │ (state, last applied and membership in one redb transaction)
//!                          ▼
//!                     watch channel ──> every reader on this node (routing, API)
//! ```
//!
//! - [`state`]: the registry value and the commands that change it; pure,
//!   deterministic, validating.
//! - [`task`]: tasks, the scheduler's rounds and the agents' reports.
//! - [`types`]: the openraft type configuration.
//! - [`store`]: the redb-backed log store and state machine (openraft's
//!   storage-v2 traits), snapshots included.
//! - [`random`]: random bytes for secrets and nonces; fails closed.
//!
//! Invariants: a log write is on disk before openraft is told it is; a
//! command the state machine rejects changes nothing and is answered with a
//! rejection, never a panic; every node that has applied index i holds the
//! same [`state::RegistryState`].
#![forbid(unsafe_code)]

pub mod network;
pub mod random;
pub mod registry;
pub mod state;
pub mod store;
pub mod task;
pub mod types;
