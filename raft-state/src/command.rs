//! The commands the Raft log carries: every change to the registry is one.
//!
//! [`crate::state::RegistryState::apply`] applies them; this file only says
//! what they are, so the openraft type configuration and the transport can
//! name them without depending on how they are applied.
//!
//! A log entry is a [`Proposal`]: a command and, for a write that may be
//! sent more than once, its request id (see [`crate::requests`]). An entry
//! without one (every entry written before ids existed) is a bare command in
//! JSON, and applies exactly as it always did.

use std::collections::BTreeMap;

use lb_config::ServiceSpec;
use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterInfo, TokenKind, TokenSeed, VipRange, VipRangeV6};
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
        /// The IPv6 VIP range; absent in entries of lbd versions before
        /// v6 VIPs, whose clusters stay IPv4 only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vip_range_v6: Option<VipRangeV6>,
        /// The cluster's DNS domain; absent in entries of lbd versions
        /// that kept it per node, whose clusters use the default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dns_domain: Option<String>,
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
        /// The service's id, made by the API before it proposes (so every
        /// node applies the same); empty in entries written before ids.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        id: String,
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
    /// Replaces one token's seed (`lbctl cluster join-token --rotate`):
    /// the old token no longer admits anyone; nodes that joined with it are
    /// unaffected (they hold certificates, and a restart uses the data dir).
    /// The API makes the seed; refused before the cluster is initialised.
    RotateToken {
        kind: TokenKind,
        seed: TokenSeed,
    },
}

/// A client request's id (its idempotency key): made once per request and
/// kept through every forward and retry of it, so the registry can tell a
/// resend from a new write.
pub type RequestId = String;

/// What the Raft log carries: a command, and the id of the request it
/// answers when it may be resent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Absent in entries written before request ids, and in the
    /// scheduler's rounds (never forwarded, never resent); left out of the
    /// JSON when absent, so such an entry is the bare command it always was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestId>,
    /// Set on a service create or update whose spec has a UDP port, by an
    /// lbd that routes UDP. Absent in every entry written before UDP
    /// ports, whose udp specs were refused, and still are
    /// ([`Command::names_udp`]); absent from the JSON when false, so other
    /// entries are what they always were.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub udp: bool,
    #[serde(flatten)]
    pub command: Command,
}

impl Proposal {
    /// A command that is never resent.
    pub fn once(command: Command) -> Self {
        Self {
            request: None,
            udp: command.names_udp(),
            command,
        }
    }

    /// A command answering request `request`: a resend of it gets the first
    /// answer.
    pub fn keyed(request: RequestId, command: Command) -> Self {
        Self {
            request: Some(request),
            udp: command.names_udp(),
            command,
        }
    }
}

impl Command {
    /// Whether this is a service create or update whose spec publishes a
    /// UDP port.
    pub fn names_udp(&self) -> bool {
        match self {
            Command::CreateService { spec, .. } | Command::UpdateService { spec } => spec
                .ports
                .iter()
                .any(|port| port.protocol.as_deref() == Some("udp")),
            _ => false,
        }
    }
}

impl From<Command> for Proposal {
    fn from(command: Command) -> Self {
        Self::once(command)
    }
}
