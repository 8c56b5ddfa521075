//! The data plane's input: the services to route, with their endpoints.
//!
//! This is the one type where discovery meets balancing. A config file or
//! the replicated registry is turned into a list of [`ServiceRoutes`] by
//! the daemon. [`Proxy::apply`](crate::Proxy::apply) takes the whole list
//! (a config file); [`Proxy::apply_per_listener`](crate::Proxy::apply_per_listener)
//! takes what changed, as linkerd's destination updates do: an [`Update`]
//! resets the whole list, adds (or replaces) services or removes them, and
//! one call's updates switch the table once. Nothing here names a task, a
//! node or a Raft record: an endpoint is an address and a weight.
//!
//! ```text
//! Update::Reset([ServiceRoutes]) | Add([ServiceRoutes]) | Remove([name])
//! ServiceRoutes { name, algorithm, max_connections, settings,
//!                 ports: [PortRoutes { protocol, listen: [ip:published..], vip: vip:target,
//!                                      vip_v6: [vip6]:target,
//!                                      endpoints: [addr, weight, labels: task, node] }] }
//! ```
//!
//! A port's protocol says how its addresses are served: a TCP port's by
//! accept loops, a UDP port's by [`crate::udp`]'s session relay. The pair
//! ([`ProtoAddr`]) is the key of a route, a listener and a backend, so one
//! service may publish 53/tcp and 53/udp.
//!
//! A service added again with routes equal to the ones it has keeps its
//! routes, backend sets and Maglev table as they are.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lb_config::{Algorithm, Protocol, ProxyProtocol};

/// An address with its transport: what a route, a listener and a backend
/// are keyed by. It prints as the address for TCP (the form metric labels
/// and reports always had) and as `ADDR/udp` for UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtoAddr {
    pub protocol: Protocol,
    pub addr: SocketAddr,
}

impl ProtoAddr {
    pub fn tcp(addr: SocketAddr) -> Self {
        Self {
            protocol: Protocol::Tcp,
            addr,
        }
    }

    pub fn udp(addr: SocketAddr) -> Self {
        Self {
            protocol: Protocol::Udp,
            addr,
        }
    }
}

impl fmt::Display for ProtoAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            Protocol::Tcp => write!(f, "{}", self.addr),
            Protocol::Udp => write!(f, "{}/udp", self.addr),
        }
    }
}

/// A change of the services to route.
#[derive(Debug, Clone)]
pub enum Update {
    /// These are all the services: any other one is removed.
    Reset(Vec<ServiceRoutes>),
    /// Services new or changed; each replaces the routes of its name.
    Add(Vec<ServiceRoutes>),
    /// Services gone, by name (an unknown name is ignored).
    Remove(Vec<String>),
}

/// One service to route.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRoutes {
    pub name: String,
    pub algorithm: Algorithm,
    /// Cap on the service's open client connections, over all its ports.
    pub max_connections: u32,
    pub settings: RouteSettings,
    pub ports: Vec<PortRoutes>,
}

/// The addresses one port of a service answers on, and where it sends them.
#[derive(Debug, Clone, PartialEq)]
pub struct PortRoutes {
    /// How the listen addresses and the VIP are served, and how the
    /// endpoints are reached.
    pub protocol: Protocol,
    /// Bound by this node alone: the published port on each ingress address.
    pub listen: Vec<SocketAddr>,
    /// The service's virtual IP on the port's target port. Several nodes on
    /// one machine share it (`SO_REUSEPORT`), and a VIP that cannot be bound
    /// is skipped and retried rather than failing the change.
    pub vip: Option<SocketAddr>,
    /// The service's IPv6 VIP on the target port, bound as the v4 one is
    /// (and with `IPV6_FREEBIND`, since no v6 range is local by itself).
    pub vip_v6: Option<SocketAddr>,
    pub endpoints: Vec<Endpoint>,
}

impl PortRoutes {
    /// The port's VIPs: the v4 one, then the v6 one.
    pub fn vips(&self) -> impl Iterator<Item = SocketAddr> {
        self.vip.into_iter().chain(self.vip_v6)
    }
}

/// A backend address and its weight (1 unless the algorithm is weighted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Which task it is, for its metrics; empty for a static endpoint.
    pub labels: EndpointLabels,
}

/// The `task` and `node` labels of a backend's metrics: a task
/// endpoint's name (`web.2`) and node name, empty for a static endpoint.
/// They come with the routes, so the routing table resolves the labelled
/// handles when it is built and a connection never looks a label up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointLabels {
    pub task: Arc<str>,
    pub node: Arc<str>,
}

/// Per-connection settings of a service's routes.
#[derive(Debug, Clone, PartialEq)]
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
    /// With `retry_on_empty`: how long a backend holding the client's first
    /// bytes may stay silent before it is ejected and they go elsewhere.
    pub reply_timeout: Option<Duration>,
    /// Open connections one client address may hold (0: no cap). Off by
    /// default: clients behind one NAT share an address.
    pub max_connections_per_client: u32,
    /// One access log line per closed connection (`access_log`).
    pub access_log: bool,
    /// UDP ports: a session without a datagram either way for this long
    /// ends.
    pub udp_idle_timeout: Duration,
    /// UDP ports: the service's open sessions on this node, over all its
    /// UDP ports; a new flow past it is dropped.
    pub max_udp_sessions: u32,
}

/// lb-config's defaults: what a service that sets nothing gets.
impl Default for RouteSettings {
    fn default() -> Self {
        Self {
            connect_timeout: lb_config::DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: lb_config::DEFAULT_IDLE_TIMEOUT,
            proxy_protocol: ProxyProtocol::None,
            retries: lb_config::DEFAULT_RETRIES,
            eject_time: lb_config::DEFAULT_EJECT_TIME,
            retry_on_empty: false,
            reply_timeout: None,
            max_connections_per_client: 0,
            access_log: false,
            udp_idle_timeout: lb_config::DEFAULT_UDP_IDLE_TIMEOUT,
            max_udp_sessions: lb_config::DEFAULT_MAX_UDP_SESSIONS,
        }
    }
}
