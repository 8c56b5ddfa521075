//! A slow-header flood of one lbd's admin port: 20,000 connections from 16
//! source addresses against a descriptor limit of 384. The proxy and `/v1`
//! keep answering; before the fd-aware admin cap both accept loops failed
//! with `Too many open files`. Its own test binary, so that no other
//! cluster test shares the machine's two cores while it measures.
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use test_support::cluster::*;
use test_support::*;

fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// One probe of the proxy (a forwarded connection answered by `b0`),
/// bounded by a second, and one of `/v1` (an authenticated read over TLS),
/// bounded by three. A starved admin port shows as waits of the 10 s
/// header timeout (a slot frees only when a slow client times out); the
/// looser `/v1` bound leaves room for a debug build's TLS handshake on a
/// loaded two-core machine, where one CI run saw 4 probes miss 1 s.
async fn probe(proxy: SocketAddr, api: SocketAddr, token: &str, ca: &str) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let within = Duration::from_secs(1);
    let within_tls = Duration::from_secs(3);
    let forwarded = tokio::time::timeout(within, async {
        let mut stream = tokio::net::TcpStream::connect(proxy)
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(answer)
    })
    .await
    .map_err(|_| "the proxy did not answer within 1 s".to_owned())??;
    if !forwarded.contains("b0") {
        return Err(format!("the proxy answered {forwarded:?}"));
    }
    let request = format!("GET /v1/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    let ca = ca.to_owned();
    let read = tokio::time::timeout(
        within_tls,
        tokio::task::spawn_blocking(move || tls_exchange(api, &ca, request.as_bytes(), within_tls)),
    )
    .await
    .map_err(|_| "/v1 did not answer within 3 s".to_owned())?
    .map_err(|e| e.to_string())??;
    if !read.starts_with("HTTP/1.1 200") {
        return Err(format!("/v1 answered {:?}", read.lines().next()));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_flood_leaves_the_proxy_and_v1_answering() {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    use tokio::io::AsyncWriteExt;
    // lbd gets few descriptors, so that on its own a flood of its admin
    // port would take them all; the flood is many times more.
    const NOFILE: u64 = 384;
    const FLOOD: usize = 20_000;
    // The flood's sockets are this test's descriptors.
    let wanted = FLOOD as u64 + 2_000;
    if rlimit::setrlimit(rlimit::Resource::NOFILE, wanted, wanted).is_err() {
        let _ = rlimit::increase_nofile_limit(wanted);
    }
    let have = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    // Below the limit, the oldest sockets (the server closed them first)
    // are let go to make room: the flood still makes FLOOD connections.
    let most_held = usize::try_from(have.saturating_sub(1_000))
        .unwrap_or(FLOOD)
        .min(FLOOD);
    let b0 = TestBackend::start("b0", Behavior::Identify).await;
    let b0_addr = b0.addr.to_string();
    let (cluster, port) = tokio::task::spawn_blocking(move || {
        let cluster = Cluster::bootstrap(&[], Some(NOFILE));
        let port = free_port_on_all(&cluster);
        let (code, _, err) = cluster.lbctl(
            0,
            &[
                "service",
                "create",
                "web",
                "-p",
                &format!("{port}:80"),
                "--endpoint",
                &b0_addr,
            ],
        );
        assert_eq!(code, 0, "{err}");
        (cluster, port)
    })
    .await
    .expect("cluster");
    let proxy = SocketAddr::new(cluster.ip(0), port);
    let api: SocketAddr = cluster.api(0).parse().expect("api addr");
    let token = cluster.control_token.clone();
    let ca = cluster.ca_pem();
    let started = Instant::now();
    while probe(proxy, api, &token, &ca).await.is_err()
        && started.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    probe(proxy, api, &token, &ca)
        .await
        .expect("served before the flood");

    // Slow headers from sixteen addresses (32 each fit the per-client
    // cap, and together over the total: 512 open on their own would take
    // every descriptor), up to 1,000 connects in flight.
    let sources: Vec<IpAddr> = (10..26)
        .map(|n| IpAddr::from([127, cluster.block, 0, n]))
        .collect();
    let attempted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flooding = {
        let attempted = std::sync::Arc::clone(&attempted);
        tokio::spawn(async move {
            let connect = |n: usize| {
                let source = SocketAddr::new(sources[n % sources.len()], 0);
                async move {
                    let socket = tokio::net::TcpSocket::new_v4().ok()?;
                    socket.bind(source).ok()?;
                    let mut stream =
                        tokio::time::timeout(Duration::from_millis(500), socket.connect(api))
                            .await
                            .ok()?
                            .ok()?;
                    stream
                        .write_all(b"GET /v1/nodes HTTP/1.1\r\nHo")
                        .await
                        .ok()?;
                    Some(stream)
                }
            };
            let mut held = std::collections::VecDeque::with_capacity(most_held);
            let mut pending = FuturesUnordered::new();
            for n in 0..FLOOD {
                if pending.len() >= 1_000 {
                    if let Some(Some(stream)) = pending.next().await {
                        held.push_back(stream);
                    }
                }
                while held.len() + pending.len() >= most_held {
                    held.pop_front();
                }
                pending.push(connect(n));
                attempted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            while let Some(done) = pending.next().await {
                held.extend(done);
            }
            held
        })
    };
    // Probes while the flood grows, then with all of it open.
    let mut failures = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !flooding.is_finished() && Instant::now() < deadline {
        let at = attempted.load(std::sync::atomic::Ordering::Relaxed);
        if let Err(error) = probe(proxy, api, &token, &ca).await {
            failures.push(format!("after {at} flood connects: {error}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(flooding.is_finished(), "the flood did not finish in time");
    let held = flooding.await.expect("flood");
    for _ in 0..3 {
        if let Err(error) = probe(proxy, api, &token, &ca).await {
            failures.push(format!(
                "with {} flood connections open here: {error}",
                held.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of the probes failed:\n{}\nlbd log:\n{}",
        failures.len(),
        failures.join("\n"),
        log_tail(&cluster.log(0))
    );
    eprintln!(
        "{FLOOD} flood connections made, {} held by the test at the end",
        held.len()
    );
    drop(held);
}
