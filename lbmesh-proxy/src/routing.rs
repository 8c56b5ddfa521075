//! The routing table: one immutable snapshot of every route, swapped whole.
//!
//! # Flow
//!
//! ```text
//! [ServiceRoutes] ──RoutingTable::build(previous)──> new table ──ArcSwap::store──> proxies load()
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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::balance::{Backend, BackendSet};
use crate::discovery::{RouteSettings, ServiceRoutes};
use crate::limit::{ClientCounts, ConnectionLimit};
use crate::metrics::{Metrics, ServiceMetrics};

/// State of a service that outlives snapshots.
pub struct ServiceState {
    pub name: Arc<str>,
    /// Listeners take a place here before `accept`, so the cap holds without
    /// ever accepting a connection only to drop it.
    pub limit: Arc<ConnectionLimit>,
    /// Open connections per client address, for the opt-in per-client cap
    /// (the cap itself is in the route's settings).
    pub clients: Arc<ClientCounts>,
    pub metrics: ServiceMetrics,
}

impl ServiceState {
    fn new(name: &str, max_connections: u32, metrics: &Metrics) -> Self {
        let metrics = metrics.service(name);
        metrics.max_connections.set(i64::from(max_connections));
        Self {
            name: Arc::from(name),
            limit: Arc::new(ConnectionLimit::new(max_connections)),
            clients: Arc::new(ClientCounts::default()),
            metrics,
        }
    }
}

/// Everything a listener needs to serve one new connection.
pub struct Route {
    pub service: Arc<ServiceState>,
    pub settings: RouteSettings,
    /// Shared by the routes of one port on several listen addresses.
    pub backends: Arc<BackendSet>,
}

type BackendKey = (Arc<str>, SocketAddr);

/// One immutable snapshot of all routes.
#[derive(Default)]
pub struct RoutingTable {
    routes: HashMap<SocketAddr, Arc<Route>>,
    services: HashMap<Arc<str>, Arc<ServiceState>>,
    backends: HashMap<BackendKey, Arc<Backend>>,
    /// Listen addresses that several sockets (and nodes on one machine)
    /// share with SO_REUSEPORT: the VIPs.
    shared: HashSet<SocketAddr>,
}

impl RoutingTable {
    /// Builds the routes of `services`, reusing `previous`'s long-lived state.
    pub fn build(services: &[ServiceRoutes], previous: &RoutingTable, metrics: &Metrics) -> Self {
        let mut table = RoutingTable::default();
        for service in services {
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
            for port in &service.ports {
                let members: Vec<(Arc<Backend>, u32)> = port
                    .endpoints
                    .iter()
                    .map(|endpoint| {
                        let key: BackendKey = (Arc::clone(&state.name), endpoint.addr);
                        let backend = table
                            .backends
                            .get(&key)
                            .or_else(|| previous.backends.get(&key))
                            .cloned()
                            .unwrap_or_else(|| {
                                Arc::new(Backend::new(
                                    endpoint.addr,
                                    metrics.backend(&service.name, &endpoint.addr.to_string()),
                                ))
                            });
                        table.backends.insert(key, Arc::clone(&backend));
                        (backend, endpoint.weight)
                    })
                    .collect();
                let backends = Arc::new(BackendSet::new(service.algorithm, members));
                for addr in port.listen.iter().copied().chain(port.vip) {
                    let route = Route {
                        service: Arc::clone(&state),
                        settings: service.settings.clone(),
                        backends: Arc::clone(&backends),
                    };
                    table.routes.insert(addr, Arc::new(route));
                }
                if let Some(addr) = port.vip {
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
    pub fn commit(&self, previous: &RoutingTable, services: &[ServiceRoutes], metrics: &Metrics) {
        for service in services {
            if let Some(state) = self.services.get(service.name.as_str()) {
                state.limit.set_max(service.max_connections);
                state
                    .metrics
                    .max_connections
                    .set(i64::from(service.max_connections));
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
    use std::time::Duration;

    use lb_config::{Algorithm, ProxyProtocol};

    use super::*;
    use crate::discovery::{Endpoint, PortRoutes};

    /// A round-robin service on one listen address.
    fn service(listen: SocketAddr, max_connections: u32, endpoints: &[&str]) -> ServiceRoutes {
        ServiceRoutes {
            name: "web".to_owned(),
            algorithm: Algorithm::RoundRobin,
            max_connections,
            settings: RouteSettings {
                connect_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(60),
                proxy_protocol: ProxyProtocol::None,
                retries: 2,
                eject_time: Duration::from_secs(10),
                retry_on_empty: false,
                reply_timeout: None,
                max_connections_per_client: 0,
            },
            ports: vec![PortRoutes {
                listen: vec![listen],
                vip: None,
                endpoints: endpoints
                    .iter()
                    .map(|addr| Endpoint {
                        addr: addr.parse().expect("test address"),
                        weight: 1,
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn rebuild_keeps_backend_state_and_routes_by_listen_addr() {
        let metrics = Metrics::new(&prometheus::Registry::new()).expect("metrics");
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap(); // fixed-port-ok: a map key, nothing bound
        let v1 = [service(listen, 1000, &["10.0.0.1:80", "10.0.0.2:80"])];
        let first = RoutingTable::build(&v1, &RoutingTable::default(), &metrics);
        let route = first.route(&listen).unwrap();
        assert_eq!(route.backends.len(), 2);
        route.backends.backends()[0].eject(Duration::from_secs(60));

        let v2 = [service(listen, 5, &["10.0.0.1:80", "10.0.0.3:80"])];
        let second = RoutingTable::build(&v2, &first, &metrics);
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
