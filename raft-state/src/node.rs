//! Cluster members as the registry holds them, and what a member reports
//! of its listeners.
//!
//! Plain records with no behaviour: [`crate::state::RegistryState`] checks
//! and changes them (unique ids and names, valid labels). Depends on nothing
//! else in the crate, so every other record can name a [`NodeId`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// A node's Raft id; also its id in the registry.
pub type NodeId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Ready,
    Down,
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub name: String,
    /// Where its Raft RPC server listens.
    pub raft_addr: SocketAddr,
    /// Where its admin API listens.
    pub api_addr: SocketAddr,
    /// Where it binds published ports; backends on it are reached here too.
    pub ingress_addr: IpAddr,
    pub role: Role,
    pub availability: Availability,
    pub status: NodeStatus,
    pub labels: BTreeMap<String, String>,
}

/// A listen address a node cannot bind now, as the node reported it (it
/// retries the address every few seconds and reports again on a change).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ListenerFailure {
    pub service: String,
    pub address: SocketAddr,
    /// `udp` for a UDP port; absent for TCP, as every entry written before
    /// UDP ports is.
    #[serde(default, skip_serializing_if = "is_tcp")]
    pub protocol: lb_config::Protocol,
    /// The bind error in words (`address in use`).
    pub error: String,
}

fn is_tcp(protocol: &lb_config::Protocol) -> bool {
    *protocol == lb_config::Protocol::Tcp
}
