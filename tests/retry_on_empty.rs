//! `retry_on_empty`: a backend that closes a connection before answering
//! (a task killed in the middle of a request) has what the client sent
//! resent to another backend, within `retries`; without the setting the
//! client sees the close, and a client that has finished sending is never
//! replayed.
use std::net::SocketAddr;
use std::time::Duration;

use test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one line and returns the answer line ("" when closed unanswered).
async fn ask(addr: SocketAddr, line: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .expect("send");
    read_line(&mut stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_requests_go_to_another_backend() {
    let hangup = TestBackend::start("hangup", Behavior::HangUpAfterRead).await;
    let good = TestBackend::start("good", Behavior::AnswerLine).await;
    let addr = listen_addr();
    let lbd = TestLbd::start(&service(
        "web",
        addr,
        &[(hangup.addr, 1), (good.addr, 1)],
        "retry_on_empty = true",
    ))
    .await;

    for i in 0..40 {
        let request = format!("request {i}");
        assert_eq!(ask(addr, &request).await, format!("good: {request}"));
    }
    // Round-robin sent about half of the connections to the backend that
    // hangs up; each was resent, and the backend was not ejected for it.
    assert!(hangup.accepted() >= 10, "hangup got {}", hangup.accepted());
    let label = hangup.addr.to_string();
    let labels = [("service", "web"), ("backend", label.as_str())];
    let text = lbd.metrics().await;
    let unanswered = metric(&text, "lbmesh_unanswered_total", &labels).unwrap_or(0.0);
    assert_eq!(unanswered, hangup.accepted() as f64);
    assert_eq!(metric(&text, "lbmesh_backend_up", &labels), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_setting_the_client_sees_the_close() {
    let hangup = TestBackend::start("hangup", Behavior::HangUpAfterRead).await;
    let good = TestBackend::start("good", Behavior::AnswerLine).await;
    let addr = listen_addr();
    let _lbd = TestLbd::start(&service(
        "web",
        addr,
        &[(hangup.addr, 1), (good.addr, 1)],
        "",
    ))
    .await;

    let mut unanswered = 0;
    for i in 0..10 {
        if ask(addr, &format!("request {i}")).await.is_empty() {
            unanswered += 1;
        }
    }
    assert_eq!(unanswered, hangup.accepted());
    assert!(
        unanswered >= 4,
        "only {unanswered} of 10 reached the hang-up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_stop_at_the_retry_budget() {
    let hangup = TestBackend::start("hangup", Behavior::HangUpAfterRead).await;
    let addr = listen_addr();
    let lbd = TestLbd::start(&service(
        "web",
        addr,
        &[(hangup.addr, 1)],
        "retry_on_empty = true\nretries = 2",
    ))
    .await;

    assert_eq!(ask(addr, "hello").await, "");
    // The first attempt and two retries, then the client is closed.
    assert_eq!(hangup.accepted(), 3);
    let text = lbd.metrics().await;
    assert_eq!(
        metric(
            &text,
            "lbmesh_connections_failed_total",
            &[("service", "web"), ("reason", "all_attempts_failed")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_finished_sending_is_not_replayed() {
    // The sink closes only after the client's EOF has reached it, so the
    // close always comes after the client finished; a backend that closed
    // on the first read could race the client's shutdown.
    let hangup = TestBackend::start("sink", Behavior::HangUpAtEof).await;
    let addr = listen_addr();
    let _lbd = TestLbd::start(&service(
        "web",
        addr,
        &[(hangup.addr, 1)],
        "retry_on_empty = true\nretries = 2",
    ))
    .await;

    // A one-way message: the backend's close after the client's EOF is a
    // normal end, and resending would deliver the message twice.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(b"log line\n").await.expect("send");
    stream.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("read to EOF");
    assert!(rest.is_empty());
    assert_eq!(hangup.accepted(), 1);
}

/// With a reply timeout, a backend that takes a request and stays silent
/// (a host cut off mid-request: its kernel still accepted the connection)
/// is ejected and the request goes to another backend; the client never
/// notices. Every request is bounded by 10 s so a regression fails rather
/// than hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_backend_is_ejected_and_its_request_resent() {
    let silent = TestBackend::start("silent", Behavior::SilentAfterRead).await;
    let good = TestBackend::start("good", Behavior::AnswerLine).await;
    let addr = listen_addr();
    let lbd = TestLbd::start(&service(
        "web",
        addr,
        &[(silent.addr, 1), (good.addr, 1)],
        "retry_on_empty = true\nreply_timeout = \"300ms\"\nhealth = { eject_time = \"1m\" }",
    ))
    .await;

    for i in 0..10 {
        let request = format!("request {i}");
        let answer = tokio::time::timeout(Duration::from_secs(10), ask(addr, &request))
            .await
            .expect("answered within 10 s");
        assert_eq!(answer, format!("good: {request}"));
    }
    // Round-robin gave the silent backend the first or second connection;
    // after that it was ejected for a minute and got no other.
    assert_eq!(silent.accepted(), 1);
    let label = silent.addr.to_string();
    let labels = [("service", "web"), ("backend", label.as_str())];
    let text = lbd.metrics().await;
    assert_eq!(metric(&text, "lbmesh_unanswered_total", &labels), Some(1.0));
    assert_eq!(
        metric(&text, "lbmesh_backend_ejections_total", &labels),
        Some(1.0)
    );
}

/// Without a reply timeout, the same silent backend keeps its request
/// until the idle timeout, and the client sees the connection close
/// unanswered: what a request in flight at the moment of a partition got
/// before `reply_timeout` existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reply_timeout_a_silent_backend_holds_its_request() {
    let silent = TestBackend::start("silent", Behavior::SilentAfterRead).await;
    let addr = listen_addr();
    let _lbd = TestLbd::start(&service(
        "web",
        addr,
        &[(silent.addr, 1)],
        "retry_on_empty = true\nidle_timeout = \"1s\"",
    ))
    .await;
    let answer = tokio::time::timeout(Duration::from_secs(10), ask(addr, "hello"))
        .await
        .expect("closed at the idle timeout");
    assert_eq!(answer, "");
    assert_eq!(silent.accepted(), 1);
}
