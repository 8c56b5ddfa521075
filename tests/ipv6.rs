//! IPv6 ingress on a standalone lbd: TCP and UDP ports published on `::1`
//! in front of IPv4 backends, and the PROXY v2 header that tells the v4
//! backend its client's v6 address.
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use test_support::udp::*;
use test_support::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// A port on `::1` free for both TCP and UDP a moment ago.
fn v6_port() -> u16 {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind((V6, 0)).expect("bind ::1");
        let port = tcp.local_addr().expect("address").port();
        if std::net::UdpSocket::bind((V6, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on ::1 for tcp and udp");
}

/// Reads one PROXY v2 header for TCP over IPv6; returns its source and
/// destination.
async fn v2_header_v6(listener: TcpListener) -> (SocketAddr, SocketAddr) {
    let (mut stream, _) = listener.accept().await.expect("accept");
    let mut head = [0u8; 16];
    stream.read_exact(&mut head).await.expect("header");
    assert_eq!(&head[..12], &lbmesh_proxy::proxy_protocol::V2_SIGNATURE);
    assert_eq!(head[12], 0x21, "version 2, PROXY command");
    assert_eq!(head[13], 0x21, "TCP over IPv6");
    assert_eq!(u16::from_be_bytes([head[14], head[15]]), 36);
    let mut block = [0u8; 36];
    stream.read_exact(&mut block).await.expect("address block");
    let ip = |bytes: &[u8]| {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(bytes);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    let port = |bytes: &[u8]| u16::from_be_bytes([bytes[0], bytes[1]]);
    (
        SocketAddr::new(ip(&block[..16]), port(&block[32..34])),
        SocketAddr::new(ip(&block[16..32]), port(&block[34..36])),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v6_clients_reach_v4_backends_over_tcp_with_proxy_v2_and_over_udp() {
    let tcp_backend = TcpListener::bind((LOCALHOST, 0)).await.expect("v4 backend");
    let tcp_addr = tcp_backend.local_addr().expect("address");
    let header = tokio::spawn(v2_header_v6(tcp_backend));
    let echo = UdpEcho::start().await;
    let port = v6_port();
    let config = format!(
        "[[service]]\nname = \"web\"\nlisten = [\"::1\"]\nproxy_protocol = \"v2\"\n\
         ports = [{{ published = {port} }}]\nendpoints = [{{ address = \"{tcp_addr}\" }}]\n\
         [[service]]\nname = \"dns\"\nlisten = [\"::1\"]\n\
         ports = [{{ published = {port}, protocol = \"udp\" }}]\nendpoints = [{{ address = \"{}\" }}]\n",
        echo.addr
    );
    let _lbd = TestLbd::start(&config).await;
    let published = SocketAddr::new(V6, port);

    let client = TcpStream::connect(published)
        .await
        .expect("connect over v6");
    let (source, destination) = tokio::time::timeout(WAIT, header)
        .await
        .expect("a header in time")
        .expect("parser");
    assert_eq!(source, client.local_addr().expect("client address"));
    assert_eq!(destination, published);

    let udp_client = UdpSocket::bind((V6, 0)).await.expect("v6 client");
    for seq in 0..10u8 {
        let data = [b'v', b'6', 0, 0, seq, seq ^ 0x5a];
        let reply = udp_exchange(&udp_client, published, &data, WAIT)
            .await
            .expect("an echo over v6");
        assert_eq!(reply, data);
    }
    assert_eq!(echo.datagrams(), 10);
    assert_eq!(echo.sources(), 1, "one v6 flow, one v4 session socket");
}
