//! UDP through the mesh: a three-node cluster on 127.A.0.1-3 serving a UDP
//! echo service of three static backends on every node and on its VIP,
//! and a standalone lbd serving a UDP port from its config file next to
//! a TCP port of the same number.
//!
//! Clients bind distinct loopback IPs (127.A.9.N), so Maglev, which keys on
//! the client IP, spreads them; each payload starts with a tag naming its
//! client and the node it went through, which the echo backends record.
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use test_support::cluster::*;
use test_support::udp::*;
use test_support::*;
use tokio::net::UdpSocket;

/// Clients and datagrams of the round-robin run: 50 × 200 = 10,000.
const CLIENTS: usize = 50;
const PER_CLIENT: usize = 200;
/// One try's wait for its echo on loopback; a lost datagram is sent again.
const TRY: Duration = Duration::from_millis(500);
const TRIES: usize = 6;

/// Tag of client `client` through node `node` for service `service`.
fn tag(service: u8, client: usize, node: usize) -> [u8; TAG] {
    [service, client as u8, node as u8, 0]
}

/// A payload of `len` bytes (at least the tag and a sequence number)
/// whose every byte depends on the client, node and sequence number.
fn payload(tag: [u8; TAG], seq: u32, len: usize) -> Vec<u8> {
    let mut bytes = tag.to_vec();
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes.extend((bytes.len()..len).map(|i| (i as u32 ^ seq ^ u32::from(tag[1])) as u8));
    bytes
}

/// Sends until echoed (bounded); returns how many tries it took.
async fn echoed(client: &UdpSocket, to: SocketAddr, data: &[u8]) -> usize {
    for attempt in 1..=TRIES {
        if let Some(reply) = udp_exchange(client, to, data, TRY).await {
            assert_eq!(reply, data, "the reply is the request, byte for byte");
            return attempt;
        }
    }
    panic!("no echo from {to} after {TRIES} tries");
}

/// Which echo backend saw `tag`.
fn backend_of(echoes: &[UdpEcho], tag: [u8; TAG]) -> Vec<usize> {
    (0..echoes.len())
        .filter(|&i| echoes[i].tags().contains(&tag))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_through_every_node_round_robin_maglev_and_the_vip() {
    let echoes = Arc::new([
        UdpEcho::start().await,
        UdpEcho::start().await,
        UdpEcho::start().await,
    ]);
    let endpoints: Vec<String> = echoes.iter().map(|e| e.addr.to_string()).collect();
    let (cluster, rr_port, maglev_port, vip_target) = tokio::task::spawn_blocking(move || {
        let cluster = Cluster::form();
        let ips: Vec<IpAddr> = (0..3).map(|n| cluster.ip(n)).collect();
        let rr_port = free_udp_port_on(&ips);
        let maglev_port = free_udp_port_on(&ips);
        let vip_target = free_udp_port_on(&ips);
        let create = |name: &str, publish: String, algorithm: &str| {
            let mut args = vec![
                "service",
                "create",
                name,
                "-p",
                &publish,
                "--algorithm",
                algorithm,
            ];
            for endpoint in &endpoints {
                args.extend(["--endpoint", endpoint]);
            }
            let (code, _, err) = cluster.lbctl(0, &args);
            assert_eq!(code, 0, "{err}");
        };
        create("echo", format!("{rr_port}:{vip_target}/udp"), "round-robin");
        create("sticky", format!("{maglev_port}/udp"), "maglev");
        let (_, table, _) = cluster.lbctl(1, &["service", "ls"]);
        assert!(
            table.contains(&format!("*:{rr_port}->{vip_target}/udp")),
            "{table}"
        );
        (cluster, rr_port, maglev_port, vip_target)
    })
    .await
    .expect("cluster");
    let block = cluster.block;
    let nodes: Vec<SocketAddr> = cluster.mesh_addrs(rr_port);
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let ip = IpAddr::V4(Ipv4Addr::new(127, block, 9, i as u8 + 1));
        clients.push(Arc::new(
            UdpSocket::bind((ip, 0)).await.expect("client socket"),
        ));
    }

    // Every node serves the port once its table has the service (probes
    // from their own socket and tag, so the flows below are untouched).
    let probe = UdpSocket::bind((IpAddr::V4(Ipv4Addr::new(127, block, 8, 1)), 0))
        .await
        .expect("probe");
    for (n, node) in nodes.iter().enumerate() {
        let data = payload(tag(9, 200, n), 0, 16);
        eventually("the node serves the udp port", || {
            let (probe, data) = (&probe, &data);
            async move { udp_exchange(probe, *node, data, TRY).await.is_some() }
        })
        .await;
    }

    // 10,000 datagrams from 50 sockets through the three nodes in turn,
    // each one's echo checked on the socket that sent it.
    let mut runs = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let (client, nodes) = (Arc::clone(client), nodes.clone());
        runs.push(tokio::spawn(async move {
            let mut tries = 0;
            for seq in 0..PER_CLIENT {
                let node = seq % 3;
                let len = 8 + (i * 131 + seq * 17) % 1400;
                let data = payload(tag(1, i, node), seq as u32, len);
                tries += echoed(&client, nodes[node], &data).await;
            }
            tries
        }));
    }
    let mut tries = 0;
    for run in runs {
        tries += run.await.expect("client run");
    }
    assert!(
        tries < CLIENTS * PER_CLIENT * 101 / 100,
        "{tries} tries for 10,000 datagrams"
    );
    // Each (client, node) flow is one session on one backend, and
    // round-robin gives each backend a third of the 150 flows (each node
    // deals its 50 as 17, 17, 16).
    let mut flows = [0usize; 3];
    for i in 0..CLIENTS {
        for n in 0..3 {
            let owners = backend_of(&echoes[..], tag(1, i, n));
            assert_eq!(owners.len(), 1, "client {i} via node {n}: {owners:?}");
            flows[owners[0]] += 1;
        }
    }
    eprintln!("flows per backend {flows:?}, {tries} tries");
    assert!(flows.iter().all(|f| (48..=51).contains(f)), "{flows:?}");
    assert_eq!(flows.iter().sum::<usize>(), 150);

    // Maglev: a client keeps its backend through every node.
    let sticky: Vec<SocketAddr> = cluster.mesh_addrs(maglev_port);
    let mut chosen: HashMap<usize, usize> = HashMap::new();
    for (i, client) in clients.iter().enumerate() {
        for (n, node) in sticky.iter().enumerate() {
            let data = payload(tag(2, i, n), 0, 64);
            echoed(client, *node, &data).await;
        }
        let owners: HashSet<usize> = (0..3)
            .flat_map(|n| backend_of(&echoes[..], tag(2, i, n)))
            .collect();
        assert_eq!(
            owners.len(),
            1,
            "client {i} reached {owners:?} across the nodes"
        );
        chosen.insert(i, *owners.iter().next().expect("one"));
    }
    let used: HashSet<usize> = chosen.values().copied().collect();
    assert_eq!(
        used.len(),
        3,
        "50 client IPs spread over the three backends"
    );

    // The VIP answers on the target port over UDP.
    let service = tokio::task::spawn_blocking({
        move || {
            let value = cluster
                .json(2, &["service", "inspect", "echo"])
                .expect("inspect");
            (cluster, value)
        }
    })
    .await
    .expect("inspect");
    let (cluster, service) = service;
    let vip: IpAddr = service["vip"].as_str().expect("vip").parse().expect("ip");
    let vip = SocketAddr::new(vip, vip_target);
    let data = payload(tag(3, 0, 0), 0, 32);
    eventually("the udp VIP answers", || {
        let (probe, data) = (&probe, &data);
        async move { udp_exchange(probe, vip, data, TRY).await.is_some() }
    })
    .await;

    // The nodes count what they relayed.
    let (_, metrics) = tokio::task::spawn_blocking(move || {
        let page = http_get_blocking(&cluster.api(0), "/metrics");
        drop(cluster);
        page
    })
    .await
    .expect("metrics");
    let datagrams_in: f64 = echoes
        .iter()
        .filter_map(|e| {
            metric(
                &metrics,
                "lbmesh_udp_datagrams_in_total",
                &[("service", "echo"), ("backend", &format!("{}/udp", e.addr))],
            )
        })
        .sum();
    assert!(
        datagrams_in >= (CLIENTS * PER_CLIENT / 3) as f64,
        "{datagrams_in}"
    );
    assert!(
        metrics.contains("lbmesh_udp_sessions{service=\"echo\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_lbd_serves_udp_and_tcp_on_one_port_number() {
    let echo = UdpEcho::start().await;
    let tcp = TestBackend::start("tcp", Behavior::Identify).await;
    let listen = listen_addr();
    let free_for_udp = std::net::UdpSocket::bind(listen).is_ok();
    assert!(free_for_udp, "{listen} is free for udp too");
    let config = format!(
        "[[service]]\nname = \"dns\"\nlisten = [\"{ip}\"]\nudp_idle_timeout = \"30s\"\n\
         ports = [{{ published = {port}, target = {udp_port}, protocol = \"udp\" }}]\n\
         endpoints = [{{ address = \"{udp}\" }}]\n\
         [[service]]\nname = \"web\"\nlisten = [\"{ip}\"]\n\
         ports = [{{ published = {port} }}]\nendpoints = [{{ address = \"{tcp}\" }}]\n",
        ip = listen.ip(),
        port = listen.port(),
        udp_port = echo.addr.port(),
        udp = echo.addr,
        tcp = tcp.addr,
    );
    let lbd = TestLbd::start(&config).await;
    assert_eq!(who_answers(listen).await, "tcp");
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
    for seq in 0..20u32 {
        let data = payload(tag(4, 0, 0), seq, 100 + seq as usize);
        echoed(&client, listen, &data).await;
    }
    assert_eq!(echo.datagrams(), 20);
    assert_eq!(echo.sources(), 1, "one flow, one session");
    let metrics = lbd.metrics().await;
    let backend = format!("{}/udp", echo.addr);
    let labels = [("service", "dns"), ("backend", backend.as_str())];
    assert_eq!(
        metric(&metrics, "lbmesh_udp_datagrams_in_total", &labels),
        Some(20.0)
    );
    assert_eq!(
        metric(&metrics, "lbmesh_udp_datagrams_out_total", &labels),
        Some(20.0)
    );
    assert_eq!(
        metric(&metrics, "lbmesh_connections_total", &labels),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "lbmesh_udp_sessions", &[("service", "dns")]),
        Some(1.0)
    );
    let address = format!("{listen}/udp");
    assert_eq!(
        metric(
            &metrics,
            "lbmesh_listener_up",
            &[("service", "dns"), ("address", &address)]
        ),
        Some(1.0)
    );
}
