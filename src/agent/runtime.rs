//! The runtime interface: what the agent needs from whatever runs tasks.
//!
//! Two runtimes implement [`Runtime`]: [`super::docker::DockerRuntime`]
//! (containers through the Docker engine API) and
//! [`super::process::ProcessRuntime`] (local commands). The agent owns one of
//! each kind that is available and picks by the service spec: an `image`
//! runs on docker, a `command` without an image runs as a process.
//!
//! # Contract
//!
//! - Everything a runtime starts carries the cluster id, node name, service
//!   name and task id (docker labels; the process runtime keeps task records
//!   in the node's own data dir), so
//!   [`Runtime::list`] finds exactly what this node started for this cluster
//!   and nothing else. Two lbd processes sharing one engine never see each
//!   other's containers.
//! - [`Runtime::start`] returns once the task runs and its ports are known;
//!   a failure (unknown image, command not found, no free port) is an error
//!   whose text is shown to users in `service ps`.
//! - [`Runtime::stop`] stops gracefully (SIGTERM, then SIGKILL after the
//!   grace period) and removes what it started; stopping something already
//!   gone is not an error.
//! - Exits the agent did not ask for arrive on the event channel given to the
//!   runtime at construction, as soon as the runtime notices them (docker: the
//!   engine's event stream; processes: the child's wait).
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use lb_config::ContainerHealthcheck;

/// Which runtime runs a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuntimeKind {
    Docker,
    Process,
}

/// Labels (docker) and environment keys (process) that tie what a runtime
/// started to its cluster, node, service and task.
pub const LABEL_CLUSTER: &str = "io.lbmesh.cluster";
pub const LABEL_NODE: &str = "io.lbmesh.node";
pub const LABEL_SERVICE: &str = "io.lbmesh.service";
pub const LABEL_TASK: &str = "io.lbmesh.task";

/// Everything needed to start one task.
#[derive(Debug, Clone)]
pub struct TaskLaunch {
    pub cluster_id: String,
    pub node_name: String,
    pub service: String,
    pub task_id: String,
    /// `service.slot` (replicated) or `service.node` (global), for names.
    pub slot: u32,
    /// Docker image; `None` for the process runtime.
    pub image: Option<String>,
    /// Docker: replaces the image's command, run as `/bin/sh -c COMMAND`.
    /// Process: the command line, run as `/bin/sh -c COMMAND`.
    pub command: Option<String>,
    /// The command in exec form, no shell (a process runs it directly);
    /// empty: `command`, or the image's.
    pub args: Vec<String>,
    /// Docker: replaces the image's ENTRYPOINT (`[]` clears it).
    pub entrypoint: Option<Vec<String>>,
    /// Docker: the service's container labels; lbmesh's own are set after
    /// them, so they cannot be overridden.
    pub container_labels: BTreeMap<String, String>,
    /// Docker: the container's HEALTHCHECK, in place of the image's.
    pub healthcheck: Option<ContainerHealthcheck>,
    /// `KEY=VALUE` pairs from the service spec.
    pub env: Vec<String>,
    /// Who the task runs as (`NAME|UID[:GROUP|GID]`); `None`: the image's
    /// user, or lbd's own for a process.
    pub user: Option<String>,
    /// The node's advertise address: published ports bind here.
    pub host_ip: IpAddr,
    /// The service's target ports, each once with the protocols it is
    /// published with; each gets one ephemeral host port (for both
    /// protocols when it has both).
    pub target_ports: Vec<TargetPort>,
    /// How long `stop` waits between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// The node's DNS responder, when the task reaches it.
    pub dns: Option<TaskDns>,
}

/// A task's resolver: docker's `--dns` and `--dns-search`, a process's
/// `LBMESH_DNS` and `LBMESH_DNS_SEARCH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDns {
    pub server: IpAddr,
    /// Search domains, the stack's first.
    pub search: Vec<String>,
}

/// A target port of a task and the protocols the service publishes it
/// with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetPort {
    pub port: u16,
    pub tcp: bool,
    pub udp: bool,
}

/// The distinct target ports of `ports`, in their first order, each with
/// every protocol a port names for it (53/tcp and 53/udp: one target).
pub fn target_ports(ports: &[lb_config::PortMapping]) -> Vec<TargetPort> {
    let mut targets: Vec<TargetPort> = Vec::with_capacity(ports.len());
    for mapping in ports {
        let index = match targets.iter().position(|t| t.port == mapping.target) {
            Some(index) => index,
            None => {
                targets.push(TargetPort {
                    port: mapping.target,
                    tcp: false,
                    udp: false,
                });
                targets.len() - 1
            }
        };
        match mapping.protocol {
            lb_config::Protocol::Tcp => targets[index].tcp = true,
            lb_config::Protocol::Udp => targets[index].udp = true,
        }
    }
    targets
}

/// A running task as its runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeTask {
    /// Container id, or `pid:<pid>` for a process.
    pub runtime_id: String,
    pub task_id: String,
    pub service: String,
    /// `(target port, host port)` for each published target port.
    pub ports: Vec<(u16, u16)>,
    pub running: bool,
    /// The image's own health check (docker HEALTHCHECK), if it has one.
    pub own_health: Option<OwnHealth>,
}

/// State of a docker HEALTHCHECK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnHealth {
    Starting,
    Healthy,
    Unhealthy,
}

/// Something that happened to a task without the agent asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// The task's container or process ended.
    Exited {
        runtime_id: String,
        task_id: String,
        exit_code: Option<i64>,
    },
    /// The image's own health check changed state.
    OwnHealth {
        runtime_id: String,
        task_id: String,
        health: OwnHealth,
    },
}

/// Why a runtime call failed; the text is shown to users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("image {0:?} not found on this node")]
    ImageNotFound(String),
    #[error("{0}")]
    Failed(String),
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
}

/// A task runtime. Methods return boxed futures so the agent can hold
/// runtimes of different kinds as `Arc<dyn Runtime>`.
pub trait Runtime: Send + Sync {
    /// Starts a task and returns it with its host ports.
    fn start(&self, launch: TaskLaunch) -> BoxFuture<'_, Result<RuntimeTask, RuntimeError>>;

    /// Stops and removes a task (SIGTERM, `grace`, SIGKILL).
    fn stop<'a>(
        &'a self,
        runtime_id: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Everything this runtime holds for this cluster and node, running or
    /// not.
    fn list(&self) -> BoxFuture<'_, Result<Vec<RuntimeTask>, RuntimeError>>;
}
