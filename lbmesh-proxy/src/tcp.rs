//! TCP options lbd sets on both sides of a proxied connection.

use std::time::Duration;

use socket2::TcpKeepalive;

/// Keepalive probes start after this much silence, so a peer that vanished
/// without a FIN or RST is found in minutes, not hours.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Keepalive probes on both sides of a proxied connection: dead peers are
/// noticed even on idle connections.
pub fn keepalive() -> TcpKeepalive {
    TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
}
