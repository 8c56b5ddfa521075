//! The daemon: where services come from, the listeners that serve them, and
//! the process lifecycle.
//!
//! # Modes
//!
//! - **standalone** (`lbd --config FILE`): services come from the file;
//!   SIGHUP re-reads it.
//! - **cluster** (`lbd --advertise-addr A [--join B --token T]`): services come
//!   from the replicated registry; every applied change is routed at once.
//!   Each service's published ports bind on this node's ingress address (the
//!   mesh) and its VIP on each target port (SO_REUSEPORT, so nodes sharing a
//!   machine share it).
//!
//! # Flow
//!
//! ```text
//! start:   services ─> build RoutingTable ─> bind every listen address (one
//!          descriptor per proxy thread) and the admin API
//!          (any failure: nothing is left running, the error names what failed)
//!          ─> one accept loop per proxy thread and address, the admin server
//!          on the control runtime ─> ready
//! change:  services ─> build table (reusing backend state) ─> bind new addresses
//!          ─> store the table (one ArcSwap store) ─> stop loops of removed addresses
//!          (any failure before the store: the running table keeps serving;
//!          moving a port between 0.0.0.0 and a specific IP of the same family
//!          in one change fails this way, as the old socket still holds it)
//! stop:    not ready ─> stop accepting (listeners close, new connects are refused)
//!          ─> wait for open connections up to the grace deadline ─> stop admin
//!          ─> stop the registry ─> stop the proxy threads (what is still open closes)
//! ```
//!
//! Connections live on the proxy threads ([`ProxyWorkers`]); everything
//! else (admin API, registry, scheduler, agent) runs on the runtime that
//! called [`Daemon::start`].
//!
//! SIGTERM and SIGINT share the stop path.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use lb_config::{ConfigError, ConfigFile, Node, Service};
use raft_state::registry::RegistryNode;
use raft_state::store::Applied;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
use crate::agent::{self, AgentSettings};
use crate::cluster::{self, ClusterError, NodeSettings, Started};
use crate::metrics::Metrics;
use crate::proxy::workers::ProxyWorkers;
use crate::proxy::{self, ListenOptions, ProxyContext};
use crate::routing::{RoutedService, RoutingTable};
use crate::scheduler::{self, SchedulerSettings};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cannot listen on {addr} for service {service:?}: {source}")]
    Bind {
        addr: SocketAddr,
        service: String,
        source: io::Error,
    },
    #[error("api_addr: cannot listen on {addr} for the admin API: {source}")]
    AdminBind { addr: SocketAddr, source: io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error("cannot start the proxy threads: {0}")]
    Workers(io::Error),
}

/// Where the services come from.
enum Source {
    File {
        path: PathBuf,
    },
    Registry {
        node: Arc<RegistryNode>,
        changes: watch::Receiver<Applied>,
    },
}

/// A running daemon.
pub struct Daemon {
    source: Source,
    node: Node,
    metrics: Arc<Metrics>,
    table: Arc<ArcSwap<RoutingTable>>,
    /// One stop token per bound listen address.
    listeners: HashMap<SocketAddr, CancellationToken>,
    /// Parent of every listener's token.
    stop_accepting: CancellationToken,
    stop_admin: CancellationToken,
    connections: TaskTracker,
    admin: Arc<AdminState>,
    api_addr: SocketAddr,
    /// Installed before the daemon reports ready, so a signal that arrives
    /// right after is handled rather than killing the process.
    signals: Signals,
    /// Stops the scheduler and the agent (cluster mode).
    stop_control: CancellationToken,
    /// The threads that accept and serve connections; dropped last, which
    /// closes whatever connection outlived the shutdown grace.
    workers: ProxyWorkers,
}

struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn install() -> Result<Self, DaemonError> {
        let install = |kind| signal(kind).map_err(DaemonError::Signals);
        Ok(Self {
            hangup: install(SignalKind::hangup())?,
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
        })
    }
}

/// Options of cluster mode.
pub struct ClusterOptions {
    pub settings: NodeSettings,
    /// `(host, token)` of a node to join; `None` bootstraps or restarts.
    pub join: Option<(String, String)>,
    pub shutdown_grace: Duration,
    /// How often this node's agent tells the leader it is alive.
    pub heartbeat_interval: Duration,
    /// How long the leader waits for a heartbeat before marking a node down.
    pub heartbeat_grace: Duration,
    /// Proxy worker threads (see [`ProxyWorkers`]).
    pub proxy_threads: usize,
}

/// The services of a registry state, ready to route. In cluster mode a
/// service's `listen` field is ignored: every node binds its own ingress
/// address.
fn registry_services(applied: &Applied) -> Vec<RoutedService> {
    applied
        .state
        .services
        .values()
        .filter_map(|record| match record.spec.validate() {
            Ok(mut service) => {
                service.listen.clear();
                let tasks = applied
                    .state
                    .tasks_of(&record.spec.name)
                    .filter(|task| task.serves())
                    .filter_map(|task| task.endpoint.clone())
                    .collect();
                Some(RoutedService {
                    service,
                    vip: Some(record.vip.into()),
                    tasks,
                })
            }
            Err(error) => {
                // The registry validates every spec it stores; a spec that
                // fails here comes from a newer lbd with other rules.
                warn!(service = %record.spec.name, %error, "registry service skipped");
                None
            }
        })
        .collect()
}

fn file_services(services: &[Service]) -> Vec<RoutedService> {
    services.iter().cloned().map(RoutedService::from).collect()
}

impl Daemon {
    /// Standalone mode: loads the file, binds everything and starts serving
    /// on `proxy_threads` worker threads.
    pub async fn start(config_path: &Path, proxy_threads: usize) -> Result<Self, DaemonError> {
        let config = ConfigFile::load(config_path)?;
        let services = file_services(&config.services);
        Self::serve(
            Source::File {
                path: config_path.to_owned(),
            },
            config.node,
            &services,
            None,
            proxy_threads,
        )
        .await
    }

    /// Cluster mode: starts (bootstraps, joins or rejoins) the registry and
    /// serves its services. Returns the daemon and, for a new cluster, its
    /// join and control tokens.
    pub async fn start_cluster(
        options: ClusterOptions,
    ) -> Result<(Self, Option<raft_state::state::ClusterInfo>), DaemonError> {
        let settings = options.settings;
        let join = options
            .join
            .as_ref()
            .map(|(host, token)| (host.as_str(), token.as_str()));
        let (registry, started) = cluster::start(&settings, join).await?;
        let registry = Arc::new(registry);
        let changes = registry.watch();
        let services = registry_services(&changes.borrow());
        let node = Node {
            name: settings.name.clone(),
            api_addr: settings.api_addr,
            ingress_addr: settings.ingress_addr,
            shutdown_grace: options.shutdown_grace,
        };
        let daemon = Self::serve(
            Source::Registry {
                node: Arc::clone(&registry),
                changes,
            },
            node,
            &services,
            Some(Arc::clone(&registry)),
            options.proxy_threads,
        )
        .await?;
        tokio::spawn(scheduler::run(
            Arc::clone(&registry),
            SchedulerSettings {
                heartbeat_grace: options.heartbeat_grace,
            },
            daemon.stop_control.clone(),
        ));
        tokio::spawn(agent::run(
            Arc::clone(&registry),
            AgentSettings {
                node_id: registry.id,
                node_name: settings.name.clone(),
                advertise_addr: settings.advertise_addr,
                heartbeat_interval: options.heartbeat_interval,
                state_dir: settings.data_dir.join("tasks"),
            },
            daemon.stop_control.clone(),
        ));
        let tokens = match started {
            Started::Bootstrapped(info) => Some(info),
            Started::Joined | Started::Restarted => None,
        };
        Ok((daemon, tokens))
    }

    async fn serve(
        source: Source,
        node: Node,
        services: &[RoutedService],
        registry: Option<Arc<RegistryNode>>,
        proxy_threads: usize,
    ) -> Result<Self, DaemonError> {
        let workers = ProxyWorkers::start(proxy_threads).map_err(DaemonError::Workers)?;
        let metrics = Arc::new(Metrics::new());
        let table = RoutingTable::build(
            services,
            node.ingress_addr,
            &RoutingTable::default(),
            &metrics,
        );
        let bound = bind_new(&table, &HashMap::new(), workers.count())?;
        let admin_listener = proxy::bind_listener(node.api_addr, ListenOptions::default())
            .and_then(TcpListener::from_std)
            .map_err(|source| DaemonError::AdminBind {
                addr: node.api_addr,
                source,
            })?;
        let signals = Signals::install()?;
        let api_addr = admin_listener
            .local_addr()
            .map_err(|source| DaemonError::AdminBind {
                addr: node.api_addr,
                source,
            })?;

        let table = Arc::new(ArcSwap::from_pointee(table));
        let admin = Arc::new(AdminState {
            metrics: Arc::clone(&metrics),
            table: Arc::clone(&table),
            ready: false.into(),
            registry,
        });
        let mut daemon = Daemon {
            source,
            node,
            metrics,
            table,
            listeners: HashMap::new(),
            stop_accepting: CancellationToken::new(),
            stop_admin: CancellationToken::new(),
            connections: TaskTracker::new(),
            admin: Arc::clone(&admin),
            api_addr,
            signals,
            stop_control: CancellationToken::new(),
            workers,
        };
        daemon.spawn_accept_loops(bound);
        let stop_admin = daemon.stop_admin.clone();
        tokio::spawn(admin::run(admin_listener, admin, async move {
            stop_admin.cancelled().await
        }));
        daemon.admin.ready.store(true, Ordering::Relaxed);
        info!(
            node = %daemon.node.name,
            services = services.len(),
            listeners = daemon.listeners.len(),
            api = %daemon.api_addr,
            "lbd serving"
        );
        Ok(daemon)
    }

    /// The bound admin API address (useful when the file asked for port 0).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Standalone mode: re-reads the file and applies it. On error the
    /// running configuration keeps serving unchanged.
    pub fn reload(&mut self) -> Result<(), DaemonError> {
        let Source::File { path } = &self.source else {
            info!("cluster mode: services come from the registry; nothing to reload");
            return Ok(());
        };
        let result = ConfigFile::load(path)
            .map_err(DaemonError::from)
            .and_then(|config| {
                if config.node != self.node {
                    warn!("[node] settings changed; they take effect when lbd restarts");
                }
                self.apply(&file_services(&config.services))
            });
        self.metrics.reload_finished(result.is_ok());
        result
    }

    /// Routes `services`: the new table replaces the old in one store.
    fn apply(&mut self, services: &[RoutedService]) -> Result<(), DaemonError> {
        let previous = self.table.load_full();
        let table = RoutingTable::build(services, self.node.ingress_addr, &previous, &self.metrics);
        let bound = match bind_new(&table, &self.listeners, self.workers.count()) {
            Ok(bound) => bound,
            Err(error) => {
                table.abandon(&previous, &self.metrics);
                return Err(error);
            }
        };
        let table = Arc::new(table);
        self.table.store(Arc::clone(&table));
        table.commit(&previous, services, &self.metrics);

        let wanted: Vec<SocketAddr> = table.listen_addrs().map(|(addr, _)| addr).collect();
        self.listeners.retain(|addr, stop| {
            let keep = wanted.contains(addr);
            if !keep {
                info!(%addr, "listener closed");
                stop.cancel();
            }
            keep
        });
        self.spawn_accept_loops(bound);
        info!(
            services = services.len(),
            listeners = self.listeners.len(),
            "routing table updated"
        );
        Ok(())
    }

    /// Starts one accept loop per worker on each newly bound address.
    fn spawn_accept_loops(&mut self, bound: Vec<(SocketAddr, Vec<std::net::TcpListener>)>) {
        let ctx = ProxyContext {
            table: Arc::clone(&self.table),
            connections: self.connections.clone(),
        };
        for (addr, listeners) in bound {
            let stop = self.stop_accepting.child_token();
            self.listeners.insert(addr, stop.clone());
            info!(%addr, "listening");
            let lane = proxy::next_lane();
            for (worker, listener) in listeners.into_iter().enumerate() {
                self.workers.spawn_on(
                    worker,
                    proxy::accept_loop(listener, addr, lane, ctx.clone(), stop.clone()),
                );
            }
        }
    }

    /// Waits for the next registry change (never resolves in standalone mode).
    async fn registry_changed(source: &mut Source) -> Option<Vec<RoutedService>> {
        match source {
            Source::Registry { changes, .. } => {
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                Some(registry_services(&changes.borrow_and_update()))
            }
            Source::File { .. } => std::future::pending().await,
        }
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP and routing every
    /// registry change, then shuts down gracefully within `shutdown_grace`.
    pub async fn run(mut self) -> Result<(), DaemonError> {
        loop {
            tokio::select! {
                _ = self.signals.hangup.recv() => {
                    info!("SIGHUP: reloading");
                    if let Err(error) = self.reload() {
                        error!(%error, "reload rejected; the running configuration keeps serving");
                    }
                }
                Some(services) = Self::registry_changed(&mut self.source) => {
                    if let Err(error) = self.apply(&services) {
                        error!(%error, "registry change not routed; the running table keeps serving");
                    }
                }
                _ = self.signals.terminate.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = self.signals.interrupt.recv() => { info!("SIGINT: shutting down"); break; }
            }
        }
        let grace = self.node.shutdown_grace;
        self.shutdown(grace).await;
        Ok(())
    }

    /// Stops accepting, waits up to `grace` for open connections, then stops
    /// the admin API and the registry. Returns whether every connection
    /// finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.admin.ready.store(false, Ordering::Relaxed);
        // Tasks keep running; the next start adopts them.
        self.stop_control.cancel();
        self.stop_accepting.cancel();
        self.connections.close();
        let open = self.connections.len();
        if open > 0 {
            info!(open, ?grace, "waiting for open connections");
        }
        let drained = tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_ok();
        if !drained {
            warn!(
                open = self.connections.len(),
                "shutdown deadline passed; closing the remaining connections"
            );
        }
        self.stop_admin.cancel();
        if let Source::Registry { node, .. } = &self.source {
            node.shutdown().await;
        }
        drained
    }
}

/// Binds every address of `table` that has no listener yet and returns
/// `copies` (at least one) descriptors of each socket, one per proxy worker. All or
/// nothing for published ports: on the first failure the sockets bound so
/// far are closed again. A VIP that cannot be bound (a port below 1024
/// without the privilege, say) is logged and skipped: it must not keep the
/// published ports from being served.
fn bind_new(
    table: &RoutingTable,
    existing: &HashMap<SocketAddr, CancellationToken>,
    copies: usize,
) -> Result<Vec<(SocketAddr, Vec<std::net::TcpListener>)>, DaemonError> {
    let mut bound = Vec::new();
    for (addr, service) in table.listen_addrs() {
        if existing.contains_key(&addr) {
            continue;
        }
        let vip = table.is_shared(&addr);
        let options = ListenOptions {
            reuse_port: vip,
            ..ListenOptions::default()
        };
        // One socket, one descriptor per worker: every worker's event loop
        // hears of a pending connection and the first free one takes it.
        let listeners = proxy::bind_listener(addr, options).and_then(|listener| {
            let mut listeners = (1..copies)
                .map(|_| listener.try_clone())
                .collect::<io::Result<Vec<_>>>()?;
            listeners.push(listener);
            Ok(listeners)
        });
        match listeners {
            Ok(listeners) => bound.push((addr, listeners)),
            Err(error) if vip => {
                warn!(%addr, service, %error, "cannot bind the service's VIP; skipped");
            }
            Err(source) => {
                return Err(DaemonError::Bind {
                    addr,
                    service: service.to_owned(),
                    source,
                })
            }
        }
    }
    Ok(bound)
}
