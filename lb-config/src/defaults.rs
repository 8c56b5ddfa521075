//! Default values and limits of the configuration, in one place.
//!
//! `validate` fills in a default wherever the file leaves a field out, and
//! refuses a value past a limit; each constant says why it has its value.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Default admin API address of a standalone node: loopback, because the admin
/// API will carry mutations once the registry lands.
// fixed-port-ok: the documented default.
pub const DEFAULT_API_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9900);
/// Published ports bind on every interface unless the node or service says
/// otherwise: that is what "published" means in the mesh.
pub const DEFAULT_INGRESS_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// How long SIGTERM waits for open connections before exiting anyway: 30 s
/// is Kubernetes' default termination grace, long enough for most requests
/// in flight to finish.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// A backend that does not accept within this time is treated as down. 3 s
/// covers one lost SYN (Linux resends it after 1 s, then 2 s later), so a
/// single dropped packet does not fail the connect.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Generous on purpose: Swarm's fixed 900 s IPVS timeout killed idle database
/// and websocket connections (moby#31208); here it is a per-service setting.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// A UDP session (one client flow's socket to its backend) ends after this
/// long without a datagram either way: UDP has no close, so only time ends
/// a flow. 60 s outlasts a DNS retry or a game's keepalive and is what
/// Linux conntrack gives a UDP stream (`nf_conntrack_udp_timeout_stream`
/// is 120 s; the unreplied one is 30 s).
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Per-service cap on open UDP sessions on one node. Each holds one socket,
/// so the default costs at most as many descriptors as the connection cap.
pub const DEFAULT_MAX_UDP_SESSIONS: u32 = 10_000;
/// How long a departing backend keeps serving its open connections: as long
/// as a stopping node waits ([`DEFAULT_SHUTDOWN_GRACE`]).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-service cap on concurrent client connections. Each uses two sockets,
/// so the default needs 20 000 descriptors, one reason lbd raises its
/// `nofile` limit at start.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Connect attempts on other backends after a refused or timed-out connect:
/// two step over a backend or two that just died, while a client of a
/// service whose backends are all down waits at most three connect timeouts.
pub const DEFAULT_RETRIES: u32 = 2;
/// How long a backend that refused a connection is skipped by this proxy:
/// two health check intervals, so the active check has had its chance to
/// take a dead backend down before the ejection lapses.
pub const DEFAULT_EJECT_TIME: Duration = Duration::from_secs(10);
/// Time between active health checks of one backend: with
/// [`DEFAULT_FALL`] a dead backend is taken down within 15 s.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How long one check may take; `validate` caps it at the interval so checks
/// of one backend never overlap.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Consecutive passed checks that bring a backend up (HAProxy's default).
pub const DEFAULT_RISE: u32 = 2;
/// Consecutive failed checks that take a backend down (HAProxy's default):
/// one lost check does not flap it.
pub const DEFAULT_FALL: u32 = 3;
/// Tasks of a replicated service that names no count: one, so a new service
/// runs and scaling it is explicit.
pub const DEFAULT_REPLICAS: u32 = 1;
/// Tasks replaced at a time by a rolling update (docker's default).
pub const DEFAULT_UPDATE_PARALLELISM: u32 = 1;
/// Wait before a failed task is replaced (docker's default).
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(5);
/// How long a new task is watched for failure during an update (docker's
/// default).
pub const DEFAULT_UPDATE_MONITOR: Duration = Duration::from_secs(5);
/// SIGTERM to SIGKILL (docker's default).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Largest endpoint weight; keeps the smooth weighted period small.
pub const MAX_WEIGHT: u32 = 1000;
/// Largest replica count of a service: one scheduling round (a single Raft
/// entry holding every task it creates) then stays far below the
/// transport's 16 MiB frame limit.
pub const MAX_REPLICAS: u32 = 1000;
/// Largest number of static endpoints per service: bounds a spec's size in
/// the log and the backends each of its ports holds on every node.
pub const MAX_ENDPOINTS: usize = 4096;
/// Largest number of published ports per new service. Every node binds each
/// one and gives each its own copy of the endpoints, so a service holds up
/// to `MAX_PORTS × MAX_ENDPOINTS` (262,144) backends on every node. Checked
/// by `ServiceSpec::check_limits`, before a spec is stored, not in the
/// registry's log.
pub const MAX_PORTS: usize = 64;
