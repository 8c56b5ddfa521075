//! The routing table: one immutable snapshot of every route, swapped whole,
//! and built from the last one by what changed.
//!
//! # Flow
//!
//! ```text
//! [Update] ──RoutingTable::build(previous)──> new table + Changes ──ArcSwap::store──> proxies load()
//!                                                └─ commit(changes): limits, stale metrics
//! ```
//!
//! A [`Route`] is what a listener needs for a new connection: the service's
//! long-lived state (connection limit, metrics), the per-connection settings
//! and the [`BackendSet`]. Routes are keyed by the listen address they serve
//! with its protocol ([`ProtoAddr`]), so a listener finds its route with one
//! map lookup, a reload that moves a port to another service needs no
//! listener change, and 53/tcp and 53/udp are two routes. A UDP route also
//! carries the service's [`UdpService`] (its session count and UDP
//! metrics), and its backends are keyed apart from TCP ones of the same
//! address, so a refused datagram ejects the UDP backend only.
//!
//! # Cost of a change
//!
//! The table's maps are split into [`SHARDS`] copy-on-write shards: a new
//! table starts as a copy of the previous one's shard pointers, and changing
//! a key copies only its shard. A service added with routes equal to the
//! ones it has is left alone; a changed service keeps the backend set (and
//! Maglev table) of each port whose endpoints and algorithm are unchanged.
//! So a change costs in proportion to the services it touches (plus one
//! shard copy per touched key, 1/[`SHARDS`] of the table), not to the
//! table's size, and [`Changes`] names the listen addresses it touched so
//! the proxy binds and closes only those. A [`Update::Reset`] compares every
//! service it names and removes the others.
//!
//! # Invariants
//!
//! - Backends and service states are carried over from the previous table by
//!   identity (`(service, protocol, address)` and service name), so in-flight
//!   counts, ejections, connection permits and UDP session places survive a
//!   reload.
//! - `build` has no side effects beyond creating metric handles; the caller
//!   stores the table first and then calls [`RoutingTable::commit`], so a
//!   reload that fails after `build` changes nothing.
//! - The accept path's [`RoutingTable::route`] hashes the address twice
//!   (shard, then map): no lock, no allocation.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use lb_config::Protocol;

use crate::balance::{Backend, BackendSet};
use crate::discovery::{EndpointLabels, ProtoAddr, RouteSettings, ServiceRoutes, Update};
use crate::limit::{ClientCounts, ConnectionLimit};
use crate::metrics::{Metrics, ServiceMetrics};
use crate::udp::service::UdpService;

/// Shards of each of the table's maps.
pub const SHARDS: usize = 256;

/// State of a service that outlives snapshots.
pub struct ServiceState {
    pub name: Arc<str>,
    /// Listeners take a place here before `accept`, so the cap holds without
    /// ever accepting a connection only to drop it.
    pub limit: Arc<ConnectionLimit>,
    /// Open connections per client address, for the opt-in per-client cap
    /// (the cap itself is in the route's settings).
    pub clients: Arc<ClientCounts>,
    pub metrics: Arc<ServiceMetrics>,
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
    /// Bound with SO_REUSEPORT, shared by several sockets and nodes on one
    /// machine: a VIP.
    pub shared: bool,
    /// The service's UDP state; `Some` exactly on UDP routes.
    pub udp: Option<Arc<UdpService>>,
}

/// One routed service: what it was built from and what it made.
struct ServiceEntry {
    routes: ServiceRoutes,
    state: Arc<ServiceState>,
    /// One set per port, in `routes.ports` order.
    sets: Vec<Arc<BackendSet>>,
    /// Each backend with the labels its metrics were made with.
    backends: HashMap<ProtoAddr, (Arc<Backend>, EndpointLabels)>,
    /// While the service has a UDP port.
    udp: Option<Arc<UdpService>>,
}

impl ServiceEntry {
    /// Every address the service's routes answer on.
    fn addrs(&self) -> impl Iterator<Item = ProtoAddr> + '_ {
        self.routes.ports.iter().flat_map(|port| {
            let key = move |addr| ProtoAddr {
                protocol: port.protocol,
                addr,
            };
            port.listen.iter().copied().chain(port.vips()).map(key)
        })
    }
}

/// FNV-1a: picks a key's shard, cheaply and the same in every process.
struct ShardHasher(u64);

impl Hasher for ShardHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[inline]
fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    let mut hasher = ShardHasher(0xcbf2_9ce4_8422_2325);
    key.hash(&mut hasher);
    (hasher.finish() as usize) % SHARDS
}

/// A map in [`SHARDS`] copy-on-write shards: a clone copies the shard
/// pointers, and a change copies the one shard it touches (when another
/// table still shares it).
struct Sharded<K, V> {
    shards: Box<[Arc<HashMap<K, V>>]>,
}

impl<K, V> Clone for Sharded<K, V> {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.clone(),
        }
    }
}

impl<K, V> Default for Sharded<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Sharded<K, V> {
    #[inline]
    fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(key)].get(key)
    }

    fn insert(&mut self, key: K, value: V) {
        Arc::make_mut(&mut self.shards[shard_of(&key)]).insert(key, value);
    }

    fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = &mut self.shards[shard_of(key)];
        if !shard.contains_key(key) {
            return None;
        }
        Arc::make_mut(shard).remove(key)
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.shards.iter().flat_map(|shard| shard.iter())
    }
}

/// What one build changed, for the proxy and for [`RoutingTable::commit`].
#[derive(Default)]
pub struct Changes {
    /// Listen addresses whose route was added, replaced or removed.
    touched: Vec<ProtoAddr>,
    /// Connection caps to apply once the table is stored.
    limits: Vec<(Arc<ServiceState>, u32)>,
    /// Metric series this build created (dropped again if it is abandoned).
    new_services: Vec<Arc<str>>,
    new_backends: Vec<(Arc<str>, ProtoAddr, EndpointLabels)>,
    /// Metric series of what this build removed (dropped on commit).
    gone_services: Vec<Arc<str>>,
    gone_backends: Vec<(Arc<str>, ProtoAddr, EndpointLabels)>,
    /// Services that kept their name but lost their last UDP port.
    gone_udp: Vec<Arc<str>>,
    /// Services added or changed.
    rebuilt: usize,
}

impl Changes {
    /// The listen addresses whose route changed: the only ones whose
    /// listener may have to be bound, closed or relabelled.
    pub fn touched(&self) -> &[ProtoAddr] {
        &self.touched
    }

    /// How many services were added or rebuilt.
    pub fn rebuilt(&self) -> usize {
        self.rebuilt
    }
}

/// One immutable snapshot of all routes.
#[derive(Default, Clone)]
pub struct RoutingTable {
    routes: Sharded<ProtoAddr, Arc<Route>>,
    services: Sharded<Arc<str>, Arc<ServiceEntry>>,
    service_count: usize,
    /// Removed services whose connections are still open keep their state
    /// (without routes), so re-adding one before they close keeps counting
    /// them against its cap. Normally empty.
    retired: HashMap<Arc<str>, Arc<ServiceState>>,
    /// TCP backends that left their service while connections to them were
    /// open, with the service's name: [`RoutingTable::connections_left`]
    /// reads their counts while a departing task drains. A build drops the
    /// ones whose connections have all closed. Normally empty.
    departed: Vec<(Arc<str>, Arc<Backend>)>,
}

impl RoutingTable {
    /// The table `previous` becomes with `updates` applied in order,
    /// reusing its long-lived state, and what changed.
    pub fn build(
        previous: &RoutingTable,
        updates: &[Update],
        metrics: &Metrics,
    ) -> (Self, Changes) {
        let mut table = previous.clone();
        let mut changes = Changes::default();
        let closed: Vec<Arc<str>> = table
            .retired
            .iter()
            .filter(|(_, state)| state.limit.open() == 0)
            .map(|(name, _)| Arc::clone(name))
            .collect();
        for name in closed {
            table.retired.remove(&name);
            changes.gone_services.push(name);
        }
        table.departed.retain(|(_, backend)| backend.active() > 0);
        for update in updates {
            match update {
                Update::Reset(services) => {
                    let keep: HashSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
                    let gone: Vec<Arc<str>> = table
                        .services
                        .iter()
                        .filter(|(name, _)| !keep.contains(&***name))
                        .map(|(name, _)| Arc::clone(name))
                        .collect();
                    for name in gone {
                        table.remove(&name, &mut changes);
                    }
                    for service in services {
                        table.upsert(service, metrics, &mut changes);
                    }
                }
                Update::Add(services) => {
                    for service in services {
                        table.upsert(service, metrics, &mut changes);
                    }
                }
                Update::Remove(names) => {
                    for name in names {
                        table.remove(name, &mut changes);
                    }
                }
            }
        }
        changes.touched.sort_unstable();
        changes.touched.dedup();
        (table, changes)
    }

    /// Routes `service`, unless it has these very routes already.
    fn upsert(&mut self, service: &ServiceRoutes, metrics: &Metrics, changes: &mut Changes) {
        let old = self.services.get(service.name.as_str()).cloned();
        if old.as_ref().is_some_and(|old| old.routes == *service) {
            return;
        }
        changes.rebuilt += 1;
        let state = match old.as_ref().map(|old| Arc::clone(&old.state)) {
            Some(state) => state,
            None => match self.retired.remove(service.name.as_str()) {
                Some(state) => state,
                None => {
                    let state = Arc::new(ServiceState::new(
                        &service.name,
                        service.max_connections,
                        metrics,
                    ));
                    changes.new_services.push(Arc::clone(&state.name));
                    state
                }
            },
        };
        if old.is_none() {
            self.service_count += 1;
        }
        changes
            .limits
            .push((Arc::clone(&state), service.max_connections));
        let name = &state.name;
        let has_udp = service.ports.iter().any(|p| p.protocol == Protocol::Udp);
        let udp = has_udp.then(|| {
            old.as_ref()
                .and_then(|old| old.udp.clone())
                .unwrap_or_else(|| Arc::new(UdpService::new(metrics.udp_service(name))))
        });
        if !has_udp && old.as_ref().is_some_and(|old| old.udp.is_some()) {
            changes.gone_udp.push(Arc::clone(name));
        }
        let mut backends: HashMap<ProtoAddr, (Arc<Backend>, EndpointLabels)> = HashMap::new();
        let mut sets = Vec::with_capacity(service.ports.len());
        for (i, port) in service.ports.iter().enumerate() {
            let unchanged = old
                .as_ref()
                .filter(|old| old.routes.algorithm == service.algorithm)
                .and_then(|old| Some((old.routes.ports.get(i)?, old.sets.get(i)?)))
                .filter(|(was, _)| was.endpoints == port.endpoints)
                .map(|(_, set)| Arc::clone(set));
            let set = match unchanged {
                Some(set) => {
                    // Equal endpoints: the same addresses with the same labels.
                    let labels: HashMap<SocketAddr, &EndpointLabels> = port
                        .endpoints
                        .iter()
                        .map(|endpoint| (endpoint.addr, &endpoint.labels))
                        .collect();
                    for backend in set.backends() {
                        let key = ProtoAddr {
                            protocol: port.protocol,
                            addr: backend.addr,
                        };
                        let labels = labels.get(&backend.addr).map(|l| (*l).clone());
                        backends.insert(key, (Arc::clone(backend), labels.unwrap_or_default()));
                    }
                    set
                }
                None => {
                    let members = port
                        .endpoints
                        .iter()
                        .map(|endpoint| {
                            let key = ProtoAddr {
                                protocol: port.protocol,
                                addr: endpoint.addr,
                            };
                            // A backend is the same one when its address and
                            // labels are (a new task on an old task's port is
                            // another backend, with series of its own).
                            let same = |(backend, labels): &(Arc<Backend>, EndpointLabels)| {
                                (*labels == endpoint.labels).then(|| Arc::clone(backend))
                            };
                            let backend = backends
                                .get(&key)
                                .and_then(same)
                                .or_else(|| old.as_ref()?.backends.get(&key).and_then(same))
                                .unwrap_or_else(|| {
                                    changes.new_backends.push((
                                        Arc::clone(name),
                                        key,
                                        endpoint.labels.clone(),
                                    ));
                                    let label = key.to_string();
                                    let handles = match key.protocol {
                                        Protocol::Tcp => {
                                            metrics.backend(name, &label, &endpoint.labels)
                                        }
                                        Protocol::Udp => {
                                            metrics.udp_backend(name, &label, &endpoint.labels)
                                        }
                                    };
                                    Arc::new(Backend::new(endpoint.addr, handles))
                                });
                            backends.insert(key, (Arc::clone(&backend), endpoint.labels.clone()));
                            (backend, endpoint.weight)
                        })
                        .collect();
                    Arc::new(BackendSet::new(service.algorithm, members))
                }
            };
            sets.push(set);
        }
        let entry = Arc::new(ServiceEntry {
            routes: service.clone(),
            state: Arc::clone(&state),
            sets,
            backends,
            udp: udp.clone(),
        });
        if let Some(old) = &old {
            for (addr, (backend, labels)) in &old.backends {
                let kept = entry
                    .backends
                    .get(addr)
                    .is_some_and(|(now, _)| Arc::ptr_eq(now, backend));
                if !kept {
                    self.depart(name, *addr, backend);
                }
                if entry
                    .backends
                    .get(addr)
                    .is_none_or(|(_, now)| now != labels)
                {
                    changes
                        .gone_backends
                        .push((Arc::clone(name), *addr, labels.clone()));
                }
            }
            let now: HashSet<ProtoAddr> = entry.addrs().collect();
            for addr in old.addrs().filter(|addr| !now.contains(addr)) {
                self.remove_route(addr, name, changes);
            }
        }
        for (port, set) in entry.routes.ports.iter().zip(&entry.sets) {
            let udp = match port.protocol {
                Protocol::Tcp => None,
                Protocol::Udp => udp.clone(),
            };
            let addrs = port
                .listen
                .iter()
                .map(|addr| (*addr, false))
                .chain(port.vips().map(|addr| (addr, true)));
            for (addr, shared) in addrs {
                let addr = ProtoAddr {
                    protocol: port.protocol,
                    addr,
                };
                let same = self.routes.get(&addr).is_some_and(|route| {
                    Arc::ptr_eq(&route.service, &state)
                        && Arc::ptr_eq(&route.backends, set)
                        && route.settings == service.settings
                        && route.shared == shared
                        && route.udp.is_some() == udp.is_some()
                });
                if same {
                    continue;
                }
                let route = Route {
                    service: Arc::clone(&state),
                    settings: service.settings.clone(),
                    backends: Arc::clone(set),
                    shared,
                    udp: udp.clone(),
                };
                self.routes.insert(addr, Arc::new(route));
                changes.touched.push(addr);
            }
        }
        self.services.insert(Arc::clone(&state.name), entry);
    }

    /// Removes `addr`'s route if `service` still owns it (in one change a
    /// port may have moved to another service already).
    fn remove_route(&mut self, addr: ProtoAddr, service: &str, changes: &mut Changes) {
        if self
            .routes
            .get(&addr)
            .is_some_and(|route| &*route.service.name == service)
        {
            self.routes.remove(&addr);
            changes.touched.push(addr);
        }
    }

    /// Unroutes the service `name`, if it is routed.
    fn remove(&mut self, name: &str, changes: &mut Changes) {
        let Some(entry) = self.services.remove(name) else {
            return;
        };
        self.service_count -= 1;
        for addr in entry.addrs() {
            self.remove_route(addr, name, changes);
        }
        for (addr, (backend, labels)) in &entry.backends {
            self.depart(&entry.state.name, *addr, backend);
            changes
                .gone_backends
                .push((Arc::clone(&entry.state.name), *addr, labels.clone()));
        }
        if entry.state.limit.open() > 0 {
            self.retired
                .insert(Arc::clone(&entry.state.name), Arc::clone(&entry.state));
        } else {
            changes.gone_services.push(Arc::clone(&entry.state.name));
        }
    }

    /// Keeps a TCP backend that left `service` while it still has open
    /// connections, so a drain can count them.
    fn depart(&mut self, service: &Arc<str>, addr: ProtoAddr, backend: &Arc<Backend>) {
        if addr.protocol == Protocol::Tcp && backend.active() > 0 {
            self.departed
                .push((Arc::clone(service), Arc::clone(backend)));
        }
    }

    fn has_service(&self, name: &str) -> bool {
        self.services.get(name).is_some() || self.retired.contains_key(name)
    }

    fn has_backend(&self, service: &str, addr: &ProtoAddr, labels: &EndpointLabels) -> bool {
        self.services.get(service).is_some_and(|entry| {
            entry
                .backends
                .get(addr)
                .is_some_and(|(_, held)| held == labels)
        })
    }

    /// After the table is stored: applies new connection limits and drops the
    /// metrics of services and backends that are gone.
    pub fn commit(&self, changes: &Changes, metrics: &Metrics) {
        for (state, max) in &changes.limits {
            state.limit.set_max(*max);
            state.metrics.max_connections.set(i64::from(*max));
        }
        for name in &changes.gone_services {
            if !self.has_service(name) {
                metrics.remove_service(name);
            }
        }
        for (service, addr, labels) in &changes.gone_backends {
            if !self.has_backend(service, addr, labels) {
                metrics.remove_backend(service, &addr.to_string(), labels);
            }
        }
        for name in &changes.gone_udp {
            if self.services.get(&**name).is_some_and(|e| e.udp.is_none()) {
                metrics.remove_udp_service(name);
            }
        }
    }

    /// When a table was built but will not be stored (the reload failed):
    /// drops the metric series it created for services and backends that the
    /// running table does not have.
    pub fn abandon(&self, changes: &Changes, running: &RoutingTable, metrics: &Metrics) {
        for name in &changes.new_services {
            if !running.has_service(name) {
                metrics.remove_service(name);
            }
        }
        for (service, addr, labels) in &changes.new_backends {
            if !running.has_backend(service, addr, labels) {
                metrics.remove_backend(service, &addr.to_string(), labels);
            }
        }
    }

    /// Whether `addr` is bound with SO_REUSEPORT (a VIP).
    pub fn is_shared(&self, addr: &ProtoAddr) -> bool {
        self.route(addr).is_some_and(|route| route.shared)
    }

    #[inline]
    pub fn route(&self, listen_addr: &ProtoAddr) -> Option<&Arc<Route>> {
        self.routes.get(listen_addr)
    }

    /// How many services are routed.
    pub fn service_count(&self) -> usize {
        self.service_count
    }

    /// The TCP connections still open to `addr` as a backend of `service`
    /// once no port of the service sends to it (a departing task's
    /// endpoint): `None` while one still does, since a new connection may
    /// then still come. Read off the hot path (a task's drain), from the
    /// counts the connections keep anyway: one map look-up per protocol and
    /// a scan of the departed backends, normally none.
    pub fn connections_left(&self, service: &str, addr: SocketAddr) -> Option<u32> {
        let routed = self.services.get(service).is_some_and(|entry| {
            [Protocol::Tcp, Protocol::Udp]
                .into_iter()
                .any(|protocol| entry.backends.contains_key(&ProtoAddr { protocol, addr }))
        });
        if routed {
            return None;
        }
        Some(
            self.departed
                .iter()
                .filter(|(name, backend)| &**name == service && backend.addr == addr)
                .map(|(_, backend)| backend.active())
                .sum(),
        )
    }

    /// Every backend with its service's name.
    pub fn backends(&self) -> impl Iterator<Item = (&str, &Arc<Backend>)> + '_ {
        self.services.iter().flat_map(|(name, entry)| {
            entry
                .backends
                .values()
                .map(move |(backend, _)| (&**name, backend))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lb_config::Algorithm;

    use std::net::SocketAddr;

    use super::*;
    use crate::discovery::{Endpoint, PortRoutes, Update};

    /// A round-robin service on one listen address.
    fn service(listen: SocketAddr, max_connections: u32, endpoints: &[&str]) -> ServiceRoutes {
        ServiceRoutes {
            name: "web".to_owned(),
            algorithm: Algorithm::RoundRobin,
            max_connections,
            settings: RouteSettings::default(),
            ports: vec![PortRoutes {
                protocol: Protocol::Tcp,
                listen: vec![listen],
                vip: None,
                vip_v6: None,
                endpoints: endpoints
                    .iter()
                    .map(|addr| Endpoint {
                        addr: addr.parse().expect("test address"),
                        weight: 1,
                        labels: EndpointLabels::default(),
                    })
                    .collect(),
            }],
        }
    }

    fn build(previous: &RoutingTable, updates: &[Update], metrics: &Metrics) -> RoutingTable {
        RoutingTable::build(previous, updates, metrics).0
    }

    #[test]
    fn rebuild_keeps_backend_state_and_routes_by_listen_addr() {
        let metrics = Metrics::new(&prometheus::Registry::new()).expect("metrics");
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap(); // fixed-port-ok: a map key, nothing bound
        let v1 = vec![service(listen, 1000, &["10.0.0.1:80", "10.0.0.2:80"])];
        let first = build(&RoutingTable::default(), &[Update::Reset(v1)], &metrics);
        let route = first.route(&ProtoAddr::tcp(listen)).unwrap();
        assert_eq!(route.backends.len(), 2);
        route.backends.backends()[0].eject(Duration::from_secs(60));

        let v2 = vec![service(listen, 5, &["10.0.0.1:80", "10.0.0.3:80"])];
        let second = build(&first, &[Update::Reset(v2)], &metrics);
        let route2 = second.route(&ProtoAddr::tcp(listen)).unwrap();
        assert!(Arc::ptr_eq(
            &route.backends.backends()[0],
            &route2.backends.backends()[0]
        ));
        assert!(route2.backends.backends()[0].is_ejected());
        assert!(Arc::ptr_eq(&route.service, &route2.service));
        assert_eq!(second.backends().count(), 2);
    }

    /// A task endpoint's metrics carry its task and node; a new task on
    /// the same address is another backend, and the old one's series go.
    #[test]
    fn task_endpoints_are_labelled_and_a_new_task_is_a_new_backend() {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry).expect("metrics");
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap(); // fixed-port-ok: a map key, nothing bound
        let with_task = |task: &str| {
            let mut service = service(listen, 100, &["10.0.0.1:31000"]);
            service.ports[0].endpoints[0].labels = EndpointLabels {
                task: Arc::from(task),
                node: Arc::from("node-a"),
            };
            service
        };
        let series = || {
            let mut found: Vec<(String, String)> = registry
                .gather()
                .into_iter()
                .filter(|family| family.name() == "lbmesh_backend_up")
                .flat_map(|family| family.get_metric().to_vec())
                .map(|metric| {
                    let label = |name: &str| {
                        metric
                            .get_label()
                            .iter()
                            .find(|l| l.name() == name)
                            .map(|l| l.value().to_owned())
                            .unwrap_or_default()
                    };
                    (label("task"), label("node"))
                })
                .collect();
            found.sort();
            found
        };
        let (first, changes) = RoutingTable::build(
            &RoutingTable::default(),
            &[Update::Reset(vec![with_task("web.1")])],
            &metrics,
        );
        first.commit(&changes, &metrics);
        assert_eq!(series(), [("web.1".to_owned(), "node-a".to_owned())]);
        let listen = ProtoAddr::tcp(listen);
        let old = Arc::clone(&first.route(&listen).expect("routed").backends.backends()[0]);

        let (second, changes) =
            RoutingTable::build(&first, &[Update::Reset(vec![with_task("web.2")])], &metrics);
        second.commit(&changes, &metrics);
        let new = &second.route(&listen).expect("routed").backends.backends()[0];
        assert!(!Arc::ptr_eq(&old, new), "another task is another backend");
        assert_eq!(series(), [("web.2".to_owned(), "node-a".to_owned())]);
    }

    // fixed-port-ok: the addresses below are table keys; nothing is bound.

    /// `name` on `127.0.0.1:port`, with `algorithm` and `endpoints`.
    fn named(name: &str, port: u16, algorithm: Algorithm, endpoints: &[&str]) -> ServiceRoutes {
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        ServiceRoutes {
            name: name.to_owned(),
            algorithm,
            ..service(listen, 100, endpoints)
        }
    }

    /// Every route of one service keeps its backend set by identity.
    fn same_sets(a: &RoutingTable, b: &RoutingTable, addr: ProtoAddr) -> bool {
        Arc::ptr_eq(
            &a.route(&addr).expect("routed").backends,
            &b.route(&addr).expect("routed").backends,
        )
    }

    #[test]
    fn a_change_rebuilds_only_the_services_it_touches() {
        let metrics = Metrics::new(&prometheus::Registry::new()).expect("metrics");
        let addr = |port: u16| ProtoAddr::tcp(SocketAddr::from(([127, 0, 0, 1], port)));
        let services: Vec<ServiceRoutes> = (0..50)
            .map(|i| {
                let algorithm = if i % 2 == 0 {
                    Algorithm::Maglev
                } else {
                    Algorithm::RoundRobin
                };
                named(
                    &format!("s{i}"),
                    20_000 + i,
                    algorithm,
                    &["10.0.0.1:80", "10.0.0.2:80"],
                )
            })
            .collect();
        let (first, changes) = RoutingTable::build(
            &RoutingTable::default(),
            &[Update::Reset(services.clone())],
            &metrics,
        );
        assert_eq!(changes.rebuilt(), 50);
        assert_eq!(changes.touched().len(), 50);
        assert_eq!(first.service_count(), 50);

        // One service gains an endpoint, one is removed, one is added.
        let mut grown = services[4].clone();
        grown.ports[0].endpoints.push(Endpoint {
            addr: "10.0.0.3:80".parse().unwrap(), // fixed-port-ok: nothing bound
            weight: 1,
            labels: EndpointLabels::default(),
        });
        let updates = [
            Update::Add(vec![
                grown,
                named("new", 21_000, Algorithm::Maglev, &["10.0.0.9:80"]),
            ]),
            Update::Remove(vec!["s7".to_owned()]),
        ];
        let (second, changes) = RoutingTable::build(&first, &updates, &metrics);
        assert_eq!(changes.rebuilt(), 2);
        assert_eq!(
            changes.touched(),
            [addr(20_004), addr(20_007), addr(21_000)]
        );
        assert_eq!(second.service_count(), 50);
        assert!(second.route(&addr(20_007)).is_none());
        assert_eq!(
            second.route(&addr(20_004)).expect("routed").backends.len(),
            3
        );
        for i in (0..50).filter(|&i| i != 4 && i != 7) {
            assert!(
                same_sets(&first, &second, addr(20_000 + i)),
                "s{i} was rebuilt"
            );
        }
        // The grown service kept its backends' state.
        let before = first.route(&addr(20_004)).expect("routed");
        let after = second.route(&addr(20_004)).expect("routed");
        assert!(Arc::ptr_eq(&before.service, &after.service));
        assert!(Arc::ptr_eq(
            &before.backends.backends()[0],
            &after.backends.backends()[0]
        ));

        // The same routes again (a Reset of the same list, or an Add of an
        // unchanged service) rebuild nothing: even Maglev tables stay.
        let mut again = services.clone();
        again.retain(|s| s.name != "s7" && s.name != "s4");
        again.push(updates_service(&updates, "s4"));
        again.push(updates_service(&updates, "new"));
        let (third, changes) = RoutingTable::build(&second, &[Update::Reset(again)], &metrics);
        assert_eq!(changes.rebuilt(), 0);
        assert!(changes.touched().is_empty());
        for port in (20_000..20_050).filter(|&p| p != 20_007).chain([21_000]) {
            assert!(same_sets(&second, &third, addr(port)), "{port} was rebuilt");
        }
        let (_, changes) =
            RoutingTable::build(&third, &[Update::Add(vec![services[0].clone()])], &metrics);
        assert_eq!(changes.rebuilt(), 0);

        // Settings change, endpoints do not: the route is new, the backend
        // set (and its Maglev table) is the one it had.
        let mut slower = services[0].clone();
        slower.settings.connect_timeout = Duration::from_secs(9);
        let (fourth, changes) = RoutingTable::build(&third, &[Update::Add(vec![slower])], &metrics);
        assert_eq!(changes.touched(), [addr(20_000)]);
        assert!(same_sets(&third, &fourth, addr(20_000)));
        assert_eq!(
            fourth
                .route(&addr(20_000))
                .expect("routed")
                .settings
                .connect_timeout,
            Duration::from_secs(9)
        );
    }

    fn updates_service(updates: &[Update], name: &str) -> ServiceRoutes {
        updates
            .iter()
            .find_map(|update| match update {
                Update::Add(services) => services.iter().find(|s| s.name == name).cloned(),
                _ => None,
            })
            .expect("in the updates")
    }

    #[test]
    fn a_port_moves_between_services_in_one_change_in_either_order() {
        let metrics = Metrics::new(&prometheus::Registry::new()).expect("metrics");
        let shared = SocketAddr::from(([127, 0, 0, 1], 20_100));
        let a = named("a", 20_100, Algorithm::RoundRobin, &["10.0.0.1:80"]);
        let b = named("b", 20_101, Algorithm::RoundRobin, &["10.0.0.2:80"]);
        let first = build(
            &RoutingTable::default(),
            &[Update::Reset(vec![a.clone(), b.clone()])],
            &metrics,
        );
        let mut a_moved = a.clone();
        a_moved.ports[0].listen = vec![SocketAddr::from(([127, 0, 0, 1], 20_102))];
        let mut b_takes = b.clone();
        b_takes.ports[0].listen = vec![shared];
        for order in [
            vec![a_moved.clone(), b_takes.clone()],
            vec![b_takes.clone(), a_moved.clone()],
        ] {
            let (second, changes) = RoutingTable::build(&first, &[Update::Add(order)], &metrics);
            let route = second.route(&ProtoAddr::tcp(shared)).expect("routed");
            assert_eq!(&*route.service.name, "b");
            assert!(changes.touched().contains(&ProtoAddr::tcp(shared)));
            assert_eq!(second.service_count(), 2);
        }
    }

    #[test]
    fn a_removed_service_with_open_connections_keeps_its_state() {
        let metrics = Metrics::new(&prometheus::Registry::new()).expect("metrics");
        let listen = SocketAddr::from(([127, 0, 0, 1], 20_200));
        let web = vec![service(listen, 10, &["10.0.0.1:80"])];
        let first = build(
            &RoutingTable::default(),
            &[Update::Reset(web.clone())],
            &metrics,
        );
        let state = Arc::clone(
            &first
                .route(&ProtoAddr::tcp(listen))
                .expect("routed")
                .service,
        );
        let permit = state.limit.try_acquire().expect("a place");
        let gone = build(&first, &[Update::Remove(vec!["web".to_owned()])], &metrics);
        assert_eq!(gone.service_count(), 0);
        let back = build(&gone, &[Update::Add(web.clone())], &metrics);
        assert!(Arc::ptr_eq(
            &state,
            &back.route(&ProtoAddr::tcp(listen)).expect("routed").service
        ));
        drop(permit);
        let gone = build(&back, &[Update::Remove(vec!["web".to_owned()])], &metrics);
        let later = build(&gone, &[], &metrics);
        let fresh = build(&later, &[Update::Add(web)], &metrics);
        assert!(!Arc::ptr_eq(
            &state,
            &fresh
                .route(&ProtoAddr::tcp(listen))
                .expect("routed")
                .service
        ));
    }

    /// A backend that leaves its service (its task departs) is counted
    /// while its connections stay open: unknown while any port still
    /// routes to it, then the open count, zero once they close, and the
    /// next build forgets it. The same holds when the whole service goes.
    #[test]
    fn a_departed_backend_counts_its_open_connections_until_they_close() {
        let metrics = Metrics::new(&prometheus::Registry::new()).expect("metrics");
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap(); // fixed-port-ok: a map key, nothing bound
        let leaving: SocketAddr = "10.0.0.2:80".parse().unwrap(); // fixed-port-ok: a map key
        let both = vec![service(listen, 100, &["10.0.0.1:80", "10.0.0.2:80"])];
        let first = build(&RoutingTable::default(), &[Update::Add(both)], &metrics);
        assert_eq!(first.connections_left("web", leaving), None, "still routed");
        let backend = first
            .route(&ProtoAddr::tcp(listen))
            .expect("routed")
            .backends
            .backends()
            .iter()
            .find(|b| b.addr == leaving)
            .map(Arc::clone)
            .expect("the leaving backend");
        let open = [backend.track_connection(), backend.track_connection()];
        let one = vec![service(listen, 100, &["10.0.0.1:80"])];
        let second = build(&first, &[Update::Add(one)], &metrics);
        assert_eq!(second.connections_left("web", leaving), Some(2));
        let [a, b] = open;
        drop(a);
        assert_eq!(second.connections_left("web", leaving), Some(1));
        drop(b);
        assert_eq!(second.connections_left("web", leaving), Some(0));
        let third = build(&second, &[], &metrics);
        assert!(third.departed.is_empty(), "a closed backend is forgotten");
        assert_eq!(third.connections_left("web", leaving), Some(0));

        // The whole service goes while a connection is open.
        let kept = third
            .route(&ProtoAddr::tcp(listen))
            .expect("routed")
            .backends
            .backends()[0]
            .track_connection();
        let gone = build(&third, &[Update::Remove(vec!["web".to_owned()])], &metrics);
        assert_eq!(gone.connections_left("web", kept.backend().addr), Some(1));
        drop(kept);
        assert_eq!(gone.connections_left("web", leaving), Some(0));
    }
}
