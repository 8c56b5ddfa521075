//! UDP ports through a real `Proxy` (two proxy threads) on loopback: echo
//! backends, client sockets, the metrics the relay keeps.
//!
//! Timers run on real time: the relay runs on the proxy's own threads,
//! whose runtimes a test cannot pause, so idle expiry uses a short
//! `udp_idle_timeout` and every wait is bounded.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_config::{Algorithm, Protocol};
use lbmesh_proxy::discovery::{Endpoint, PortRoutes, RouteSettings, ServiceRoutes};
use lbmesh_proxy::metrics::Metrics;
use lbmesh_proxy::Proxy;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Longest wait for one reply on loopback.
const REPLY: Duration = Duration::from_secs(2);

/// A UDP echo server that records the source address of every datagram.
struct Echo {
    addr: SocketAddr,
    sources: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    task: JoinHandle<()>,
}

impl Echo {
    async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = socket.local_addr().expect("echo address");
        let sources = Arc::new(Mutex::new(HashMap::new()));
        let seen = Arc::clone(&sources);
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 65_536];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buffer).await else {
                    continue;
                };
                *seen.lock().expect("sources").entry(from).or_insert(0) += 1;
                let _ = socket.send_to(&buffer[..len], from).await;
            }
        });
        Self {
            addr,
            sources,
            task,
        }
    }

    /// Distinct flows (proxy session sockets) this backend has seen.
    fn flows(&self) -> usize {
        self.sources.lock().expect("sources").len()
    }

    /// Stops answering: its port is closed, so datagrams to it are refused.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn settings() -> RouteSettings {
    RouteSettings {
        connect_timeout: Duration::from_secs(1),
        eject_time: Duration::from_secs(30),
        max_udp_sessions: 1000,
        ..RouteSettings::default()
    }
}

fn udp_service(name: &str, listen: SocketAddr, backends: &[SocketAddr]) -> ServiceRoutes {
    ServiceRoutes {
        name: name.to_owned(),
        algorithm: Algorithm::RoundRobin,
        max_connections: 100,
        settings: settings(),
        ports: vec![PortRoutes {
            protocol: Protocol::Udp,
            listen: vec![listen],
            vip: None,
            vip_v6: None,
            endpoints: backends
                .iter()
                .map(|&addr| Endpoint {
                    addr,
                    weight: 1,
                    labels: Default::default(),
                })
                .collect(),
        }],
    }
}

/// A port free for both TCP and UDP on 127.0.0.1 right now.
fn free_port() -> SocketAddr {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("probe");
        let addr = udp.local_addr().expect("probe address");
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no port free for tcp and udp");
}

fn value(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let families = registry.gather();
    let family = families.iter().find(|family| family.name() == name);
    let gauge = family.is_some_and(|f| f.get_field_type() == prometheus::proto::MetricType::GAUGE);
    family
        .into_iter()
        .flat_map(|family| family.get_metric())
        .find(|metric| {
            labels.iter().all(|(k, v)| {
                metric
                    .get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|metric| {
            if gauge {
                metric.get_gauge().get_value()
            } else {
                metric.get_counter().get_value()
            }
        })
        .unwrap_or(f64::NAN)
}

/// Sends `payload` from `client` to `to` and waits for its echo; `None`
/// when none came in time.
async fn exchange(client: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    exchange_within(client, to, payload, REPLY).await
}

async fn exchange_within(
    client: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    client.send_to(payload, to).await.expect("send");
    let mut buffer = vec![0u8; 65_536];
    let (len, from) = tokio::time::timeout(wait, client.recv_from(&mut buffer))
        .await
        .ok()?
        .expect("recv");
    assert_eq!(
        from, to,
        "the reply comes from the address the client sent to"
    );
    Some(buffer[..len].to_vec())
}

/// `count` client sockets on 127.0.0.1.
async fn clients(count: usize) -> Vec<UdpSocket> {
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        sockets.push(UdpSocket::bind("127.0.0.1:0").await.expect("client"));
    }
    sockets
}

fn proxy() -> (Proxy, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(Metrics::new(&registry).expect("metrics"));
    (Proxy::start(2, metrics).expect("proxy"), registry)
}

#[tokio::test]
async fn flows_are_relayed_byte_exact_spread_round_robin_and_counted() {
    let echoes = [
        Echo::start().await,
        Echo::start().await,
        Echo::start().await,
    ];
    let backends: Vec<SocketAddr> = echoes.iter().map(|e| e.addr).collect();
    let listen = free_port();
    let (mut proxy, registry) = proxy();
    // The same port number for tcp too: two listeners, two routes.
    let mut service = udp_service("dns", listen, &backends);
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp backend");
    service.ports.push(PortRoutes {
        protocol: Protocol::Tcp,
        listen: vec![listen],
        vip: None,
        vip_v6: None,
        endpoints: vec![Endpoint {
            addr: tcp.local_addr().expect("tcp backend address"),
            weight: 1,
            labels: Default::default(),
        }],
    });
    proxy.apply(&[service]).expect("apply");
    assert_eq!(proxy.listener_count(), 2);
    std::net::TcpStream::connect(listen).expect("the tcp port is served too");

    let clients = clients(30).await;
    let mut sent = 0u64;
    for round in 0..5u32 {
        for (i, client) in clients.iter().enumerate() {
            // Sizes from 1 byte to 9 KiB: each reply is its request exactly.
            let size = 1 + (i * 311 + round as usize * 97) % 9000;
            let payload: Vec<u8> = (0..size)
                .map(|b| (b as u32 ^ round ^ i as u32) as u8)
                .collect();
            let reply = exchange(client, listen, &payload).await.expect("echoed");
            assert_eq!(reply, payload, "client {i} round {round}");
            sent += 1;
        }
    }
    // One session per client, round-robin over the three backends.
    let flows: Vec<usize> = echoes.iter().map(Echo::flows).collect();
    assert_eq!(flows, [10, 10, 10], "flows per backend");
    assert_eq!(
        value(&registry, "lbmesh_udp_sessions", &[("service", "dns")]),
        30.0
    );
    let label = |addr: SocketAddr| format!("{addr}/udp");
    let mut datagrams = 0.0;
    for addr in &backends {
        let b = label(*addr);
        let labels = [("service", "dns"), ("backend", b.as_str())];
        let inbound = value(&registry, "lbmesh_udp_datagrams_in_total", &labels);
        assert_eq!(
            inbound,
            value(&registry, "lbmesh_udp_datagrams_out_total", &labels)
        );
        assert_eq!(value(&registry, "lbmesh_connections_total", &labels), 10.0);
        assert_eq!(
            value(&registry, "lbmesh_bytes_in_total", &labels),
            value(&registry, "lbmesh_bytes_out_total", &labels)
        );
        datagrams += inbound;
    }
    assert_eq!(datagrams, sent as f64);
    assert_eq!(
        value(
            &registry,
            "lbmesh_listener_up",
            &[("address", &label(listen))]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_backend_that_stops_listening_is_ejected_and_its_flows_move() {
    let mut echoes = vec![Echo::start().await, Echo::start().await];
    let backends: Vec<SocketAddr> = echoes.iter().map(|e| e.addr).collect();
    let listen = free_port();
    let (mut proxy, registry) = proxy();
    proxy
        .apply(&[udp_service("dns", listen, &backends)])
        .expect("apply");
    let clients = clients(6).await;
    for client in &clients {
        assert!(exchange(client, listen, b"hello").await.is_some());
    }
    let gone = echoes.remove(0);
    let gone_addr = gone.addr;
    let before = gone.flows();
    assert_eq!(before, 3);
    gone.stop().await;

    // Each client retries as a DNS resolver would: the first datagram that
    // hits the closed port is lost (its ICMP ejects the backend), the next
    // one goes to the live backend on a new session, and so does every
    // other flow of the dead backend at its next datagram.
    let mut lost = 0;
    for (i, client) in clients.iter().enumerate() {
        let mut answered = false;
        for _ in 0..5 {
            let wait = Duration::from_millis(300);
            if let Some(reply) = exchange_within(client, listen, b"again", wait).await {
                assert_eq!(reply, b"again");
                answered = true;
                break;
            }
            lost += 1;
        }
        assert!(answered, "client {i} moved to a live backend");
    }
    // Only the first flow to reach the closed port lost a datagram: the
    // ejection moved the backend's other flows before they sent there.
    assert_eq!(lost, 1, "datagrams lost to the closed port");
    assert_eq!(echoes[0].flows(), 6, "every flow is on the live backend");
    let b = format!("{gone_addr}/udp");
    let labels = [("service", "dns"), ("backend", b.as_str())];
    assert!(value(&registry, "lbmesh_backend_ejections_total", &labels) >= 1.0);
    assert!(
        value(
            &registry,
            "lbmesh_connect_errors_total",
            &[("backend", b.as_str()), ("reason", "refused")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn idle_sessions_expire_and_the_cap_holds_with_drops_counted() {
    let echo = Echo::start().await;
    let listen = free_port();
    let (mut proxy, registry) = proxy();
    let mut service = udp_service("capped", listen, &[echo.addr]);
    service.settings.max_udp_sessions = 4;
    service.settings.udp_idle_timeout = Duration::from_millis(400);
    proxy.apply(&[service]).expect("apply");

    let clients = clients(6).await;
    let mut answered = 0;
    for client in &clients {
        answered += usize::from(exchange_once(client, listen, b"x").await);
    }
    assert_eq!(answered, 4, "four sessions fit under the cap");
    let service = [("service", "capped")];
    assert_eq!(value(&registry, "lbmesh_udp_sessions", &service), 4.0);
    assert_eq!(
        value(
            &registry,
            "lbmesh_udp_dropped_total",
            &[("service", "capped"), ("reason", "over_cap")]
        ),
        2.0
    );
    // A flow that holds a session keeps being served at the cap.
    assert!(exchange(&clients[0], listen, b"still").await.is_some());

    // Idle past the timeout: every session expires and the places free.
    let mut waited = Duration::ZERO;
    while value(&registry, "lbmesh_udp_sessions", &service) > 0.0 {
        assert!(waited < Duration::from_secs(5), "sessions expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert!(
        waited >= Duration::from_millis(200),
        "not before the timeout: {waited:?}"
    );
    assert_eq!(
        value(&registry, "lbmesh_udp_sessions_expired_total", &service),
        4.0
    );
    // The two that were dropped get sessions now.
    assert!(exchange(&clients[4], listen, b"y").await.is_some());
    assert!(exchange(&clients[5], listen, b"z").await.is_some());
    assert_eq!(echo.flows(), 6);
}

/// One try of [`exchange`], with a short wait (a dropped datagram gets no
/// answer at all).
async fn exchange_once(client: &UdpSocket, to: SocketAddr, payload: &[u8]) -> bool {
    client.send_to(payload, to).await.expect("send");
    let mut buffer = [0u8; 64];
    tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buffer))
        .await
        .is_ok()
}

#[tokio::test]
async fn maglev_keeps_a_client_ip_on_one_backend_and_a_removed_backend_moves_its_flows() {
    let echoes = [
        Echo::start().await,
        Echo::start().await,
        Echo::start().await,
    ];
    let backends: Vec<SocketAddr> = echoes.iter().map(|e| e.addr).collect();
    let listen = free_port();
    let (mut proxy, _registry) = proxy();
    let mut service = udp_service("sticky", listen, &backends);
    service.algorithm = Algorithm::Maglev;
    proxy.apply(&[service.clone()]).expect("apply");
    // Every flow of one client IP lands on one backend.
    let clients = clients(8).await;
    for client in &clients {
        assert!(exchange(client, listen, b"m").await.is_some());
    }
    let used: HashSet<usize> = (0..3).filter(|&i| echoes[i].flows() > 0).collect();
    assert_eq!(used.len(), 1, "one client IP, one backend");
    let chosen = *used.iter().next().expect("one");
    assert_eq!(echoes[chosen].flows(), 8);

    // The backend leaves the route: the flows pick again on their next
    // datagram and land on one other backend.
    service.ports[0].endpoints.remove(chosen);
    proxy.apply(&[service]).expect("apply");
    for client in &clients {
        assert!(exchange(client, listen, b"n").await.is_some());
    }
    assert_eq!(
        echoes[chosen].flows(),
        8,
        "no new flow to the removed backend"
    );
    let moved: usize = (0..3)
        .filter(|&i| i != chosen)
        .map(|i| echoes[i].flows())
        .sum();
    assert_eq!(moved, 8);
}
