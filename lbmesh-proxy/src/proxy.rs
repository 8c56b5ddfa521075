//! The running data plane: the routing table, the bound listeners, their
//! accept loops and the proxy threads, changed as a whole by [`Proxy::apply`].
//!
//! # Flow
//!
//! ```text
//! apply(services) ─> RoutingTable::build (reusing backend state) ─> bind the new addresses
//!                 ─> store the table (one ArcSwap store) ─> commit (limits, stale metrics)
//!                 ─> stop the loops of removed addresses ─> start loops on the new ones
//!   (a bind failure before the store: nothing changes, the running table keeps serving;
//!    moving a port between 0.0.0.0 and a specific IP of the same family in one
//!    change fails this way, as the old socket still holds it)
//! stop_accepting ─> every loop drops its listener (new connects are refused)
//! drain(grace)   ─> waits for open connections up to the deadline
//! drop           ─> the proxy threads stop; what is still open closes
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::accept::{accept_loop, next_lane, ProxyContext};
use crate::discovery::ServiceRoutes;
use crate::listeners::{bind_copies, ListenOptions};
use crate::metrics::Metrics;
use crate::routing::RoutingTable;
use crate::workers::ProxyWorkers;

/// A change that could not be routed; the running table keeps serving.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for service {service:?}: {source}")]
pub struct ApplyError {
    pub addr: SocketAddr,
    pub service: String,
    #[source]
    pub source: io::Error,
}

/// The data plane of one lbd.
pub struct Proxy {
    metrics: Arc<Metrics>,
    table: Arc<ArcSwap<RoutingTable>>,
    /// One stop token per bound listen address.
    listeners: HashMap<SocketAddr, CancellationToken>,
    /// Parent of every listener's token.
    stop_accepting: CancellationToken,
    connections: TaskTracker,
    /// The threads that accept and serve connections; dropped with the
    /// proxy, which closes whatever connection outlived the drain.
    workers: ProxyWorkers,
}

impl Proxy {
    /// Starts `threads` proxy threads with an empty table.
    pub fn start(threads: usize, metrics: Arc<Metrics>) -> io::Result<Self> {
        Ok(Self {
            metrics,
            table: Arc::new(ArcSwap::from_pointee(RoutingTable::default())),
            listeners: HashMap::new(),
            stop_accepting: CancellationToken::new(),
            connections: TaskTracker::new(),
            workers: ProxyWorkers::start(threads)?,
        })
    }

    /// Routes `services`: the new table replaces the old in one store. On
    /// error nothing changed.
    pub fn apply(&mut self, services: &[ServiceRoutes]) -> Result<(), ApplyError> {
        let previous = self.table.load_full();
        let table = RoutingTable::build(services, &previous, &self.metrics);
        let bound = match self.bind_new(&table) {
            Ok(bound) => bound,
            Err(error) => {
                table.abandon(&previous, &self.metrics);
                return Err(error);
            }
        };
        let table = Arc::new(table);
        self.table.store(Arc::clone(&table));
        table.commit(&previous, services, &self.metrics);

        self.listeners.retain(|addr, stop| {
            let keep = table.route(addr).is_some();
            if !keep {
                info!(%addr, "listener closed");
                stop.cancel();
            }
            keep
        });
        self.spawn_accept_loops(bound);
        Ok(())
    }

    /// The table the accept loops read; the admin server refreshes metrics
    /// from it.
    pub fn table(&self) -> Arc<ArcSwap<RoutingTable>> {
        Arc::clone(&self.table)
    }

    /// How many listen addresses are bound.
    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// Stops every accept loop: listeners close, new connects are refused,
    /// accepted connections go on.
    pub fn stop_accepting(&self) {
        self.stop_accepting.cancel();
    }

    /// Waits up to `grace` for open connections to finish; returns whether
    /// they all did.
    pub async fn drain(&self, grace: Duration) -> bool {
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
        drained
    }

    /// Binds every address of `table` that has no listener yet, one
    /// descriptor per proxy thread. All or nothing for published ports: on
    /// the first failure the sockets bound so far are closed again. A VIP
    /// that cannot be bound (a port below 1024 without the privilege, say)
    /// is logged and skipped: it must not keep the published ports from
    /// being served.
    fn bind_new(
        &self,
        table: &RoutingTable,
    ) -> Result<Vec<(SocketAddr, Vec<std::net::TcpListener>)>, ApplyError> {
        let mut bound = Vec::new();
        for (addr, service) in table.listen_addrs() {
            if self.listeners.contains_key(&addr) {
                continue;
            }
            let vip = table.is_shared(&addr);
            let options = ListenOptions {
                reuse_port: vip,
                ..ListenOptions::default()
            };
            match bind_copies(addr, options, self.workers.count()) {
                Ok(listeners) => bound.push((addr, listeners)),
                Err(error) if vip => {
                    warn!(%addr, service, %error, "cannot bind the service's VIP; skipped");
                }
                Err(source) => {
                    return Err(ApplyError {
                        addr,
                        service: service.to_owned(),
                        source,
                    })
                }
            }
        }
        Ok(bound)
    }

    /// Starts one accept loop per proxy thread on each newly bound address.
    fn spawn_accept_loops(&mut self, bound: Vec<(SocketAddr, Vec<std::net::TcpListener>)>) {
        let ctx = ProxyContext {
            table: Arc::clone(&self.table),
            connections: self.connections.clone(),
        };
        for (addr, listeners) in bound {
            let stop = self.stop_accepting.child_token();
            self.listeners.insert(addr, stop.clone());
            info!(%addr, "listening");
            let lane = next_lane();
            for (worker, listener) in listeners.into_iter().enumerate() {
                self.workers.spawn_on(
                    worker,
                    accept_loop(listener, addr, lane, ctx.clone(), stop.clone()),
                );
            }
        }
    }
}
