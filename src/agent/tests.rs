//! The agent against a fake Docker engine, on a one-node registry with its
//! scheduler: start failures are retried once per restart delay, and what
//! an engine restart leaves behind is removed once the engine answers.

use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;

use lb_config::{PortSpec, RestartSpec, ServiceSpec};
use prometheus::{IntGaugeVec, Opts};
use raft_state::state::Command;
use tokio::time::Instant;

use super::*;
use crate::cluster::NodeSettings;
use crate::scheduler::SchedulerSettings;

/// A container of the fake engine.
#[derive(Debug, Clone)]
struct Container {
    task_id: String,
    service: String,
    running: bool,
}

#[derive(Default)]
struct Engine {
    /// While false every call fails as if dockerd were gone.
    up: bool,
    /// Whether a start fails (a bad image) even while up.
    bad_image: bool,
    starts: Vec<Instant>,
    containers: HashMap<String, Container>,
    next: u32,
}

/// A Docker-kind runtime in memory, which can be taken down and brought
/// back the way a restart of dockerd does it.
struct FakeEngine {
    engine: Mutex<Engine>,
    events: UnboundedSender<RuntimeEvent>,
}

impl FakeEngine {
    fn with<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> T {
        f(&mut self.engine.lock().expect("engine lock"))
    }

    /// dockerd shutting down: every container dies (and says so), then the
    /// engine stops answering.
    fn shut_down(&self) {
        let died: Vec<RuntimeEvent> = self.with(|engine| {
            engine.up = false;
            engine
                .containers
                .iter_mut()
                .filter(|(_, c)| c.running)
                .map(|(id, c)| {
                    c.running = false;
                    RuntimeEvent::Exited {
                        runtime_id: id.clone(),
                        task_id: c.task_id.clone(),
                        exit_code: Some(143),
                    }
                })
                .collect()
        });
        for event in died {
            let _ = self.events.send(event);
        }
    }
}

fn down() -> RuntimeError {
    RuntimeError::Unavailable("Cannot connect to the Docker daemon".to_owned())
}

impl Runtime for FakeEngine {
    fn start(&self, launch: TaskLaunch) -> BoxFuture<'_, Result<RuntimeTask, RuntimeError>> {
        let result = self.with(|engine| {
            engine.starts.push(Instant::now());
            if !engine.up {
                return Err(down());
            }
            if engine.bad_image {
                return Err(RuntimeError::ImageNotFound(
                    launch.image.clone().unwrap_or_default(),
                ));
            }
            engine.next += 1;
            let id = format!("c{}", engine.next);
            engine.containers.insert(
                id.clone(),
                Container {
                    task_id: launch.task_id.clone(),
                    service: launch.service.clone(),
                    running: true,
                },
            );
            Ok(RuntimeTask {
                runtime_id: id,
                task_id: launch.task_id,
                service: launch.service,
                ports: vec![(80, 30_000 + u16::try_from(engine.next).unwrap_or(0))],
                running: true,
                own_health: None,
            })
        });
        Box::pin(async move { result })
    }

    fn stop<'a>(
        &'a self,
        runtime_id: &'a str,
        _grace: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let result = self.with(|engine| {
            if !engine.up {
                return Err(down());
            }
            engine.containers.remove(runtime_id);
            Ok(())
        });
        Box::pin(async move { result })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<RuntimeTask>, RuntimeError>> {
        let result = self.with(|engine| {
            if !engine.up {
                return Err(down());
            }
            Ok(engine
                .containers
                .iter()
                .map(|(id, c)| RuntimeTask {
                    runtime_id: id.clone(),
                    task_id: c.task_id.clone(),
                    service: c.service.clone(),
                    ports: Vec::new(),
                    running: c.running,
                    own_health: None,
                })
                .collect())
        });
        Box::pin(async move { result })
    }
}

/// A one-node cluster running its scheduler and an agent whose Docker
/// runtime is a fake engine; `web` (one replica of an image, restart
/// `delay`) is created on it.
struct Node {
    registry: Arc<RegistryNode>,
    engine: Arc<FakeEngine>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(delay: Duration, bad_image: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let settings = NodeSettings {
            name: "node-1".to_owned(),
            advertise_addr: ip,
            api_addr: "127.0.0.1:0".parse().expect("addr"),
            raft_addr: "127.0.0.1:0".parse().expect("addr"),
            ingress_addrs: vec![ip],
            data_dir: dir.path().join("data"),
            vip_range: raft_state::state::DEFAULT_VIP_RANGE,
            vip_range_v6: None,
            dns_domain: raft_state::state::DEFAULT_DNS_DOMAIN.to_owned(),
            snapshot_every: raft_state::registry::SNAPSHOT_EVERY,
            cert_lifetime: crate::pki::DEFAULT_CERT_LIFETIME,
        };
        let (registry, _, _) = crate::cluster::start(&settings, None)
            .await
            .expect("one-node cluster");
        let registry = Arc::new(registry);
        let stop = CancellationToken::new();
        let silent_held =
            IntGaugeVec::new(Opts::new("silent_held", "test"), &["reason"]).expect("gauge");
        tokio::spawn(crate::scheduler::run(
            Arc::clone(&registry),
            SchedulerSettings {
                heartbeat_grace: Duration::from_secs(30),
                silent_held,
            },
            stop.clone(),
        ));
        let (events, events_rx) = mpsc::unbounded_channel();
        let engine = Arc::new(FakeEngine {
            engine: Mutex::new(Engine {
                up: true,
                bad_image,
                ..Engine::default()
            }),
            events: events.clone(),
        });
        let process: Arc<dyn Runtime> = Arc::new(
            process::ProcessRuntime::new(dir.path().join("tasks"), events.clone())
                .expect("process runtime"),
        );
        let docker: Arc<dyn Runtime> = Arc::clone(&engine) as Arc<dyn Runtime>;
        tokio::spawn(run_with(
            Arc::clone(&registry),
            AgentSettings {
                node_id: registry.id,
                node_name: settings.name.clone(),
                advertise_addr: ip,
                heartbeat_interval: Duration::from_millis(500),
                state_dir: dir.path().join("tasks"),
            },
            Runtimes {
                process,
                docker: Some(docker),
                events,
                events_rx,
            },
            // No proxy here: a table that routes nothing.
            DrainCounts::new(Arc::new(ArcSwap::from_pointee(RoutingTable::default()))),
            stop.clone(),
        ));
        let spec = ServiceSpec {
            name: "web".to_owned(),
            ports: vec![PortSpec {
                // fixed-port-ok: a spec field; this test binds no proxy
                published: 18_080,
                target: Some(80),
                protocol: None,
            }],
            image: Some("lbmesh-test/missing:1".to_owned()),
            replicas: Some(1),
            restart: RestartSpec {
                delay: Some(delay),
                ..RestartSpec::default()
            },
            ..ServiceSpec::default()
        };
        let outcome = registry
            .propose(Command::CreateService {
                spec,
                id: String::new(),
            })
            .await
            .expect("create");
        assert!(!matches!(outcome, Outcome::Rejected { .. }), "{outcome:?}");
        Self {
            registry,
            engine,
            stop,
            _dir: dir,
        }
    }

    fn running_task(&self) -> Option<TaskRecord> {
        self.registry
            .local()
            .state
            .tasks()
            .values()
            .find(|t| t.is_live() && t.state == TaskState::Running)
            .cloned()
    }

    /// Polls `check` every 50 ms for up to `within`.
    async fn eventually(&self, within: Duration, mut check: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if check(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        check(self)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_start_is_retried_no_faster_than_the_restart_delay() {
    let delay = Duration::from_secs(1);
    let node = Node::start(delay, true).await;
    assert!(
        node.eventually(Duration::from_secs(20), |n| n
            .engine
            .with(|e| !e.starts.is_empty()))
            .await,
        "the agent never tried to start the task"
    );
    // Four restart delays after the first attempt.
    tokio::time::sleep(delay * 4 + Duration::from_millis(500)).await;
    let starts = node.engine.with(|e| e.starts.clone());
    node.stop.cancel();
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        (2..=6).contains(&starts.len()),
        "{} start attempts in {:?} (first gaps {:?}); one per restart delay expected",
        starts.len(),
        delay * 4 + Duration::from_millis(500),
        &gaps[..gaps.len().min(8)]
    );
    // Registry time is in milliseconds: allow for its rounding.
    let least = delay - Duration::from_millis(20);
    assert!(
        gaps.iter().all(|gap| *gap >= least),
        "start attempts closer than the restart delay {delay:?}: {gaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_restart_leaves_no_dead_container_and_the_task_runs_again() {
    let node = Node::start(Duration::from_millis(200), false).await;
    assert!(
        node.eventually(Duration::from_secs(20), |n| n.running_task().is_some())
            .await,
        "the task never ran"
    );
    let first: Vec<String> = node.engine.with(|e| e.containers.keys().cloned().collect());
    assert_eq!(first.len(), 1, "one container for one replica");

    // dockerd restarts: its containers die at its shutdown, and the
    // agent's stops (and starts) fail while it is gone.
    node.engine.shut_down();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.engine.with(|e| e.up = true);

    let cleaned = node
        .eventually(Duration::from_secs(10), |n| {
            n.engine.with(|e| !e.containers.contains_key(&first[0]))
        })
        .await;
    let containers = node.engine.with(|e| e.containers.clone());
    assert!(
        cleaned,
        "the container that died with the engine is still there: {containers:?}"
    );
    assert!(
        node.eventually(Duration::from_secs(10), |n| {
            let Some(task) = n.running_task() else {
                return false;
            };
            let id = task.runtime_id.clone().unwrap_or_default();
            n.engine
                .with(|e| e.containers.get(&id).is_some_and(|c| c.running))
        })
        .await,
        "no task runs again after the engine came back: {:?}",
        node.registry.local().state.tasks()
    );
    let stale = node.engine.with(|e| {
        e.containers
            .values()
            .filter(|c| !c.running)
            .cloned()
            .collect::<Vec<_>>()
    });
    assert!(stale.is_empty(), "dead containers left: {stale:?}");
}

#[test]
fn tasks_get_the_responder_with_their_stack_first_in_the_search_list() {
    let state = |range: &str, dns_domain: Option<&str>| {
        let mut state = RegistryState::default();
        state.vip_range = raft_state::state::VipRange::parse(range).expect("range");
        state.dns_domain = dns_domain.map(str::to_owned);
        state
    };
    let routed = state("198.18.0.0/16", None);
    let stack = BTreeMap::from([(lb_config::STACK_LABEL.to_owned(), "app".to_owned())]);
    let task = task_dns(RuntimeKind::Docker, &stack, &routed).expect("dns");
    assert_eq!(task.server.to_string(), "198.18.0.0");
    assert_eq!(task.search, ["app.lbmesh.internal", "lbmesh.internal"]);
    let alone = task_dns(RuntimeKind::Process, &BTreeMap::new(), &routed).expect("dns");
    assert_eq!(alone.search, ["lbmesh.internal"]);
    // The cluster's own domain, as the registry keeps it.
    let corp = state("198.18.0.0/16", Some("corp.test"));
    let task = task_dns(RuntimeKind::Docker, &stack, &corp).expect("dns");
    assert_eq!(task.search, ["app.corp.test", "corp.test"]);
    // A loopback VIP range: containers could not reach the responder.
    let loopback = state("127.77.0.0/16", None);
    assert_eq!(task_dns(RuntimeKind::Docker, &stack, &loopback), None);
    let process = task_dns(RuntimeKind::Process, &stack, &loopback);
    assert_eq!(
        process.map(|task| task.server.to_string()).as_deref(),
        Some("127.77.0.0")
    );
}
