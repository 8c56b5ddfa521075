//! lbmesh configuration: what users write, and the checked form the daemon runs.
//!
//! # Layout and flow
//!
//! ```text
//! TOML text ──toml/serde (deny_unknown_fields)──> ConfigFile { node: NodeConfig, service: [ServiceSpec] }
//!           ──ConfigFile::validate()──────────────> Config { node: Node, services: [Service] }
//! ```
//!
//! The serde types ([`ConfigFile`], [`NodeConfig`], [`ServiceSpec`]) mirror the
//! file one to one and accept nothing they do not know. `validate()` turns them
//! into checked types ([`Config`], [`Node`], [`Service`]) whose fields are in
//! range and whose defaults are filled in; code past this crate never sees an
//! unchecked value. Every error names the field (`service[1].ports[0].published`)
//! and the reason.
//!
//! [`ServiceSpec`] is also the body of the registry's service API and the
//! `[[service]]` table of `lbctl apply -f`. A spec with an `image` or a
//! `command` runs tasks: its checked form carries a [`TaskSpec`] (mode,
//! constraints, restart and update policy) that the scheduler and agents use;
//! one without routes to its static `endpoints` only.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default admin API address of a standalone node: loopback, because the admin
/// API will carry mutations once the registry lands.
// fixed-port-ok: the documented default.
pub const DEFAULT_API_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9900);
/// Published ports bind on every interface unless the node or service says
/// otherwise: that is what "published" means in the mesh.
pub const DEFAULT_INGRESS_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// How long SIGTERM waits for open connections before exiting anyway.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// A backend that does not accept within this time is treated as down.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Generous on purpose: Swarm's fixed 900 s IPVS timeout killed idle database
/// and websocket connections (moby#31208); here it is a per-service setting.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a departing backend keeps serving its open connections.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-service cap on concurrent client connections (each uses two sockets).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Connect attempts on other backends after a refused or timed-out connect.
pub const DEFAULT_RETRIES: u32 = 2;
/// How long a backend that refused a connection is skipped by this proxy.
pub const DEFAULT_EJECT_TIME: Duration = Duration::from_secs(10);
/// Wait before a failed task is replaced (docker's default).
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(5);
/// How long a new task is watched for failure during an update (docker's
/// default).
pub const DEFAULT_UPDATE_MONITOR: Duration = Duration::from_secs(5);
/// SIGTERM to SIGKILL (docker's default).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Largest endpoint weight; keeps the smooth weighted period small.
pub const MAX_WEIGHT: u32 = 1000;
/// Largest replica count of a service.
pub const MAX_REPLICAS: u32 = 1000;
/// Largest number of static endpoints per service.
pub const MAX_ENDPOINTS: usize = 4096;

/// A field that failed validation: its path inside the document and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Dotted path of the field, e.g. `ports[0].published`.
    pub field: String,
    /// What is wrong with it, in words a user can act on.
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error, one level deeper in the document.
    fn within(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}.{}", self.field),
            reason: self.reason,
        }
    }
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown or mistyped field; the message
    /// from the parser names the line and the key.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {error}")]
    Invalid { path: PathBuf, error: FieldError },
}

/// The whole file: `[node]` settings and `[[service]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSpec>,
}

/// `[node]`: settings of this lbd process.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name shown in logs and metrics; defaults to the host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Admin HTTP address (`/metrics`, `/live`, `/ready`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_addr: Option<String>,
    /// Address the published ports bind on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_addr: Option<String>,
    /// How long SIGTERM lets open connections finish.
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<Duration>,
}

/// One `[[service]]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    /// Addresses the published ports bind on; defaults to the node's
    /// `ingress_addr`.
    #[serde(default)]
    pub listen: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub health: HealthSpec,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<Duration>,
    /// Wide integer type so that a negative or huge value is reported by
    /// `validate()` with its field name rather than as a type error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    /// Resend what a client sent to another backend when the first one
    /// closes the connection before answering a byte (default off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_on_empty: Option<bool>,
    /// Desired task count of a replicated service (0..=1000, default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    /// Docker image the tasks run. A service with an image or a command has
    /// tasks placed by the scheduler; one with neither routes to its static
    /// `endpoints` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Shell command of each task (`/bin/sh -c`): replaces the image's
    /// command, or without an image runs as a local process with `HOST` and
    /// `PORT` in its environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// `KEY=VALUE` environment of each task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default)]
    pub mode: ServiceMode,
    /// Placement constraints: `node.name==x`, `node.labels.k!=v`, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// At most this many tasks of the service on one node (0: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<i64>,
    #[serde(default)]
    pub restart: RestartSpec,
    #[serde(default)]
    pub update: UpdateSpec,
    /// Time between SIGTERM and SIGKILL when a task stops.
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<Duration>,
}

/// Replicated: `replicas` tasks spread over the nodes. Global: one task on
/// every eligible node, including nodes that join later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    #[default]
    Replicated,
    Global,
}

/// `[service.restart]`: what happens when a task ends or turns unhealthy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<RestartCondition>,
    /// Wait between a task's end and its replacement.
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// Replacements of one slot before giving up (0: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    #[default]
    Any,
    OnFailure,
    None,
}

/// `[service.update]`: how a spec change replaces running tasks.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// Tasks replaced at a time (0: all at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i64>,
    /// Pause between batches.
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<UpdateOrder>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<FailureAction>,
    /// A new task that fails within this time after it started counts as a
    /// failed update.
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// The old task stops before its replacement starts (docker's default).
    #[default]
    StopFirst,
    /// The replacement runs and is healthy before the old task leaves.
    StartFirst,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Rollback,
    Continue,
}

/// One published port: `{ published = 8080, target = 80, protocol = "tcp" }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub published: i64,
    /// Port on the backends; defaults to `published`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// A static backend: `{ address = "10.0.0.5:80", weight = 3 }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// `ip:port`, or a bare `ip` that takes each port's `target`.
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

/// `[service.health]`: active check settings and passive ejection.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    #[serde(rename = "type")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<HealthCheckKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rise: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fall: Option<i64>,
    /// How long a backend that refused or timed out a connect is skipped.
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eject_time: Option<Duration>,
}

/// How a service picks a backend for each new connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
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
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    None,
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    None,
    #[default]
    Tcp,
    Http,
}

/// Only TCP is forwarded today; the type exists so UDP can be added without
/// changing the shape of [`PortMapping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
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
    pub drain_timeout: Duration,
    pub max_connections: u32,
    pub retries: u32,
    /// See [`ServiceSpec::retry_on_empty`].
    pub retry_on_empty: bool,
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
    pub env: Vec<String>,
    pub mode: ServiceMode,
    pub constraints: Vec<Constraint>,
    /// 0: no limit.
    pub max_per_node: u32,
    pub restart: RestartPolicy,
    pub update: UpdatePolicy,
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

/// One placement constraint: `node.<attribute> (==|!=) value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub attribute: NodeAttribute,
    pub equal: bool,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAttribute {
    Name,
    Id,
    Role,
    Label(String),
}

/// What a constraint is matched against.
pub struct NodeFacts<'a> {
    pub name: &'a str,
    pub id: u64,
    pub role: &'a str,
    pub labels: &'a std::collections::BTreeMap<String, String>,
}

impl Constraint {
    /// Parses `node.name==x`, `node.id!=7`, `node.role==manager`,
    /// `node.labels.zone==a`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (key, equal, value) = if let Some((k, v)) = text.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = text.split_once("!=") {
            (k, false, v)
        } else {
            return Err(format!(
                "{text:?} is not KEY==VALUE or KEY!=VALUE (e.g. node.labels.zone==a)"
            ));
        };
        let key = key.trim();
        let value = value.trim();
        let attribute = match key {
            "node.name" | "node.hostname" => NodeAttribute::Name,
            "node.id" => NodeAttribute::Id,
            "node.role" => NodeAttribute::Role,
            _ => match key.strip_prefix("node.labels.") {
                Some(label) if !label.is_empty() => NodeAttribute::Label(label.to_owned()),
                _ => {
                    return Err(format!(
                        "unknown constraint key {key:?}; use node.name, node.id, node.role or node.labels.KEY"
                    ))
                }
            },
        };
        if value.is_empty() {
            return Err(format!("{text:?} has no value to compare with"));
        }
        if attribute == NodeAttribute::Role && !matches!(value, "manager" | "worker") {
            return Err(format!("node.role is manager or worker, not {value:?}"));
        }
        Ok(Self {
            attribute,
            equal,
            value: value.to_owned(),
        })
    }

    pub fn matches(&self, node: &NodeFacts<'_>) -> bool {
        let actual = match &self.attribute {
            NodeAttribute::Name => Some(node.name.to_owned()),
            NodeAttribute::Id => Some(node.id.to_string()),
            NodeAttribute::Role => Some(node.role.to_owned()),
            NodeAttribute::Label(key) => node.labels.get(key).cloned(),
        };
        (actual.as_deref() == Some(self.value.as_str())) == self.equal
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.attribute {
            NodeAttribute::Name => "node.name".to_owned(),
            NodeAttribute::Id => "node.id".to_owned(),
            NodeAttribute::Role => "node.role".to_owned(),
            NodeAttribute::Label(label) => format!("node.labels.{label}"),
        };
        let op = if self.equal { "==" } else { "!=" };
        write!(f, "{key}{op}{}", self.value)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub published: u16,
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

impl ConfigFile {
    /// Reads, parses and validates a file; errors name the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        file.validate().map_err(|error| ConfigError::Invalid {
            path: path.to_owned(),
            error,
        })
    }

    /// Parses TOML text; the error is the parser's message, which names the
    /// line and key.
    /// A type error names the field's full path
    /// (`service[0].ports[0].published: invalid type ...`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let deserializer = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let message = error.into_inner().to_string();
            let message = message.trim_end();
            if path.is_empty() || path == "." {
                message.to_owned()
            } else {
                format!("{path}: {message}")
            }
        })
    }

    pub fn validate(&self) -> Result<Config, FieldError> {
        let node = self.node.validate().map_err(|e| e.within("node"))?;
        let mut services = Vec::with_capacity(self.services.len());
        let mut names = HashSet::new();
        // (ip, port) → index of the service that binds it.
        let mut bound: HashMap<(IpAddr, u16), usize> = HashMap::new();
        for (index, spec) in self.services.iter().enumerate() {
            let here = format!("service[{index}]");
            let service = spec.validate().map_err(|e| e.within(&here))?;
            if !names.insert(service.name.clone()) {
                return Err(FieldError::new(
                    format!("{here}.name"),
                    format!("a service named {:?} is already defined", service.name),
                ));
            }
            for addr in service.listen_addrs(node.ingress_addr) {
                let clash = bound
                    .iter()
                    .find(|((ip, port), _)| *port == addr.port() && ips_overlap(*ip, addr.ip()));
                if let Some((_, &other)) = clash {
                    let field = if spec.listen.is_empty() {
                        "ports"
                    } else {
                        "listen"
                    };
                    return Err(FieldError::new(
                        format!("{here}.{field}"),
                        format!(
                            "listen address {addr} is already used by service {:?}",
                            self.services[other].name
                        ),
                    ));
                }
                bound.insert((addr.ip(), addr.port()), index);
            }
            services.push(service);
        }
        Ok(Config { node, services })
    }
}

/// Two bind addresses on one port clash when they are equal or one of them is
/// the wildcard of the same family.
fn ips_overlap(a: IpAddr, b: IpAddr) -> bool {
    a == b || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()))
}

impl NodeConfig {
    pub fn validate(&self) -> Result<Node, FieldError> {
        let name = match &self.name {
            Some(name) => {
                check_dns_label(name).map_err(|reason| FieldError::new("name", reason))?;
                name.clone()
            }
            None => default_node_name(),
        };
        let api_addr = match &self.api_addr {
            Some(text) => parse_socket_addr(text).map_err(|r| FieldError::new("api_addr", r))?,
            None => DEFAULT_API_ADDR,
        };
        let ingress_addr = match &self.ingress_addr {
            Some(text) => parse_ip(text).map_err(|r| FieldError::new("ingress_addr", r))?,
            None => DEFAULT_INGRESS_ADDR,
        };
        let shutdown_grace = self.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE);
        check_duration(shutdown_grace, Duration::ZERO, Duration::from_secs(3600))
            .map_err(|r| FieldError::new("shutdown_grace", r))?;
        Ok(Node {
            name,
            api_addr,
            ingress_addr,
            shutdown_grace,
        })
    }
}

/// The host name if it is a usable label, else `lbd`.
fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| check_dns_label(s).is_ok())
        .unwrap_or_else(|| "lbd".to_owned())
}

impl ServiceSpec {
    /// Checks every field; the error's field path is relative to the service.
    pub fn validate(&self) -> Result<Service, FieldError> {
        check_dns_label(&self.name).map_err(|r| FieldError::new("name", r))?;

        let mut listen = Vec::with_capacity(self.listen.len());
        for (i, text) in self.listen.iter().enumerate() {
            let ip = parse_ip(text).map_err(|r| FieldError::new(format!("listen[{i}]"), r))?;
            if let Some(other) = listen.iter().find(|other| ips_overlap(**other, ip)) {
                return Err(FieldError::new(
                    format!("listen[{i}]"),
                    format!("{ip} overlaps {other}, which is already listed"),
                ));
            }
            listen.push(ip);
        }

        if self.ports.is_empty() {
            return Err(FieldError::new(
                "ports",
                "at least one port is required, e.g. { published = 8080, target = 80 }",
            ));
        }
        let mut ports: Vec<PortMapping> = Vec::with_capacity(self.ports.len());
        for (i, port) in self.ports.iter().enumerate() {
            let mapping = port
                .validate()
                .map_err(|e| e.within(&format!("ports[{i}]")))?;
            if ports.iter().any(|p| p.published == mapping.published) {
                return Err(FieldError::new(
                    format!("ports[{i}].published"),
                    format!("port {} is published twice", mapping.published),
                ));
            }
            ports.push(mapping);
        }

        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(FieldError::new(
                "endpoints",
                format!(
                    "{} endpoints; at most {MAX_ENDPOINTS} are allowed",
                    self.endpoints.len()
                ),
            ));
        }
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(self.endpoints.len());
        for (i, ep) in self.endpoints.iter().enumerate() {
            let here = format!("endpoints[{i}]");
            let endpoint = ep.validate().map_err(|e| e.within(&here))?;
            if endpoint.port.is_some() && ports.len() > 1 {
                return Err(FieldError::new(
                    format!("{here}.address"),
                    "an endpoint may name a port only when the service publishes one port; \
                     give a bare IP and each port's target is used",
                ));
            }
            // Compare resolved addresses: "10.0.0.1" and "10.0.0.1:80" are
            // the same backend when the target port is 80.
            let resolve = |e: &Endpoint, port: &PortMapping| {
                SocketAddr::new(e.ip, e.port.unwrap_or(port.target))
            };
            if let Some(port) = ports.iter().find(|port| {
                endpoints
                    .iter()
                    .any(|e| resolve(e, port) == resolve(&endpoint, port))
            }) {
                return Err(FieldError::new(
                    format!("{here}.address"),
                    format!("{} is listed twice", resolve(&endpoint, port)),
                ));
            }
            endpoints.push(endpoint);
        }

        let health = self.health.validate().map_err(|e| e.within("health"))?;

        let connect_timeout = self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        check_duration(
            connect_timeout,
            Duration::from_millis(1),
            Duration::from_secs(300),
        )
        .map_err(|r| FieldError::new("connect_timeout", r))?;
        let idle_timeout = self.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT);
        check_duration(
            idle_timeout,
            Duration::from_millis(1),
            Duration::from_secs(7 * 86_400),
        )
        .map_err(|r| FieldError::new("idle_timeout", r))?;
        let drain_timeout = self.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT);
        check_duration(drain_timeout, Duration::ZERO, Duration::from_secs(86_400))
            .map_err(|r| FieldError::new("drain_timeout", r))?;
        let max_connections =
            check_int(self.max_connections, DEFAULT_MAX_CONNECTIONS, 1, 1_000_000)
                .map_err(|r| FieldError::new("max_connections", r))?;
        let retries = check_int(self.retries, DEFAULT_RETRIES, 0, 16)
            .map_err(|r| FieldError::new("retries", r))?;
        let replicas = check_int(self.replicas, 1, 0, MAX_REPLICAS)
            .map_err(|r| FieldError::new("replicas", r))?;
        let tasks = self.validate_tasks()?;

        Ok(Service {
            name: self.name.clone(),
            listen,
            ports,
            algorithm: self.algorithm,
            endpoints,
            health,
            proxy_protocol: self.proxy_protocol,
            connect_timeout,
            idle_timeout,
            drain_timeout,
            max_connections,
            retries,
            retry_on_empty: self.retry_on_empty.unwrap_or(false),
            replicas,
            tasks,
        })
    }

    /// The task template and policies; `None` when the service runs no
    /// tasks (no image, no command).
    fn validate_tasks(&self) -> Result<Option<TaskSpec>, FieldError> {
        if let Some(image) = &self.image {
            if image.is_empty()
                || image.len() > 255
                || image.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(FieldError::new(
                    "image",
                    format!("{image:?} must be 1 to 255 characters without spaces"),
                ));
            }
        }
        if let Some(command) = &self.command {
            if command.trim().is_empty() || command.len() > 4096 {
                return Err(FieldError::new(
                    "command",
                    "must be a non-empty shell command of up to 4096 bytes",
                ));
            }
        }
        let runs_tasks = self.image.is_some() || self.command.is_some();
        if !runs_tasks {
            let needs_tasks = [
                ("replicas", self.replicas.is_some_and(|r| r != 0)),
                ("mode", self.mode == ServiceMode::Global),
                ("env", !self.env.is_empty()),
                ("constraints", !self.constraints.is_empty()),
            ];
            if let Some((field, _)) = needs_tasks.iter().find(|(_, set)| *set) {
                return Err(FieldError::new(
                    *field,
                    "only a service with an image or a command runs tasks; give --image or --command",
                ));
            }
            return Ok(None);
        }
        if self.mode == ServiceMode::Global && self.replicas.is_some() {
            return Err(FieldError::new(
                "replicas",
                "a global service runs one task per node; replicas apply to replicated mode",
            ));
        }
        for (i, pair) in self.env.iter().enumerate() {
            let key = pair.split_once('=').map(|(k, _)| k).unwrap_or("");
            let valid_key = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_key || pair.contains('\0') {
                return Err(FieldError::new(
                    format!("env[{i}]"),
                    format!("{pair:?} is not KEY=VALUE with KEY of letters, digits and '_'"),
                ));
            }
        }
        let mut constraints = Vec::with_capacity(self.constraints.len());
        for (i, text) in self.constraints.iter().enumerate() {
            constraints.push(
                Constraint::parse(text)
                    .map_err(|r| FieldError::new(format!("constraints[{i}]"), r))?,
            );
        }
        let max_per_node = check_int(self.max_replicas_per_node, 0, 0, MAX_REPLICAS)
            .map_err(|r| FieldError::new("max_replicas_per_node", r))?;
        let restart = RestartPolicy {
            condition: self.restart.condition.unwrap_or_default(),
            delay: self.restart.delay.unwrap_or(DEFAULT_RESTART_DELAY),
            max_attempts: check_int(self.restart.max_attempts, 0, 0, 1_000_000)
                .map_err(|r| FieldError::new("restart.max_attempts", r))?,
        };
        check_duration(restart.delay, Duration::ZERO, Duration::from_secs(3600))
            .map_err(|r| FieldError::new("restart.delay", r))?;
        let update = UpdatePolicy {
            parallelism: check_int(self.update.parallelism, 1, 0, MAX_REPLICAS)
                .map_err(|r| FieldError::new("update.parallelism", r))?,
            delay: self.update.delay.unwrap_or(Duration::ZERO),
            order: self.update.order.unwrap_or_default(),
            failure_action: self.update.failure_action.unwrap_or_default(),
            monitor: self.update.monitor.unwrap_or(DEFAULT_UPDATE_MONITOR),
        };
        check_duration(update.delay, Duration::ZERO, Duration::from_secs(3600))
            .map_err(|r| FieldError::new("update.delay", r))?;
        check_duration(update.monitor, Duration::ZERO, Duration::from_secs(3600))
            .map_err(|r| FieldError::new("update.monitor", r))?;
        let stop_grace = self.stop_grace_period.unwrap_or(DEFAULT_STOP_GRACE);
        check_duration(stop_grace, Duration::ZERO, Duration::from_secs(3600))
            .map_err(|r| FieldError::new("stop_grace_period", r))?;
        Ok(Some(TaskSpec {
            image: self.image.clone(),
            command: self.command.clone(),
            env: self.env.clone(),
            mode: self.mode,
            constraints,
            max_per_node,
            restart,
            update,
            stop_grace,
        }))
    }

    /// Whether two specs run the same tasks: a change to anything else
    /// (replicas, balancing, policies) does not replace running tasks.
    pub fn same_task_template(&self, other: &ServiceSpec) -> bool {
        let targets = |spec: &ServiceSpec| -> Vec<i64> {
            spec.ports
                .iter()
                .map(|p| p.target.unwrap_or(p.published))
                .collect()
        };
        self.image == other.image
            && self.command == other.command
            && self.env == other.env
            && targets(self) == targets(other)
    }
}

impl PortSpec {
    fn validate(&self) -> Result<PortMapping, FieldError> {
        let published = check_port(self.published).map_err(|r| FieldError::new("published", r))?;
        let target = match self.target {
            Some(t) => check_port(t).map_err(|r| FieldError::new("target", r))?,
            None => published,
        };
        let protocol = match self.protocol.as_deref() {
            None | Some("tcp") => Protocol::Tcp,
            Some("udp") => {
                return Err(FieldError::new(
                    "protocol",
                    "udp is not supported yet; only tcp is forwarded",
                ))
            }
            Some(other) => {
                return Err(FieldError::new(
                    "protocol",
                    format!("unknown protocol {other:?}; expected \"tcp\""),
                ))
            }
        };
        Ok(PortMapping {
            published,
            target,
            protocol,
        })
    }
}

impl EndpointSpec {
    fn validate(&self) -> Result<Endpoint, FieldError> {
        let (ip, port) = if let Ok(addr) = self.address.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(FieldError::new(
                    "address",
                    "port 0 is not a valid backend port",
                ));
            }
            (addr.ip(), Some(addr.port()))
        } else if let Ok(ip) = self.address.parse::<IpAddr>() {
            (ip, None)
        } else {
            return Err(FieldError::new(
                "address",
                format!(
                    "{:?} is not an IP address or ip:port (host names are not resolved)",
                    self.address
                ),
            ));
        };
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(FieldError::new(
                "address",
                format!("{ip} cannot be a backend address"),
            ));
        }
        let weight =
            check_int(self.weight, 1, 1, MAX_WEIGHT).map_err(|r| FieldError::new("weight", r))?;
        Ok(Endpoint { ip, port, weight })
    }
}

impl HealthSpec {
    fn validate(&self) -> Result<HealthCheck, FieldError> {
        let kind = self.kind.unwrap_or_default();
        let path = match (&self.path, kind) {
            (Some(path), _)
                if !path.starts_with('/')
                    || path.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                return Err(FieldError::new(
                    "path",
                    format!(
                        "{path:?} must start with '/' and contain no spaces or control characters"
                    ),
                ))
            }
            (Some(path), HealthCheckKind::Http) => path.clone(),
            (Some(_), _) => {
                return Err(FieldError::new(
                    "path",
                    "a path is only used by type = \"http\"",
                ))
            }
            (None, _) => "/".to_owned(),
        };
        let interval = self.interval.unwrap_or(Duration::from_secs(5));
        check_duration(
            interval,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )
        .map_err(|r| FieldError::new("interval", r))?;
        let timeout = self.timeout.unwrap_or(Duration::from_secs(2)).min(interval);
        if let Some(t) = self.timeout {
            check_duration(t, Duration::from_millis(1), interval).map_err(|r| {
                FieldError::new("timeout", format!("{r} (it may not exceed interval)"))
            })?;
        }
        let rise = check_int(self.rise, 2, 1, 100).map_err(|r| FieldError::new("rise", r))?;
        let fall = check_int(self.fall, 3, 1, 100).map_err(|r| FieldError::new("fall", r))?;
        let eject_time = self.eject_time.unwrap_or(DEFAULT_EJECT_TIME);
        check_duration(
            eject_time,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        )
        .map_err(|r| FieldError::new("eject_time", r))?;
        Ok(HealthCheck {
            kind,
            path,
            interval,
            timeout,
            rise,
            fall,
            eject_time,
        })
    }
}

impl Service {
    /// The socket addresses this service's published ports bind on.
    pub fn listen_addrs(&self, ingress_addr: IpAddr) -> Vec<SocketAddr> {
        let ips: &[IpAddr] = if self.listen.is_empty() {
            std::slice::from_ref(&ingress_addr)
        } else {
            &self.listen
        };
        ips.iter()
            .flat_map(|ip| {
                self.ports
                    .iter()
                    .map(move |p| SocketAddr::new(*ip, p.published))
            })
            .collect()
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

/// Service and node names: a lowercase DNS label (RFC 1123), as Docker
/// requires for service names.
pub fn check_dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("{name:?} must be 1 to 63 characters long"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{name:?} contains {c:?}; use lowercase letters, digits and '-'"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("{name:?} may not start or end with '-'"));
    }
    Ok(())
}

fn check_port(value: i64) -> Result<u16, String> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port {value} is out of range 1..=65535")),
    }
}

fn check_int(value: Option<i64>, default: u32, min: u32, max: u32) -> Result<u32, String> {
    let Some(value) = value else {
        return Ok(default);
    };
    match u32::try_from(value) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!("{value} is out of range {min}..={max}")),
    }
}

fn check_duration(value: Duration, min: Duration, max: Duration) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!(
            "{} is out of range {}..={}",
            humantime::format_duration(value),
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(())
}

fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an IP address"))
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an ip:port address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> FieldError {
        let file = ConfigFile::parse(text).expect("parses");
        file.validate().expect_err("must be rejected")
    }

    // fixed-port-ok: parsed only; nothing is bound in these tests.
    const ONE: &str = r#"
        [[service]]
        name = "web"
        ports = [{ published = 8080, target = 80 }]
        endpoints = [{ address = "127.0.0.1:9000", weight = 3 }, { address = "127.0.0.2:9000" }] # fixed-port-ok
    "#;

    #[test]
    fn defaults_are_filled_in() {
        let cfg = ConfigFile::parse(ONE).unwrap().validate().unwrap();
        let web = &cfg.services[0];
        assert_eq!(web.algorithm, Algorithm::RoundRobin);
        assert_eq!(web.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(web.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(web.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(web.health.kind, HealthCheckKind::Tcp);
        assert_eq!(cfg.node.api_addr, DEFAULT_API_ADDR);
        assert_eq!(
            web.backends_for(&web.ports[0]),
            vec![
                ("127.0.0.1:9000".parse().unwrap(), 3), // fixed-port-ok
                ("127.0.0.2:9000".parse().unwrap(), 1)  // fixed-port-ok
            ]
        );
        assert_eq!(
            web.listen_addrs(DEFAULT_INGRESS_ADDR),
            vec!["0.0.0.0:8080".parse::<SocketAddr>().unwrap()] // fixed-port-ok
        );
    }

    #[test]
    fn bare_endpoint_ip_takes_each_target_port() {
        let cfg = ConfigFile::parse(
            r#"
            [[service]]
            name = "web"
            ports = [{ published = 80, target = 8080 }, { published = 443, target = 8443 }]
            endpoints = [{ address = "10.0.0.1" }]
            "#,
        )
        .unwrap()
        .validate()
        .unwrap();
        let web = &cfg.services[0];
        assert_eq!(
            web.backends_for(&web.ports[1])[0].0,
            "10.0.0.1:8443".parse().unwrap()
        );
    }

    #[test]
    fn unknown_field_names_the_key() {
        let err = ConfigFile::parse("[[service]]\nname = \"web\"\nbogus = 1\n").unwrap_err();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn type_errors_name_the_field_path() {
        let err =
            ConfigFile::parse("[[service]]\nname = \"web\"\nports = [{ published = \"80\" }]\n")
                .unwrap_err();
        assert!(err.starts_with("service[0].ports[0].published:"), "{err}");
    }

    #[test]
    fn the_same_backend_twice_is_refused() {
        let err = invalid(
            "[[service]]\nname = \"web\"\nports = [{ published = 80 }]\nendpoints = [{ address = \"10.0.0.1\" }, { address = \"10.0.0.1:80\" }]",
        );
        assert_eq!(err.field, "service[0].endpoints[1].address");
    }

    #[test]
    fn overlapping_listen_addresses_of_one_service_are_refused() {
        let err = invalid(
            "[[service]]\nname = \"web\"\nlisten = [\"0.0.0.0\", \"127.0.0.1\"]\nports = [{ published = 80 }]",
        );
        assert_eq!(err.field, "service[0].listen[1]");
    }

    #[test]
    fn unknown_algorithm_lists_choices() {
        let err = ConfigFile::parse("[[service]]\nname = \"web\"\nalgorithm = \"fastest\"\n")
            .unwrap_err();
        assert!(
            err.contains("fastest") && err.contains("least-conn"),
            "{err}"
        );
    }

    #[test]
    fn field_errors_name_the_field() {
        let cases = [
            (
                "[[service]]\nname = \"Web\"\nports = [{ published = 80 }]",
                "service[0].name",
            ),
            (
                "[[service]]\nname = \"web\"\nports = [{ published = 0 }]",
                "service[0].ports[0].published",
            ),
            (
                "[[service]]\nname = \"web\"\nports = [{ published = 80, target = 70000 }]",
                "service[0].ports[0].target",
            ),
            (
                "[[service]]\nname = \"web\"\nports = [{ published = 80, protocol = \"udp\" }]",
                "service[0].ports[0].protocol",
            ),
            (
                "[[service]]\nname = \"web\"\nports = [{ published = 80 }]\nendpoints = [{ address = \"10.0.0.1\", weight = 0 }]",
                "service[0].endpoints[0].weight",
            ),
            (
                "[[service]]\nname = \"web\"\nports = [{ published = 80 }]\nendpoints = [{ address = \"example.com:80\" }]",
                "service[0].endpoints[0].address",
            ),
            (
                "[[service]]\nname = \"web\"\nports = [{ published = 80 }]\nmax_connections = -1",
                "service[0].max_connections",
            ),
            (
                "[[service]]\nname = \"web\"\nports = [{ published = 80 }]\n[service.health]\ninterval = \"1s\"\ntimeout = \"2s\"",
                "service[0].health.timeout",
            ),
            ("[node]\napi_addr = \"nope\"", "node.api_addr"),
            (
                "[[service]]\nname = \"a\"\nports = [{ published = 80 }]\n[[service]]\nname = \"a\"\nports = [{ published = 81 }]",
                "service[1].name",
            ),
        ];
        for (text, field) in cases {
            let err = invalid(text);
            assert_eq!(err.field, field, "{text}: {err}");
            assert!(!err.reason.is_empty());
        }
    }

    #[test]
    fn udp_is_refused_as_not_supported_yet() {
        let err = invalid(
            "[[service]]\nname = \"web\"\nports = [{ published = 53, protocol = \"udp\" }]",
        );
        assert!(err.reason.contains("not supported yet"), "{err}");
    }

    #[test]
    fn two_services_on_one_listen_address_clash() {
        let err = invalid(
            r#"
            [[service]]
            name = "a"
            listen = ["127.0.0.1"]
            ports = [{ published = 8080 }]
            [[service]]
            name = "b"
            ports = [{ published = 8080 }]
            "#,
        );
        assert_eq!(err.field, "service[1].ports");
        assert!(err.reason.contains("\"a\""), "{err}");
        // Different addresses on the same port are fine.
        let ok = ConfigFile::parse(
            r#"
            [[service]]
            name = "a"
            listen = ["127.0.0.1"]
            ports = [{ published = 8080 }]
            [[service]]
            name = "b"
            listen = ["127.0.0.2"]
            ports = [{ published = 8080 }]
            "#,
        )
        .unwrap();
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn constraints_parse_and_match() {
        let labels = std::collections::BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
        let node = NodeFacts {
            name: "n1",
            id: 7,
            role: "worker",
            labels: &labels,
        };
        for (text, expected) in [
            ("node.name==n1", true),
            ("node.name!=n1", false),
            ("node.labels.zone==a", true),
            ("node.labels.zone!=b", true),
            ("node.labels.rack==r1", false),
            ("node.labels.rack!=r1", true),
            ("node.role==manager", false),
            ("node.id==7", true),
        ] {
            let constraint = Constraint::parse(text).unwrap();
            assert_eq!(constraint.matches(&node), expected, "{text}");
            assert_eq!(constraint.to_string(), text);
        }
        for bad in [
            "node.name",
            "node.colour==red",
            "node.role==boss",
            "node.labels.==x",
            "node.name==",
        ] {
            assert!(Constraint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn task_fields_are_checked() {
        let base = "[[service]]\nname = \"web\"\nports = [{ published = 80 }]\n";
        let cases = [
            ("replicas = 3", "service[0].replicas"),
            ("image = \"a b\"", "service[0].image"),
            ("image = \"x\"\nenv = [\"1A=b\"]", "service[0].env[0]"),
            (
                "image = \"x\"\nconstraints = [\"node.x==y\"]",
                "service[0].constraints[0]",
            ),
            (
                "image = \"x\"\nmode = \"global\"\nreplicas = 2",
                "service[0].replicas",
            ),
            ("command = \"  \"", "service[0].command"),
            (
                "image = \"x\"\n[service.update]\nparallelism = -1",
                "service[0].update.parallelism",
            ),
        ];
        for (extra, field) in cases {
            let err = invalid(&format!("{base}{extra}"));
            assert_eq!(err.field, field, "{extra}: {err}");
        }
        let ok = ConfigFile::parse(&format!(
            "{base}image = \"img:v1\"\nreplicas = 3\nenv = [\"A=b\"]\n[service.update]\norder = \"start-first\"\nfailure_action = \"rollback\""
        ))
        .unwrap()
        .validate()
        .unwrap();
        let tasks = ok.services[0].tasks.clone().expect("a task service");
        assert_eq!(tasks.update.order, UpdateOrder::StartFirst);
        assert_eq!(tasks.update.failure_action, FailureAction::Rollback);
        assert_eq!(tasks.restart.delay, DEFAULT_RESTART_DELAY);
    }

    #[test]
    fn only_the_task_template_replaces_tasks() {
        let mut a = ServiceSpec {
            name: "web".into(),
            image: Some("x:1".into()),
            ..ServiceSpec::default()
        };
        let mut b = a.clone();
        b.replicas = Some(9);
        b.algorithm = Algorithm::Maglev;
        assert!(a.same_task_template(&b));
        b.image = Some("x:2".into());
        assert!(!a.same_task_template(&b));
        a.env.push("A=1".into());
        b.image = a.image.clone();
        assert!(!a.same_task_template(&b));
    }

    #[test]
    fn dns_labels() {
        assert!(check_dns_label("web-1").is_ok());
        for bad in ["", "-web", "web-", "we_b", "Web", &"a".repeat(64)] {
            assert!(check_dns_label(bad).is_err(), "{bad:?}");
        }
    }
}
