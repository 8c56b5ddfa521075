//! The openraft type configuration of the registry.
use std::io::Cursor;

use crate::command::Proposal;
use crate::outcome::Outcome;

pub use crate::node::NodeId;

openraft::declare_raft_types!(
    /// Raft types of the registry: proposals (commands with their request
    /// ids) in, outcomes out, nodes known by their Raft RPC address.
    pub TypeConfig:
        D = Proposal,
        R = Outcome,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
