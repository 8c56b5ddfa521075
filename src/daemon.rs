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
//! start:   bind the admin API ─> services ─> ServiceRoutes (routes)
//!          ─> Proxy::apply (standalone: binds every listen address, one descriptor
//!             per proxy thread; any failure: nothing is left running, the error
//!             names what failed)
//!           | Proxy::apply_per_listener (cluster: an address that cannot be bound
//!             is skipped and retried)
//!          ─> the admin server on the control runtime ─> ready
//! change:  file:     services ─> ServiceRoutes ─> Proxy::apply (unchanged services
//!                    keep their routes); on a bind failure the running table keeps serving
//!          registry: RegistryRoutes::changes (the touched services) ─> [Update]
//!                    ─> Proxy::apply_per_listener; an address that fails is skipped,
//!                    the rest routed
//! retry:   every BIND_RETRY while an address fails ─> Proxy::retry_failed
//!          ─> this node's failures (a watch) ─> listener_report ─> the registry
//! stop:    not ready ─> stop accepting (listeners close, new connects are refused)
//!          ─> wait for open connections up to the grace deadline ─> stop admin
//!          ─> stop the registry ─> stop the proxy threads (what is still open closes)
//! ```
//!
//! Connections live on the proxy threads (see [`lbmesh_proxy::workers`]);
//! everything else (admin API, registry, scheduler, agent) runs on the
//! runtime that called [`Daemon::start`].
//!
//! [`Daemon::run`] takes the process's requests as a reload channel and a
//! shutdown future: the binary maps SIGHUP onto the first and SIGTERM and
//! SIGINT onto the second, and tests hold the triggers themselves.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use lb_config::{ConfigError, ConfigFile, Node};
use lbmesh_proxy::access_log::AccessLog;
use lbmesh_proxy::discovery::{ServiceRoutes, Update};
use lbmesh_proxy::listeners::{bind_listener, ListenOptions};
use lbmesh_proxy::{ApplyError, ListenerFailure, Proxy};
use raft_state::registry::RegistryNode;
use raft_state::store::Applied;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::access_log::AccessLogOutput;
use crate::admin::{self, AdminLimits, AdminState};
use crate::agent::{self, AgentSettings};
use crate::cluster::{self, ClusterError, NodeSettings, Started};
use crate::dns::{self, names::Names, Responder};
use crate::listener_report;
use crate::metrics::DaemonMetrics;
use crate::pki::{self, Pki};
use crate::routes::{file_routes, RegistryRoutes};
use crate::scheduler::{self, SchedulerSettings};
use crate::vip_route::RouteKeeper;

/// The Unix socket in the data dir where root on the node reaches the API
/// without a token (lbctl's default when `--host` is not given).
pub const LOCAL_SOCKET: &str = "lbd.sock";

/// Binds the local socket, replacing one a previous lbd left, mode 0600
/// (inside the 0700 data dir, so no other user reaches it even before the
/// mode is set).
fn bind_local_socket(path: &Path) -> io::Result<tokio::net::UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(
        path,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(
            crate::files::FILE_MODE,
        ),
    )?;
    Ok(listener)
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Bind(#[from] ApplyError),
    #[error("api_addr: cannot listen on {addr} for the admin API: {source}")]
    AdminBind { addr: SocketAddr, source: io::Error },
    #[error("cannot start the proxy threads: {0}")]
    Workers(io::Error),
    #[error("cannot register the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("access_log: cannot open {output}: {source}")]
    AccessLog {
        output: AccessLogOutput,
        source: io::Error,
    },
}

/// How often the routing changes are summed up at INFO: each change is
/// logged at DEBUG, since a busy cluster changes its table every few
/// seconds (1,495 of 2,844 lines in 11 minutes when each was INFO).
pub const ROUTING_SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Counts routing changes between two summaries.
#[derive(Debug, Default)]
struct RoutingChanges {
    changes: u64,
    services: usize,
}

impl RoutingChanges {
    /// One change was routed; the table now has `services`.
    fn record(&mut self, services: usize) {
        self.changes += 1;
        self.services = services;
    }

    /// `(changes, services now)` since the last call, or `None` when
    /// nothing changed (so a quiet node logs nothing).
    fn take(&mut self) -> Option<(u64, usize)> {
        let changes = std::mem::take(&mut self.changes);
        (changes > 0).then_some((changes, self.services))
    }
}

/// Where the services come from.
enum Source {
    File {
        path: PathBuf,
    },
    Registry {
        node: Arc<RegistryNode>,
        changes: watch::Receiver<Applied>,
        /// The state last routed, to route only what changes after it.
        routes: RegistryRoutes,
    },
}

/// A running daemon.
pub struct Daemon {
    source: Source,
    node: Node,
    metrics: Arc<DaemonMetrics>,
    stop_admin: CancellationToken,
    admin: Arc<AdminState>,
    api_addr: SocketAddr,
    /// Stops the scheduler, the agent and the listener reports (cluster
    /// mode).
    stop_control: CancellationToken,
    /// The listen addresses that are not bound now, for `listener_report`.
    listener_failures: watch::Sender<Vec<ListenerFailure>>,
    /// Routing changes since the last INFO summary (each one is DEBUG).
    routing_changes: RoutingChanges,
    /// Stops the VIP ranges' route keeper, once connections have drained
    /// (removing a route cuts what still uses a VIP).
    stop_route: CancellationToken,
    /// The VIP ranges' route keeper (cluster mode), awaited at shutdown
    /// so the routes it added are gone when lbd exits.
    route_kept: Option<JoinHandle<()>>,
    /// The data plane; the last field, so dropped last, which closes
    /// whatever connection outlived the shutdown grace.
    proxy: Proxy,
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
    /// Where services with `access_log` on write their lines.
    pub access_log: AccessLogOutput,
    /// The DNS responder's settings.
    pub dns: DnsOptions,
}

/// Settings of the node's DNS responder; the cluster domain it answers
/// under is the registry's.
#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// Where other names go; `None`: the nameservers of `/etc/resolv.conf`.
    pub upstreams: Option<Vec<SocketAddr>>,
}

/// Where names that are not the cluster's go: `options`' upstreams, or
/// resolv.conf's nameservers but `own`.
/// Runs the DNS responder on its address in the cluster's VIP range,
/// once the state names the range (at once but on a joining node, whose
/// state replicates after it starts).
async fn serve_dns(
    mut changes: watch::Receiver<Applied>,
    names: Arc<ArcSwap<Names>>,
    options: DnsOptions,
    stop: CancellationToken,
) {
    let Some(range) = initialised_vip_range(&mut changes, &stop).await else {
        return;
    };
    let addr = dns::listen_addr(range.base.into());
    let responder = Arc::new(Responder {
        names,
        upstreams: dns_upstreams(&options, addr.ip()),
    });
    dns::run(addr, responder, stop).await;
}

/// The cluster's VIP range once the applied state is initialised, or
/// `None` if the node stops first.
async fn initialised_vip_range(
    changes: &mut watch::Receiver<Applied>,
    stop: &CancellationToken,
) -> Option<raft_state::state::VipRange> {
    loop {
        let state = Arc::clone(&changes.borrow_and_update().state);
        if state.cluster.is_some() {
            return Some(state.vip_range);
        }
        tokio::select! {
            changed = changes.changed() => changed.ok()?,
            () = stop.cancelled() => return None,
        }
    }
}

fn dns_upstreams(options: &DnsOptions, own: std::net::IpAddr) -> Vec<SocketAddr> {
    if let Some(upstreams) = &options.upstreams {
        return upstreams.clone();
    }
    match std::fs::read_to_string(RESOLV_CONF) {
        Ok(text) => dns::upstream::from_resolv_conf(&text, own),
        Err(error) => {
            warn!(%error, "cannot read {RESOLV_CONF}: names outside the cluster get SERVFAIL");
            Vec::new()
        }
    }
}

/// The node's resolver configuration, for the DNS responder's upstreams.
const RESOLV_CONF: &str = "/etc/resolv.conf";

impl Daemon {
    /// Standalone mode: loads the file, binds everything and starts serving
    /// on `proxy_threads` worker threads.
    pub async fn start(
        config_path: &Path,
        proxy_threads: usize,
        access_log: &AccessLogOutput,
    ) -> Result<Self, DaemonError> {
        let config = ConfigFile::load(config_path)?;
        let services = file_routes(&config.services, config.node.ingress_addr);
        Self::serve(
            Source::File {
                path: config_path.to_owned(),
            },
            config.node,
            &services,
            None,
            proxy_threads,
            access_log,
        )
        .await
    }

    /// Cluster mode: starts (bootstraps, joins or rejoins) the registry and
    /// serves its services. Returns the daemon and, for a new cluster, its
    /// join and control tokens.
    pub async fn start_cluster(
        options: ClusterOptions,
    ) -> Result<(Self, Option<cluster::NewTokens>), DaemonError> {
        let settings = options.settings;
        let join = options
            .join
            .as_ref()
            .map(|(host, token)| (host.as_str(), token.as_str()));
        let (registry, pki, started) = cluster::start(&settings, join).await?;
        let registry = Arc::new(registry);
        let changes = registry.watch();
        // The VIP ranges are local before the first VIP is bound.
        let route_keeper = RouteKeeper::start(&changes.borrow().state).await;
        let (routes, services) = RegistryRoutes::start(&changes.borrow(), &settings.ingress_addrs);
        let node = Node {
            name: settings.name.clone(),
            api_addr: settings.api_addr,
            ingress_addr: settings.ingress_addrs[0],
            shutdown_grace: options.shutdown_grace,
        };
        let mut daemon = Self::serve(
            Source::Registry {
                node: Arc::clone(&registry),
                changes,
                routes,
            },
            node,
            &services,
            Some((Arc::clone(&registry), Arc::clone(&pki))),
            options.proxy_threads,
            &options.access_log,
        )
        .await?;
        let socket = settings.data_dir.join(LOCAL_SOCKET);
        match bind_local_socket(&socket) {
            Ok(listener) => {
                let stop = daemon.stop_admin.clone();
                tokio::spawn(admin::run_local(
                    listener,
                    Arc::clone(&daemon.admin),
                    AdminLimits::within(1024),
                    async move { stop.cancelled().await },
                ));
            }
            Err(error) => {
                warn!(socket = %socket.display(), %error, "no local socket; lbctl needs --host and --token")
            }
        }
        let names = Arc::new(ArcSwap::from_pointee(Names::default()));
        tokio::spawn(dns::keep_names(
            Arc::clone(&names),
            registry.watch(),
            daemon.stop_control.clone(),
        ));
        tokio::spawn(serve_dns(
            registry.watch(),
            names,
            options.dns.clone(),
            daemon.stop_control.clone(),
        ));
        daemon.route_kept = route_keeper.map(|keeper| {
            let stop = daemon.stop_route.clone();
            tokio::spawn(keeper.run(registry.watch(), stop))
        });
        tokio::spawn(pki::keep_renewed(
            Arc::clone(&registry),
            Arc::clone(&pki),
            daemon.stop_control.clone(),
        ));
        tokio::spawn(scheduler::run(
            Arc::clone(&registry),
            SchedulerSettings {
                heartbeat_grace: options.heartbeat_grace,
                silent_held: daemon.metrics.silent_held.clone(),
            },
            daemon.stop_control.clone(),
        ));
        tokio::spawn(count_leader_changes(
            Arc::clone(&registry),
            daemon.metrics.leader_changes.clone(),
            daemon.stop_control.clone(),
        ));
        tokio::spawn(listener_report::run(
            Arc::clone(&registry),
            daemon.listener_failures.subscribe(),
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
            daemon.proxy.table(),
            daemon.stop_control.clone(),
        ));
        let tokens = match started {
            Started::Bootstrapped(info) => Some(info),
            Started::Restarted => {
                tokio::spawn(cluster::reregister(
                    Arc::clone(&registry),
                    settings.clone(),
                    daemon.stop_control.clone(),
                ));
                None
            }
            Started::Joined => None,
        };
        Ok((daemon, tokens))
    }

    async fn serve(
        source: Source,
        node: Node,
        services: &[ServiceRoutes],
        cluster: Option<(Arc<RegistryNode>, Arc<Pki>)>,
        proxy_threads: usize,
        access_log: &AccessLogOutput,
    ) -> Result<Self, DaemonError> {
        let metrics = Arc::new(DaemonMetrics::new()?);
        // The admin address first: if it cannot be bound, no accept loop
        // has started yet.
        let admin_listener = bind_listener(node.api_addr, ListenOptions::default())
            .and_then(TcpListener::from_std)
            .map_err(|source| DaemonError::AdminBind {
                addr: node.api_addr,
                source,
            })?;
        let api_addr = admin_listener
            .local_addr()
            .map_err(|source| DaemonError::AdminBind {
                addr: node.api_addr,
                source,
            })?;
        let mut proxy = Proxy::start(proxy_threads, Arc::clone(&metrics.proxy))
            .map_err(DaemonError::Workers)?;
        let access_out = access_log.open().map_err(|source| DaemonError::AccessLog {
            output: access_log.clone(),
            source,
        })?;
        proxy.set_access_log(AccessLog::start(access_out, metrics.registry())?);
        match source {
            Source::File { .. } => proxy.apply(services)?,
            Source::Registry { .. } => {
                proxy.apply_per_listener(&[Update::Reset(services.to_vec())]);
            }
        }

        let admin = Arc::new(AdminState {
            metrics: Arc::clone(&metrics),
            table: proxy.table(),
            ready: false.into(),
            cluster,
        });
        let daemon = Daemon {
            source,
            node,
            metrics,
            stop_admin: CancellationToken::new(),
            admin: Arc::clone(&admin),
            api_addr,
            stop_control: CancellationToken::new(),
            listener_failures: watch::Sender::new(proxy.failures()),
            routing_changes: RoutingChanges::default(),
            stop_route: CancellationToken::new(),
            route_kept: None,
            proxy,
        };
        let stop_admin = daemon.stop_admin.clone();
        // The admin server's share follows the descriptor limit (lbd raises
        // it to the hard limit first), so the rest stays for the proxy and
        // Raft however the admin port is flooded.
        let descriptors =
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
        let limits = AdminLimits::within(descriptors);
        tokio::spawn(admin::run(admin_listener, admin, limits, async move {
            stop_admin.cancelled().await
        }));
        daemon.admin.ready.store(true, Ordering::Relaxed);
        info!(
            node = %daemon.node.name,
            services = services.len(),
            listeners = daemon.proxy.listener_count(),
            not_bound = daemon.proxy.failures().len(),
            api = %daemon.api_addr,
            admin_connections = limits.max_connections,
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
        let path = path.clone();
        let result = ConfigFile::load(&path)
            .map_err(DaemonError::from)
            .and_then(|config| {
                if config.node != self.node {
                    warn!("[node] settings changed; they take effect when lbd restarts");
                }
                let services = file_routes(&config.services, self.node.ingress_addr);
                self.proxy.apply(&services)?;
                self.routed(services.len());
                Ok(())
            });
        self.metrics.reload_finished(result.is_ok());
        result
    }

    /// After a change that rebuilt the routes of `rebuilt` services: hands
    /// on the addresses not bound now and logs the table's size (DEBUG; the
    /// summary is INFO).
    fn routed(&mut self, rebuilt: usize) {
        self.publish_failures();
        let services = self.proxy.table().load().service_count();
        self.routing_changes.record(services);
        debug!(
            rebuilt,
            services,
            listeners = self.proxy.listener_count(),
            not_bound = self.proxy.failures().len(),
            "routing table updated"
        );
    }

    /// The INFO summary of the routing changes since the last one, if any.
    fn summarize_routing(&mut self) {
        if let Some((changes, services)) = self.routing_changes.take() {
            info!(
                changes,
                services,
                listeners = self.proxy.listener_count(),
                not_bound = self.proxy.failures().len(),
                every = %humantime::format_duration(ROUTING_SUMMARY_EVERY),
                "routing table changed"
            );
        }
    }

    /// Hands the listen addresses that are not bound now to whoever reports
    /// them (cluster mode), if they changed.
    fn publish_failures(&self) {
        let now = self.proxy.failures();
        self.listener_failures.send_if_modified(|last| {
            let changed = *last != now;
            if changed {
                *last = now;
            }
            changed
        });
    }

    /// Resolves when the proxy's next failing address is due for a try
    /// (never while every address is bound).
    async fn retry_due(at: Option<tokio::time::Instant>) {
        match at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Waits for the next registry change and returns what it changed in
    /// the routes (never resolves in standalone mode).
    async fn registry_changed(source: &mut Source) -> Option<Vec<Update>> {
        match source {
            Source::Registry {
                changes, routes, ..
            } => {
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                let applied = changes.borrow_and_update();
                Some(routes.changes(&applied))
            }
            Source::File { .. } => std::future::pending().await,
        }
    }

    /// Serves until `shutdown` resolves, reloading the config file on each
    /// message of `reload_requests` and routing every registry change, then
    /// shuts down gracefully within `shutdown_grace`.
    pub async fn run(
        mut self,
        mut reload_requests: mpsc::Receiver<()>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        tokio::pin!(shutdown);
        let mut summary = tokio::time::interval_at(
            tokio::time::Instant::now() + ROUTING_SUMMARY_EVERY,
            ROUTING_SUMMARY_EVERY,
        );
        summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = summary.tick() => self.summarize_routing(),
                Some(()) = reload_requests.recv() => {
                    if let Err(error) = self.reload() {
                        error!(%error, "reload rejected; the running configuration keeps serving");
                    }
                }
                Some(updates) = Self::registry_changed(&mut self.source) => {
                    if !updates.is_empty() {
                        let rebuilt = self.proxy.apply_per_listener(&updates);
                        self.routed(rebuilt);
                    }
                }
                () = Self::retry_due(self.proxy.next_retry()) => {
                    if self.proxy.retry_failed() {
                        self.publish_failures();
                    }
                }
                () = &mut shutdown => break,
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
        self.proxy.stop_accepting();
        let drained = self.proxy.drain(grace).await;
        self.stop_route.cancel();
        if let Some(kept) = self.route_kept {
            let _ = kept.await;
        }
        self.stop_admin.cancel();
        if let Source::Registry { node, .. } = &self.source {
            node.shutdown().await;
        }
        drained
    }
}

/// Counts each time the leader this node knows is lost (to none while an
/// election runs, or straight to another node) until `stop`; a failover
/// counts once. The first leader it learns of after it starts is not a
/// change.
async fn count_leader_changes(
    registry: Arc<RegistryNode>,
    changes: prometheus::IntCounter,
    stop: CancellationToken,
) {
    let mut raft = registry.raft_metrics();
    let mut known = raft.borrow_and_update().current_leader;
    loop {
        tokio::select! {
            changed = raft.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
        let leader = raft.borrow_and_update().current_leader;
        if leader_changed(known, leader) {
            changes.inc();
        }
        known = leader;
    }
}

/// Whether the leader went from `known` to `now`: a first leader is not a
/// change; a loss of it or another node is.
fn leader_changed(known: Option<u64>, now: Option<u64>) -> bool {
    known.is_some() && known != now
}

#[cfg(test)]
mod tests {
    use super::{leader_changed, RoutingChanges};

    #[test]
    fn a_first_leader_is_no_change_a_loss_and_another_are() {
        assert!(!leader_changed(None, Some(1)));
        assert!(!leader_changed(Some(1), Some(1)));
        assert!(leader_changed(Some(1), None));
        assert!(leader_changed(Some(1), Some(2)));
    }

    #[test]
    fn routing_summary_counts_changes_and_stays_quiet_without_any() {
        let mut changes = RoutingChanges::default();
        assert_eq!(changes.take(), None);
        changes.record(3);
        changes.record(4);
        assert_eq!(changes.take(), Some((2, 4)));
        assert_eq!(changes.take(), None);
    }
}
