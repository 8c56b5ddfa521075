//! Passive health: a refusing backend is ejected at once, the client's
//! connection is retried elsewhere, and the backend returns after its
//! ejection time.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use test_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_backend_is_ejected_and_no_client_notices() {
    let live1 = TestBackend::start("live1", Behavior::Identify).await;
    let live2 = TestBackend::start("live2", Behavior::Identify).await;
    let dead_addr = refusing_addr();

    let addr = listen_addr();
    let lbd = TestLbd::start(&service(
        "web",
        addr,
        &[(live1.addr, 1), (dead_addr, 1), (live2.addr, 1)],
        "[service.health]\neject_time = \"1s\"",
    ))
    .await;

    let mut counts: HashMap<String, usize> = HashMap::new();
    let started = std::time::Instant::now();
    for _ in 0..200 {
        let name = who_answers(addr).await;
        assert!(
            name == "live1" || name == "live2",
            "unexpected answer {name:?}"
        );
        *counts.entry(name).or_default() += 1;
    }
    assert_eq!(counts.values().sum::<usize>(), 200);

    let dead_label = dead_addr.to_string();
    let text = lbd.metrics().await;
    let labels = [("service", "web"), ("backend", dead_label.as_str())];
    assert_eq!(metric(&text, "lbmesh_backend_up", &labels), Some(0.0));
    let ejections = metric(&text, "lbmesh_backend_ejections_total", &labels).unwrap_or(0.0);
    assert!(ejections >= 1.0, "ejections {ejections}");
    let refused = metric(
        &text,
        "lbmesh_connect_errors_total",
        &[("backend", dead_label.as_str()), ("reason", "refused")],
    )
    .unwrap_or(0.0);
    // Once ejected, the backend is not tried again until eject_time (1 s)
    // has passed: at most one refusal per started second.
    let most = 1.0 + started.elapsed().as_secs_f64().floor();
    assert!(
        refused >= 1.0 && refused <= most,
        "refused {refused}, at most {most}"
    );

    // The backend comes back; once its ejection time has passed it gets
    // traffic again.
    let revived = TestBackend::start_on("revived", dead_addr, Behavior::Identify).await;
    let mut seen_revived = false;
    for _ in 0..30 {
        if who_answers(addr).await == "revived" {
            seen_revived = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_revived, "the revived backend never got traffic");
    let text = lbd.metrics().await;
    assert_eq!(metric(&text, "lbmesh_backend_up", &labels), Some(1.0));
    assert!(revived.accepted() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_backend_down_the_client_is_closed_and_counted() {
    let dead_addr = refusing_addr();
    let addr = listen_addr();
    let lbd = TestLbd::start(&service("down", addr, &[(dead_addr, 1)], "retries = 1")).await;
    let answer = who_answers(addr).await;
    assert_eq!(answer, "", "the client sees a plain close");
    let text = lbd.metrics().await;
    assert_eq!(
        metric(
            &text,
            "lbmesh_connections_failed_total",
            &[("service", "down"), ("reason", "all_attempts_failed")]
        ),
        Some(1.0)
    );
    let dead_label = dead_addr.to_string();
    assert_eq!(
        metric(
            &text,
            "lbmesh_connect_errors_total",
            &[("backend", dead_label.as_str()), ("reason", "refused")]
        ),
        Some(2.0),
        "one try plus one retry"
    );
}

/// A loopback listener that never accepts, with its accept queue filled, so
/// further connects get no answer at all (the kernel drops their SYNs).
fn blackhole() -> (socket2::Socket, SocketAddr, Vec<std::net::TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(LOCALHOST, 0).into())
        .expect("bind");
    socket.listen(0).expect("listen");
    let addr = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet");
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(stream) => fillers.push(stream),
            Err(_) => return (socket, addr, fillers),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_ejects_a_silent_backend_and_retries() {
    let (_socket, silent, _fillers) = blackhole();
    let live = TestBackend::start("live", Behavior::Identify).await;
    let addr = listen_addr();
    let lbd = TestLbd::start(&service(
        "web",
        addr,
        &[(silent, 1), (live.addr, 1)],
        "connect_timeout = \"150ms\"",
    ))
    .await;
    for _ in 0..4 {
        assert_eq!(who_answers(addr).await, "live");
    }
    let silent_label = silent.to_string();
    let text = lbd.metrics().await;
    assert_eq!(
        metric(
            &text,
            "lbmesh_connect_errors_total",
            &[("backend", silent_label.as_str()), ("reason", "timeout")]
        ),
        Some(1.0),
        "one timed-out connect, then the backend is ejected"
    );
    assert_eq!(
        metric(
            &text,
            "lbmesh_backend_up",
            &[("backend", silent_label.as_str())]
        ),
        Some(0.0)
    );
}
