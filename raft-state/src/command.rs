//! The commands the Raft log carries: every change to the registry is one.
//!
//! [`crate::state::RegistryState::apply`] applies them; this file only says
//! what they are, so the openraft type configuration and the transport can
//! name them without depending on how they are applied.

use std::collections::BTreeMap;

use lb_config::ServiceSpec;
use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterInfo, VipRange};
use crate::node::{Availability, ListenerFailure, NodeId, NodeRecord, NodeStatus, Role};
use crate::task::{Millis, TaskOp, TaskReport};

/// A change to the registry. New kinds of change (tasks) are new variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Written by the bootstrapping node; refused once set.
    InitCluster {
        cluster: ClusterInfo,
        vip_range: VipRange,
    },
    /// Adds a node, or updates the addresses of one that rejoins.
    RegisterNode {
        node: NodeRecord,
    },
    UpdateNode {
        id: NodeId,
        availability: Option<Availability>,
        role: Option<Role>,
        #[serde(default)]
        labels_add: BTreeMap<String, String>,
        #[serde(default)]
        labels_remove: Vec<String>,
    },
    SetNodeStatus {
        id: NodeId,
        status: NodeStatus,
    },
    RemoveNode {
        id: NodeId,
    },
    CreateService {
        spec: ServiceSpec,
    },
    UpdateService {
        spec: ServiceSpec,
    },
    RollbackService {
        name: String,
    },
    RemoveService {
        name: String,
    },
    /// One round of the scheduler, applied all or nothing.
    Schedule {
        ops: Vec<TaskOp>,
        at: Millis,
    },
    /// An agent's observation of one of its tasks.
    ReportTask {
        report: Box<TaskReport>,
    },
    /// The listen addresses a node cannot bind now (all of them: the list
    /// replaces the last one; empty when every address is bound). Written
    /// by the node itself when they change.
    ReportListeners {
        node: NodeId,
        #[serde(default)]
        failures: Vec<ListenerFailure>,
    },
}
