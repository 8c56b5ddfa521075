//! Addresses for tests: never fixed ports, and never an address an
//! outgoing test connection could take first.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An address for lbd to listen on: a random 127.0.0.X (X ≥ 2) and a port
/// that was free there a moment ago. Outgoing test connections use
/// 127.0.0.1 as their source, so their ephemeral ports can never take this
/// address in the gap before lbd binds it.
pub fn listen_addr() -> SocketAddr {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, fastrand::u8(2..=254)));
    let listener = std::net::TcpListener::bind((ip, 0)).expect("bind port 0");
    listener.local_addr().expect("local addr")
}

/// An address on which nothing listens (connects are refused), in the same
/// private range as `listen_addr`, so a later `TestBackend::start_on` can
/// bind it again.
pub fn refusing_addr() -> SocketAddr {
    listen_addr()
}
