//! The agent: runs the tasks the scheduler assigned to this node and reports
//! what it observes. One per node.
//!
//! # Flow
//!
//! ```text
//! start:    wait for a caught-up registry (linearizable read) ─> list each runtime's
//!           labelled tasks ─> adopt those still wanted (no restart), remove the rest
//! loop:     registry change | runtime event | start/stop finished | health change | tick
//!           ─> reconcile():
//!              assigned here, desired running, not here ─> report starting, start (spawned)
//!                 ─> report running (endpoint, runtime id), start health checks
//!              desired shutdown, here ─> (already out of every routing table) drain: wait
//!                 until the leader answers a heartbeat that every ready node holds no
//!                 connection to it, or the service's drain timeout, whichever is first
//!                 ─> stop (SIGTERM, grace, SIGKILL) ─> report shutdown
//!              here but no longer assigned here ─> stop at once
//!           exit noticed (event, or the sweep) ─> report failed / completed, remove remains
//!           health turns unhealthy ─> report failed, stop (the scheduler replaces it)
//! sweep:    every tick, list each runtime ─> a tracked task it no longer runs has exited;
//!           what it holds that no task here accounts for is removed (retried every tick
//!           while it stays listed); a runtime that cannot be listed (engine down) is
//!           skipped, and reconciled in full once it answers again
//! always:   heartbeat to every voter every `heartbeat_interval` and at once to a new
//!           leader (not through the log; each with a deadline of one interval), with
//!           this node's open connections to departing tasks (`drain`); the leader's
//!           answer names this node's tasks that have drained ─> their drains end
//! ```
//!
//! A drain ends early only on the leader's word (`raft_state::drains` says
//! why it is decided there): a ready node that has not reported the task
//! since it departed, an older lbd among them, holds the drain to its
//! timeout, and a long-lived connection gets the whole timeout.
//!
//! A task is started once. A failed start is reported `failed`, and the
//! scheduler's replacement comes after the service's restart delay, so a
//! start that keeps failing (bad image, engine down) is tried once per
//! delay. A stop or removal that fails (the engine shutting down) is never
//! dropped: the thing stays listed, and the sweep removes it once the
//! runtime answers.
//!
//! Reports go through one ordered queue with retries, so a task's
//! `starting` never lands after its `running`; only changes are reported,
//! never every probe. Runtimes are picked per service: an image runs on
//! docker, a command alone as a local process.

pub mod docker;
mod drain;
pub mod health;
pub mod process;
pub mod runtime;
#[cfg(test)]
mod tests;
mod user;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use lb_config::{HealthCheckKind, Service};
use lbmesh_proxy::routing::RoutingTable;
use raft_state::registry::RegistryNode;
use raft_state::state::{Command, NodeId, Outcome, RegistryState};
use raft_state::task::{DesiredState, TaskEndpoint, TaskHealth, TaskRecord, TaskReport, TaskState};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::drain::DrainCounts;
use self::health::HealthChange;
use self::runtime::{
    OwnHealth, Runtime, RuntimeError, RuntimeEvent, RuntimeKind, RuntimeTask, TaskDns, TaskLaunch,
};
use crate::scheduler::now_millis;

/// How often the agent reconciles without a change, and re-lists its
/// runtimes to catch an exit whose event was lost.
const TICK: Duration = Duration::from_secs(2);
/// Least time between two attempts to reach the Docker engine.
const DOCKER_RETRY: Duration = Duration::from_secs(5);

/// Settings of this node's agent.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub node_id: NodeId,
    pub node_name: String,
    /// Published task ports bind here; it is the tasks' endpoint address.
    pub advertise_addr: IpAddr,
    pub heartbeat_interval: Duration,
    /// Where the process runtime keeps its logs and task records.
    pub state_dir: PathBuf,
}

/// The resolver (the node's DNS responder, at its address in the
/// cluster's VIP range) and search domains of a task of a service with
/// `labels`, if its runtime `kind` reaches the responder (a container does
/// not when the range is on the loopback network): the stack's domain
/// first (`app.lbmesh.internal`, so `redis` is the stack's), then the
/// cluster's.
fn task_dns(
    kind: RuntimeKind,
    labels: &BTreeMap<String, String>,
    state: &RegistryState,
) -> Option<TaskDns> {
    if kind == RuntimeKind::Docker && crate::vip_route::is_loopback(state.vip_range) {
        return None;
    }
    let domain = state.dns_domain();
    let mut search = Vec::with_capacity(2);
    if let Some(stack) = labels.get(lb_config::STACK_LABEL) {
        search.push(format!("{stack}.{domain}"));
    }
    search.push(domain.to_owned());
    Some(TaskDns {
        server: crate::dns::listen_addr(state.vip_range.base.into()).ip(),
        search,
    })
}

/// Messages to the agent's loop.
enum Event {
    Started {
        task_id: String,
        result: Result<RuntimeTask, RuntimeError>,
    },
    Stopped {
        task_id: String,
        /// `Err`: what stopping it said; the sweep removes what is left.
        result: Result<(), RuntimeError>,
    },
    /// A removal begun by [`Agent::remove`] ended.
    Removed {
        runtime_id: String,
        result: Result<(), RuntimeError>,
    },
}

/// A task this agent runs.
struct Local {
    kind: RuntimeKind,
    runtime_id: String,
    endpoint: TaskEndpoint,
    /// The service's own check (None when it has none).
    checked: TaskHealth,
    /// The image's own HEALTHCHECK, if it has one.
    own: Option<OwnHealth>,
    checker: Option<JoinHandle<()>>,
    stopping: bool,
    /// Cancelled to end the task's drain early: every ready node holds no
    /// connection to it. Set while it drains.
    drain_cut: Option<CancellationToken>,
}

impl Local {
    fn health(&self) -> TaskHealth {
        let own = match self.own {
            None => None,
            Some(OwnHealth::Starting) => Some(TaskHealth::Starting),
            Some(OwnHealth::Healthy) => Some(TaskHealth::Healthy),
            Some(OwnHealth::Unhealthy) => Some(TaskHealth::Unhealthy),
        };
        match (self.checked, own) {
            (TaskHealth::Unhealthy, _) | (_, Some(TaskHealth::Unhealthy)) => TaskHealth::Unhealthy,
            (TaskHealth::Starting, _) | (_, Some(TaskHealth::Starting)) => TaskHealth::Starting,
            (TaskHealth::None, None) => TaskHealth::None,
            _ => TaskHealth::Healthy,
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(checker) = self.checker.take() {
            checker.abort();
        }
    }
}

struct Agent {
    registry: Arc<RegistryNode>,
    settings: AgentSettings,
    cluster_id: String,
    process: Arc<dyn Runtime>,
    docker: Option<Arc<dyn Runtime>>,
    /// Whether `docker` is the local engine, connected on demand (false:
    /// a runtime given at construction).
    docker_engine: bool,
    docker_error: String,
    docker_tried: Option<tokio::time::Instant>,
    runtime_events: UnboundedSender<RuntimeEvent>,
    local: HashMap<String, Local>,
    starting: HashSet<String>,
    /// Tasks whose start this agent began. A task is started once: the
    /// registry copy lags the agent's own reports, so a task that just
    /// failed to start still reads `assigned` for a moment, and starting it
    /// again would retry a failing start as fast as it fails instead of
    /// once per restart delay (the scheduler's replacement task).
    tried: HashSet<String>,
    /// Runtime ids with a removal in flight (a leftover, an exited task's
    /// remains), so a sweep does not remove them twice.
    removing: HashSet<String>,
    /// Runtimes whose last list failed (the engine is down), so that their
    /// return is noticed and logged once.
    unreachable: HashSet<RuntimeKind>,
    /// Exits seen while a start was still in flight.
    early_exits: HashMap<String, Option<i64>>,
    /// What was last reported per task, so only changes are sent.
    reported: HashMap<String, (TaskState, TaskHealth)>,
    /// Tasks here the leader said have drained (perhaps before this agent
    /// began their drain): a drain of one ends at once.
    drained: HashSet<String>,
    events: UnboundedSender<Event>,
    health: UnboundedSender<HealthChange>,
    reports: UnboundedSender<TaskReport>,
    stop: CancellationToken,
}

/// Runs the agent until `stop` is cancelled. Tasks keep running when lbd
/// stops (as containers do when dockerd's client goes); the next start adopts
/// them. `table` is this node's routing table, whose connection counts the
/// heartbeats report while tasks drain.
pub async fn run(
    registry: Arc<RegistryNode>,
    settings: AgentSettings,
    table: Arc<ArcSwap<RoutingTable>>,
    stop: CancellationToken,
) {
    let (events, events_rx) = mpsc::unbounded_channel();
    // The state dir is this node's own, so its records are this cluster's.
    let process: Arc<dyn Runtime> =
        match process::ProcessRuntime::new(settings.state_dir.clone(), events.clone()) {
            Ok(runtime) => Arc::new(runtime),
            Err(error) => {
                warn!(%error, "process runtime unavailable; the agent does not run");
                return;
            }
        };
    let runtimes = Runtimes {
        process,
        docker: None,
        events,
        events_rx,
    };
    run_with(registry, settings, runtimes, DrainCounts::new(table), stop).await;
}

/// The runtimes an agent drives and the channel their events arrive on.
struct Runtimes {
    process: Arc<dyn Runtime>,
    /// A Docker-kind runtime given ready-made (tests: a fake engine);
    /// `None`: the local engine, connected on first need and retried while
    /// it is unavailable.
    docker: Option<Arc<dyn Runtime>>,
    /// Given to a runtime connected later (the engine's event follower).
    events: UnboundedSender<RuntimeEvent>,
    events_rx: UnboundedReceiver<RuntimeEvent>,
}

async fn run_with(
    registry: Arc<RegistryNode>,
    settings: AgentSettings,
    runtimes: Runtimes,
    drain_counts: DrainCounts,
    stop: CancellationToken,
) {
    let (drained, mut drained_rx) = mpsc::unbounded_channel();
    tokio::spawn(heartbeats(
        Arc::clone(&registry),
        settings.heartbeat_interval,
        drain_counts,
        drained,
        stop.clone(),
    ));
    // Adoption decisions need the registry as the leader has it, not a copy
    // that lagged while this node was down.
    let state = loop {
        tokio::select! {
            () = stop.cancelled() => return,
            read = registry.linearizable() => match read {
                Ok(applied) => break applied.state,
                Err(error) => {
                    debug!(%error, "agent waits for the registry");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    };
    let cluster_id = state
        .cluster
        .as_ref()
        .map(|c| c.id.clone())
        .unwrap_or_default();
    let Runtimes {
        process,
        docker,
        events: runtime_events,
        events_rx: mut runtime_rx,
    } = runtimes;
    let docker_engine = docker.is_none();
    let (events, mut events_rx) = mpsc::unbounded_channel();
    let (health, mut health_rx) = mpsc::unbounded_channel();
    let (reports, reports_rx) = mpsc::unbounded_channel();
    tokio::spawn(reporter(Arc::clone(&registry), reports_rx, stop.clone()));
    let mut agent = Agent {
        registry: Arc::clone(&registry),
        settings,
        cluster_id,
        process,
        docker,
        docker_engine,
        docker_error: String::new(),
        docker_tried: None,
        runtime_events,
        local: HashMap::new(),
        starting: HashSet::new(),
        tried: HashSet::new(),
        removing: HashSet::new(),
        unreachable: HashSet::new(),
        early_exits: HashMap::new(),
        reported: HashMap::new(),
        drained: HashSet::new(),
        events,
        health,
        reports,
        stop: stop.clone(),
    };
    agent.connect_docker().await;
    agent.adopt(&state).await;
    let mut changes = registry.watch();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = changes.changed() => {}
            Some(event) = runtime_rx.recv() => agent.on_runtime_event(event),
            Some(event) = events_rx.recv() => agent.on_event(event),
            Some(change) = health_rx.recv() => agent.on_health(change),
            Some(tasks) = drained_rx.recv() => agent.on_drained(tasks),
            _ = tick.tick() => agent.check_runtimes().await,
        }
        let state = registry.local().state;
        agent.reconcile(&state).await;
    }
}

/// Tells every voter this node is alive every `interval`, and at once when
/// the registry names a new leader. The voters are called at once, each
/// with a deadline of one interval (the leader's grace is longer, `lbd`
/// checks), so a dead voter never holds up another or the next round, and
/// a voter elected leader already knows when it last heard this node.
/// Each heartbeat carries this node's drain report; the tasks the leader
/// answers drained go to the agent's loop on `drained`.
async fn heartbeats(
    registry: Arc<RegistryNode>,
    interval: Duration,
    mut drain_counts: DrainCounts,
    drained: UnboundedSender<Vec<String>>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut raft = registry.raft_metrics();
    let mut leader = raft.borrow().current_leader;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
            changed = raft.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = raft.borrow_and_update().current_leader;
                if now == leader || now.is_none() {
                    continue;
                }
                leader = now;
            }
        }
        let report = drain_counts.report(&registry.local());
        let delivered = registry.heartbeat(interval, report).await;
        if !delivered.drained.is_empty() && drained.send(delivered.drained).is_err() {
            return;
        }
        if delivered.answered < delivered.tried {
            debug!(
                answered = delivered.answered,
                voters = delivered.tried,
                "heartbeat not delivered to every voter"
            );
        }
    }
}

/// Sends reports in order; retries while no leader answers. A report the
/// registry rejects (stale, task gone) is dropped.
async fn reporter(
    registry: Arc<RegistryNode>,
    mut queue: UnboundedReceiver<TaskReport>,
    stop: CancellationToken,
) {
    while let Some(report) = queue.recv().await {
        let mut backoff = Duration::from_millis(100);
        loop {
            let command = Command::ReportTask {
                report: Box::new(report.clone()),
            };
            match registry.propose(command).await {
                Ok(Outcome::Rejected { rejection }) => {
                    debug!(task = %report.id, %rejection, "report refused");
                    break;
                }
                Ok(_) => break,
                Err(error) => {
                    debug!(task = %report.id, %error, "report not delivered; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// The checked form of a service, validated when it was stored.
fn service_of(state: &RegistryState, name: &str) -> Option<Arc<Service>> {
    state
        .services
        .get(name)
        .and_then(|record| record.checked().ok().cloned())
}

fn runtime_kind(service: &Service) -> RuntimeKind {
    match service.tasks.as_ref().and_then(|t| t.image.as_ref()) {
        Some(_) => RuntimeKind::Docker,
        None => RuntimeKind::Process,
    }
}

impl Agent {
    async fn connect_docker(&mut self) {
        if !self.docker_engine
            || self.docker.is_some()
            || self
                .docker_tried
                .is_some_and(|at| at.elapsed() < DOCKER_RETRY)
        {
            return;
        }
        self.docker_tried = Some(tokio::time::Instant::now());
        match docker::DockerRuntime::connect(
            self.cluster_id.clone(),
            self.settings.node_name.clone(),
            self.runtime_events.clone(),
        )
        .await
        {
            Ok(runtime) => {
                info!("docker runtime connected");
                self.docker = Some(Arc::new(runtime));
            }
            Err(error) => {
                debug!(%error, "docker runtime unavailable");
                self.docker_error = error.to_string();
            }
        }
    }

    fn runtime(&self, kind: RuntimeKind) -> Result<Arc<dyn Runtime>, String> {
        match kind {
            RuntimeKind::Process => Ok(Arc::clone(&self.process)),
            RuntimeKind::Docker => self
                .docker
                .clone()
                .ok_or_else(|| format!("docker runtime unavailable: {}", self.docker_error)),
        }
    }

    fn mine<'a>(&self, state: &'a RegistryState) -> HashMap<&'a str, &'a TaskRecord> {
        state
            .tasks_on(self.settings.node_id)
            .map(|t| (t.id.as_str(), t))
            .collect()
    }

    /// Queues a report if it says something new.
    fn report(&mut self, task: &TaskRecord, state: TaskState, message: impl Into<String>) {
        let local = self.local.get(&task.id);
        let health = match (state, local) {
            (TaskState::Running, Some(local)) => local.health(),
            (TaskState::Failed, Some(local)) if local.health() == TaskHealth::Unhealthy => {
                TaskHealth::Unhealthy
            }
            _ => TaskHealth::Starting,
        };
        if self.reported.get(&task.id) == Some(&(state, health))
            || (task.state == state && task.health == health && !state.is_terminal())
        {
            return;
        }
        self.reported.insert(task.id.clone(), (state, health));
        let report = TaskReport {
            id: task.id.clone(),
            node: self.settings.node_id,
            state,
            health,
            endpoint: local.map(|l| l.endpoint.clone()),
            runtime_id: local
                .map(|l| l.runtime_id.clone())
                .or_else(|| task.runtime_id.clone()),
            message: message.into(),
            at: now_millis(),
        };
        let _ = self.reports.send(report);
    }

    /// At start: adopt the runtimes' tasks that are still wanted here,
    /// remove everything else. Healthy tasks are not restarted.
    async fn adopt(&mut self, state: &RegistryState) {
        let mine = self.mine(state);
        let mut found = Vec::new();
        for kind in [RuntimeKind::Docker, RuntimeKind::Process] {
            let Ok(runtime) = self.runtime(kind) else {
                continue;
            };
            match runtime.list().await {
                Ok(tasks) => found.extend(tasks.into_iter().map(|t| (kind, t))),
                Err(error) => warn!(%error, ?kind, "cannot list the runtime's tasks"),
            }
        }
        for (kind, found) in found {
            let wanted = mine.get(found.task_id.as_str()).filter(|t| t.is_live());
            match (wanted, found.running) {
                (Some(task), true) => {
                    info!(task = %task.id, runtime_id = %found.runtime_id, "adopted");
                    self.track(state, task, kind, found);
                }
                (wanted, _) => {
                    info!(task = %found.task_id, runtime_id = %found.runtime_id, "removing a task that is no longer wanted here");
                    self.remove(kind, &found.runtime_id, Duration::from_secs(10));
                    if let Some(task) = wanted {
                        self.report(task, TaskState::Failed, "exited while lbd was down");
                    }
                }
            }
        }
    }

    /// Starts tracking a running task: health checks, routing endpoint.
    fn track(
        &mut self,
        state: &RegistryState,
        task: &TaskRecord,
        kind: RuntimeKind,
        found: RuntimeTask,
    ) {
        let service = service_of(state, &task.service);
        let endpoint = TaskEndpoint {
            ip: self.settings.advertise_addr,
            ports: found.ports.clone(),
        };
        let check = service.as_ref().map(|s| s.health.clone());
        // The port the spec's check names, else its first TCP port: a
        // service of UDP ports only has no check unless it names one.
        let first_target = service.as_ref().and_then(|s| s.health_target());
        // An adopted task that served keeps serving while its checks restart.
        let known = if task.state == TaskState::Running && task.health == TaskHealth::Healthy {
            TaskHealth::Healthy
        } else {
            TaskHealth::Starting
        };
        let (checked, checker) = match (check, first_target.and_then(|t| endpoint.addr_for(t))) {
            (Some(check), Some(addr)) if check.kind != HealthCheckKind::None => (
                known,
                Some(health::spawn(
                    task.id.clone(),
                    addr,
                    check,
                    self.health.clone(),
                )),
            ),
            _ => (TaskHealth::None, None),
        };
        self.local.insert(
            task.id.clone(),
            Local {
                kind,
                runtime_id: found.runtime_id,
                endpoint,
                checked,
                own: found.own_health,
                checker,
                stopping: false,
                drain_cut: None,
            },
        );
        self.report(task, TaskState::Running, "");
    }

    async fn reconcile(&mut self, state: &RegistryState) {
        let mine = self.mine(state);
        // Tasks that left this node (removed, or reassigned): stop at once.
        let gone: Vec<String> = self
            .local
            .iter()
            .filter(|(id, local)| !local.stopping && !mine.contains_key(id.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.begin_stop(&id, Duration::ZERO, Duration::from_secs(10));
        }
        for task in mine.values() {
            let here = self.local.get(&task.id);
            match task.desired {
                DesiredState::Running => {
                    if here.is_some()
                        || self.starting.contains(&task.id)
                        || self.tried.contains(&task.id)
                    {
                        continue;
                    }
                    match task.state {
                        TaskState::Assigned => self.begin_start(state, task).await,
                        TaskState::Starting | TaskState::Running => {
                            self.report(
                                task,
                                TaskState::Failed,
                                "not running on its node (lost while lbd was down)",
                            );
                        }
                        _ => {}
                    }
                }
                DesiredState::Shutdown => match here {
                    Some(local) if !local.stopping => {
                        let service = service_of(state, &task.service);
                        let drain = if task.state == TaskState::Running {
                            service.as_ref().map_or(Duration::ZERO, |s| s.drain_timeout)
                        } else {
                            Duration::ZERO
                        };
                        let grace = service
                            .as_ref()
                            .and_then(|s| s.tasks.as_ref())
                            .map_or(lb_config::DEFAULT_STOP_GRACE, |t| t.stop_grace);
                        let id = task.id.clone();
                        self.begin_stop(&id, drain, grace);
                    }
                    Some(_) => {}
                    None if !self.starting.contains(&task.id) && !task.state.is_terminal() => {
                        self.report(task, TaskState::Shutdown, task.message.clone());
                    }
                    None => {}
                },
            }
        }
        // Forget what was reported and tried of tasks that are gone.
        self.reported.retain(|id, _| mine.contains_key(id.as_str()));
        self.tried.retain(|id| mine.contains_key(id.as_str()));
        self.drained.retain(|id| mine.contains_key(id.as_str()));
    }

    async fn begin_start(&mut self, state: &RegistryState, task: &TaskRecord) {
        let Some(service) = service_of(state, &task.service) else {
            return;
        };
        let Some(spec) = service.tasks.clone() else {
            return;
        };
        let kind = runtime_kind(&service);
        self.tried.insert(task.id.clone());
        if kind == RuntimeKind::Docker {
            self.connect_docker().await;
        }
        let runtime = match self.runtime(kind) {
            Ok(runtime) => runtime,
            Err(reason) => {
                self.report(task, TaskState::Failed, reason);
                return;
            }
        };
        let launch = TaskLaunch {
            cluster_id: self.cluster_id.clone(),
            node_name: self.settings.node_name.clone(),
            service: task.service.clone(),
            task_id: task.id.clone(),
            slot: task.slot,
            image: spec.image.clone(),
            command: spec.command.clone(),
            args: spec.args.clone(),
            entrypoint: spec.entrypoint.clone(),
            container_labels: spec.container_labels.clone(),
            healthcheck: spec.healthcheck.clone(),
            env: spec.env.clone(),
            user: spec.user.clone(),
            host_ip: self.settings.advertise_addr,
            target_ports: runtime::target_ports(&service.ports),
            dns: state
                .services
                .get(&task.service)
                .and_then(|record| task_dns(kind, &record.spec.labels, state)),
            stop_grace: spec.stop_grace,
        };
        self.report(task, TaskState::Starting, "");
        self.starting.insert(task.id.clone());
        let events = self.events.clone();
        let task_id = task.id.clone();
        info!(task = %task_id, service = %task.service, ?kind, "starting");
        tokio::spawn(async move {
            let result = runtime.start(launch).await;
            let _ = events.send(Event::Started { task_id, result });
        });
    }

    /// Drains (waits `drain`, or until the leader says no connection is
    /// left: [`Agent::on_drained`]), then stops the task with `grace`.
    fn begin_stop(&mut self, task_id: &str, drain: Duration, grace: Duration) {
        let drain = if self.drained.contains(task_id) {
            Duration::ZERO
        } else {
            drain
        };
        let Some(local) = self.local.get_mut(task_id) else {
            return;
        };
        local.stopping = true;
        if let Some(checker) = local.checker.take() {
            checker.abort();
        }
        let cut = CancellationToken::new();
        local.drain_cut = Some(cut.clone());
        let (kind, runtime_id) = (local.kind, local.runtime_id.clone());
        let Ok(runtime) = self.runtime(kind) else {
            return;
        };
        let events = self.events.clone();
        let task_id = task_id.to_owned();
        let stop = self.stop.clone();
        info!(task = %task_id, ?drain, "draining, then stopping");
        tokio::spawn(async move {
            tokio::select! {
                // lbd stopping: leave the task to the next start's adoption.
                () = stop.cancelled() => return,
                () = tokio::time::sleep(drain) => {}
                () = cut.cancelled() => {}
            }
            let result = runtime.stop(&runtime_id, grace).await;
            let _ = events.send(Event::Stopped { task_id, result });
        });
    }

    /// The leader says every ready node holds no connection to `tasks`:
    /// their drains end now, or at once when they begin.
    fn on_drained(&mut self, tasks: Vec<String>) {
        for id in tasks {
            if let Some(cut) = self.local.get_mut(&id).and_then(|l| l.drain_cut.take()) {
                info!(task = %id, "drained: no node holds a connection to it; stopping");
                cut.cancel();
            }
            self.drained.insert(id);
        }
    }

    fn task(&self, id: &str) -> Option<TaskRecord> {
        self.registry.local().state.tasks().get(id).cloned()
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Started { task_id, result } => {
                self.starting.remove(&task_id);
                let Some(task) = self.task(&task_id) else {
                    // Removed while starting: clean up what started.
                    if let Ok(found) = result {
                        debug!(task = %task_id, "removing a task that was dropped while starting");
                        self.remove(
                            kind_of(&found.runtime_id),
                            &found.runtime_id,
                            Duration::from_secs(10),
                        );
                    }
                    return;
                };
                match result {
                    Ok(found) => {
                        let state = self.registry.local().state;
                        let kind = self
                            .local
                            .get(&task_id)
                            .map(|l| l.kind)
                            .or_else(|| service_of(&state, &task.service).map(|s| runtime_kind(&s)))
                            .unwrap_or(RuntimeKind::Process);
                        info!(task = %task_id, runtime_id = %found.runtime_id, "running");
                        self.track(&state, &task, kind, found);
                        if let Some(code) = self.early_exits.remove(&task_id) {
                            self.exited(&task_id, code);
                        }
                    }
                    Err(error) => {
                        warn!(task = %task_id, %error, "start failed");
                        self.report(&task, TaskState::Failed, error.to_string());
                    }
                }
            }
            Event::Stopped { task_id, result } => {
                if let Some(local) = self.local.remove(&task_id) {
                    if let Err(error) = result {
                        // Untracked now: the next sweep of the runtime removes
                        // what is left, and retries until that succeeds.
                        warn!(task = %task_id, runtime_id = %local.runtime_id, %error, "stop failed; retrying");
                    }
                }
                if let Some(task) = self.task(&task_id) {
                    if !task.state.is_terminal() {
                        let message = if task.message.is_empty() {
                            "stopped".to_owned()
                        } else {
                            task.message.clone()
                        };
                        self.report(&task, TaskState::Shutdown, message);
                    }
                }
            }
            Event::Removed { runtime_id, result } => {
                self.removing.remove(&runtime_id);
                if let Err(error) = result {
                    warn!(%runtime_id, %error, "cannot remove; retrying at the next sweep");
                }
            }
        }
    }

    /// Stops and removes something a runtime holds that no tracked task
    /// accounts for (`grace` before SIGKILL). The result comes back as
    /// [`Event::Removed`]; a failure is logged and, since the thing stays
    /// listed, retried by the next sweep ([`Agent::check_runtimes`]).
    fn remove(&mut self, kind: RuntimeKind, runtime_id: &str, grace: Duration) {
        let Ok(runtime) = self.runtime(kind) else {
            // Not connected: the sweep after it connects removes it.
            return;
        };
        if !self.removing.insert(runtime_id.to_owned()) {
            return;
        }
        let events = self.events.clone();
        let runtime_id = runtime_id.to_owned();
        tokio::spawn(async move {
            let result = runtime.stop(&runtime_id, grace).await;
            let _ = events.send(Event::Removed { runtime_id, result });
        });
    }

    fn on_runtime_event(&mut self, event: RuntimeEvent) {
        match event {
            RuntimeEvent::Exited {
                task_id, exit_code, ..
            } => {
                if self.starting.contains(&task_id) {
                    self.early_exits.insert(task_id, exit_code);
                } else {
                    self.exited(&task_id, exit_code);
                }
            }
            RuntimeEvent::OwnHealth {
                task_id, health, ..
            } => {
                if let Some(local) = self.local.get_mut(&task_id) {
                    local.own = Some(health);
                    self.health_changed(&task_id, "the image's HEALTHCHECK failed");
                }
            }
        }
    }

    /// A task ended without being asked to.
    fn exited(&mut self, task_id: &str, exit_code: Option<i64>) {
        let Some(local) = self.local.get(task_id) else {
            return;
        };
        if local.stopping {
            return;
        }
        let (kind, runtime_id) = (local.kind, local.runtime_id.clone());
        let Some(task) = self.task(task_id) else {
            self.local.remove(task_id);
            return;
        };
        let (state, message) = match exit_code {
            Some(0) => (TaskState::Shutdown, "completed (exit code 0)".to_owned()),
            Some(code) => (TaskState::Failed, format!("exited with code {code}")),
            None => (TaskState::Failed, "exited".to_owned()),
        };
        warn!(task = %task_id, %message, "task ended");
        // Report while the local entry still holds the endpoint, then clean
        // up what is left of it (a dead container).
        self.report(&task, state, message);
        self.local.remove(task_id);
        self.remove(kind, &runtime_id, Duration::ZERO);
    }

    fn on_health(&mut self, change: HealthChange) {
        if let Some(local) = self.local.get_mut(&change.task_id) {
            local.checked = change.health;
            self.health_changed(&change.task_id, &change.reason);
        }
    }

    /// Reports a health change; an unhealthy task is failed and stopped so
    /// the scheduler replaces it.
    fn health_changed(&mut self, task_id: &str, reason: &str) {
        let Some(local) = self.local.get(task_id) else {
            return;
        };
        if local.stopping {
            return;
        }
        let Some(task) = self.task(task_id) else {
            return;
        };
        if local.health() == TaskHealth::Unhealthy {
            warn!(task = %task_id, %reason, "unhealthy: replacing");
            self.report(&task, TaskState::Failed, format!("unhealthy: {reason}"));
            self.begin_stop(task_id, Duration::ZERO, Duration::from_secs(10));
        } else {
            self.report(&task, TaskState::Running, "");
        }
    }

    /// The sweep, every tick: lists each runtime, so that a tracked task it
    /// no longer runs is reported exited (and replaced by the scheduler) and
    /// whatever it holds that no task here accounts for is removed (a
    /// container whose stop failed, one that died while the engine shut
    /// down). A runtime that cannot be listed (the engine is down) is
    /// skipped until it answers again, and then reconciled in full.
    async fn check_runtimes(&mut self) {
        self.connect_docker().await;
        for kind in [RuntimeKind::Docker, RuntimeKind::Process] {
            let Ok(runtime) = self.runtime(kind) else {
                continue;
            };
            let listed = match runtime.list().await {
                Ok(listed) => listed,
                Err(error) => {
                    if self.unreachable.insert(kind) {
                        warn!(%error, ?kind, "runtime unreachable; its tasks are reconciled when it answers");
                    }
                    continue;
                }
            };
            if self.unreachable.remove(&kind) {
                info!(?kind, "runtime reachable again; reconciling its tasks");
            }
            let running: HashSet<&str> = listed
                .iter()
                .filter(|t| t.running)
                .map(|t| t.runtime_id.as_str())
                .collect();
            let lost: Vec<String> = self
                .local
                .iter()
                .filter(|(_, l)| {
                    l.kind == kind && !l.stopping && !running.contains(l.runtime_id.as_str())
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in lost {
                self.exited(&id, None);
            }
            let tracked: HashSet<&str> =
                self.local.values().map(|l| l.runtime_id.as_str()).collect();
            let leftovers: Vec<&RuntimeTask> = listed
                .iter()
                .filter(|t| {
                    !tracked.contains(t.runtime_id.as_str())
                        && !self.starting.contains(&t.task_id)
                        && !self.removing.contains(&t.runtime_id)
                })
                .collect();
            let leftovers: Vec<(String, String, bool)> = leftovers
                .into_iter()
                .map(|t| (t.runtime_id.clone(), t.task_id.clone(), t.running))
                .collect();
            for (runtime_id, task, running) in leftovers {
                info!(%task, %runtime_id, running, "removing a leftover no task here accounts for");
                let grace = if running {
                    Duration::from_secs(10)
                } else {
                    Duration::ZERO
                };
                self.remove(kind, &runtime_id, grace);
            }
        }
    }
}

/// Which runtime a runtime id belongs to (processes are `pid:N`).
fn kind_of(runtime_id: &str) -> RuntimeKind {
    if runtime_id.starts_with("pid:") {
        RuntimeKind::Process
    } else {
        RuntimeKind::Docker
    }
}
