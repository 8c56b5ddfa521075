//! From the file spec to the checked configuration.
//!
//! ```text
//! ConfigFile::load(path) ─read─> text ─ConfigFile::parse─> ConfigFile
//!     ─ConfigFile::validate─> Config          (or ConfigError naming the file)
//! ```
//!
//! Each spec type validates itself and the error's field path is relative to
//! it; the caller prefixes its own place (`FieldError::within`), so the
//! error of `ConfigFile::validate` names the field from the document's root
//! (`service[1].ports[0].published`). Across services it checks that names
//! are unique and no two services bind the same address and port.
//!
//! Every duplicate and overlap check is a hash look-up, so validating costs
//! the number of ports, listen addresses and endpoints, never their product
//! or square (`benches/validate.rs`). A config file's services also pass
//! [`ServiceSpec::check_limits`].

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use crate::checked::{
    Config, ContainerHealthcheck, Endpoint, FailureAction, HealthCheck, HealthCheckKind, Node,
    PortMapping, Protocol, RestartPolicy, Service, ServiceMode, TaskSpec, UpdatePolicy,
};
use crate::constraints::Constraint;
use crate::defaults::{
    DEFAULT_API_ADDR, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_EJECT_TIME,
    DEFAULT_FALL, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_INGRESS_ADDR, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_UDP_SESSIONS, DEFAULT_REPLICAS,
    DEFAULT_RESTART_DELAY, DEFAULT_RETRIES, DEFAULT_RISE, DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_STOP_GRACE, DEFAULT_UDP_IDLE_TIMEOUT, DEFAULT_UPDATE_MONITOR,
    DEFAULT_UPDATE_PARALLELISM, MAX_ENDPOINTS, MAX_PORTS, MAX_REPLICAS, MAX_WEIGHT,
};
use crate::error::{ConfigError, FieldError};
use crate::spec::{
    ConfigFile, EndpointSpec, HealthSpec, NodeConfig, PortSpec, ServiceSpec, UpdateSpec,
};

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

    pub fn validate(&self) -> Result<Config, FieldError> {
        let node = self.node.validate().map_err(|e| e.within("node"))?;
        let mut services = Vec::with_capacity(self.services.len());
        let mut names = HashSet::new();
        // One set per protocol: 53/tcp and 53/udp do not clash.
        let mut bound: HashMap<Protocol, BoundAddrs> = HashMap::new();
        for (index, spec) in self.services.iter().enumerate() {
            let here = format!("service[{index}]");
            spec.check_limits().map_err(|e| e.within(&here))?;
            let service = spec.validate().map_err(|e| e.within(&here))?;
            if !names.insert(service.name.clone()) {
                return Err(FieldError::new(
                    format!("{here}.name"),
                    format!("a service named {:?} is already defined", service.name),
                ));
            }
            for (protocol, addr) in service.listen_addrs(node.ingress_addr) {
                if let Some(other) = bound.entry(protocol).or_default().insert(addr, index) {
                    let field = if spec.listen.is_empty() {
                        "ports"
                    } else {
                        "listen"
                    };
                    return Err(FieldError::new(
                        format!("{here}.{field}"),
                        format!(
                            "listen address {addr}/{} is already used by service {:?}",
                            protocol.as_str(),
                            self.services[other].name
                        ),
                    ));
                }
            }
            services.push(service);
        }
        Ok(Config { node, services })
    }
}

/// The listen addresses of the services checked so far, by the index of the
/// service that binds each. Two bind addresses on one port clash when they
/// are equal or one of them is the wildcard of the same family; the three
/// maps answer each of those cases with one look-up, so checking a file
/// costs its number of addresses, not their square.
#[derive(Default)]
struct BoundAddrs {
    exact: HashMap<SocketAddr, usize>,
    /// (port, is IPv4) → the service binding the family's wildcard there.
    wildcard: HashMap<(u16, bool), usize>,
    /// (port, is IPv4) → the first service binding any address of the
    /// family there.
    any: HashMap<(u16, bool), usize>,
}

impl BoundAddrs {
    /// Records `addr` for service `index`, or names the service it clashes
    /// with (and records nothing).
    fn insert(&mut self, addr: SocketAddr, index: usize) -> Option<usize> {
        let family = (addr.port(), addr.is_ipv4());
        let clash = if addr.ip().is_unspecified() {
            self.any.get(&family)
        } else {
            self.exact.get(&addr).or_else(|| self.wildcard.get(&family))
        };
        if let Some(&other) = clash {
            return Some(other);
        }
        self.exact.insert(addr, index);
        self.any.entry(family).or_insert(index);
        if addr.ip().is_unspecified() {
            self.wildcard.insert(family, index);
        }
        None
    }
}

/// A service's own `listen` addresses, checked the way [`BoundAddrs`]
/// checks services' addresses, in one look-up per address.
#[derive(Default)]
struct ListenIps {
    listed: HashSet<IpAddr>,
    /// Per family (is IPv4): the wildcard, if listed.
    wildcard: HashMap<bool, IpAddr>,
    /// Per family (is IPv4): the first address listed.
    first: HashMap<bool, IpAddr>,
}

impl ListenIps {
    /// Records `ip`, or returns the listed address it overlaps.
    fn insert(&mut self, ip: IpAddr) -> Option<IpAddr> {
        let family = ip.is_ipv4();
        let overlap = if ip.is_unspecified() {
            self.first.get(&family).copied()
        } else if self.listed.contains(&ip) {
            Some(ip)
        } else {
            self.wildcard.get(&family).copied()
        };
        if overlap.is_some() {
            return overlap;
        }
        self.listed.insert(ip);
        self.first.entry(family).or_insert(ip);
        if ip.is_unspecified() {
            self.wildcard.insert(family, ip);
        }
        None
    }
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
    /// The limits a new spec is held to on top of [`ServiceSpec::validate`]:
    /// at most [`MAX_PORTS`] ports. Kept out of `validate` because the
    /// registry's state machine runs `validate` on every command of its log,
    /// and a limit added there would refuse on a new lbd what an older one
    /// applied; so the API checks these before it proposes a spec, and a
    /// config file and `lbctl apply` check them with the rest.
    pub fn check_limits(&self) -> Result<(), FieldError> {
        if self.ports.len() > MAX_PORTS {
            return Err(FieldError::new(
                "ports",
                format!(
                    "{} ports; at most {MAX_PORTS} are allowed per service",
                    self.ports.len()
                ),
            ));
        }
        Ok(())
    }

    /// Checks every field; the error's field path is relative to the service.
    /// Its cost is linear in the number of ports, listen addresses and
    /// endpoints.
    pub fn validate(&self) -> Result<Service, FieldError> {
        self.validate_with(true)
    }

    /// [`ServiceSpec::validate`] as lbd did before UDP ports: a `udp`
    /// protocol is refused ("not supported yet") where it was. The registry
    /// applies the commands written before UDP ports with it, so a log
    /// replays as it applied.
    pub fn validate_without_udp(&self) -> Result<Service, FieldError> {
        self.validate_with(false)
    }

    fn validate_with(&self, udp: bool) -> Result<Service, FieldError> {
        check_dns_label(&self.name).map_err(|r| FieldError::new("name", r))?;

        let mut listen = Vec::with_capacity(self.listen.len());
        let mut listed = ListenIps::default();
        for (i, text) in self.listen.iter().enumerate() {
            let ip = parse_ip(text).map_err(|r| FieldError::new(format!("listen[{i}]"), r))?;
            if let Some(other) = listed.insert(ip) {
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
        let mut published = HashSet::with_capacity(self.ports.len());
        for (i, port) in self.ports.iter().enumerate() {
            let mapping = port
                .validate(udp)
                .map_err(|e| e.within(&format!("ports[{i}]")))?;
            if let Some(number) = mapping.published {
                if !published.insert((number, mapping.protocol)) {
                    return Err(FieldError::new(
                        format!("ports[{i}].published"),
                        format!(
                            "port {}/{} is published twice",
                            number,
                            mapping.protocol.as_str()
                        ),
                    ));
                }
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
        // Backend addresses resolved against the first port. With several
        // ports every endpoint is a bare IP (checked below), so two clash on
        // some port exactly when they clash on the first: one set answers
        // for every port.
        let first_port = ports[0];
        let mut backends = HashSet::with_capacity(self.endpoints.len());
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
            let resolved = SocketAddr::new(endpoint.ip, endpoint.port.unwrap_or(first_port.target));
            if !backends.insert(resolved) {
                return Err(FieldError::new(
                    format!("{here}.address"),
                    format!("{resolved} is listed twice"),
                ));
            }
            endpoints.push(endpoint);
        }

        let mut health = self.health.validate().map_err(|e| e.within("health"))?;
        if let Some(port) = health.port {
            if !ports.iter().any(|p| p.target == port) {
                return Err(FieldError::new(
                    "health.port",
                    format!("{port} is not the target of any of the service's ports"),
                ));
            }
        }
        let has_tcp = ports.iter().any(|p| p.protocol == Protocol::Tcp);
        if !has_tcp && health.port.is_none() && health.kind != HealthCheckKind::None {
            // UDP has no handshake to check: a service of UDP ports only
            // is checked over TCP only on a port it names.
            if self.health.kind.is_some() {
                return Err(FieldError::new(
                    "health.port",
                    "a service of UDP ports only needs the target port its tcp or http check connects to",
                ));
            }
            health.kind = HealthCheckKind::None;
        }

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
        let udp_idle_timeout = self.udp_idle_timeout.unwrap_or(DEFAULT_UDP_IDLE_TIMEOUT);
        check_duration(
            udp_idle_timeout,
            Duration::from_millis(1),
            Duration::from_secs(86_400),
        )
        .map_err(|r| FieldError::new("udp_idle_timeout", r))?;
        let max_udp_sessions = check_int(
            self.max_udp_sessions,
            DEFAULT_MAX_UDP_SESSIONS,
            1,
            1_000_000,
        )
        .map_err(|r| FieldError::new("max_udp_sessions", r))?;
        let drain_timeout = self.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT);
        check_duration(drain_timeout, Duration::ZERO, Duration::from_secs(86_400))
            .map_err(|r| FieldError::new("drain_timeout", r))?;
        let max_connections =
            check_int(self.max_connections, DEFAULT_MAX_CONNECTIONS, 1, 1_000_000)
                .map_err(|r| FieldError::new("max_connections", r))?;
        let max_connections_per_client =
            check_int(self.max_connections_per_client, 0, 0, max_connections)
                .map_err(|r| FieldError::new("max_connections_per_client", r))?;
        let retries = check_int(self.retries, DEFAULT_RETRIES, 0, 16)
            .map_err(|r| FieldError::new("retries", r))?;
        let replicas = check_int(self.replicas, DEFAULT_REPLICAS, 0, MAX_REPLICAS)
            .map_err(|r| FieldError::new("replicas", r))?;
        let retry_on_empty = self.retry_on_empty.unwrap_or(false);
        if let Some(timeout) = self.reply_timeout {
            if !retry_on_empty {
                return Err(FieldError::new(
                    "reply_timeout",
                    "needs retry_on_empty = true (it is when a silent backend's request is resent)",
                ));
            }
            check_duration(timeout, Duration::from_millis(1), idle_timeout)
                .map_err(|r| FieldError::new("reply_timeout", format!("{r} (the idle timeout)")))?;
        }
        for key in self.labels.keys() {
            if key.is_empty()
                || key.len() > 255
                || key.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(FieldError::new(
                    format!("labels.{key}"),
                    "a label key is 1 to 255 characters without spaces",
                ));
            }
        }
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
            udp_idle_timeout,
            max_udp_sessions,
            drain_timeout,
            max_connections,
            max_connections_per_client,
            retries,
            retry_on_empty,
            reply_timeout: self.reply_timeout,
            access_log: self.access_log.unwrap_or(false),
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
        if let Some(user) = &self.user {
            check_user(user).map_err(|reason| FieldError::new("user", reason))?;
        }
        self.validate_container()?;
        let runs_tasks = self.image.is_some() || self.command.is_some() || !self.args.is_empty();
        if !runs_tasks {
            let needs_tasks = [
                ("replicas", self.replicas.is_some_and(|r| r != 0)),
                ("mode", self.mode == ServiceMode::Global),
                ("env", !self.env.is_empty()),
                ("user", self.user.is_some()),
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
        let update = update_policy(&self.update, "update")?;
        let rollback = match &self.rollback {
            None => update,
            Some(spec) => {
                let rollback = update_policy(spec, "rollback")?;
                if rollback.failure_action == FailureAction::Rollback {
                    return Err(FieldError::new(
                        "rollback.failure_action",
                        "a rollback cannot roll back: give pause or continue",
                    ));
                }
                rollback
            }
        };
        let stop_grace = self.stop_grace_period.unwrap_or(DEFAULT_STOP_GRACE);
        check_duration(stop_grace, Duration::ZERO, Duration::from_secs(3600))
            .map_err(|r| FieldError::new("stop_grace_period", r))?;
        Ok(Some(TaskSpec {
            image: self.image.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            entrypoint: self.entrypoint.clone(),
            container_labels: self.container_labels.clone(),
            healthcheck: self.healthcheck.clone(),
            env: self.env.clone(),
            user: self.user.clone(),
            mode: self.mode,
            constraints,
            max_per_node,
            restart,
            update,
            rollback,
            stop_grace,
        }))
    }
}

/// An `update` (or `rollback`, named by `field`) table as the policy it
/// sets, with the defaults for what it leaves out.
fn update_policy(spec: &UpdateSpec, field: &str) -> Result<UpdatePolicy, FieldError> {
    let policy = UpdatePolicy {
        parallelism: check_int(
            spec.parallelism,
            DEFAULT_UPDATE_PARALLELISM,
            0,
            MAX_REPLICAS,
        )
        .map_err(|r| FieldError::new(format!("{field}.parallelism"), r))?,
        delay: spec.delay.unwrap_or(Duration::ZERO),
        order: spec.order.unwrap_or_default(),
        failure_action: spec.failure_action.unwrap_or_default(),
        monitor: spec.monitor.unwrap_or(DEFAULT_UPDATE_MONITOR),
    };
    check_duration(policy.delay, Duration::ZERO, Duration::from_secs(3600))
        .map_err(|r| FieldError::new(format!("{field}.delay"), r))?;
    check_duration(policy.monitor, Duration::ZERO, Duration::from_secs(3600))
        .map_err(|r| FieldError::new(format!("{field}.monitor"), r))?;
    Ok(policy)
}

/// Reserved for the labels lbmesh puts on its containers.
const LBMESH_LABEL_PREFIX: &str = "io.lbmesh.";

impl ServiceSpec {
    /// `args`, `entrypoint`, `container_labels` and `healthcheck`: the
    /// last three need an image (they describe a container).
    fn validate_container(&self) -> Result<(), FieldError> {
        let exec_form = |field: &str, words: &[String], program: bool| {
            let size: usize = words.iter().map(String::len).sum();
            let empty_program = program && words.first().is_some_and(String::is_empty);
            if empty_program || size > 4096 || words.iter().any(|w| w.contains('\0')) {
                return Err(FieldError::new(
                    field,
                    "must be words of up to 4096 bytes in all, without NUL, the first a program",
                ));
            }
            Ok(())
        };
        if !self.args.is_empty() {
            if self.command.is_some() {
                return Err(FieldError::new(
                    "args",
                    "give either command (a shell line) or args (exec form), not both",
                ));
            }
            exec_form("args", &self.args, true)?;
        }
        if let Some(entrypoint) = &self.entrypoint {
            exec_form("entrypoint", entrypoint, true)?;
        }
        let container_only = [
            ("entrypoint", self.entrypoint.is_some()),
            ("container_labels", !self.container_labels.is_empty()),
            ("healthcheck", self.healthcheck.is_some()),
        ];
        if self.image.is_none() {
            if let Some((field, _)) = container_only.iter().find(|(_, set)| *set) {
                return Err(FieldError::new(
                    *field,
                    "only a Docker task (a service with an image) has a container",
                ));
            }
        }
        for key in self.container_labels.keys() {
            if key.is_empty()
                || key.len() > 255
                || key.chars().any(|c| c.is_whitespace() || c.is_control())
                || key.starts_with(LBMESH_LABEL_PREFIX)
            {
                return Err(FieldError::new(
                    format!("container_labels.{key}"),
                    format!(
                        "a label key is 1 to 255 characters without spaces, not starting with \
                         {LBMESH_LABEL_PREFIX} (lbmesh's own)"
                    ),
                ));
            }
        }
        if let Some(check) = &self.healthcheck {
            check.validate().map_err(|e| e.within("healthcheck"))?;
        }
        Ok(())
    }
}

impl ContainerHealthcheck {
    fn validate(&self) -> Result<(), FieldError> {
        let valid = match self.test.first().map(String::as_str) {
            Some("NONE") => self.test.len() == 1,
            Some("CMD") => self.test.len() >= 2 && !self.test[1].is_empty(),
            Some("CMD-SHELL") => self.test.len() == 2 && !self.test[1].trim().is_empty(),
            _ => false,
        };
        let size: usize = self.test.iter().map(String::len).sum();
        if !valid || size > 4096 || self.test.iter().any(|w| w.contains('\0')) {
            return Err(FieldError::new(
                "test",
                "must be [\"CMD\", program, args...], [\"CMD-SHELL\", line] or [\"NONE\"] \
                 (up to 4096 bytes)",
            ));
        }
        let hour = Duration::from_secs(3600);
        for (field, value, min) in [
            ("interval", self.interval, Duration::from_millis(1)),
            ("timeout", self.timeout, Duration::from_millis(1)),
            ("start_period", self.start_period, Duration::ZERO),
        ] {
            if let Some(value) = value {
                check_duration(value, min, hour).map_err(|r| FieldError::new(field, r))?;
            }
        }
        check_int(self.retries, 3, 0, 100).map_err(|r| FieldError::new("retries", r))?;
        Ok(())
    }
}

impl PortSpec {
    /// With `udp` false, a udp port is refused as lbd refused it before UDP
    /// ports (see [`ServiceSpec::validate_without_udp`]).
    fn validate(&self, udp: bool) -> Result<PortMapping, FieldError> {
        let published = match self.published {
            0 => None,
            port => Some(check_port(port).map_err(|r| FieldError::new("published", r))?),
        };
        let target = match (self.target, published) {
            (Some(t), _) => check_port(t).map_err(|r| FieldError::new("target", r))?,
            (None, Some(published)) => published,
            (None, None) => {
                return Err(FieldError::new(
                    "published",
                    "a port needs a published port, a target port (VIP only), or both",
                ))
            }
        };
        let protocol = match self.protocol.as_deref() {
            None | Some("tcp") => Protocol::Tcp,
            Some("udp") if udp => Protocol::Udp,
            Some("udp") => {
                return Err(FieldError::new(
                    "protocol",
                    "udp is not supported yet; only tcp is forwarded",
                ))
            }
            Some(other) => {
                return Err(FieldError::new(
                    "protocol",
                    format!("unknown protocol {other:?}; expected \"tcp\" or \"udp\""),
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
        let port = match self.port {
            Some(port) => Some(check_port(port).map_err(|r| FieldError::new("port", r))?),
            None => None,
        };
        let interval = self.interval.unwrap_or(DEFAULT_HEALTH_INTERVAL);
        check_duration(
            interval,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )
        .map_err(|r| FieldError::new("interval", r))?;
        let timeout = self.timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT).min(interval);
        if let Some(t) = self.timeout {
            check_duration(t, Duration::from_millis(1), interval).map_err(|r| {
                FieldError::new("timeout", format!("{r} (it may not exceed interval)"))
            })?;
        }
        let rise =
            check_int(self.rise, DEFAULT_RISE, 1, 100).map_err(|r| FieldError::new("rise", r))?;
        let fall =
            check_int(self.fall, DEFAULT_FALL, 1, 100).map_err(|r| FieldError::new("fall", r))?;
        let eject_time = self.eject_time.unwrap_or(DEFAULT_EJECT_TIME);
        check_duration(
            eject_time,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        )
        .map_err(|r| FieldError::new("eject_time", r))?;
        Ok(HealthCheck {
            kind,
            port,
            path,
            interval,
            timeout,
            rise,
            fall,
            eject_time,
        })
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

/// A DNS domain: dot-separated DNS labels, without the final dot, at
/// most 253 characters (the cluster domain, `lbmesh.internal`).
pub fn check_dns_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("the domain is empty".to_owned());
    }
    if domain.len() > 253 {
        return Err(format!("{domain:?} is longer than 253 characters"));
    }
    domain.split('.').try_for_each(check_dns_label)
}

fn check_port(value: i64) -> Result<u16, String> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port {value} is out of range 1..=65535")),
    }
}

/// A task's user: `NAME|UID` optionally followed by `:GROUP|GID`, each part
/// 1 to 32 characters of letters, digits, `_`, `-` and `.` (names as
/// useradd takes them), not starting with `-`. Whether it exists is up to
/// the node that starts the task.
fn check_user(text: &str) -> Result<(), String> {
    let part = |p: &str| {
        (1..=32).contains(&p.len())
            && !p.starts_with('-')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    let (user, group) = match text.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (text, None),
    };
    if part(user) && group.is_none_or(part) {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not NAME, UID, NAME:GROUP or UID:GID (letters, digits, '_', '-', '.')"
        ))
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
    use crate::checked::{Algorithm, FailureAction, UpdateOrder};

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
            vec![(Protocol::Tcp, "0.0.0.0:8080".parse::<SocketAddr>().unwrap())] // fixed-port-ok
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
    fn the_same_backend_twice_is_refused() {
        let err = invalid(
            "[[service]]\nname = \"web\"\nports = [{ published = 80 }]\nendpoints = [{ address = \"10.0.0.1\" }, { address = \"10.0.0.1:80\" }]",
        );
        assert_eq!(err.field, "service[0].endpoints[1].address");
    }

    #[test]
    fn a_port_without_published_is_vip_only_and_needs_its_target() {
        let spec = ServiceSpec {
            name: "redis".into(),
            ports: vec![
                PortSpec {
                    target: Some(6379),
                    ..PortSpec::default()
                },
                PortSpec {
                    published: 8080,
                    target: Some(80),
                    ..PortSpec::default()
                },
            ],
            ..ServiceSpec::default()
        };
        let service = spec.validate().expect("valid");
        assert_eq!(
            (service.ports[0].published, service.ports[0].target),
            (None, 6379)
        );
        let ingress: IpAddr = "127.0.0.1".parse().expect("ip");
        let listen: Vec<SocketAddr> = service
            .listen_addrs(ingress)
            .into_iter()
            .map(|(_, addr)| addr)
            .collect();
        assert_eq!(listen, [SocketAddr::new(ingress, 8080)]);
        // Left out of the JSON, so older specs serialize as they did.
        assert_eq!(
            serde_json::to_value(&spec.ports[0]).expect("json"),
            serde_json::json!({"target": 6379})
        );
        let err = invalid("[[service]]\nname = \"web\"\nports = [{ protocol = \"tcp\" }]");
        assert_eq!(err.field, "service[0].ports[0].published");
    }

    #[test]
    fn overlapping_listen_addresses_of_one_service_are_refused() {
        let err = invalid(
            "[[service]]\nname = \"web\"\nlisten = [\"0.0.0.0\", \"127.0.0.1\"]\nports = [{ published = 80 }]",
        );
        assert_eq!(err.field, "service[0].listen[1]");
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
                "[[service]]\nname = \"web\"\nports = [{ published = 80, protocol = \"sctp\" }]",
                "service[0].ports[0].protocol",
            ),
            (
                "[[service]]\nname = \"web\"\nports = [{ published = 53, protocol = \"udp\" }, { published = 53, protocol = \"udp\" }]",
                "service[0].ports[1].published",
            ),
            (
                "[[service]]\nname = \"web\"\nports = [{ published = 53, protocol = \"udp\" }]\n[service.health]\ntype = \"tcp\"",
                "service[0].health.port",
            ),
            (
                "[[service]]\nname = \"web\"\nports = [{ published = 53, protocol = \"udp\" }]\n[service.health]\nport = 54",
                "service[0].health.port",
            ),
            (
                "[[service]]\nname = \"web\"\nports = [{ published = 53, protocol = \"udp\" }]\nudp_idle_timeout = \"0s\"",
                "service[0].udp_idle_timeout",
            ),
            (
                "[[service]]\nname = \"web\"\nports = [{ published = 53, protocol = \"udp\" }]\nmax_udp_sessions = 0",
                "service[0].max_udp_sessions",
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
                "[[service]]\nname = \"web\"\nports = [{ published = 80 }]\nmax_connections = 5\nmax_connections_per_client = 6",
                "service[0].max_connections_per_client",
            ),
            (
                "[[service]]\nname = \"web\"\nports = [{ published = 80 }]\n[service.health]\ninterval = \"1s\"\ntimeout = \"2s\"",
                "service[0].health.timeout",
            ),
            (
                "[[service]]\nname = \"web\"\nports = [{ published = 80 }]\nreply_timeout = \"1s\"",
                "service[0].reply_timeout",
            ),
            (
                "[[service]]\nname = \"web\"\nports = [{ published = 80 }]\nretry_on_empty = true\nidle_timeout = \"1s\"\nreply_timeout = \"2s\"",
                "service[0].reply_timeout",
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

    /// The Docker runtime publishes udp target ports too, so an image task
    /// may serve udp (it was refused while it published tcp only).
    #[test]
    fn image_tasks_take_udp_ports() {
        let spec = ServiceSpec {
            name: "dns".to_owned(),
            image: Some("dns:1".to_owned()),
            ports: vec![
                PortSpec {
                    published: 53,
                    target: None,
                    protocol: Some("udp".to_owned()),
                },
                PortSpec {
                    published: 53,
                    target: None,
                    protocol: None,
                },
            ],
            ..ServiceSpec::default()
        };
        let checked = spec.validate().expect("udp and tcp ports of an image task");
        assert_eq!(
            checked.ports.iter().map(|p| p.protocol).collect::<Vec<_>>(),
            [Protocol::Udp, Protocol::Tcp]
        );
    }

    #[test]
    fn udp_ports_are_accepted_beside_tcp_on_the_same_number() {
        let cfg = ConfigFile::parse(
            r#"
            [[service]]
            name = "dns"
            ports = [{ published = 53, protocol = "udp" }, { published = 53 }]
            endpoints = [{ address = "10.0.0.1" }]
            [[service]]
            name = "syslog"
            listen = ["127.0.0.1"]
            ports = [{ published = 514, protocol = "udp" }]
            udp_idle_timeout = "5s"
            max_udp_sessions = 7
            [[service]]
            name = "other"
            listen = ["127.0.0.1"]
            ports = [{ published = 514 }]
            "#,
        )
        .unwrap()
        .validate()
        .unwrap();
        let dns = &cfg.services[0];
        assert_eq!(
            dns.ports.iter().map(|p| p.protocol).collect::<Vec<_>>(),
            [Protocol::Udp, Protocol::Tcp]
        );
        assert_eq!(dns.udp_idle_timeout, DEFAULT_UDP_IDLE_TIMEOUT);
        assert_eq!(dns.max_udp_sessions, DEFAULT_MAX_UDP_SESSIONS);
        // A TCP port: the default check, on that port.
        assert_eq!(dns.health.kind, HealthCheckKind::Tcp);
        assert_eq!(dns.health_target(), Some(53));
        let syslog = &cfg.services[1];
        assert_eq!(syslog.udp_idle_timeout, Duration::from_secs(5));
        assert_eq!(syslog.max_udp_sessions, 7);
        // UDP ports only: no check unless one is asked for with its port.
        assert_eq!(syslog.health.kind, HealthCheckKind::None);
        assert_eq!(syslog.health_target(), None);

        let checked = ConfigFile::parse(
            "[[service]]\nname = \"dns\"\nports = [{ published = 53, target = 5353, protocol = \"udp\" }]\n[service.health]\nport = 5353",
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(checked.services[0].health.kind, HealthCheckKind::Tcp);
        assert_eq!(checked.services[0].health_target(), Some(5353));

        // The same address and port for udp in two services clashes.
        let err = invalid(
            r#"
            [[service]]
            name = "a"
            listen = ["127.0.0.1"]
            ports = [{ published = 514, protocol = "udp" }]
            [[service]]
            name = "b"
            ports = [{ published = 514, protocol = "udp" }]
            [node]
            ingress_addr = "127.0.0.1"
            "#,
        );
        assert_eq!(err.field, "service[1].ports");
        assert!(err.reason.contains("514/udp"), "{err}");
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
            ("command = \"x\"\nuser = \"a b\"", "service[0].user"),
            ("command = \"x\"\nuser = \"nobody:\"", "service[0].user"),
            ("command = \"x\"\nuser = \"-u\"", "service[0].user"),
            ("user = \"nobody\"", "service[0].user"),
            (
                "image = \"x\"\n[service.update]\nparallelism = -1",
                "service[0].update.parallelism",
            ),
            (
                "image = \"x\"\n[service.rollback]\nfailure_action = \"rollback\"",
                "service[0].rollback.failure_action",
            ),
            (
                "image = \"x\"\n[service.rollback]\nmonitor = \"2h\"",
                "service[0].rollback.monitor",
            ),
        ];
        for (extra, field) in cases {
            let err = invalid(&format!("{base}{extra}"));
            assert_eq!(err.field, field, "{extra}: {err}");
        }
        let ok = ConfigFile::parse(&format!(
            "{base}image = \"img:v1\"\nreplicas = 3\nenv = [\"A=b\"]\nuser = \"www-data:1000\"\n[service.update]\norder = \"start-first\"\nfailure_action = \"rollback\""
        ))
        .unwrap()
        .validate()
        .unwrap();
        let tasks = ok.services[0].tasks.clone().expect("a task service");
        assert_eq!(tasks.user.as_deref(), Some("www-data:1000"));
        assert_eq!(tasks.update.order, UpdateOrder::StartFirst);
        assert_eq!(tasks.update.failure_action, FailureAction::Rollback);
        // Without a rollback table a rollback rolls as the update does.
        assert_eq!(tasks.rollback, tasks.update);
        assert_eq!(tasks.restart.delay, DEFAULT_RESTART_DELAY);
    }

    fn ports(count: usize) -> String {
        let ports: Vec<String> = (0..count)
            .map(|i| format!("{{ published = {} }}", 10_000 + i))
            .collect();
        format!(
            "[[service]]\nname = \"web\"\nports = [{}]",
            ports.join(", ")
        )
    }

    #[test]
    fn a_spec_over_the_port_cap_is_refused_naming_the_limit() {
        let err = invalid(&ports(MAX_PORTS + 1));
        assert_eq!(err.field, "service[0].ports");
        assert_eq!(err.reason, "65 ports; at most 64 are allowed per service");
        let file = ConfigFile::parse(&ports(MAX_PORTS)).unwrap();
        assert_eq!(file.validate().unwrap().services[0].ports.len(), MAX_PORTS);
        // The registry's rule (`validate`) is unchanged, so a stored spec
        // over the cap still applies and routes alike on every lbd version.
        let over = ConfigFile::parse(&ports(MAX_PORTS + 1)).unwrap();
        assert!(over.services[0].validate().is_ok());
        assert!(over.services[0].check_limits().is_err());
    }

    #[test]
    fn overlapping_addresses_are_found_in_any_order() {
        let two = |a: &str, b: &str| {
            format!(
                "[[service]]\nname = \"a\"\nlisten = [\"{a}\"]\nports = [{{ published = 80 }}]\n\
                 [[service]]\nname = \"b\"\nlisten = [\"{b}\"]\nports = [{{ published = 80 }}]"
            )
        };
        for (a, b) in [
            ("0.0.0.0", "127.0.0.1"),
            ("127.0.0.1", "0.0.0.0"),
            ("127.0.0.1", "127.0.0.1"),
            ("::", "::1"),
            ("::1", "::"),
        ] {
            let err = invalid(&two(a, b));
            assert_eq!(err.field, "service[1].listen", "{a} {b}");
            assert!(err.reason.contains("\"a\""), "{a} {b}: {err}");
        }
        for (a, b) in [
            ("0.0.0.0", "::"),
            ("127.0.0.1", "127.0.0.2"),
            ("::", "127.0.0.1"),
        ] {
            let file = ConfigFile::parse(&two(a, b)).unwrap();
            assert!(file.validate().is_ok(), "{a} {b}");
        }
        let one = |listen: &str| {
            invalid(&format!(
                "[[service]]\nname = \"a\"\nlisten = [{listen}]\nports = [{{ published = 80 }}]"
            ))
        };
        let err = one("\"127.0.0.1\", \"127.0.0.2\", \"0.0.0.0\"");
        assert_eq!(err.field, "service[0].listen[2]");
        assert_eq!(
            err.reason,
            "0.0.0.0 overlaps 127.0.0.1, which is already listed"
        );
        let err = one("\"::\", \"127.0.0.1\", \"::1\"");
        assert_eq!(err.reason, "::1 overlaps ::, which is already listed");
    }

    #[test]
    fn an_endpoint_listed_twice_is_found_with_several_ports() {
        let err = invalid(
            "[[service]]\nname = \"web\"\nports = [{ published = 80, target = 8080 }, { published = 81 }]\n\
             endpoints = [{ address = \"10.0.0.1\" }, { address = \"10.0.0.2\" }, { address = \"10.0.0.1\" }]",
        );
        assert_eq!(err.field, "service[0].endpoints[2].address");
        assert_eq!(err.reason, "10.0.0.1:8080 is listed twice");
    }

    #[test]
    fn labels_are_kept_and_a_bad_key_is_refused() {
        let text = "[[service]]\nname = \"web\"\nports = [{ published = 80 }]\n\
                    endpoints = [{ address = \"10.0.0.1\" }]\nlabels = { team = \"a\" }\n";
        let file = ConfigFile::parse(text).expect("parses");
        assert_eq!(file.services[0].labels["team"], "a");
        file.validate().expect("valid");
        let err = ConfigFile::parse(&text.replace("team", "\"my team\""))
            .expect("parses")
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "service[0].labels.my team");
    }

    #[test]
    fn container_fields_are_checked_and_need_an_image() {
        let base = || ServiceSpec {
            name: "web".into(),
            image: Some("x:1".into()),
            ports: vec![PortSpec {
                published: 80,
                ..PortSpec::default()
            }],
            ..ServiceSpec::default()
        };
        let field = |spec: ServiceSpec| spec.validate().err().map(|e| e.field);

        let mut spec = base();
        spec.args = vec!["serve".into(), "--port=80".into()];
        spec.entrypoint = Some(Vec::new());
        spec.container_labels.insert("team".into(), "a".into());
        spec.healthcheck = Some(ContainerHealthcheck {
            test: vec!["CMD".into(), "true".into()],
            interval: Some(Duration::from_secs(1)),
            retries: Some(3),
            ..ContainerHealthcheck::default()
        });
        let task = spec.validate().expect("valid").tasks.expect("runs tasks");
        assert_eq!(task.args, spec.args);
        assert_eq!(task.entrypoint, Some(Vec::new()));
        assert_eq!(task.healthcheck, spec.healthcheck);

        let mut both = spec.clone();
        both.command = Some("serve".into());
        assert_eq!(field(both).as_deref(), Some("args"));
        let mut no_image = spec.clone();
        no_image.image = None;
        assert_eq!(field(no_image).as_deref(), Some("entrypoint"));
        let mut process = base();
        process.image = None;
        process.args = vec!["busybox".into(), "httpd".into()];
        assert!(process.validate().expect("valid").tasks.is_some());
        let mut reserved = spec.clone();
        reserved
            .container_labels
            .insert("io.lbmesh.task".into(), "x".into());
        assert_eq!(
            field(reserved).as_deref(),
            Some("container_labels.io.lbmesh.task")
        );
        for test in [
            vec!["CMD"],
            vec!["CMD-SHELL", "a", "b"],
            vec!["NONE", "x"],
            vec![],
        ] {
            let mut bad = spec.clone();
            bad.healthcheck = Some(ContainerHealthcheck {
                test: test.iter().map(|w| (*w).to_owned()).collect(),
                ..ContainerHealthcheck::default()
            });
            assert_eq!(field(bad).as_deref(), Some("healthcheck.test"), "{test:?}");
        }
        let mut slow = spec.clone();
        if let Some(check) = slow.healthcheck.as_mut() {
            check.interval = Some(Duration::from_secs(7200));
        }
        assert_eq!(field(slow).as_deref(), Some("healthcheck.interval"));
    }

    #[test]
    fn dns_labels() {
        assert!(check_dns_label("web-1").is_ok());
        for bad in ["", "-web", "web-", "we_b", "Web", &"a".repeat(64)] {
            assert!(check_dns_label(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dns_domains() {
        assert!(check_dns_domain("lbmesh.internal").is_ok());
        assert!(check_dns_domain("corp").is_ok());
        let long = ["a".repeat(63).as_str(); 4].join(".");
        for bad in [
            "",
            ".",
            "corp..test",
            "corp.",
            "Corp.test",
            "c_p.test",
            &long,
        ] {
            assert!(check_dns_domain(bad).is_err(), "{bad:?}");
        }
    }
}
