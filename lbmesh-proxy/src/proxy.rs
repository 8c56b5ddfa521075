//! The running data plane: the routing table, the listen addresses (bound
//! or failing), their accept loops and the proxy threads, changed as a whole
//! by [`Proxy::apply`].
//!
//! # Flow
//!
//! ```text
//! apply(services) | apply_per_listener(updates)
//!                 ─> RoutingTable::build (what changed; reusing the rest) ─> bind the new addresses
//!                 ─> store the table (one ArcSwap store) ─> commit (limits, stale metrics)
//!                 ─> forget the addresses that left (stop their loops, drop their gauges)
//!                 ─> start loops on the new ones (accept loops for TCP, session
//!                    relays for UDP: `crate::udp`); note the ones that failed
//!   only the addresses the build touched are looked at, so a change costs
//!   what it changed, not what the table holds
//!   apply (a config file): a published address that fails, before the store:
//!     nothing changes, the running table keeps serving
//!   apply_per_listener (the registry): an address that fails is skipped; the rest applies
//! retry_failed (at next_retry) ─> bind each failing address again, every BIND_RETRY
//! stop_accepting ─> every loop drops its listener (new connects are refused)
//! drain(grace)   ─> waits for open connections up to the deadline
//! drop           ─> the proxy threads stop; what is still open closes
//! ```
//!
//! A VIP that cannot be bound (a port below 1024 without the privilege,
//! say) is skipped and retried by both: it must not keep the
//! published ports from being served. Moving a port between 0.0.0.0 and a
//! specific IP of the same family in one change fails to bind at first, as
//! the old socket still holds it; per listener, the retry binds it
//! once the old one has closed.
//!
//! # Invariants
//!
//! - Every address of the stored table has one entry in `listeners`, bound
//!   or failing, and one `lbmesh_listener_up{service,address}` series
//!   (1 bound, 0 failing; a UDP address is labelled `ADDR/udp`); an address
//!   that leaves the table loses both. Addresses are keyed with their
//!   protocol, so 53/tcp and 53/udp are two listeners.
//! - A failing address still has its route in the table, so the moment it
//!   binds its accept loops serve it; nothing on the accept path changes
//!   (it only loads the table).
//! - Only the owner of the `Proxy` (`&mut self`) touches the listeners; the
//!   accept loops never see them.
//! - `failing` holds exactly the addresses whose listener is failing, so
//!   what runs after every change (the failures handed to the registry,
//!   the next retry) looks at those only, never at every listener.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use lb_config::Protocol;
use std::time::Duration;

use crate::series::Gauge;
use arc_swap::ArcSwap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::accept::{accept_loop, next_lane, ProxyContext};
use crate::access_log::AccessLog;
use crate::discovery::{ProtoAddr, ServiceRoutes, Update};
use crate::listeners::{bind_copies, bind_udp_copies, describe_bind_error, ListenOptions};
use crate::metrics::Metrics;
use crate::routing::{Changes, RoutingTable};
use crate::udp;
use crate::workers::ProxyWorkers;

/// How long an address that failed to bind waits for its next try. A taken
/// port is freed by an operator or an exiting process, so a few seconds is
/// soon enough; one bind call per failing address this often costs nothing.
pub const BIND_RETRY: Duration = Duration::from_secs(2);

/// A change that could not be routed; the running table keeps serving.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for service {service:?}: {source}")]
pub struct ApplyError {
    pub addr: ProtoAddr,
    pub service: String,
    #[source]
    pub source: io::Error,
}

/// A listen address that is not bound now, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListenerFailure {
    pub service: String,
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// The bind error in words (`address in use`).
    pub error: String,
}

/// One listen address of the table.
struct Listener {
    /// The service it serves now: the metric's label.
    service: Arc<str>,
    /// Its `lbmesh_listener_up` series.
    up: Arc<Gauge>,
    state: ListenerState,
}

enum ListenerState {
    /// Accept loops run; cancelling the token stops them.
    Bound(CancellationToken),
    /// The last bind failed with `error`; tried again at `retry_at`.
    Failing { error: String, retry_at: Instant },
}

/// The data plane of one lbd.
pub struct Proxy {
    metrics: Arc<Metrics>,
    table: Arc<ArcSwap<RoutingTable>>,
    /// Every listen address of the stored table.
    listeners: HashMap<ProtoAddr, Listener>,
    /// The addresses of `listeners` that are failing.
    failing: BTreeSet<ProtoAddr>,
    /// Parent of every listener's token.
    stop_accepting: CancellationToken,
    connections: TaskTracker,
    /// Where services with `access_log` on send their closed connections
    /// (`set_access_log`); `None`: nowhere.
    access_log: Option<AccessLog>,
    /// The threads that accept and serve connections; dropped with the
    /// proxy, which closes whatever connection outlived the drain.
    workers: ProxyWorkers,
}

/// The descriptors of one bound address, one (or a copy) per proxy thread.
enum Sockets {
    Tcp(Vec<std::net::TcpListener>),
    Udp(Vec<std::net::UdpSocket>),
}

/// Addresses bound by one change, waiting for their accept loops.
type Bound = Vec<(ProtoAddr, Arc<str>, Sockets)>;
/// Addresses that failed to bind in one change.
type Failed = Vec<(ProtoAddr, Arc<str>, io::Error)>;

impl Proxy {
    /// Starts `threads` proxy threads with an empty table.
    pub fn start(threads: usize, metrics: Arc<Metrics>) -> io::Result<Self> {
        Ok(Self {
            metrics,
            table: Arc::new(ArcSwap::from_pointee(RoutingTable::default())),
            listeners: HashMap::new(),
            failing: BTreeSet::new(),
            stop_accepting: CancellationToken::new(),
            connections: TaskTracker::new(),
            access_log: None,
            workers: ProxyWorkers::start(threads)?,
        })
    }

    /// Sends the closed connections of services with `access_log` on to
    /// `log`, for the listeners started from now on (call it before the
    /// first `apply`).
    pub fn set_access_log(&mut self, log: AccessLog) {
        self.access_log = Some(log);
    }

    /// Routes `services`, all or nothing (a config file, whose operator
    /// hears of a taken port at once: start fails, a reload is rejected):
    /// when a published address cannot be bound, nothing changes and the
    /// running table keeps serving. A VIP that cannot be bound is retried
    /// every [`BIND_RETRY`], as under [`Proxy::apply_per_listener`].
    pub fn apply(&mut self, services: &[ServiceRoutes]) -> Result<(), ApplyError> {
        let previous = self.table.load_full();
        let reset = [Update::Reset(services.to_vec())];
        let (table, changes) = RoutingTable::build(&previous, &reset, &self.metrics);
        let (bound, failed) = self.bind_new(&table, &changes);
        let (refused, retried): (Failed, Failed) = failed
            .into_iter()
            .partition(|(addr, ..)| !table.is_shared(addr));
        if let Some((addr, service, source)) = refused.into_iter().next() {
            drop(bound);
            table.abandon(&changes, &previous, &self.metrics);
            return Err(ApplyError {
                addr,
                service: service.to_string(),
                source,
            });
        }
        self.install(table, &changes, bound, retried);
        Ok(())
    }

    /// Applies `updates` (in order, one table switch), binding per listener
    /// (the registry, where one node's taken port must not stop every other
    /// change on that node): an address that cannot be bound is skipped,
    /// the rest of the table serves, and it is retried every
    /// [`BIND_RETRY`]. Returns how many services were added or rebuilt.
    pub fn apply_per_listener(&mut self, updates: &[Update]) -> usize {
        let previous = self.table.load_full();
        let (table, changes) = RoutingTable::build(&previous, updates, &self.metrics);
        let (bound, failed) = self.bind_new(&table, &changes);
        self.install(table, &changes, bound, failed);
        changes.rebuilt()
    }

    /// Makes `table` the routing table in one store, then settles the
    /// listeners: removed ones stop, failed ones wait for their retry, newly
    /// bound ones start accepting.
    fn install(&mut self, table: RoutingTable, changes: &Changes, bound: Bound, failed: Failed) {
        let table = Arc::new(table);
        self.table.store(Arc::clone(&table));
        table.commit(changes, &self.metrics);

        self.forget_removed(&table, changes);
        let now = Instant::now();
        for (addr, service, error) in failed {
            self.note_failure(addr, service, &error, now);
        }
        for (addr, service, listeners) in bound {
            self.start_listener(addr, service, listeners);
        }
    }

    /// When the next failing address is due for a try; `None` while every
    /// address is bound.
    pub fn next_retry(&self) -> Option<Instant> {
        self.failing_listeners()
            .filter_map(|(_, listener)| match listener.state {
                ListenerState::Failing { retry_at, .. } => Some(retry_at),
                ListenerState::Bound(_) => None,
            })
            .min()
    }

    /// The failing addresses with their listeners.
    fn failing_listeners(&self) -> impl Iterator<Item = (&ProtoAddr, &Listener)> {
        self.failing
            .iter()
            .filter_map(|addr| self.listeners.get_key_value(addr))
    }

    /// Tries again every failing address that is due. Returns whether the
    /// failures changed (one bound, or failed for another reason).
    pub fn retry_failed(&mut self) -> bool {
        self.retry_due(Instant::now())
    }

    /// [`Proxy::retry_failed`] as of `now`.
    fn retry_due(&mut self, now: Instant) -> bool {
        let due: Vec<(ProtoAddr, Arc<str>)> = self
            .failing_listeners()
            .filter(|(_, listener)| {
                matches!(listener.state, ListenerState::Failing { retry_at, .. } if retry_at <= now)
            })
            .map(|(addr, listener)| (*addr, Arc::clone(&listener.service)))
            .collect();
        let table = self.table.load_full();
        let mut changed = false;
        for (addr, service) in due {
            match self.bind(&table, addr) {
                Ok(listeners) => {
                    self.start_listener(addr, service, listeners);
                    changed = true;
                }
                Err(error) => changed |= self.note_failure(addr, service, &error, now),
            }
        }
        changed
    }

    /// Every listen address that is not bound now, in address order.
    pub fn failures(&self) -> Vec<ListenerFailure> {
        let mut failures: Vec<ListenerFailure> = self
            .failing_listeners()
            .filter_map(|(addr, listener)| match &listener.state {
                ListenerState::Failing { error, .. } => Some(ListenerFailure {
                    service: listener.service.to_string(),
                    addr: addr.addr,
                    protocol: addr.protocol,
                    error: error.clone(),
                }),
                ListenerState::Bound(_) => None,
            })
            .collect();
        failures.sort();
        failures
    }

    /// The table the accept loops read; the admin server refreshes metrics
    /// from it.
    pub fn table(&self) -> Arc<ArcSwap<RoutingTable>> {
        Arc::clone(&self.table)
    }

    /// How many listen addresses are bound.
    pub fn listener_count(&self) -> usize {
        self.listeners.len() - self.failing.len()
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

    /// Binds `addr` of `table`, one descriptor per proxy thread; a VIP
    /// shared with other nodes, and free-bound when it is IPv6 (see
    /// [`crate::listeners`]).
    fn bind(&self, table: &RoutingTable, addr: ProtoAddr) -> io::Result<Sockets> {
        let vip = table.is_shared(&addr);
        let free_bind = vip && addr.addr.is_ipv6();
        match addr.protocol {
            Protocol::Tcp => {
                let options = ListenOptions {
                    reuse_port: vip,
                    free_bind,
                    ..ListenOptions::default()
                };
                bind_copies(addr.addr, options, self.workers.count()).map(Sockets::Tcp)
            }
            Protocol::Udp => {
                bind_udp_copies(addr.addr, free_bind, self.workers.count()).map(Sockets::Udp)
            }
        }
    }

    /// Binds every address the build touched that `table` routes and that
    /// has no entry yet (a failing one waits for its retry); returns what
    /// was bound and what failed.
    fn bind_new(&self, table: &RoutingTable, changes: &Changes) -> (Bound, Failed) {
        let mut bound = Vec::new();
        let mut failed = Vec::new();
        for &addr in changes.touched() {
            let Some(route) = table.route(&addr) else {
                continue;
            };
            if self.listeners.contains_key(&addr) {
                continue;
            }
            let service = Arc::clone(&route.service.name);
            match self.bind(table, addr) {
                Ok(listeners) => bound.push((addr, service, listeners)),
                Err(error) => failed.push((addr, service, error)),
            }
        }
        (bound, failed)
    }

    /// After a store, for each address the build touched: stops the loops
    /// of one `table` no longer has and drops its gauge; relabels the gauge
    /// of one that moved to another service.
    fn forget_removed(&mut self, table: &RoutingTable, changes: &Changes) {
        let metrics = &self.metrics;
        for addr in changes.touched() {
            let Some(listener) = self.listeners.get_mut(addr) else {
                continue;
            };
            let address = addr.to_string();
            let Some(route) = table.route(addr) else {
                match &listener.state {
                    ListenerState::Bound(stop) => {
                        info!(%addr, "listener closed");
                        stop.cancel();
                    }
                    ListenerState::Failing { .. } => {
                        info!(%addr, "address left the table; no longer tried")
                    }
                }
                metrics.remove_listener(&listener.service, &address);
                self.listeners.remove(addr);
                self.failing.remove(addr);
                continue;
            };
            if route.service.name != listener.service {
                metrics.remove_listener(&listener.service, &address);
                let up = metrics.listener_up(&route.service.name, &address);
                up.set(listener.up.get());
                listener.up = up;
                listener.service = Arc::clone(&route.service.name);
            }
        }
    }

    /// Records that `addr` failed to bind; its next try is a retry interval
    /// from `now`. Logs a warning the first time and when the reason
    /// changes. Returns whether the reason is new.
    fn note_failure(
        &mut self,
        addr: ProtoAddr,
        service: Arc<str>,
        error: &io::Error,
        now: Instant,
    ) -> bool {
        let reason = describe_bind_error(error);
        let retry_at = now + BIND_RETRY;
        if let Some(listener) = self.listeners.get_mut(&addr) {
            if let ListenerState::Failing { error: last, .. } = &listener.state {
                if *last == reason {
                    debug!(%addr, service = %service, %reason, "still cannot bind");
                    listener.state = ListenerState::Failing {
                        error: reason,
                        retry_at,
                    };
                    return false;
                }
            }
        }
        warn!(
            %addr,
            service = %service,
            %reason,
            retry = ?BIND_RETRY,
            "cannot bind; the rest is served and this address is retried"
        );
        let up = self.metrics.listener_up(&service, &addr.to_string());
        up.set(0);
        self.failing.insert(addr);
        self.listeners.insert(
            addr,
            Listener {
                service,
                up,
                state: ListenerState::Failing {
                    error: reason,
                    retry_at,
                },
            },
        );
        true
    }

    /// Starts one accept loop (TCP) or session relay (UDP) per proxy
    /// thread on a newly bound address.
    fn start_listener(&mut self, addr: ProtoAddr, service: Arc<str>, sockets: Sockets) {
        let ctx = ProxyContext {
            table: Arc::clone(&self.table),
            connections: self.connections.clone(),
            access_log: self.access_log.clone(),
        };
        let stop = self.stop_accepting.child_token();
        info!(%addr, "listening");
        let lane = next_lane();
        match sockets {
            Sockets::Tcp(listeners) => {
                for (worker, listener) in listeners.into_iter().enumerate() {
                    self.workers.spawn_on(
                        worker,
                        accept_loop(listener, addr.addr, lane, ctx.clone(), stop.clone()),
                    );
                }
            }
            Sockets::Udp(sockets) => {
                for (worker, socket) in sockets.into_iter().enumerate() {
                    self.workers.spawn_on(
                        worker,
                        udp::serve(socket, addr.addr, lane, ctx.table.clone(), stop.clone()),
                    );
                }
            }
        }
        let up = self.metrics.listener_up(&service, &addr.to_string());
        up.set(1);
        self.failing.remove(&addr);
        self.listeners.insert(
            addr,
            Listener {
                service,
                up,
                state: ListenerState::Bound(stop),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use lb_config::Algorithm;

    use super::*;
    use crate::discovery::{PortRoutes, RouteSettings};

    fn service(name: &str, listen: SocketAddr) -> ServiceRoutes {
        ServiceRoutes {
            name: name.to_owned(),
            algorithm: Algorithm::RoundRobin,
            max_connections: 100,
            settings: RouteSettings {
                connect_timeout: Duration::from_secs(1),
                retries: 0,
                ..RouteSettings::default()
            },
            ports: vec![PortRoutes {
                protocol: Protocol::Tcp,
                listen: vec![listen],
                vip: None,
                vip_v6: None,
                endpoints: Vec::new(),
            }],
        }
    }

    /// The `lbmesh_listener_up` value of (service, address), if the series
    /// exists.
    fn up(registry: &prometheus::Registry, service: &str, addr: SocketAddr) -> Option<i64> {
        let address = addr.to_string();
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == "lbmesh_listener_up")
            .flat_map(|family| family.get_metric())
            .find(|metric| {
                let labels = metric.get_label();
                labels
                    .iter()
                    .any(|l| l.name() == "service" && l.value() == service)
                    && labels
                        .iter()
                        .any(|l| l.name() == "address" && l.value() == address)
            })
            .map(|metric| metric.get_gauge().get_value() as i64)
    }

    fn unused_addr() -> SocketAddr {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe");
        probe.local_addr().expect("probe address")
    }

    #[tokio::test]
    async fn a_taken_address_is_skipped_reported_retried_and_bound_once_free() {
        let registry = prometheus::Registry::new();
        let metrics = Arc::new(Metrics::new(&registry).expect("metrics"));
        let mut proxy = Proxy::start(2, Arc::clone(&metrics)).expect("proxy");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
        let taken_addr = taken.local_addr().expect("held address");
        let web_addr = unused_addr();
        let services = [service("blocked", taken_addr), service("web", web_addr)];

        // A config file's change is refused whole, and leaves nothing behind.
        let refused = proxy.apply(&services);
        assert!(
            matches!(&refused, Err(e) if e.addr == ProtoAddr::tcp(taken_addr) && e.service == "blocked"),
            "{refused:?}"
        );
        assert_eq!(proxy.listener_count(), 0);
        assert!(proxy.failures().is_empty());

        // The registry's: the rest applies, the taken address is reported.
        proxy.apply_per_listener(&[Update::Reset(services.to_vec())]);
        assert_eq!(proxy.listener_count(), 1);
        std::net::TcpStream::connect(web_addr).expect("web is served");
        assert!(proxy
            .table()
            .load()
            .route(&ProtoAddr::tcp(taken_addr))
            .is_some());
        assert_eq!(
            proxy.failures(),
            [ListenerFailure {
                service: "blocked".to_owned(),
                addr: taken_addr,
                protocol: Protocol::Tcp,
                error: "address in use".to_owned(),
            }]
        );
        assert_eq!(up(&registry, "blocked", taken_addr), Some(0));
        assert_eq!(up(&registry, "web", web_addr), Some(1));

        // Retried on its interval, not before; still taken: nothing new.
        let due = proxy.next_retry().expect("a retry is due");
        assert!(due > Instant::now() + BIND_RETRY / 2, "no busy retry");
        assert!(!proxy.retry_due(due - Duration::from_millis(1)));
        assert!(!proxy.retry_due(due));
        let due = proxy.next_retry().expect("still due again");

        // Freed: the next retry binds it and serves it.
        drop(taken);
        assert!(proxy.retry_due(due));
        assert!(proxy.failures().is_empty());
        assert_eq!(proxy.next_retry(), None);
        assert_eq!(proxy.listener_count(), 2);
        assert_eq!(up(&registry, "blocked", taken_addr), Some(1));
        std::net::TcpStream::connect(taken_addr).expect("blocked is served");

        // Gone from the table: its series goes too.
        proxy.apply_per_listener(&[Update::Reset(vec![service("web", web_addr)])]);
        assert_eq!(up(&registry, "blocked", taken_addr), None);
        assert_eq!(proxy.listener_count(), 1);
    }

    #[test]
    fn a_failing_address_that_leaves_the_table_is_forgotten() {
        let registry = prometheus::Registry::new();
        let metrics = Arc::new(Metrics::new(&registry).expect("metrics"));
        let mut proxy = Proxy::start(1, Arc::clone(&metrics)).expect("proxy");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
        let taken_addr = taken.local_addr().expect("held address");
        proxy.apply_per_listener(&[Update::Reset(vec![service("blocked", taken_addr)])]);
        assert_eq!(up(&registry, "blocked", taken_addr), Some(0));
        // The port moves to another service: one series, relabelled.
        proxy.apply_per_listener(&[Update::Reset(vec![service("other", taken_addr)])]);
        assert_eq!(up(&registry, "blocked", taken_addr), None);
        assert_eq!(up(&registry, "other", taken_addr), Some(0));
        assert_eq!(proxy.failures()[0].service, "other");
        assert_eq!(proxy.listener_count(), 0, "a failing address is not bound");
        proxy.apply_per_listener(&[Update::Reset(vec![])]);
        assert!(proxy.failures().is_empty());
        assert_eq!(proxy.next_retry(), None);
        assert_eq!(proxy.listener_count(), 0);
        assert_eq!(up(&registry, "other", taken_addr), None);
    }
}
