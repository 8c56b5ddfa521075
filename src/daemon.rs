//! The standalone daemon: services from a config file, reloaded on SIGHUP.
//!
//! # Flow
//!
//! ```text
//! start:   load file ─> build RoutingTable ─> bind every listener and the admin API
//!          (any failure: nothing is left running, the error names what failed)
//!          ─> spawn accept loops and the admin server ─> ready
//! reload:  load file ─> build table (reusing backend state) ─> bind new addresses
//!          ─> store the table (one ArcSwap store) ─> stop loops of removed addresses
//!          (any failure before the store: the running config keeps serving;
//!          moving a port between 0.0.0.0 and a specific IP of the same family
//!          in one reload fails this way, as the old socket still holds it)
//! stop:    not ready ─> stop accept loops (listeners close, new connects are refused)
//!          ─> wait for open connections up to the grace deadline ─> stop admin
//! ```
//!
//! SIGTERM and SIGINT share the stop path; SIGHUP reloads. The registry issue
//! replaces the file as the source of services; the flow from a set of checked
//! services to listeners stays the same.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use lb_config::{Config, ConfigError, ConfigFile};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
use crate::metrics::Metrics;
use crate::proxy::{self, ListenOptions, ProxyContext};
use crate::routing::RoutingTable;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} for service {service:?}: {source}")]
    Bind {
        addr: SocketAddr,
        service: String,
        source: io::Error,
    },
    #[error("node.api_addr: cannot listen on {addr} for the admin API: {source}")]
    AdminBind { addr: SocketAddr, source: io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
}

/// A running standalone daemon.
pub struct Daemon {
    config_path: PathBuf,
    config: Config,
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

impl Daemon {
    /// Loads the file, binds everything and starts serving.
    pub async fn start(config_path: &Path) -> Result<Self, DaemonError> {
        let config = ConfigFile::load(config_path)?;
        let metrics = Arc::new(Metrics::new());
        let table = RoutingTable::build(
            &config.services,
            config.node.ingress_addr,
            &RoutingTable::default(),
            &metrics,
        );
        let bound = bind_new(&table, &HashMap::new())?;
        let admin_listener = proxy::bind_listener(config.node.api_addr, ListenOptions::default())
            .and_then(TcpListener::from_std)
            .map_err(|source| DaemonError::AdminBind {
                addr: config.node.api_addr,
                source,
            })?;
        let signals = Signals::install()?;
        let api_addr = admin_listener
            .local_addr()
            .map_err(|source| DaemonError::AdminBind {
                addr: config.node.api_addr,
                source,
            })?;

        let table = Arc::new(ArcSwap::from_pointee(table));
        let admin = Arc::new(AdminState {
            metrics: Arc::clone(&metrics),
            table: Arc::clone(&table),
            ready: false.into(),
        });
        let mut daemon = Daemon {
            config_path: config_path.to_owned(),
            config,
            metrics,
            table,
            listeners: HashMap::new(),
            stop_accepting: CancellationToken::new(),
            stop_admin: CancellationToken::new(),
            connections: TaskTracker::new(),
            admin: Arc::clone(&admin),
            api_addr,
            signals,
        };
        daemon.spawn_accept_loops(bound);
        let stop_admin = daemon.stop_admin.clone();
        tokio::spawn(admin::run(admin_listener, admin, async move {
            stop_admin.cancelled().await
        }));
        daemon.admin.ready.store(true, Ordering::Relaxed);
        info!(
            node = %daemon.config.node.name,
            services = daemon.config.services.len(),
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

    pub fn table(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.table.load()
    }

    /// Re-reads the file and applies it. On error the running configuration
    /// keeps serving unchanged.
    pub fn reload(&mut self) -> Result<(), DaemonError> {
        let result = self.try_reload();
        self.metrics.reload_finished(result.is_ok());
        result
    }

    fn try_reload(&mut self) -> Result<(), DaemonError> {
        let config = ConfigFile::load(&self.config_path)?;
        if config.node != self.config.node {
            warn!("[node] settings changed; they take effect when lbd restarts");
        }
        let previous = self.table.load_full();
        let table = RoutingTable::build(
            &config.services,
            self.config.node.ingress_addr,
            &previous,
            &self.metrics,
        );
        let bound = match bind_new(&table, &self.listeners) {
            Ok(bound) => bound,
            Err(error) => {
                table.abandon(&previous, &self.metrics);
                return Err(error);
            }
        };
        let table = Arc::new(table);
        self.table.store(Arc::clone(&table));
        table.commit(&previous, &config.services, &self.metrics);

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
            services = config.services.len(),
            listeners = self.listeners.len(),
            "configuration reloaded"
        );
        self.config = config;
        Ok(())
    }

    fn spawn_accept_loops(&mut self, bound: Vec<(SocketAddr, std::net::TcpListener)>) {
        let ctx = ProxyContext {
            table: Arc::clone(&self.table),
            connections: self.connections.clone(),
        };
        for (addr, listener) in bound {
            let stop = self.stop_accepting.child_token();
            self.listeners.insert(addr, stop.clone());
            info!(%addr, "listening");
            tokio::spawn(proxy::accept_loop(listener, addr, ctx.clone(), stop));
        }
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP, then shuts down
    /// gracefully within the node's `shutdown_grace`.
    pub async fn run(mut self) -> Result<(), DaemonError> {
        loop {
            tokio::select! {
                _ = self.signals.hangup.recv() => {
                    info!(path = %self.config_path.display(), "SIGHUP: reloading");
                    if let Err(error) = self.reload() {
                        error!(%error, "reload rejected; the running configuration keeps serving");
                    }
                }
                _ = self.signals.terminate.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = self.signals.interrupt.recv() => { info!("SIGINT: shutting down"); break; }
            }
        }
        let grace = self.config.node.shutdown_grace;
        self.shutdown(grace).await;
        Ok(())
    }

    /// Stops accepting, waits up to `grace` for open connections, then stops
    /// the admin API. Returns whether every connection finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.admin.ready.store(false, Ordering::Relaxed);
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
        drained
    }
}

/// Binds every address of `table` that has no listener yet. All or nothing:
/// on the first failure the sockets bound so far are closed again.
fn bind_new(
    table: &RoutingTable,
    existing: &HashMap<SocketAddr, CancellationToken>,
) -> Result<Vec<(SocketAddr, std::net::TcpListener)>, DaemonError> {
    let mut bound = Vec::new();
    for (addr, service) in table.listen_addrs() {
        if existing.contains_key(&addr) {
            continue;
        }
        let listener = proxy::bind_listener(addr, ListenOptions::default()).map_err(|source| {
            DaemonError::Bind {
                addr,
                service: service.to_owned(),
                source,
            }
        })?;
        bound.push((addr, listener));
    }
    Ok(bound)
}
