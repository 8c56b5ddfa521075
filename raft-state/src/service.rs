//! Services as the registry holds them: the submitted spec, its version and
//! its VIP.
//!
//! A plain record: [`crate::state::RegistryState`] validates the spec,
//! assigns the VIP and bumps the versions.

use std::net::Ipv4Addr;

use lb_config::ServiceSpec;
use serde::{Deserialize, Serialize};

use crate::task::UpdateStatus;

/// A service as the registry holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The spec as submitted; it passed `validate()` when it was stored.
    pub spec: ServiceSpec,
    /// Starts at 1 and grows by one with every accepted spec change.
    pub version: u64,
    pub vip: Ipv4Addr,
    /// The spec before the last update, for `service rollback`.
    pub previous: Option<ServiceSpec>,
    /// Version of the task template (image, command, env, target ports):
    /// tasks of an older one are replaced by a rolling update. It changes
    /// only when the template does, so scaling replaces nothing.
    #[serde(default)]
    pub task_version: u64,
    /// The task version that goes with `previous`.
    #[serde(default)]
    pub previous_task_version: u64,
    /// The last rolling update, if any.
    #[serde(default)]
    pub update: Option<UpdateStatus>,
}
