//! The checked configuration: what `validate` produces and the daemon runs.
//!
//! Every field is in range and every default is filled in; code past this
//! crate never sees an unchecked value. The enums ([`Algorithm`],
//! [`ProxyProtocol`], [`ServiceMode`], ...) are shared with the file spec:
//! serde accepts only their listed variants, so a parsed one is already
//! checked.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::constraints::Constraint;

/// Replicated: `replicas` tasks spread over the nodes. Global: one task on
/// every eligible node, including nodes that join later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    #[default]
    Replicated,
    Global,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    #[default]
    Any,
    OnFailure,
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// The old task stops before its replacement starts (docker's default).
    #[default]
    StopFirst,
    /// The replacement runs and is healthy before the old task leaves.
    StartFirst,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Rollback,
    Continue,
}

/// How a service picks a backend for each new connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    Random,
    Weighted,
    LeastConn,
    Maglev,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::Random => "random",
            Algorithm::Weighted => "weighted",
            Algorithm::LeastConn => "least-conn",
            Algorithm::Maglev => "maglev",
        })
    }
}

/// Whether the proxy prefixes each backend connection with a PROXY protocol
/// header carrying the client's address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    None,
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    None,
    #[default]
    Tcp,
    Http,
}

/// The transport of a published port. A service may publish one port
/// number for both (DNS on 53/tcp and 53/udp): the pair is what is unique.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Each client connection goes to one backend.
    #[default]
    Tcp,
    /// Each client flow (address and port) is a session with one backend,
    /// which ends after `udp_idle_timeout` without a datagram.
    Udp,
}

impl Protocol {
    /// The name a spec writes (`protocol = "udp"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `healthcheck`: Docker's HEALTHCHECK of a task's container, as written
/// and, once validated, as run (a spec type that is its own checked form).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerHealthcheck {
    /// `["CMD", prog, args...]`, `["CMD-SHELL", "line"]` or `["NONE"]`
    /// (no check, not even the image's).
    pub test: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Failures in a row that make the container unhealthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    /// Failures in this time after the start do not count.
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_period: Option<Duration>,
}

/// The checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: Node,
    pub services: Vec<Service>,
}

/// Checked `[node]` settings with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub api_addr: SocketAddr,
    pub ingress_addr: IpAddr,
    pub shutdown_grace: Duration,
}

/// A checked service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// Empty means "the node's ingress address".
    pub listen: Vec<IpAddr>,
    pub ports: Vec<PortMapping>,
    pub algorithm: Algorithm,
    pub endpoints: Vec<Endpoint>,
    pub health: HealthCheck,
    pub proxy_protocol: ProxyProtocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long a UDP session lives without a datagram either way.
    pub udp_idle_timeout: Duration,
    /// Open UDP sessions of the service on one node, over all its UDP
    /// ports; a new flow past it is dropped (and counted).
    pub max_udp_sessions: u32,
    pub drain_timeout: Duration,
    pub max_connections: u32,
    /// Open connections one client address may hold; 0: no cap.
    pub max_connections_per_client: u32,
    pub retries: u32,
    /// See [`ServiceSpec::retry_on_empty`](crate::spec::ServiceSpec::retry_on_empty).
    pub retry_on_empty: bool,
    /// See [`ServiceSpec::reply_timeout`](crate::spec::ServiceSpec::reply_timeout).
    pub reply_timeout: Option<Duration>,
    /// See [`ServiceSpec::access_log`](crate::spec::ServiceSpec::access_log).
    pub access_log: bool,
    pub replicas: u32,
    /// What the scheduler runs for this service; `None` for a service of
    /// static endpoints only.
    pub tasks: Option<TaskSpec>,
}

/// The checked task template and scheduling policy of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub image: Option<String>,
    pub command: Option<String>,
    /// Exec form of the command; empty when `command` (or the image's) runs.
    pub args: Vec<String>,
    /// Replaces the image's ENTRYPOINT (Docker); `Some([])` clears it.
    pub entrypoint: Option<Vec<String>>,
    /// Labels of each container, beside lbmesh's own.
    pub container_labels: BTreeMap<String, String>,
    /// The container's health check, in place of the image's (Docker).
    pub healthcheck: Option<ContainerHealthcheck>,
    pub env: Vec<String>,
    /// Who a task runs as, checked as `NAME|UID[:GROUP|GID]`; resolved on
    /// the node that starts it.
    pub user: Option<String>,
    pub mode: ServiceMode,
    pub constraints: Vec<Constraint>,
    /// 0: no limit.
    pub max_per_node: u32,
    pub restart: RestartPolicy,
    pub update: UpdatePolicy,
    /// How a rollback rolls: the spec's `rollback`, or `update` without one.
    pub rollback: UpdatePolicy,
    pub stop_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    pub delay: Duration,
    /// 0: no limit.
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdatePolicy {
    /// 0: every task at once.
    pub parallelism: u32,
    pub delay: Duration,
    pub order: UpdateOrder,
    pub failure_action: FailureAction,
    pub monitor: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    /// `None`: VIP only, published on no node.
    pub published: Option<u16>,
    pub target: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// `None` means "each port mapping's target port".
    pub port: Option<u16>,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    /// The target port a TCP or HTTP check connects to; `None`: the first
    /// TCP port's target (a service of UDP ports only must name one).
    pub port: Option<u16>,
    /// Request path of an HTTP check.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a backend up.
    pub rise: u32,
    /// Consecutive failures that take a backend down.
    pub fall: u32,
    pub eject_time: Duration,
}

impl Service {
    /// The socket addresses this service's published ports bind on, each
    /// with its port's protocol.
    pub fn listen_addrs(&self, ingress_addr: IpAddr) -> Vec<(Protocol, SocketAddr)> {
        let ips: &[IpAddr] = if self.listen.is_empty() {
            std::slice::from_ref(&ingress_addr)
        } else {
            &self.listen
        };
        ips.iter()
            .flat_map(|ip| {
                self.ports
                    .iter()
                    .filter_map(move |p| Some((p.protocol, SocketAddr::new(*ip, p.published?))))
            })
            .collect()
    }

    /// The target port an active health check connects to: the one the
    /// spec names, else the first TCP port's; `None` when there is none.
    pub fn health_target(&self) -> Option<u16> {
        self.health.port.or_else(|| {
            self.ports
                .iter()
                .find(|p| p.protocol == Protocol::Tcp)
                .map(|p| p.target)
        })
    }

    /// The backend addresses and weights behind one port mapping.
    pub fn backends_for(&self, port: &PortMapping) -> Vec<(SocketAddr, u32)> {
        self.endpoints
            .iter()
            .map(|e| {
                (
                    SocketAddr::new(e.ip, e.port.unwrap_or(port.target)),
                    e.weight,
                )
            })
            .collect()
    }
}
