//! The file as written: serde structs that mirror the TOML one to one.
//!
//! Every table has `deny_unknown_fields`, so a misspelt key is an error
//! that names it. Numbers are read as `i64` so that `validate` can report a
//! negative or huge value with its field name instead of a type error;
//! enums come from [`crate::checked`], checked by serde itself.
//!
//! [`ServiceSpec`] is also the body of the registry's service API and the
//! `[[service]]` table of `lbctl apply -f`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checked::{
    Algorithm, ContainerHealthcheck, FailureAction, HealthCheckKind, ProxyProtocol,
    RestartCondition, ServiceMode, UpdateOrder,
};

/// The label that marks a stack's services with the stack's name
/// (Swarm's, so tools that group by it work unchanged; lbd's DNS answers
/// a stack's short names from it).
pub const STACK_LABEL: &str = "com.docker.stack.namespace";

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
    /// How long a UDP session (one client address and port) lives without
    /// a datagram either way (default 60 s). Only UDP ports use it.
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_idle_timeout: Option<Duration>,
    /// Cap on the service's open UDP sessions on each node (default
    /// 10,000); a new flow past it is dropped and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_udp_sessions: Option<i64>,
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<Duration>,
    /// Wide integer type so that a negative or huge value is reported by
    /// `validate()` with its field name rather than as a type error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    /// Opt-in cap on one client address's open connections to the service
    /// (0 or absent: none), so a few silent clients cannot fill
    /// `max_connections`. There is deliberately no first-byte timeout for
    /// the same purpose: in protocols where the server speaks first (SMTP,
    /// MySQL, SSH) a client that sends nothing yet is normal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_client: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    /// Resend what a client sent to another backend when the first one
    /// closes the connection before answering a byte (default off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_on_empty: Option<bool>,
    /// One JSON line per closed connection in the node's access log
    /// (default off; `lbd --access-log` says where the lines go). Absent
    /// from specs stored before it existed, which read as off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<bool>,
    /// With `retry_on_empty`: how long a backend that has the client's
    /// first bytes may stay silent before it is ejected and the bytes go to
    /// another backend (a backend cut off mid-request). Absent: it may stay
    /// silent until the idle timeout.
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_timeout: Option<Duration>,
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
    /// Each task's command in exec form, without a shell (docker's
    /// `service create IMAGE [COMMAND] [ARG...]`, compose's `command`):
    /// replaces the image's command; a process task runs it directly, with
    /// the same environment as `command`. Not together with `command`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Replaces the image's ENTRYPOINT (exec form; `[]` clears it). Docker
    /// tasks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` environment of each task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// The user each task runs as: `NAME`, `UID`, `NAME:GROUP` or
    /// `UID:GID` (docker's `--user`); absent: the image's user, or lbd's
    /// own for a process task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
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
    /// How a rollback replaces the tasks (`service rollback`, or an
    /// update whose failure action is `rollback`): docker's
    /// `--rollback-*`, compose's `deploy.rollback_config`. Absent: as the
    /// update does (`update`). Its failure action is `pause` or
    /// `continue`: a rollback cannot roll back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<UpdateSpec>,
    /// Time between SIGTERM and SIGKILL when a task stops.
    #[serde(default, with = "humantime_serde")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<Duration>,
    /// The service's own labels (docker's `--label`): metadata for people
    /// and tools, never read by the scheduler or the proxy. `lbctl stack`
    /// marks a stack's services with `com.docker.stack.namespace`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Labels of each task's container (docker's `--container-label`,
    /// compose's service `labels`), beside lbmesh's own `io.lbmesh.*`.
    /// Docker tasks only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_labels: BTreeMap<String, String>,
    /// The container's own health check, in place of the image's
    /// HEALTHCHECK; a task serves only while Docker calls it healthy (and
    /// lbmesh's `health` check passes). Docker tasks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<ContainerHealthcheck>,
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

/// One port: `{ published = 8080, target = 80, protocol = "tcp" }`
/// (`protocol` is `tcp` or `udp`, default `tcp`). Without `published`
/// (`{ target = 6379 }`) the port answers on the service's VIP only, on
/// every node, and is published nowhere (compose's `expose`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// The port every node publishes; 0 (absent): none, VIP only.
    #[serde(default, skip_serializing_if = "is_vip_only")]
    pub published: i64,
    /// Port on the backends; defaults to `published`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// Whether a port's `published` says "VIP only" (0, left out of the JSON,
/// so specs written before VIP-only ports serialize as they did).
fn is_vip_only(published: &i64) -> bool {
    *published == 0
}

impl PortSpec {
    /// Whether the port is published on the nodes (not VIP only).
    pub fn is_published(&self) -> bool {
        self.published != 0
    }
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
    /// The target port a `tcp` or `http` check connects to (default: the
    /// first TCP port's target). A service of UDP ports only has no check
    /// unless it names a type and this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
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

impl ConfigFile {
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
}

impl ServiceSpec {
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
            && self.args == other.args
            && self.entrypoint == other.entrypoint
            && self.container_labels == other.container_labels
            && self.healthcheck == other.healthcheck
            && self.env == other.env
            && self.user == other.user
            && targets(self) == targets(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn unknown_algorithm_lists_choices() {
        let err = ConfigFile::parse("[[service]]\nname = \"web\"\nalgorithm = \"fastest\"\n")
            .unwrap_err();
        assert!(
            err.contains("fastest") && err.contains("least-conn"),
            "{err}"
        );
    }

    /// A spec stored before `access_log` existed reads as off, and a spec
    /// that leaves it unset writes no key: the registry's log entries and
    /// snapshots read and compare as before.
    #[test]
    fn access_log_is_off_when_absent_and_absent_when_unset() {
        let config = ConfigFile::parse(
            "[[service]]\nname = \"web\"\nports = [{ published = 80 }]\nendpoints = [{ address = \"127.0.0.1:81\" }]\n",
        )
        .expect("parses")
        .validate()
        .expect("valid");
        assert!(!config.services[0].access_log);
        let spec = ServiceSpec {
            name: "web".into(),
            ..ServiceSpec::default()
        };
        let json = serde_json::to_string(&spec).expect("json");
        assert!(!json.contains("access_log"), "{json}");
        let read: ServiceSpec = serde_json::from_str(&json).expect("reads");
        assert_eq!(read.access_log, None);
        let on = ConfigFile::parse(
            "[[service]]\nname = \"web\"\nports = [{ published = 80 }]\nendpoints = [{ address = \"127.0.0.1:81\" }]\naccess_log = true\n",
        )
        .expect("parses")
        .validate()
        .expect("valid");
        assert!(on.services[0].access_log);
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
        b.env = a.env.clone();
        assert!(a.same_task_template(&b));
        b.args = vec!["serve".into()];
        assert!(!a.same_task_template(&b));
        b.args.clear();
        b.entrypoint = Some(Vec::new());
        assert!(!a.same_task_template(&b));
        b.entrypoint = None;
        b.container_labels.insert("k".into(), "v".into());
        assert!(!a.same_task_template(&b));
        b.container_labels.clear();
        b.healthcheck = Some(ContainerHealthcheck {
            test: vec!["NONE".into()],
            ..ContainerHealthcheck::default()
        });
        assert!(!a.same_task_template(&b));
    }
}
