//! lbmesh configuration: what users write, and the checked form the daemon runs.
//!
//! # Flow
//!
//! ```text
//! file ──read──> TOML text ──ConfigFile::parse (serde, deny_unknown_fields)──> ConfigFile   spec.rs
//!      ──ConfigFile::validate (defaults.rs, constraints.rs)─────────────────> Config       validate.rs
//!                                                                    checked types        checked.rs
//! ```
//!
//! `ConfigFile::load` runs the whole flow for a path; an error names the
//! file ([`ConfigError`]) and the field with the reason ([`FieldError`],
//! `service[1].ports[0].published: ...`).
//!
//! # Layout
//!
//! Files, each importing only those above it:
//!
//! - `defaults.rs`, `error.rs`, `constraints.rs`: default values and limits
//!   (each says why); the errors; placement constraints (parse, match).
//! - `checked.rs`: the checked types ([`Config`], [`Node`], [`Service`],
//!   [`TaskSpec`], ...) and the enums the file names directly.
//! - `spec.rs`: the serde types ([`ConfigFile`], [`NodeConfig`],
//!   [`ServiceSpec`], ...), which mirror the file one to one and accept
//!   nothing they do not know.
//! - `validate.rs`: spec to checked type; fills in defaults, checks ranges
//!   and the rules across services (unique names, no shared listen address),
//!   in time linear in the spec's size. `ServiceSpec::check_limits` holds a
//!   new spec to caps added later (ports per service), which the registry
//!   checks before a write rather than in its log.
//!
//! Everything public is re-exported here, so callers write `lb_config::X`.
//!
//! Invariant: code past this crate never sees an unchecked value; every
//! field of a checked type is in range and every default is filled in.
//!
//! [`ServiceSpec`] is also the body of the registry's service API and the
//! `[[service]]` table of `lbctl apply -f`. A spec with an `image` or a
//! `command` runs tasks: its checked form carries a [`TaskSpec`] (mode,
//! constraints, restart and update policy) that the scheduler and agents use;
//! one without routes to its static `endpoints` only.
#![forbid(unsafe_code)]

mod checked;
mod constraints;
mod defaults;
mod error;
mod spec;
mod validate;

pub use checked::{
    Algorithm, Config, ContainerHealthcheck, Endpoint, FailureAction, HealthCheck, HealthCheckKind,
    Node, PortMapping, Protocol, ProxyProtocol, RestartCondition, RestartPolicy, Service,
    ServiceMode, TaskSpec, UpdateOrder, UpdatePolicy,
};
pub use constraints::{Constraint, NodeAttribute, NodeFacts};
pub use defaults::{
    DEFAULT_API_ADDR, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_EJECT_TIME,
    DEFAULT_FALL, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_INGRESS_ADDR, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_UDP_SESSIONS, DEFAULT_REPLICAS,
    DEFAULT_RESTART_DELAY, DEFAULT_RETRIES, DEFAULT_RISE, DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_STOP_GRACE, DEFAULT_UDP_IDLE_TIMEOUT, DEFAULT_UPDATE_MONITOR,
    DEFAULT_UPDATE_PARALLELISM, MAX_ENDPOINTS, MAX_PORTS, MAX_REPLICAS, MAX_WEIGHT,
};
pub use error::{ConfigError, FieldError};
pub use spec::{
    ConfigFile, EndpointSpec, HealthSpec, NodeConfig, PortSpec, RestartSpec, ServiceSpec,
    UpdateSpec, STACK_LABEL,
};
pub use validate::{check_dns_domain, check_dns_label};
