//! The bodies `/v1` routes take. A service's body is
//! [`lb_config::ServiceSpec`], the `[[service]]` table of a config file.
//!
//! Every request type refuses unknown fields, so a misspelt field is an
//! error naming it rather than a setting silently left out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::answers::{Availability, Member};

/// `POST /v1/nodes/{name}`: what changes on the node; the rest stays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeUpdate {
    pub availability: Option<Availability>,
    #[serde(default)]
    pub labels_add: BTreeMap<String, String>,
    #[serde(default)]
    pub labels_remove: Vec<String>,
}

/// `POST /v1/services/{name}/scale`. Wide integer type so that a negative or
/// huge count is refused by validation naming `replicas`, not as a type
/// error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    pub replicas: i64,
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
