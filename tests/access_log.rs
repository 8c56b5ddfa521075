//! The per-service access log end to end, in-process lbd writing to a
//! file: one JSON line per closed connection whose byte counts are the
//! client's, how each ended, and nothing from a service that keeps it off.
use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use lbmesh::access_log::AccessLogOutput;

const CONNECTIONS: usize = 10_000;
/// Clients at a time.
const CONCURRENCY: usize = 32;

/// What connection `i` sends: sizes that differ, so the pairs compared
/// below are not all alike.
fn request_size(i: usize) -> usize {
    1 + (i * 37) % 3_000
}

/// Sends `size` bytes, half-closes, reads the answer to its end; returns
/// `(sent, received)`.
async fn exchange(addr: std::net::SocketAddr, size: usize) -> (u64, u64) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(&vec![b'x'; size]).await.expect("send");
    stream.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("answer");
    (size as u64, answer.len() as u64)
}

/// The file's lines as JSON, once there are `count` (bounded wait).
async fn lines(path: &std::path::Path, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= count || tokio::time::Instant::now() > deadline {
            return text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_give_ten_thousand_lines_with_the_clients_bytes() {
    let counting = TestBackend::start("counting", Behavior::CountThenReply).await;
    let naming = TestBackend::start("naming", Behavior::Identify).await;
    let logged = listen_addr();
    let quiet = listen_addr();
    let closing = listen_addr();
    let dead = listen_addr();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let services = [
        service("logged", logged, &[(counting.addr, 1)], "access_log = true"),
        service("quiet", quiet, &[(counting.addr, 1)], ""),
        service("closing", closing, &[(naming.addr, 1)], "access_log = true"),
        service(
            "dead",
            dead,
            &[(refusing_addr(), 1)],
            "access_log = true\nretries = 1",
        ),
    ]
    .concat();
    let lbd = TestLbd::start_with(&services, &AccessLogOutput::File(path.clone())).await;

    // Connections of a service with the log off leave no line.
    for i in 0..10 {
        exchange(quiet, request_size(i)).await;
    }

    let mut clients = Vec::with_capacity(CONNECTIONS);
    for batch in (0..CONNECTIONS).collect::<Vec<_>>().chunks(CONCURRENCY) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|&i| tokio::spawn(exchange(logged, request_size(i))))
            .collect();
        for task in tasks {
            clients.push(task.await.expect("client"));
        }
    }
    let all = lines(&path, CONNECTIONS).await;
    assert_eq!(all.len(), CONNECTIONS, "one line per connection, no more");
    let mut logged_pairs: Vec<(u64, u64)> = all
        .iter()
        .map(|line| {
            assert_eq!(line["service"], "logged", "{line}");
            assert_eq!(line["backend"], counting.addr.to_string(), "{line}");
            assert_eq!(line["listen"], logged.to_string(), "{line}");
            assert_eq!(line["end"], "client_close", "{line}");
            assert_eq!(line["retries"], 0, "{line}");
            assert!(line["duration_ms"].as_f64().is_some(), "{line}");
            assert!(
                line["time"].as_str().is_some_and(|t| t.ends_with('Z')),
                "{line}"
            );
            (
                line["bytes_in"].as_u64().expect("bytes_in"),
                line["bytes_out"].as_u64().expect("bytes_out"),
            )
        })
        .collect();
    logged_pairs.sort_unstable();
    clients.sort_unstable();
    assert_eq!(logged_pairs, clients, "each line's bytes are one client's");
    let metrics = lbd.metrics().await;
    assert_eq!(
        metric(&metrics, "lbmesh_access_log_lines_total", &[]),
        Some(CONNECTIONS as f64)
    );
    assert_eq!(
        metric(&metrics, "lbmesh_access_log_dropped_total", &[]),
        Some(0.0)
    );

    // A backend that closes first, and a service whose backend refuses.
    let mut stream = TcpStream::connect(closing).await.expect("connect");
    let mut name = Vec::new();
    stream.read_to_end(&mut name).await.expect("name");
    drop(stream);
    let mut stream = TcpStream::connect(dead).await.expect("connect");
    let mut nothing = Vec::new();
    let _ = stream.read_to_end(&mut nothing).await;
    let all = lines(&path, CONNECTIONS + 2).await;
    let by_service: BTreeMap<&str, &Value> = all[CONNECTIONS..]
        .iter()
        .map(|line| (line["service"].as_str().unwrap_or_default(), line))
        .collect();
    let closed = by_service["closing"];
    assert_eq!(closed["end"], "backend_close", "{closed}");
    assert_eq!(
        (closed["bytes_in"].as_u64(), closed["bytes_out"].as_u64()),
        (Some(0), Some(name.len() as u64)),
        "{closed}"
    );
    let refused = by_service["dead"];
    assert_eq!(refused["end"], "no_backend", "{refused}");
    assert_eq!(refused["backend"], Value::Null, "{refused}");
    assert_eq!(refused["retries"], 1, "{refused}");
}
