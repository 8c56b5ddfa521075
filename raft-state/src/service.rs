//! Services as the registry holds them: the submitted spec, its version,
//! its VIP and its checked form.
//!
//! A plain record: [`crate::state::RegistryState`] validates the spec,
//! assigns the VIP and bumps the versions. Validation happens once per
//! version: the state machine keeps the [`Service`] that `validate` made when
//! it stored the spec, and every reader on the node (routes, scheduler,
//! agent, API) takes it from [`ServiceRecord::checked`] instead of validating
//! again. The checked form is not part of the replicated value: it is never
//! serialized (so the log and snapshots are unchanged) and never compared; a
//! record read from disk or from a snapshot gets it again on first use, or
//! at once through `RegistryState::check_services`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

use lb_config::{FieldError, Service, ServiceSpec};
use serde::{Deserialize, Serialize};

use crate::task::UpdateStatus;

/// A service as the registry holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Made once by the API that took the create; kept by updates. Empty
    /// for a service created before ids (by an older lbd).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The spec as submitted; it passed `validate()` when it was stored.
    pub spec: ServiceSpec,
    /// Starts at 1 and grows by one with every accepted spec change.
    pub version: u64,
    pub vip: Ipv4Addr,
    /// The service's IPv6 VIP, from the cluster's v6 range; `None` in a
    /// cluster without one (bootstrapped before v6 VIPs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_v6: Option<Ipv6Addr>,
    /// The spec before the last update, for `service rollback`.
    /// Boxed: most records never roll back, and an inline spec would
    /// double every entry of the persistent map's leaves.
    pub previous: Option<Box<ServiceSpec>>,
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
    /// `spec` validated: filled when the state machine stores the spec, or
    /// on first use (`CheckedSpec::default()` for a record made elsewhere).
    #[serde(skip)]
    pub validated: CheckedSpec,
}

impl ServiceRecord {
    /// The checked form of `spec`, validated once per version. An error
    /// only for a spec stored by an lbd with other rules.
    pub fn checked(&self) -> Result<&Arc<Service>, &FieldError> {
        self.validated
            .0
            .get_or_init(|| self.spec.validate().map(Arc::new))
            .as_ref()
    }
}

/// The result of validating a record's spec, made at most once. Cloning a
/// record shares it; equality and `Debug` ignore it, as it follows from the
/// spec.
#[derive(Clone, Default)]
pub struct CheckedSpec(OnceLock<Result<Arc<Service>, FieldError>>);

impl CheckedSpec {
    /// A cell holding what `validate` returned when the spec was stored.
    pub(crate) fn new(service: Service) -> Self {
        Self(OnceLock::from(Ok(Arc::new(service))))
    }
}

impl PartialEq for CheckedSpec {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for CheckedSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "CheckedSpec(checked)"
        } else {
            "CheckedSpec(not yet)"
        })
    }
}
