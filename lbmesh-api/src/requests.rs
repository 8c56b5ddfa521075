//! The bodies `/v1` routes take. A service's body is
//! [`lb_config::ServiceSpec`], the `[[service]]` table of a config file.
//!
//! Every request type refuses unknown fields, so a misspelt field is an
//! error naming it rather than a setting silently left out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::answers::{Availability, Member, NodeId, Role};

/// The header naming a write's request (its idempotency key): a write sent
/// again with the same key gets the first answer and is not applied twice.
/// A client may send its own (1 to 128 of `A-Z a-z 0-9 . _ : -`, one per
/// request); without it the node that takes the request makes one and keeps
/// it when it passes the request to the leader and when it retries.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Checks an [`IDEMPOTENCY_KEY`] value: the reason when it is not one.
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if key.is_empty() || key.len() > 128 || !key.chars().all(allowed) {
        return Err(format!(
            "{key:?} must be 1 to 128 of letters, digits, '.', '_', ':', '-'"
        ));
    }
    Ok(())
}

/// `POST /v1/nodes/{name}`: what changes on the node; the rest stays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeUpdate {
    pub availability: Option<Availability>,
    #[serde(default)]
    pub labels_add: BTreeMap<String, String>,
    #[serde(default)]
    pub labels_remove: Vec<String>,
    /// `node promote` (manager) and `node demote` (worker); managers vote
    /// in Raft, kept at an odd count of at most five. Left out of the JSON
    /// when not changed, so other updates still reach older lbd versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// `POST /v1/services/{name}/scale`. Wide integer type so that a negative or
/// huge count is refused by validation naming `replicas`, not as a type
/// error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    pub replicas: i64,
}

/// `POST /v1/cluster/certificate`: a joiner asks for its first
/// certificate with a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    /// The join token: its role is the certificate's.
    pub token: String,
    /// The id the joiner picked; the certificate names it.
    pub node_id: NodeId,
    /// A PEM CSR for the joiner's key (only the key is used).
    pub csr: String,
}

/// `POST /v1/cluster/renew`: the caller is the node its TLS certificate
/// names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr: String,
}

/// `POST /v1/cluster/join`: a new node presents a join token and itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    /// The leader sets its role from the token and its state to active and
    /// ready; the rest is kept as sent.
    pub node: Member,
}
