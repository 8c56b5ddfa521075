//! lbmesh's cluster identity: a cluster CA, node certificates that carry
//! their node id and role, and the rustls configurations every connection
//! of the cluster uses (Raft, node-to-node API calls, lbctl).
//!
//! # Flow
//!
//! ```text
//! bootstrap:  ClusterCa::generate ─> ca.crt (every node) + ca.key (managers only)
//! every node: NodeKey::generate ─> csr(node id) ─> a manager's ClusterCa::sign(csr, id, role, lifetime)
//!             ─> node.crt ─> NodeCredentials (the live certificate, swappable on renewal)
//! connection: NodeCredentials::{raft_server, api_server, client} configs; the server reads the
//!             caller's NodeIdentity from its certificate; lbctl pins the CA by its digest (CaPin)
//! ```
//!
//! A certificate says who a node is the way Swarm's do: the subject's CN
//! is the node id, its OU the role (`lbmesh-manager` or `lbmesh-worker`),
//! its O the cluster id. Its DNS names are `node-<id>.lbmesh.internal`
//! (Raft clients check it, so a stale address never reaches another node)
//! and `api.lbmesh.internal` (what API clients check).
//!
//! - [`ca`]: the CA and node keys (rcgen, ECDSA P-256).
//! - [`identity`]: what a certificate says, and the CA digest.
//! - [`config`]: rustls configurations, the renewable certificate, and
//!   the pinned verifier of lbctl.
#![forbid(unsafe_code)]

pub mod ca;
pub mod config;
mod error;
pub mod identity;

pub use ca::{ClusterCa, NodeKey};
pub use config::{CaPin, NodeCredentials};
pub use identity::{ca_digest, node_server_name, CertRole, NodeIdentity, API_SERVER_NAME};

pub use error::TlsError;
