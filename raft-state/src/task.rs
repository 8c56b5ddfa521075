//! Tasks: the scheduler's units of work, as the registry holds them.
//!
//! # Lifecycle
//!
//! ```text
//! scheduler (leader)                agent (the task's node)                 routing (every node)
//! Create{node: None} ─> pending     .                                       .
//! Create / Assign{node} ─> assigned ─> Report starting ─> Report running ─> in the table once
//!                                       (endpoint, runtime id)              running + healthy
//!                                                                           + desired running
//! Shutdown (desired) ───────────────> out of every table first; the agent drains, stops,
//!                                     Report shutdown
//!                                   <─ Report failed (exited, unhealthy, start error)
//! Orphan (node down) ─> orphaned; Remove ─> gone (history kept: the newest few dead tasks per slot)
//! ```
//!
//! The scheduler's changes of one round travel as one [`Command::Schedule`]
//! entry ([`TaskOp`]s applied all or nothing); agents send one
//! [`TaskReport`] per observed change. Timestamps come from the proposer, so
//! applying stays deterministic.
//!
//! Invariants (kept by `RegistryState::apply`, in `state/tasks.rs`): a
//! task's service existed when it was created; a report is accepted only
//! from the node the task is assigned to, and never moves a task out of a
//! terminal state (a late report cannot revive it).
//!
//! [`Command::Schedule`]: crate::command::Command::Schedule

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::node::NodeId;

/// Milliseconds since the Unix epoch, as proposers stamp changes.
pub type Millis = u64;

/// What the scheduler wants of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Running,
    Shutdown,
}

/// What was last observed of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// No node can take it yet; `message` says why.
    Pending,
    /// Placed on a node whose agent has not started it yet.
    Assigned,
    Starting,
    Running,
    /// Ended on its own, turned unhealthy or could not start.
    Failed,
    /// Stopped because it was asked to.
    Shutdown,
    /// Its node went down or was removed: its fate is unknown.
    Orphaned,
}

impl TaskState {
    /// No further report changes a task in this state.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Failed | Self::Shutdown | Self::Orphaned)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Assigned => "assigned",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Failed => "failed",
            Self::Shutdown => "shutdown",
            Self::Orphaned => "orphaned",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Result of the service's active check (and the image's own check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskHealth {
    /// Not checked yet, or not enough results to decide.
    Starting,
    Healthy,
    Unhealthy,
    /// The service has no check: running is enough.
    None,
}

impl TaskHealth {
    /// Whether a running task with this health may receive traffic.
    pub fn serves(self) -> bool {
        matches!(self, Self::Healthy | Self::None)
    }
}

/// Where a task is reached: the node's address and one host port per
/// target port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEndpoint {
    pub ip: IpAddr,
    /// `(target port, host port)` pairs.
    pub ports: Vec<(u16, u16)>,
}

impl TaskEndpoint {
    /// The address that serves `target`.
    pub fn addr_for(&self, target: u16) -> Option<SocketAddr> {
        self.ports
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, host)| SocketAddr::new(self.ip, *host))
    }
}

impl fmt::Display for TaskEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports: Vec<String> = self
            .ports
            .iter()
            .map(|(_, host)| SocketAddr::new(self.ip, *host).to_string())
            .collect();
        f.write_str(&ports.join(","))
    }
}

/// One task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
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
}

impl TaskRecord {
    /// Desired running and not terminal: counts towards the replicas.
    pub fn is_live(&self) -> bool {
        self.desired == DesiredState::Running && !self.state.is_terminal()
    }

    /// Running, healthy and wanted: receives traffic.
    pub fn serves(&self) -> bool {
        self.desired == DesiredState::Running
            && self.state == TaskState::Running
            && self.health.serves()
            && self.endpoint.is_some()
    }
}

/// A task the scheduler creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    pub id: String,
    pub service: String,
    pub slot: u32,
    pub spec_version: u64,
    pub node: Option<NodeId>,
    pub attempt: u32,
    /// Why it is pending, when `node` is `None`.
    #[serde(default)]
    pub message: String,
}

/// State of a service's rolling update, shown by `service inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            Self::RollbackStarted | Self::RollbackPaused | Self::RollbackCompleted
        )
    }

    pub fn in_progress(self) -> bool {
        matches!(self, Self::Updating | Self::RollbackStarted)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    /// The task template version being rolled out.
    pub task_version: u64,
    pub started_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub message: String,
}

/// One change in a scheduling round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TaskOp {
    Create {
        task: NewTask,
    },
    /// Places a pending task.
    Assign {
        id: String,
        node: NodeId,
    },
    /// Desired state shutdown: the task leaves every routing table now and
    /// its agent drains and stops it.
    Shutdown {
        id: String,
        reason: String,
    },
    /// Its node is down or gone.
    Orphan {
        id: String,
    },
    Remove {
        id: String,
    },
    SetUpdate {
        service: String,
        status: UpdateStatus,
    },
}

/// What an agent observed of one of its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    pub id: String,
    /// The reporting node; must be the task's node.
    pub node: NodeId,
    pub state: TaskState,
    pub health: TaskHealth,
    pub endpoint: Option<TaskEndpoint>,
    pub runtime_id: Option<String>,
    pub message: String,
    pub at: Millis,
}
