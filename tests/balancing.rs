//! Backend selection through real sockets: round-robin, smooth weighted,
//! Maglev and least-conn, plus Maglev's table properties on the picker.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use lb_config::Algorithm;
use lbmesh_proxy::balance::{
    maglev_table_size, Backend, BackendSet, PickContext, MAGLEV_MAX_TABLE_SIZE,
    MAGLEV_MIN_TABLE_SIZE,
};
use lbmesh_proxy::metrics::BackendMetrics;
use test_support::*;
use tokio::net::TcpStream;

async fn backends(n: usize, behavior: Behavior) -> Vec<TestBackend> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(TestBackend::start(&format!("b{i}"), behavior).await);
    }
    out
}

fn weighted(backends: &[TestBackend], weights: &[u32]) -> Vec<(SocketAddr, u32)> {
    backends
        .iter()
        .zip(weights)
        .map(|(b, &w)| (b.addr, w))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_300_connections_give_exactly_100_each() {
    let bs = backends(3, Behavior::Identify).await;
    let addr = listen_addr();
    let lbd = TestLbd::start(&service("web", addr, &weighted(&bs, &[1, 1, 1]), "")).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        *counts.entry(who_answers(addr).await).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&c| c == 100), "{counts:?}");
    for b in &bs {
        assert_eq!(b.accepted(), 100, "{}", b.name);
    }
    let metrics = lbd.metrics().await;
    for b in &bs {
        let sent = metric(
            &metrics,
            "lbmesh_connections_total",
            &[("service", "web"), ("backend", &b.addr.to_string())],
        );
        assert_eq!(sent, Some(100.0), "{}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_3_1_1_follows_nginx_smooth_order() {
    let bs = backends(3, Behavior::Identify).await;
    let addr = listen_addr();
    let _lbd = TestLbd::start(&service(
        "web",
        addr,
        &weighted(&bs, &[3, 1, 1]),
        "algorithm = \"weighted\"",
    ))
    .await;
    let mut sequence = Vec::new();
    for _ in 0..50 {
        sequence.push(who_answers(addr).await);
    }
    // nginx's smooth weighted round-robin for {a:3, b:1, c:1}: a b a c a.
    let period = ["b0", "b1", "b0", "b2", "b0"];
    let expected: Vec<&str> = period.iter().cycle().take(50).copied().collect();
    assert_eq!(sequence, expected);
    assert_eq!(bs[0].accepted(), 30);
    assert_eq!(bs[1].accepted(), 10);
    assert_eq!(bs[2].accepted(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_keeps_each_client_ip_on_one_backend() {
    let bs = backends(5, Behavior::Identify).await;
    let addr = listen_addr();
    let _lbd = TestLbd::start(&service(
        "web",
        addr,
        &weighted(&bs, &[1; 5]),
        "algorithm = \"maglev\"",
    ))
    .await;
    let mut chosen = HashMap::new();
    for round in 0..5 {
        for host in 1..=40u8 {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, host));
            let name = who_answers_from(source, addr).await;
            let first = chosen.entry(host).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "client {source} moved in round {round}");
        }
    }
    let distinct: std::collections::HashSet<_> = chosen.values().collect();
    assert!(distinct.len() >= 3, "40 clients should spread: {chosen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_sends_new_connections_away_from_the_busy_backend() {
    // The busy backend echoes and holds its connections; the quick ones
    // close theirs at once.
    let busy = TestBackend::start("busy", Behavior::IdentifyThenEcho).await;
    let quick1 = TestBackend::start("quick1", Behavior::Identify).await;
    let quick2 = TestBackend::start("quick2", Behavior::Identify).await;
    let addr = listen_addr();
    let least_conn = "algorithm = \"least-conn\"";

    // First the busy backend alone: it takes three long connections.
    let mut lbd = TestLbd::start(&service("web", addr, &[(busy.addr, 1)], least_conn)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(read_line(&mut stream).await, "busy");
        held.push(stream);
    }
    // Then the quick ones join; the reload keeps the busy backend's count.
    lbd.reload(&service(
        "web",
        addr,
        &[(busy.addr, 1), (quick1.addr, 1), (quick2.addr, 1)],
        least_conn,
    ));
    let before = busy.accepted();
    for _ in 0..60 {
        let name = who_answers(addr).await;
        assert_ne!(name, "busy", "a new connection went to the busy backend");
    }
    assert_eq!(busy.accepted(), before);
    assert!(quick1.accepted() > 0 && quick2.accepted() > 0);
    let label = busy.addr.to_string();
    let text = lbd.metrics().await;
    assert_eq!(
        metric(
            &text,
            "lbmesh_backend_active_connections",
            &[("backend", label.as_str())]
        ),
        Some(3.0)
    );
    drop(held);
}

fn detached_set(algorithm: Algorithm, n: usize) -> BackendSet {
    BackendSet::new(
        algorithm,
        (0..n)
            .map(|i| {
                let ip = Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8);
                let addr = SocketAddr::new(IpAddr::V4(ip), 80);
                (Arc::new(Backend::new(addr, BackendMetrics::detached())), 1)
            })
            .collect(),
    )
}

/// Backend counts with tables of every size class, from the floor
/// (1,601 slots) to the cap (65,537).
const MAGLEV_SIZES: [usize; 8] = [3, 10, 24, 40, 100, 200, 400, 1000];

#[test]
fn maglev_table_gives_each_backend_floor_or_ceil_of_m_over_n_at_every_size() {
    let mut sizes = std::collections::BTreeSet::new();
    for n in MAGLEV_SIZES {
        let set = detached_set(Algorithm::Maglev, n);
        let table = set.maglev_lookup_table().expect("maglev table");
        let m = table.len();
        assert_eq!(m, maglev_table_size(n), "{n} backends");
        sizes.insert(m);
        let mut counts = vec![0usize; n];
        for &slot in table {
            counts[slot as usize] += 1;
        }
        let (lo, hi) = (m / n, m.div_ceil(n));
        assert!(
            counts.iter().all(|&c| c == lo || c == hi),
            "{n} backends, {m} slots: {counts:?}"
        );
    }
    assert!(sizes.contains(&MAGLEV_MIN_TABLE_SIZE));
    assert!(sizes.contains(&MAGLEV_MAX_TABLE_SIZE));
    // 3 and 10 backends share the floor; every other count has its own.
    assert_eq!(sizes.len(), MAGLEV_SIZES.len() - 1, "{sizes:?}");
}

#[test]
fn maglev_removing_one_backend_keeps_90_percent_of_the_other_clients_at_every_size() {
    for n in MAGLEV_SIZES {
        let full = detached_set(Algorithm::Maglev, n);
        let removed = full.backends()[n / 3].addr;
        let fewer = BackendSet::new(
            Algorithm::Maglev,
            full.backends()
                .iter()
                .filter(|b| b.addr != removed)
                .map(|b| (Arc::clone(b), 1))
                .collect(),
        );
        assert_eq!(
            full.maglev_lookup_table().map(<[u16]>::len),
            fewer.maglev_lookup_table().map(<[u16]>::len),
            "{n} and {} backends share a table size",
            n - 1
        );
        let (mut eligible, mut kept) = (0, 0);
        for i in 0..20_000u32 {
            let ctx = PickContext {
                client: IpAddr::V4(Ipv4Addr::from(
                    0xc0a8_0000u32.wrapping_add(i.wrapping_mul(40_503)),
                )),
                lane: 0,
            };
            let before = full.pick(ctx).expect("pick").addr;
            assert_eq!(full.pick(ctx).expect("pick").addr, before);
            if before == removed {
                continue;
            }
            eligible += 1;
            if fewer.pick(ctx).expect("pick").addr == before {
                kept += 1;
            }
        }
        let expected = 20_000 * (n - 1) / n;
        assert!(eligible * 10 > expected * 9, "{n}: {eligible}");
        assert!(
            kept * 100 >= eligible * 90,
            "{n} backends: kept {kept} of {eligible}"
        );
    }
}
