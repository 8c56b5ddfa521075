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

/// The IPv6 VIP range of a new cluster (`none` for IPv4 VIPs only): a /112
/// of the unique local block, made local on `lo` by each node
/// (`crate::vip_route`), as 127.0.0.0/8 is by itself.
pub const VIP_RANGE_V6: &str = "fd77::/112";

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

/// The admin API address of `--join HOST[:PORT]`: the default port when
/// none is given. An IPv6 address is `[ADDR]:PORT`, or bare (`fd00::1`,
/// `[fd00::1]`) for the default port.
pub fn api_address(host: &str) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return std::net::SocketAddr::new(ip, API_PORT).to_string();
    }
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{API_PORT}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_hosts_get_the_default_api_port() {
        // fixed-port-ok: addresses parsed, nothing bound
        for (host, address) in [
            ("10.0.0.1", "10.0.0.1:9900"),
            ("10.0.0.1:7000", "10.0.0.1:7000"),
            ("node-a", "node-a:9900"),
            ("node-a:7000", "node-a:7000"),
            ("fd00::1", "[fd00::1]:9900"),
            ("[fd00::1]", "[fd00::1]:9900"),
            ("[fd00::1]:7000", "[fd00::1]:7000"),
        ] {
            assert_eq!(api_address(host), address, "{host}");
        }
    }
}
