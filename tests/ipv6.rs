//! IPv6 ingress: TCP and UDP ports published on `::1` by a standalone lbd
//! in front of IPv4 backends, and the PROXY v2 header that tells the v4
//! backend its client's v6 address; then a three-node cluster on IPv6
//! node addresses (fd7e:0:0:A::1-3 on `lo`, the harness adds and removes
//! them) whose nodes are dual-stack: every node serves a TCP and a UDP
//! published port on its v6 and its v4 ingress address, and each service
//! answers on its v6 VIP (a `local` route lbd adds for the range).
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use test_support::cluster::{Cluster, Family};
use test_support::udp::*;
use test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    read_v2_header_v6(&mut stream).await
}

/// Reads a PROXY v2 header for TCP over IPv6 from `stream`.
async fn read_v2_header_v6(stream: &mut TcpStream) -> (SocketAddr, SocketAddr) {
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

/// A v4 TCP backend that answers each connection with the source and
/// destination of its PROXY v2 header (`SRC DST\n`; `v4` for a header of
/// TCP over IPv4), then closes.
async fn header_reporter() -> SocketAddr {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("v4 backend");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 16];
                if stream.peek(&mut head).await.ok() != Some(16) {
                    return;
                }
                let line = match head[13] {
                    0x21 => {
                        let (source, destination) = read_v2_header_v6(&mut stream).await;
                        format!("{source} {destination}\n")
                    }
                    _ => "v4\n".to_owned(),
                };
                let _ = stream.write_all(line.as_bytes()).await;
            });
        }
    });
    addr
}

/// What the header reporter says of a connection to `to`, with the
/// client's own address, once `to` serves (bounded by [`WAIT`]).
async fn reported(to: SocketAddr) -> (String, SocketAddr) {
    let started = std::time::Instant::now();
    while started.elapsed() < WAIT {
        let attempt = async {
            let mut stream = TcpStream::connect(to).await.ok()?;
            let local = stream.local_addr().ok()?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.ok()?;
            (!answer.is_empty()).then(|| (answer.trim_end().to_owned(), local))
        };
        if let Ok(Some(answer)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{to} never answered through the header reporter");
}

/// A port free for TCP and UDP on every one of `ips` a moment ago.
fn free_port_on(ips: &[IpAddr]) -> u16 {
    for _ in 0..50 {
        let port = free_udp_port_on(ips);
        if ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free for tcp and udp on {ips:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v6_cluster_serves_tcp_and_udp_on_every_node_both_families_and_the_v6_vip() {
    let tcp_backend = header_reporter().await;
    let echo = UdpEcho::start().await;
    let echo_addr = echo.addr.to_string();
    let (cluster, port, vip_tcp, vip_udp) = tokio::task::spawn_blocking(move || {
        let cluster = Cluster::form_in(Family::DualStack, &[]);
        let ips: Vec<IpAddr> = (0..3)
            .flat_map(|n| [cluster.ip(n), cluster.ingress_v4(n)])
            .collect();
        let port = free_port_on(&ips);
        let (vip_tcp, vip_udp) = (free_port_on(&ips), free_port_on(&ips));
        let backend = tcp_backend.to_string();
        for (name, publish, endpoint, more) in [
            (
                "web",
                format!("{port}:{vip_tcp}"),
                &backend,
                &["--proxy-protocol", "v2"][..],
            ),
            ("dns", format!("{port}:{vip_udp}/udp"), &echo_addr, &[][..]),
        ] {
            let mut args = vec![
                "service",
                "create",
                name,
                "-p",
                &publish,
                "--endpoint",
                endpoint,
            ];
            args.extend_from_slice(more);
            let (code, _, err) = cluster.lbctl(1, &args);
            assert_eq!(code, 0, "{err}");
        }
        (cluster, port, vip_tcp, vip_udp)
    })
    .await
    .expect("cluster");

    // TCP through every node, on both families: the v4 backend's PROXY
    // v2 header names the client and the address it reached.
    for n in 0..3 {
        for ip in [cluster.ip(n), cluster.ingress_v4(n)] {
            let to = SocketAddr::new(ip, port);
            let (line, client) = reported(to).await;
            if ip.is_ipv6() {
                assert_eq!(
                    line,
                    format!("{client} {to}"),
                    "the v6 source in the header"
                );
            } else {
                assert_eq!(line, "v4", "a v4 client's header is TCP over IPv4");
            }
        }
    }

    // UDP through every node, on both families, byte-exact.
    for n in 0..3 {
        for ip in [cluster.ip(n), cluster.ingress_v4(n)] {
            let client = UdpSocket::bind((ip, 0)).await.expect("client");
            let to = SocketAddr::new(ip, port);
            let data = [b'n', n as u8, u8::from(ip.is_ipv6()), 0x5a, 0xa5];
            eventually("the node serves udp", || {
                let (client, data) = (&client, &data);
                async move {
                    udp_exchange(client, to, data, Duration::from_millis(500)).await
                        == Some(data.to_vec())
                }
            })
            .await;
        }
    }

    // Each service has a v6 VIP from the cluster's range, shown by
    // `service ls` and `inspect`, answering on the target ports.
    let (cluster, web, dns, table) = tokio::task::spawn_blocking(move || {
        let web = cluster
            .json(2, &["service", "inspect", "web"])
            .expect("inspect web");
        let dns = cluster
            .json(0, &["service", "inspect", "dns"])
            .expect("inspect dns");
        let (_, table, _) = cluster.lbctl(0, &["service", "ls"]);
        (cluster, web, dns, table)
    })
    .await
    .expect("inspect");
    let vip_of = |service: &serde_json::Value| -> Ipv6Addr {
        service["vip_v6"]
            .as_str()
            .expect("a v6 VIP")
            .parse()
            .expect("ipv6")
    };
    let (web_vip, dns_vip) = (vip_of(&web), vip_of(&dns));
    let range = cluster.vip_range_v6();
    let prefix = range.trim_end_matches("/112").trim_end_matches(':');
    for vip in [web_vip, dns_vip] {
        assert!(vip.to_string().starts_with(prefix), "{vip} in {range}");
        assert!(table.contains(&vip.to_string()), "{table}");
    }
    assert_ne!(web_vip, dns_vip);
    let to = SocketAddr::new(IpAddr::V6(web_vip), vip_tcp);
    let (line, client) = reported(to).await;
    assert_eq!(line, format!("{client} {to}"));
    let client = UdpSocket::bind((cluster.ip(0), 0)).await.expect("client");
    let to = SocketAddr::new(IpAddr::V6(dns_vip), vip_udp);
    eventually("the v6 VIP serves udp", || {
        let client = &client;
        async move {
            udp_exchange(client, to, b"vip6", Duration::from_millis(500))
                .await
                .is_some()
        }
    })
    .await;
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .expect("teardown");
}
