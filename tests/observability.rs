//! What an operator sees of lbd: its log lines at the default level, the
//! JSON log format, and the metrics it exports.
use std::time::Duration;

use serde_json::Value;
use test_support::cluster::Cluster;
use test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Lines a node may log from a fresh start through forming a cluster.
const MAX_START_LINES: usize = 10;
/// The longest line an operator should have to read.
const MAX_LINE_CHARS: usize = 200;

/// A fresh three-node cluster logs a handful of short lines per node at
/// the default level: no openraft INFO chatter, no routing update per
/// change, and no colour codes in a file.
#[test]
fn a_fresh_start_logs_a_few_short_plain_lines() {
    // The default level is what is under test.
    std::env::remove_var("LBD_LOG");
    std::env::remove_var("LBD_LOG_FORMAT");
    let mut cluster = Cluster::form();
    // Let the scheduler, the agents and the heartbeats settle.
    std::thread::sleep(Duration::from_secs(3));
    for n in 0..3 {
        cluster.stop(n);
    }
    for n in 0..3 {
        let log = cluster.log(n);
        let lines: Vec<&str> = log.lines().collect();
        assert!(
            !lines.is_empty() && lines.len() <= MAX_START_LINES,
            "node {n} logged {} lines (at most {MAX_START_LINES}):\n{log}",
            lines.len()
        );
        for line in &lines {
            assert!(
                line.chars().count() <= MAX_LINE_CHARS,
                "node {n} logged a line of {} characters:\n{line}",
                line.chars().count()
            );
            assert!(
                !line.contains('\u{1b}'),
                "node {n} wrote colour codes into a file:\n{line}"
            );
            assert!(
                !line.contains("openraft"),
                "node {n} logged a dependency's INFO line:\n{line}"
            );
        }
    }
}

/// `--log-format json` writes one object per line with the level, the
/// target and the message.
#[test]
fn json_log_lines_parse() {
    std::env::remove_var("LBD_LOG");
    let mut cluster = Cluster::bootstrap(&["--log-format", "json"], None);
    cluster.stop(0);
    let log = cluster.log(0);
    let mut messages = Vec::new();
    for line in log.lines() {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(value["level"].is_string(), "no level: {line}");
        assert!(value["target"].is_string(), "no target: {line}");
        messages.push(value["fields"]["message"].as_str().unwrap_or("").to_owned());
    }
    for expected in ["lbd serving", "SIGTERM: shutting down"] {
        assert!(
            messages.iter().any(|m| m == expected),
            "no {expected:?} line in:\n{log}"
        );
    }
}

/// Each backend tried after the first counts one retry: with one refusing
/// and one live backend, every refused connect was retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_counted_per_service() {
    let live = TestBackend::start("live", Behavior::Identify).await;
    let dead = refusing_addr();
    let addr = listen_addr();
    let lbd = TestLbd::start(&service(
        "web",
        addr,
        &[(dead, 1), (live.addr, 1)],
        "[service.health]\neject_time = \"50ms\"",
    ))
    .await;
    for _ in 0..20 {
        assert_eq!(who_answers(addr).await, "live");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = lbd.metrics().await;
    let dead_label = dead.to_string();
    let refused = metric(
        &text,
        "lbmesh_connect_errors_total",
        &[("backend", &dead_label), ("reason", "refused")],
    )
    .unwrap_or(0.0);
    assert!(refused >= 1.0, "the dead backend was tried: {text}");
    assert_eq!(
        metric(&text, "lbmesh_retries_total", &[("service", "web")]),
        Some(refused)
    );
}

/// The configured cap is exported, and a connection that finds it reached
/// is counted while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_and_its_hits_are_exported() {
    let echo = TestBackend::start("echo", Behavior::Echo).await;
    let addr = listen_addr();
    let lbd = TestLbd::start(&service(
        "capped",
        addr,
        &[(echo.addr, 1)],
        "max_connections = 1",
    ))
    .await;
    let labels = [("service", "capped")];
    let text = lbd.metrics().await;
    assert_eq!(
        metric(&text, "lbmesh_service_max_connections", &labels),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "lbmesh_max_connections_reached_total", &labels),
        Some(0.0)
    );

    let mut first = TcpStream::connect(addr).await.expect("connect");
    first.write_all(b"a").await.expect("write");
    let mut byte = [0u8; 1];
    first.read_exact(&mut byte).await.expect("echo");
    // The second waits in the backlog until the first closes.
    let mut second = TcpStream::connect(addr).await.expect("connect");
    second.write_all(b"b").await.expect("write");
    let api = lbd.daemon.api_addr();
    eventually("the cap was hit", || async move {
        let text = http_get(api, "/metrics").await.1;
        // Each proxy thread's accept loop that finds the connection
        // pending counts once.
        metric(
            &text,
            "lbmesh_max_connections_reached_total",
            &[("service", "capped")],
        )
        .is_some_and(|hits| hits >= 1.0)
    })
    .await;
    drop(first);
    tokio::time::timeout(WAIT, second.read_exact(&mut byte))
        .await
        .expect("the second is served once the first closed")
        .expect("echo");
    assert_eq!(&byte, b"b");
}

/// How connections end is counted by end, and each one's duration is in
/// the service's histogram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_ends_and_durations_are_counted() {
    let echo = TestBackend::start("echo", Behavior::Echo).await;
    let addr = listen_addr();
    let lbd = TestLbd::start(&service("web", addr, &[(echo.addr, 1)], "")).await;
    let down = listen_addr();
    let dead = TestLbd::start(&service(
        "down",
        down,
        &[(refusing_addr(), 1)],
        "retries = 0",
    ))
    .await;

    // Three clean closes.
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"ping").await.expect("write");
        stream.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"ping");
    }
    // One client abort: a reset while the backend still has data for it.
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    {
        use std::io::{Read, Write};
        let mut stream = stream;
        stream.write_all(b"x").expect("write");
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).expect("echo");
    }
    // And one with no backend.
    assert_eq!(who_answers(down).await, "");

    let api = lbd.daemon.api_addr();
    eventually("the abort is counted", || async move {
        let text = http_get(api, "/metrics").await.1;
        metric(
            &text,
            "lbmesh_connections_closed_total",
            &[("service", "web"), ("end", "client_error")],
        ) == Some(1.0)
    })
    .await;
    let text = lbd.metrics().await;
    let closed = |end| {
        metric(
            &text,
            "lbmesh_connections_closed_total",
            &[("service", "web"), ("end", end)],
        )
    };
    assert_eq!(closed("finished"), Some(3.0), "{text}");
    assert_eq!(closed("backend_error"), Some(0.0));
    assert_eq!(
        metric(
            &text,
            "lbmesh_connection_duration_seconds_count",
            &[("service", "web")]
        ),
        Some(4.0)
    );
    let text = dead.metrics().await;
    assert_eq!(
        metric(
            &text,
            "lbmesh_connections_closed_total",
            &[("service", "down"), ("end", "no_backend")]
        ),
        Some(1.0),
        "{text}"
    );
}
