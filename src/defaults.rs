//! The defaults of `lbd`'s cluster-mode flags, in one place. (Service and
//! standalone-node defaults live with the specs, in `lb_config`.)

use std::time::Duration;

/// The admin API (and `/metrics`) port on the advertise address: the
/// documented default that `lbctl --host` and `--join HOST` assume.
pub const API_PORT: u16 = 9900; // fixed-port-ok: the documented default

/// The Raft RPC port on the advertise address.
pub const RAFT_PORT: u16 = 9901; // fixed-port-ok: the documented default

/// The VIP range of a new cluster: `raft_state::state::DEFAULT_VIP_RANGE`
/// (outside the loopback network, so containers reach it too).
pub const VIP_RANGE: &str = "198.18.0.0/16";

/// Where a node keeps its identity and registry, under the working
/// directory, one folder per advertise address (so several nodes can share a
/// machine).
pub const DATA_DIR: &str = "lbmesh-data";

/// How long SIGTERM lets open connections finish: Docker's default stop
/// timeout is 10 s, Kubernetes' grace 30 s.
pub const SHUTDOWN_GRACE: &str = "30s";

/// How often a node tells the leader it is alive.
pub const HEARTBEAT_INTERVAL: &str = "1s";

/// How long the leader waits for a heartbeat before marking a node down:
/// five missed heartbeats.
pub const HEARTBEAT_GRACE: &str = "5s";
/// Life of a node certificate in a new cluster (Swarm's default too).
pub const CERT_EXPIRY: &str = "90days";

/// The range heartbeat settings must be in: faster floods the leader,
/// slower leaves a dead node's tasks unreplaced for too long.
pub const HEARTBEAT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(600);

/// Threads of the runtime that runs the control plane (admin API,
/// registry, scheduler, agent): it is light, and the connections run on
/// the proxy threads.
pub const CONTROL_THREADS: usize = 2;
