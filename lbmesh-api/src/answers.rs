//! What the `/v1` routes answer.
//!
//! Field names and enum spellings are the wire format that lbctl, tests and
//! users parse; a change here is a change of the API. Reads answer the
//! richer views ([`Node`], [`ServiceStatus`], [`Task`]); writes answer what
//! the registry stored ([`Member`], [`Service`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use lb_config::ServiceSpec;
use serde::{Deserialize, Serialize};

/// A node's id: a random positive 63-bit number, shown in decimal.
pub type NodeId = u64;
/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// Defines a field-less enum whose JSON spelling and `Display` are the
/// given strings, so the two never drift apart.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $($(#[$variant_meta:meta])* $variant:ident = $text:literal,)+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$variant_meta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// The spelling on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// Managers vote in Raft (up to five of them); workers only hold a copy.
    Role {
        Manager = "manager",
        Worker = "worker",
    }
}

wire_enum! {
    /// Whether the scheduler may place tasks on a node.
    Availability {
        /// New tasks may be placed here.
        Active = "active",
        /// No new tasks; running ones stay.
        Pause = "pause",
        /// No tasks: running ones move elsewhere.
        Drain = "drain",
    }
}

wire_enum! {
    /// Whether a node's heartbeats arrive.
    NodeStatus {
        Ready = "ready",
        Down = "down",
    }
}

wire_enum! {
    /// A node's place in the Raft membership, as this node sees it.
    RaftRole {
        Leader = "leader",
        Voter = "voter",
        Learner = "learner",
    }
}

wire_enum! {
    /// What the scheduler wants of a task.
    DesiredState {
        Running = "running",
        Shutdown = "shutdown",
    }
}

wire_enum! {
    /// What was last observed of a task.
    TaskState {
        /// No node can take it yet; its `message` says why.
        Pending = "pending",
        /// Placed on a node whose agent has not started it yet.
        Assigned = "assigned",
        Starting = "starting",
        Running = "running",
        /// Ended on its own, turned unhealthy or could not start.
        Failed = "failed",
        /// Stopped because it was asked to.
        Shutdown = "shutdown",
        /// Its node went down or was removed: its fate is unknown.
        Orphaned = "orphaned",
    }
}

wire_enum! {
    /// Result of the service's active check.
    TaskHealth {
        /// Not checked yet, or not enough results to decide.
        Starting = "starting",
        Healthy = "healthy",
        Unhealthy = "unhealthy",
        /// The service has no check: running is enough.
        None = "none",
    }
}

wire_enum! {
    /// State of a service's rolling update.
    UpdateState {
        Updating = "updating",
        Paused = "paused",
        Completed = "completed",
        RollbackStarted = "rollback_started",
        RollbackPaused = "rollback_paused",
        RollbackCompleted = "rollback_completed",
    }
}

/// `GET /v1/cluster`: the cluster as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub id: String,
    /// The node that answered.
    pub node_id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    /// Index of the last log entry this node holds.
    pub commit_index: u64,
    /// Index of the last entry this node applied.
    pub applied_index: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// How many nodes and services the registry holds.
    pub nodes: usize,
    pub services: usize,
}

/// `GET /v1/cluster/join-token/{role}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub token: String,
}

/// A member of the cluster as the registry holds it: what a joining node
/// presents, and what a join or a node update answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub name: String,
    /// Where its Raft RPC server listens.
    pub raft_addr: SocketAddr,
    /// Where its admin API listens.
    pub api_addr: SocketAddr,
    /// Where it binds published ports; its tasks are reached here too.
    pub ingress_addr: IpAddr,
    pub role: Role,
    pub availability: Availability,
    pub status: NodeStatus,
    pub labels: BTreeMap<String, String>,
}

/// A node as `GET /v1/nodes` shows it: the member and its Raft role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    #[serde(flatten)]
    pub member: Member,
    pub raft: RaftRole,
}

/// A service as the registry holds it: what a write answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// The spec as submitted; it passed validation when it was stored.
    pub spec: ServiceSpec,
    /// Starts at 1 and grows by one with every accepted spec change.
    pub version: u64,
    pub vip: Ipv4Addr,
    /// The spec before the last update, for `service rollback`.
    pub previous: Option<ServiceSpec>,
    /// Version of the task template; tasks of an older one are replaced by a
    /// rolling update.
    #[serde(default)]
    pub task_version: u64,
    /// The task version that goes with `previous`.
    #[serde(default)]
    pub previous_task_version: u64,
    /// The last rolling update, if any.
    #[serde(default)]
    pub update: Option<UpdateStatus>,
}

/// A service with its task counts, as reads show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    #[serde(flatten)]
    pub service: Service,
    /// Tasks that serve traffic now.
    pub running: usize,
    /// Tasks wanted: the replicas, or the live tasks of a global service.
    pub desired: usize,
    /// Listen addresses of the service that some node cannot bind now (it
    /// serves the rest and retries these every few seconds).
    #[serde(default)]
    pub listener_errors: Vec<ListenerError>,
}

/// A listen address a node cannot bind, as that node reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerError {
    /// The node's name.
    pub node: String,
    pub address: SocketAddr,
    /// The bind error in words (`address in use`).
    pub error: String,
}

impl fmt::Display for ListenerError {
    /// `node-2: cannot bind 127.0.0.2:8080: address in use`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: cannot bind {}: {}",
            self.node, self.address, self.error
        )
    }
}

/// A service's rolling update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    /// The task template version being rolled out.
    pub task_version: u64,
    pub started_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub message: String,
}

/// A task as `GET .../tasks` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub service: String,
    /// Replicated services number their tasks 1..=replicas; a global
    /// service's tasks have slot 0 and are known by their node.
    pub slot: u32,
    /// The service's task template version this task runs.
    pub spec_version: u64,
    /// `None` while pending.
    pub node: Option<NodeId>,
    pub desired: DesiredState,
    pub state: TaskState,
    pub health: TaskHealth,
    pub endpoint: Option<TaskEndpoint>,
    /// Container id or `pid:N`.
    pub runtime_id: Option<String>,
    /// The last error, or why the task is pending or stopped.
    pub message: String,
    /// Replacements of this slot after failures, before this task.
    pub attempt: u32,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// When it was first observed running.
    pub started_at: Option<Millis>,
    /// The name of its node, if it has one.
    pub node_name: Option<String>,
}

/// Where a task is reached: its node's address and one host port per target
/// port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEndpoint {
    pub ip: IpAddr,
    /// `(target port, host port)` pairs.
    pub ports: Vec<(u16, u16)>,
}

/// What a `DELETE` answers: the name of what is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: String,
}
