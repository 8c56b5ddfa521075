//! The Docker runtime: tasks as containers, through the engine's API
//! (bollard), with the API version negotiated so a 20.10 engine (API 1.41)
//! works.
//!
//! # Flow
//!
//! ```text
//! start: create (the spec's container labels, then lbmesh's cluster/node/service/task; env;
//!        the node's DNS responder as resolver, the stack's domain first in the search list;
//!        args or `/bin/sh -c COMMAND`; entrypoint; healthcheck; target ports published on the
//!        advertise address with ephemeral host ports, as tcp, udp or both (one host port
//!        picked free for both), no restart policy) ─> start
//!        ─> inspect: host ports, the image's own HEALTHCHECK state
//!        missing image: one bounded pull, else ImageNotFound
//! stop:  stop (SIGTERM, grace, SIGKILL) ─> remove; "no such container" is success
//! list:  containers with this cluster's and this node's labels, running or not
//! events: the engine's event stream (die, health_status) for those labels ─> RuntimeEvent,
//!        reconnected with backoff if it breaks
//! ```
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HealthConfig, HealthStatusEnum, HostConfig,
    PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use lb_config::ContainerHealthcheck;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::runtime::{
    OwnHealth, Runtime, RuntimeError, RuntimeEvent, RuntimeTask, TargetPort, TaskLaunch,
    LABEL_CLUSTER, LABEL_NODE, LABEL_SERVICE, LABEL_TASK,
};

/// Longest wait for a pull of a missing image (there may be no registry).
const PULL_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for the engine to report a started container's host ports.
const PORTS_TIMEOUT: Duration = Duration::from_secs(5);

/// Containers through the local Docker engine.
pub struct DockerRuntime {
    docker: Docker,
    cluster_id: String,
    node_name: String,
    /// Stops the event follower when the runtime is dropped.
    stop_events: CancellationToken,
}

impl Drop for DockerRuntime {
    fn drop(&mut self) {
        self.stop_events.cancel();
    }
}

fn unavailable(error: DockerError) -> RuntimeError {
    RuntimeError::Unavailable(error.to_string())
}

fn failed(what: &str, error: DockerError) -> RuntimeError {
    RuntimeError::Failed(format!("{what}: {error}"))
}

fn is_not_found(error: &DockerError) -> bool {
    matches!(
        error,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerRuntime {
    /// Connects to the engine (`DOCKER_HOST` or the local socket),
    /// negotiates the API version and starts following its events.
    pub async fn connect(
        cluster_id: String,
        node_name: String,
        events: UnboundedSender<RuntimeEvent>,
    ) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults().map_err(unavailable)?;
        let docker = docker.negotiate_version().await.map_err(unavailable)?;
        docker.ping().await.map_err(unavailable)?;
        let stop_events = CancellationToken::new();
        tokio::spawn(follow_events(
            docker.clone(),
            labels_filter(&cluster_id, &node_name),
            events,
            stop_events.clone(),
        ));
        Ok(Self {
            docker,
            cluster_id,
            node_name,
            stop_events,
        })
    }

    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, DockerError> {
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map(|created| created.id)
    }

    /// Pulls `image`, bounded in time; `Err` with the reason.
    async fn pull(&self, image: &str) -> Result<(), String> {
        let (name, tag) = match image.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, tag),
            _ => (image, "latest"),
        };
        let options = CreateImageOptionsBuilder::default()
            .from_image(name)
            .tag(tag)
            .build();
        let pull = async {
            let mut stream = self.docker.create_image(Some(options), None, None);
            while let Some(step) = stream.next().await {
                step.map_err(|e| e.to_string())?;
            }
            Ok(())
        };
        tokio::time::timeout(PULL_TIMEOUT, pull)
            .await
            .unwrap_or_else(|_| Err(format!("pull did not finish within {PULL_TIMEOUT:?}")))
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse, DockerError> {
        self.docker.inspect_container(id, None).await
    }

    async fn start_task(&self, launch: TaskLaunch) -> Result<RuntimeTask, RuntimeError> {
        let image = launch
            .image
            .clone()
            .ok_or_else(|| RuntimeError::Failed("a docker task needs an image".to_owned()))?;
        let mut labels: HashMap<String, String> = launch
            .container_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.extend([
            (LABEL_CLUSTER.to_owned(), launch.cluster_id.clone()),
            (LABEL_NODE.to_owned(), launch.node_name.clone()),
            (LABEL_SERVICE.to_owned(), launch.service.clone()),
            (LABEL_TASK.to_owned(), launch.task_id.clone()),
        ]);
        let bindings = port_bindings(launch.host_ip, &launch.target_ports)?;
        let exposed: Vec<String> = bindings.keys().cloned().collect();
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            cmd: command_words(&launch.args, launch.command.as_deref()),
            entrypoint: launch.entrypoint.as_ref().map(|words| {
                // The engine reads an empty list as "the image's"; [""] clears it.
                if words.is_empty() {
                    vec![String::new()]
                } else {
                    words.clone()
                }
            }),
            healthcheck: launch.healthcheck.as_ref().map(health_config),
            env: Some(launch.env.clone()),
            user: launch.user.clone(),
            labels: Some(labels),
            exposed_ports: Some(exposed),
            host_config: Some(HostConfig {
                port_bindings: Some(
                    bindings
                        .into_iter()
                        .map(|(port, binding)| (port, Some(vec![binding])))
                        .collect(),
                ),
                dns: launch.dns.as_ref().map(|dns| vec![dns.server.to_string()]),
                dns_search: launch.dns.as_ref().map(|dns| dns.search.clone()),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let name = format!("{}.{}.{}", launch.service, launch.slot, launch.task_id);
        let id = match self.create(&name, body.clone()).await {
            Ok(id) => id,
            Err(error) if is_not_found(&error) => {
                debug!(%image, "image missing locally; pulling");
                if let Err(reason) = self.pull(&image).await {
                    debug!(%image, %reason, "pull failed");
                    return Err(RuntimeError::ImageNotFound(image));
                }
                self.create(&name, body)
                    .await
                    .map_err(|e| failed("create", e))?
            }
            Err(error) => return Err(failed("create", error)),
        };
        if let Err(error) = self.docker.start_container(&id, None).await {
            let _ = self.remove(&id).await;
            return Err(failed("start", error));
        }
        let deadline = tokio::time::Instant::now() + PORTS_TIMEOUT;
        loop {
            let inspected = self.inspect(&id).await.map_err(|e| failed("inspect", e))?;
            let task = from_inspect(&id, &launch, &inspected);
            let complete = task.ports.len() == launch.target_ports.len();
            if complete || !task.running || tokio::time::Instant::now() >= deadline {
                if !complete && task.running {
                    let _ = self.remove(&id).await;
                    return Err(RuntimeError::Failed(
                        "the engine reported no host port for the task".to_owned(),
                    ));
                }
                return Ok(task);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn remove(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Err(error) if !is_not_found(&error) => Err(error),
            _ => Ok(()),
        }
    }

    async fn stop_task(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let seconds = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(seconds).build();
        match self.docker.stop_container(id, Some(options)).await {
            Err(error) if is_not_found(&error) => return Ok(()),
            // Already stopped (304) or any other answer: remove anyway.
            _ => {}
        }
        self.remove(id).await.map_err(|e| failed("remove", e))
    }

    async fn list_tasks(&self) -> Result<Vec<RuntimeTask>, RuntimeError> {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&labels_filter(&self.cluster_id, &self.node_name))
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(unavailable)?;
        let mut tasks = Vec::with_capacity(summaries.len());
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            let labels = summary.labels.unwrap_or_default();
            let ports = summary
                .ports
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p.public_port.map(|public| (p.private_port, public)))
                .collect();
            let running = summary.state.is_some_and(|s| s.to_string() == "running");
            let own_health = match summary.health.and_then(|h| h.status) {
                Some(status) => own_health(status.as_ref()),
                None => None,
            };
            tasks.push(RuntimeTask {
                runtime_id: id,
                task_id: labels.get(LABEL_TASK).cloned().unwrap_or_default(),
                service: labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
                ports,
                running,
                own_health,
            });
        }
        Ok(tasks)
    }
}

/// The container's command: `args` as they are, `command` under
/// `/bin/sh -c`, or none (the image's).
fn command_words(args: &[String], command: Option<&str>) -> Option<Vec<String>> {
    if !args.is_empty() {
        return Some(args.to_vec());
    }
    command.map(|c| vec!["/bin/sh".to_owned(), "-c".to_owned(), c.to_owned()])
}

/// A spec's `healthcheck` as the engine takes it (durations in
/// nanoseconds; 0 or absent: the engine's default).
fn health_config(check: &ContainerHealthcheck) -> HealthConfig {
    let nanos = |d: Option<Duration>| d.map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    HealthConfig {
        test: Some(check.test.clone()),
        interval: nanos(check.interval),
        timeout: nanos(check.timeout),
        retries: check.retries,
        start_period: nanos(check.start_period),
        ..HealthConfig::default()
    }
}

fn labels_filter(cluster_id: &str, node_name: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        vec![
            format!("{LABEL_CLUSTER}={cluster_id}"),
            format!("{LABEL_NODE}={node_name}"),
        ],
    )])
}

fn own_health(status: &str) -> Option<OwnHealth> {
    match status {
        "starting" => Some(OwnHealth::Starting),
        "healthy" => Some(OwnHealth::Healthy),
        "unhealthy" => Some(OwnHealth::Unhealthy),
        _ => None,
    }
}

fn from_inspect(
    id: &str,
    launch: &TaskLaunch,
    inspected: &ContainerInspectResponse,
) -> RuntimeTask {
    let state = inspected.state.as_ref();
    let running = state.and_then(|s| s.running).unwrap_or(false);
    let own_health = state
        .and_then(|s| s.health.as_ref())
        .and_then(|h| h.status)
        .and_then(|status| match status {
            HealthStatusEnum::STARTING => Some(OwnHealth::Starting),
            HealthStatusEnum::HEALTHY => Some(OwnHealth::Healthy),
            HealthStatusEnum::UNHEALTHY => Some(OwnHealth::Unhealthy),
            _ => None,
        });
    let published = inspected
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref());
    let ports = launch
        .target_ports
        .iter()
        .filter_map(|target| {
            // Both protocols of a target share its host port.
            let protocol = if target.tcp { "tcp" } else { "udp" };
            let bindings = published?
                .get(&format!("{}/{protocol}", target.port))?
                .as_ref()?;
            let host = bindings
                .iter()
                .find_map(|b| b.host_port.as_ref()?.parse::<u16>().ok())?;
            Some((target.port, host))
        })
        .collect();
    RuntimeTask {
        runtime_id: id.to_owned(),
        task_id: launch.task_id.clone(),
        service: launch.service.clone(),
        ports,
        running,
        own_health,
    }
}

/// Each target port's bindings on the advertise address, keyed as the
/// engine names them (`80/tcp`, `53/udp`). The engine picks a free host port
/// for a port of one protocol; a target published for both gets one port
/// free for both, picked here, since the mesh knows one host port per
/// target.
fn port_bindings(
    host_ip: IpAddr,
    targets: &[TargetPort],
) -> Result<BTreeMap<String, PortBinding>, RuntimeError> {
    let mut bindings = BTreeMap::new();
    for target in targets {
        let host_port = if target.tcp && target.udp {
            free_port_for_both(host_ip)?.to_string()
        } else {
            // Empty: the engine picks a free ephemeral port.
            String::new()
        };
        for (protocol, published) in [("tcp", target.tcp), ("udp", target.udp)] {
            if published {
                bindings.insert(
                    format!("{}/{protocol}", target.port),
                    PortBinding {
                        host_ip: Some(host_ip.to_string()),
                        host_port: Some(host_port.clone()),
                    },
                );
            }
        }
    }
    Ok(bindings)
}

/// How many ports [`free_port_for_both`] tries: an ephemeral TCP port is
/// nearly always free for UDP too.
const BOTH_PROTOCOL_TRIES: usize = 16;

/// A port free for TCP and UDP on `ip` a moment ago.
fn free_port_for_both(ip: IpAddr) -> Result<u16, RuntimeError> {
    for _ in 0..BOTH_PROTOCOL_TRIES {
        let tcp = std::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .and_then(|listener| listener.local_addr())
            .map_err(|e| RuntimeError::Failed(format!("no free port on {ip}: {e}")))?;
        if std::net::UdpSocket::bind(tcp).is_ok() {
            return Ok(tcp.port());
        }
    }
    Err(RuntimeError::Failed(format!(
        "no port free for both tcp and udp on {ip} in {BOTH_PROTOCOL_TRIES} tries"
    )))
}

/// Follows the engine's events for this node's containers until `stop`.
async fn follow_events(
    docker: Docker,
    filter: HashMap<String, Vec<String>>,
    events: UnboundedSender<RuntimeEvent>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut filters = filter.clone();
        filters.insert("type".to_owned(), vec!["container".to_owned()]);
        filters.insert(
            "event".to_owned(),
            vec!["die".to_owned(), "health_status".to_owned()],
        );
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        let mut stream = docker.events(Some(options));
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                next = stream.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    warn!(%error, "docker event stream broke; reconnecting");
                    break;
                }
                None => break,
            };
            backoff = Duration::from_millis(200);
            let action = message.action.unwrap_or_default();
            let Some(actor) = message.actor else { continue };
            let runtime_id = actor.id.unwrap_or_default();
            let attributes = actor.attributes.unwrap_or_default();
            let task_id = attributes.get(LABEL_TASK).cloned().unwrap_or_default();
            let event = if action == "die" {
                RuntimeEvent::Exited {
                    runtime_id,
                    task_id,
                    exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
                }
            } else if let Some(status) = action.strip_prefix("health_status: ") {
                match own_health(status.trim()) {
                    Some(health) => RuntimeEvent::OwnHealth {
                        runtime_id,
                        task_id,
                        health,
                    },
                    None => continue,
                }
            } else {
                continue;
            };
            if events.send(event).is_err() {
                return;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl Runtime for DockerRuntime {
    fn start(&self, launch: TaskLaunch) -> BoxFuture<'_, Result<RuntimeTask, RuntimeError>> {
        Box::pin(self.start_task(launch))
    }

    fn stop<'a>(
        &'a self,
        runtime_id: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.stop_task(runtime_id, grace))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<RuntimeTask>, RuntimeError>> {
        Box::pin(self.list_tasks())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_run_as_they_are_and_a_command_under_a_shell() {
        let args = vec![
            "redis-server".to_owned(),
            "--port".to_owned(),
            "7".to_owned(),
        ];
        assert_eq!(command_words(&args, None), Some(args.clone()));
        assert_eq!(
            command_words(&[], Some("echo $HOME")),
            Some(vec!["/bin/sh".into(), "-c".into(), "echo $HOME".into()])
        );
        assert_eq!(command_words(&[], None), None);
    }

    #[test]
    fn a_healthcheck_is_the_engines_in_nanoseconds() {
        let check = ContainerHealthcheck {
            test: vec!["CMD-SHELL".into(), "wget -qO- localhost".into()],
            interval: Some(Duration::from_secs(2)),
            timeout: Some(Duration::from_millis(500)),
            retries: Some(4),
            start_period: None,
        };
        let config = health_config(&check);
        assert_eq!(config.test, Some(check.test.clone()));
        assert_eq!(config.interval, Some(2_000_000_000));
        assert_eq!(config.timeout, Some(500_000_000));
        assert_eq!(config.retries, Some(4));
        assert_eq!(config.start_period, None);
    }

    /// A target of one protocol lets the engine pick its host port; one of
    /// both gets one port, free for both, for its tcp and udp bindings.
    #[test]
    fn udp_targets_are_published_as_udp_and_both_share_a_port() {
        let ip: IpAddr = "127.0.0.1".parse().expect("an address");
        let target = |port, tcp, udp| TargetPort { port, tcp, udp };
        let bindings = port_bindings(
            ip,
            &[
                target(80, true, false),
                target(53, false, true),
                target(5353, true, true),
            ],
        )
        .expect("bindings");
        let host = |key: &str| {
            bindings
                .get(key)
                .and_then(|b| b.host_port.clone())
                .unwrap_or_else(|| panic!("no {key} in {bindings:?}"))
        };
        assert_eq!(
            bindings.keys().collect::<Vec<_>>(),
            ["53/udp", "5353/tcp", "5353/udp", "80/tcp"]
        );
        assert_eq!(
            (host("80/tcp"), host("53/udp")),
            (String::new(), String::new())
        );
        let shared = host("5353/tcp");
        assert!(shared.parse::<u16>().is_ok_and(|p| p > 0), "{shared:?}");
        assert_eq!(host("5353/udp"), shared);
        assert!(bindings
            .values()
            .all(|b| b.host_ip.as_deref() == Some("127.0.0.1")));
    }
}
