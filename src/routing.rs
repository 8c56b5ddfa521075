//! The routing table: one immutable snapshot of every route, swapped whole.
//!
//! # Flow
//!
//! ```text
//! checked services ──RoutingTable::build(previous)──> new table ──ArcSwap::store──> proxies load()
//!                                                       └─ commit(previous): resize limits, drop stale metrics
//! ```
//!
//! A [`Route`] is what a listener needs for a new connection: the service's
//! long-lived state (connection limit, metrics), the per-connection settings
//! and the [`BackendSet`]. Routes are keyed by the listen address they serve,
//! so a listener finds its route with one map lookup and a reload that moves a
//! port to another service needs no listener change.
//!
//! # Invariants
//!
//! - Backends and service states are carried over from the previous table by
//!   identity (`(service, address)` and service name), so in-flight counts,
//!   ejections and connection permits survive a reload.
//! - `build` has no side effects beyond creating metric handles; the caller
//!   stores the table first and then calls [`RoutingTable::commit`], so a
//!   reload that fails after `build` changes nothing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lb_config::{ProxyProtocol, Service};
use raft_state::task::TaskEndpoint;
use tokio::sync::Notify;

use crate::balance::{Backend, BackendSet};
use crate::metrics::{Metrics, ServiceMetrics};

/// A service's cap on open client connections. Unlike a semaphore it can be
/// resized at any time: lowering it lets open connections finish and admits
/// new ones only once `open` is below the new maximum.
pub struct ConnectionLimit {
    open: AtomicU32,
    max: AtomicU32,
    /// Woken when a connection closes or the maximum grows.
    freed: Notify,
}

/// One admitted connection; dropping it frees its place.
pub struct ConnectionPermit {
    limit: Arc<ConnectionLimit>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limit.open.fetch_sub(1, Ordering::AcqRel);
        self.limit.freed.notify_one();
    }
}

impl ConnectionLimit {
    pub fn new(max: u32) -> Self {
        Self {
            open: AtomicU32::new(0),
            max: AtomicU32::new(max),
            freed: Notify::new(),
        }
    }

    /// A place if one is free now.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnectionPermit> {
        let max = self.max.load(Ordering::Acquire);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()
            .map(|_| ConnectionPermit {
                limit: Arc::clone(self),
            })
    }

    /// Waits for a free place.
    pub async fn acquire(self: &Arc<Self>) -> ConnectionPermit {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Register before checking, so a release in between is not missed.
            freed.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            freed.await;
        }
    }

    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }

    fn set_max(&self, max: u32) {
        if self.max.swap(max, Ordering::AcqRel) < max {
            self.freed.notify_waiters();
        }
    }
}

/// State of a service that outlives snapshots.
pub struct ServiceState {
    pub name: Arc<str>,
    /// Listeners take a place here before `accept`, so the cap holds without
    /// ever accepting a connection only to drop it.
    pub limit: Arc<ConnectionLimit>,
    pub metrics: ServiceMetrics,
}

impl ServiceState {
    fn new(name: &str, max_connections: u32, metrics: &Metrics) -> Self {
        Self {
            name: Arc::from(name),
            limit: Arc::new(ConnectionLimit::new(max_connections)),
            metrics: metrics.service(name),
        }
    }
}

/// Per-connection settings of a route, copied from the service.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub proxy_protocol: ProxyProtocol,
    /// Further connect attempts after the first one fails.
    pub retries: u32,
    /// How long a backend that failed a connect is skipped.
    pub eject_time: Duration,
    /// Replay the client's first bytes to another backend when one closes
    /// without answering.
    pub retry_on_empty: bool,
}

/// Everything a listener needs to serve one new connection.
pub struct Route {
    pub service: Arc<ServiceState>,
    pub settings: RouteSettings,
    /// Shared by the routes of one port on several listen addresses.
    pub backends: Arc<BackendSet>,
}

type BackendKey = (Arc<str>, SocketAddr);

/// A service to route, with the virtual IP the registry gave it (none in
/// standalone mode) and the endpoints of its serving tasks. The VIP answers
/// on each port's target port.
#[derive(Debug, Clone)]
pub struct RoutedService {
    pub service: Service,
    pub vip: Option<IpAddr>,
    /// Running, healthy tasks anywhere in the cluster; each serves every
    /// target port on its own host port.
    pub tasks: Vec<TaskEndpoint>,
}

impl From<Service> for RoutedService {
    fn from(service: Service) -> Self {
        Self {
            service,
            vip: None,
            tasks: Vec::new(),
        }
    }
}

/// One immutable snapshot of all routes.
#[derive(Default)]
pub struct RoutingTable {
    routes: HashMap<SocketAddr, Arc<Route>>,
    services: HashMap<Arc<str>, Arc<ServiceState>>,
    backends: HashMap<BackendKey, Arc<Backend>>,
    /// Listen addresses that several sockets (and nodes on one machine)
    /// share with SO_REUSEPORT: the VIPs.
    shared: std::collections::HashSet<SocketAddr>,
}

impl RoutingTable {
    /// Builds the routes of `services`, reusing `previous`'s long-lived state.
    /// Published ports bind on each service's `listen` addresses, or on
    /// `ingress_addr` when it names none.
    pub fn build(
        services: &[RoutedService],
        ingress_addr: IpAddr,
        previous: &RoutingTable,
        metrics: &Metrics,
    ) -> Self {
        let mut table = RoutingTable::default();
        for RoutedService {
            service,
            vip,
            tasks,
        } in services
        {
            let state = previous
                .services
                .get(service.name.as_str())
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(ServiceState::new(
                        &service.name,
                        service.max_connections,
                        metrics,
                    ))
                });
            table
                .services
                .insert(Arc::clone(&state.name), Arc::clone(&state));
            let settings = RouteSettings {
                connect_timeout: service.connect_timeout,
                idle_timeout: service.idle_timeout,
                proxy_protocol: service.proxy_protocol,
                retries: service.retries,
                eject_time: service.health.eject_time,
                retry_on_empty: service.retry_on_empty,
            };
            let ips: Vec<IpAddr> = if service.listen.is_empty() {
                vec![ingress_addr]
            } else {
                service.listen.clone()
            };
            for port in &service.ports {
                let task_backends = tasks
                    .iter()
                    .filter_map(|task| task.addr_for(port.target))
                    .map(|addr| (addr, 1));
                let members: Vec<(Arc<Backend>, u32)> = service
                    .backends_for(port)
                    .into_iter()
                    .chain(task_backends)
                    .map(|(addr, weight)| {
                        let key: BackendKey = (Arc::clone(&state.name), addr);
                        let backend = table
                            .backends
                            .get(&key)
                            .or_else(|| previous.backends.get(&key))
                            .cloned()
                            .unwrap_or_else(|| {
                                Arc::new(Backend::new(
                                    addr,
                                    metrics.backend(&service.name, &addr.to_string()),
                                ))
                            });
                        table.backends.insert(key, Arc::clone(&backend));
                        (backend, weight)
                    })
                    .collect();
                let backends = Arc::new(BackendSet::new(service.algorithm, members));
                let vip_addr = vip.map(|vip| SocketAddr::new(vip, port.target));
                let addrs = ips
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, port.published))
                    .chain(vip_addr);
                for addr in addrs {
                    let route = Route {
                        service: Arc::clone(&state),
                        settings: settings.clone(),
                        backends: Arc::clone(&backends),
                    };
                    table.routes.insert(addr, Arc::new(route));
                }
                if let Some(addr) = vip_addr {
                    table.shared.insert(addr);
                }
            }
        }
        // A removed service whose connections are still open keeps its state
        // (without routes), so re-adding it before they close keeps counting
        // them against its cap.
        for (name, state) in &previous.services {
            if !table.services.contains_key(name) && state.limit.open() > 0 {
                table.services.insert(Arc::clone(name), Arc::clone(state));
            }
        }
        table
    }

    /// After the table is stored: applies new connection limits and drops the
    /// metrics of services and backends that are gone.
    pub fn commit(&self, previous: &RoutingTable, services: &[RoutedService], metrics: &Metrics) {
        for RoutedService { service, .. } in services {
            if let Some(state) = self.services.get(service.name.as_str()) {
                state.limit.set_max(service.max_connections);
            }
        }
        for (name, _) in previous.services.iter() {
            if !self.services.contains_key(name) {
                metrics.remove_service(name);
            }
        }
        for (key, _) in previous.backends.iter() {
            if !self.backends.contains_key(key) {
                metrics.remove_backend(&key.0, &key.1.to_string());
            }
        }
    }

    /// When a table was built but will not be stored (the reload failed):
    /// drops the metric series it created for services and backends that the
    /// running table does not have.
    pub fn abandon(&self, running: &RoutingTable, metrics: &Metrics) {
        for name in self.services.keys() {
            if !running.services.contains_key(name) {
                metrics.remove_service(name);
            }
        }
        for key in self.backends.keys() {
            if !running.backends.contains_key(key) {
                metrics.remove_backend(&key.0, &key.1.to_string());
            }
        }
    }

    /// Whether `addr` is bound with SO_REUSEPORT (a VIP).
    pub fn is_shared(&self, addr: &SocketAddr) -> bool {
        self.shared.contains(addr)
    }

    pub fn route(&self, listen_addr: &SocketAddr) -> Option<&Arc<Route>> {
        self.routes.get(listen_addr)
    }

    /// Every address a listener must be bound on, with its service's name.
    pub fn listen_addrs(&self) -> impl Iterator<Item = (SocketAddr, &str)> + '_ {
        self.routes
            .iter()
            .map(|(addr, route)| (*addr, &*route.service.name))
    }

    /// Every backend with its service's name.
    pub fn backends(&self) -> impl Iterator<Item = (&str, &Arc<Backend>)> + '_ {
        self.backends.iter().map(|(key, b)| (&*key.0, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_config::ConfigFile;

    fn services(text: &str) -> Vec<RoutedService> {
        let config = ConfigFile::parse(text).unwrap().validate().unwrap();
        config
            .services
            .into_iter()
            .map(RoutedService::from)
            .collect()
    }

    #[test]
    fn rebuild_keeps_backend_state_and_routes_by_listen_addr() {
        let metrics = Metrics::new();
        let ingress: IpAddr = "127.0.0.1".parse().unwrap();
        let v1 = services(
            r#"
            [[service]]
            name = "web"
            ports = [{ published = 8080 }]
            endpoints = [{ address = "10.0.0.1:80" }, { address = "10.0.0.2:80" }]
            "#,
        );
        let first = RoutingTable::build(&v1, ingress, &RoutingTable::default(), &metrics);
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap(); // fixed-port-ok: a map key, nothing bound
        let route = first.route(&listen).unwrap();
        assert_eq!(route.backends.len(), 2);
        route.backends.backends()[0].eject(Duration::from_secs(60));

        let v2 = services(
            r#"
            [[service]]
            name = "web"
            ports = [{ published = 8080 }]
            max_connections = 5
            endpoints = [{ address = "10.0.0.1:80" }, { address = "10.0.0.3:80" }]
            "#,
        );
        let second = RoutingTable::build(&v2, ingress, &first, &metrics);
        let route2 = second.route(&listen).unwrap();
        assert!(Arc::ptr_eq(
            &route.backends.backends()[0],
            &route2.backends.backends()[0]
        ));
        assert!(route2.backends.backends()[0].is_ejected());
        assert!(Arc::ptr_eq(&route.service, &route2.service));
        assert_eq!(second.backends().count(), 2);
    }
}
