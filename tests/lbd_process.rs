//! The `lbd` binary as users run it: signals, reloads, shutdown, admin routes
//! and config errors.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An lbd child process with its config and log in a temp dir.
struct LbdProcess {
    child: Child,
    api: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LbdProcess {
    async fn start(services: &str, grace: &str) -> Self {
        Self::start_with_env(services, grace, &[]).await
    }

    async fn start_with_env(services: &str, grace: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let api = listen_addr();
        let config = dir.path().join("lbd.toml");
        write_config(&config, api, grace, services);
        let log = dir.path().join("lbd.log");
        let child = Command::new(env!("CARGO_BIN_EXE_lbd"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .envs(env.iter().copied())
            .spawn()
            .expect("spawn lbd");
        let process = Self {
            child,
            api,
            config,
            log,
            _dir: dir,
        };
        let api = process.api;
        eventually("lbd is ready", || async move {
            match TcpStream::connect(api).await {
                Ok(_) => http_get(api, "/ready").await.0 == 200,
                Err(_) => false,
            }
        })
        .await;
        process
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    async fn metrics(&self) -> String {
        http_get(self.api, "/metrics").await.1
    }

    async fn wait_for_reloads(&self, result: &str, count: f64) {
        let api = self.api;
        eventually(
            &format!("{count} reload(s) with result {result}"),
            || async move {
                let text = http_get(api, "/metrics").await.1;
                metric(&text, "lbmesh_config_reloads_total", &[("result", result)]) == Some(count)
            },
        )
        .await;
    }

    /// Waits for the process to exit; returns its exit code and how long it took.
    fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status.code(), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "lbd did not exit within {limit:?}; log:\n{}",
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LbdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(path: &Path, api: SocketAddr, grace: &str, services: &str) {
    let text = format!(
        "[node]\nname = \"proc\"\napi_addr = \"{api}\"\nshutdown_grace = \"{grace}\"\n\n{services}"
    );
    std::fs::write(path, text).expect("write config");
}

async fn echo_round_trip(stream: &mut TcpStream, data: &[u8]) {
    stream.write_all(data).await.expect("write");
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_adds_a_backend_without_touching_open_connections() {
    let b0 = TestBackend::start("b0", Behavior::IdentifyThenEcho).await;
    let b1 = TestBackend::start("b1", Behavior::IdentifyThenEcho).await;
    let b2 = TestBackend::start("b2", Behavior::IdentifyThenEcho).await;
    let addr = listen_addr();
    let two = service("web", addr, &[(b0.addr, 1), (b1.addr, 1)], "");
    let lbd = LbdProcess::start(&two, "5s").await;

    let mut open = TcpStream::connect(addr).await.expect("connect");
    let first = read_line(&mut open).await;
    assert!(first == "b0" || first == "b1", "{first}");

    let three = service("web", addr, &[(b0.addr, 1), (b1.addr, 1), (b2.addr, 1)], "");
    write_config(&lbd.config, lbd.api, "5s", &three);
    lbd.signal("HUP");
    lbd.wait_for_reloads("ok", 1.0).await;

    echo_round_trip(&mut open, b"still here after the reload").await;
    let before = [b0.accepted(), b1.accepted()];
    for _ in 0..30 {
        who_answers(addr).await;
    }
    // The new snapshot starts a fresh round-robin over three backends.
    assert_eq!(b2.accepted(), 10);
    assert_eq!(b0.accepted() - before[0], 10);
    assert_eq!(b1.accepted() - before[1], 10);

    // A broken file is rejected and the running config keeps serving.
    std::fs::write(&lbd.config, "[[service]]\nname = \"web\"\nbogus = true\n").expect("write");
    lbd.signal("HUP");
    lbd.wait_for_reloads("error", 1.0).await;
    for _ in 0..3 {
        let name = who_answers(addr).await;
        assert!(["b0", "b1", "b2"].contains(&name.as_str()), "{name}");
    }
    echo_round_trip(&mut open, b"and after the rejected one").await;
    assert!(
        lbd.log_text().contains("bogus"),
        "the log names the bad field"
    );

    // A removed service's listener is closed on reload.
    let other = listen_addr();
    let only_other = service("other", other, &[(b0.addr, 1)], "");
    write_config(&lbd.config, lbd.api, "5s", &only_other);
    lbd.signal("HUP");
    lbd.wait_for_reloads("ok", 2.0).await;
    eventually("the old port refuses", || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert_eq!(who_answers(other).await, "b0");
    echo_round_trip(&mut open, b"open connections outlive their listener").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_transfer_refuses_new_connections_and_exits_0() {
    let echo = TestBackend::start("echo", Behavior::Echo).await;
    let addr = listen_addr();
    let mut lbd = LbdProcess::start(&service("web", addr, &[(echo.addr, 1)], ""), "10s").await;

    let mut in_flight = TcpStream::connect(addr).await.expect("connect");
    echo_round_trip(&mut in_flight, b"before").await;
    lbd.signal("TERM");

    eventually("new connections are refused", || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    let api = lbd.api;
    assert_eq!(
        http_get(api, "/ready").await.0,
        503,
        "not ready while draining"
    );

    // The open connection still moves a whole transfer, then closes.
    let chunk = vec![0xa5u8; 1024 * 1024];
    for _ in 0..4 {
        echo_round_trip(&mut in_flight, &chunk).await;
    }
    assert!(
        lbd.child.try_wait().expect("try_wait").is_none(),
        "lbd waits for the connection"
    );
    drop(in_flight);
    let (code, took) = lbd.wait_exit(Duration::from_secs(8));
    assert_eq!(code, Some(0), "log:\n{}", lbd.log_text());
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deadline_closes_connections_that_do_not_finish() {
    let echo = TestBackend::start("echo", Behavior::Echo).await;
    let addr = listen_addr();
    let mut lbd = LbdProcess::start(&service("web", addr, &[(echo.addr, 1)], ""), "500ms").await;
    let mut stuck = TcpStream::connect(addr).await.expect("connect");
    echo_round_trip(&mut stuck, b"x").await;
    lbd.signal("TERM");
    let (code, took) = lbd.wait_exit(Duration::from_secs(8));
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(4), "exit took {took:?}");
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(WAIT, stuck.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "the stuck connection is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_answer() {
    let addr = listen_addr();
    let echo = TestBackend::start("echo", Behavior::Echo).await;
    let lbd = LbdProcess::start(&service("web", addr, &[(echo.addr, 1)], ""), "1s").await;
    assert_eq!(http_get(lbd.api, "/live").await, (200, "ok\n".to_owned()));
    assert_eq!(
        http_get(lbd.api, "/ready").await,
        (200, "ready\n".to_owned())
    );
    assert_eq!(http_get(lbd.api, "/nope").await.0, 404);
    let text = lbd.metrics().await;
    assert!(
        text.contains("# TYPE lbmesh_connect_duration_seconds histogram"),
        "{text}"
    );
    assert_eq!(
        metric(&text, "lbmesh_backend_up", &[("service", "web")]),
        Some(1.0)
    );
}

/// Runs `lbd --config` on `text`; returns (exit code, stderr).
fn run_with_config(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lbd"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lbd");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                std::io::Read::read_to_string(&mut pipe, &mut stderr).expect("stderr");
            }
            return (status.code(), stderr);
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("lbd kept running with a bad config:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `lbd --version` names the commit it was built from, as lbctl does.
#[test]
fn version_names_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_lbd"))
        .arg("--version")
        .output()
        .expect("run lbd --version");
    assert!(out.status.success());
    let expected = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("lbd {} (commit {expected})\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn config_errors_exit_non_zero_and_name_the_field() {
    // fixed-port-ok: every file below is refused before lbd binds anything.
    let api = format!("[node]\napi_addr = \"{}\"\n", listen_addr());
    let cases = [
        ("[[service]]\nname = \"web\"\nports = [{ published = 8080 }]\ncolour = \"blue\"\n", "colour"),
        ("[[service]]\nname = \"web\"\nports = [{ published = 0 }]\n", "service[0].ports[0].published"),
        ("[[service]]\nname = \"web\"\nports = [{ published = 70000 }]\n", "service[0].ports[0].published"),
        (
            "[[service]]\nname = \"a\"\nlisten = [\"127.0.0.1\"]\nports = [{ published = 8080 }]\n\
             [[service]]\nname = \"b\"\nlisten = [\"127.0.0.1\"]\nports = [{ published = 8080 }]\n",
            "service[1].listen",
        ),
        ("[[service]]\nname = \"Web\"\nports = [{ published = 8080 }]\n", "service[0].name"),
        (
            "[[service]]\nname = \"web\"\nports = [{ published = 8080 }]\nendpoints = [{ address = \"127.0.0.1:9\", weight = 0 }]\n",
            "service[0].endpoints[0].weight",
        ),
    ];
    for (services, field) in cases {
        let (code, stderr) = run_with_config(&format!("{api}{services}"));
        assert_ne!(code, Some(0), "{services}");
        assert!(code.is_some(), "lbd must exit, not be killed");
        assert!(
            stderr.contains(field),
            "stderr does not name {field:?}:\n{stderr}"
        );
    }
    let (code, stderr) = run_with_config("[node\n");
    assert_ne!(code, Some(0));
    assert!(stderr.contains("bad.toml"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_a_clear_start_error() {
    let taken = std::net::TcpListener::bind(listen_addr()).expect("bind");
    let addr = taken.local_addr().expect("addr");
    let api = format!("[node]\napi_addr = \"{}\"\n", listen_addr());
    let (code, stderr) = run_with_config(&format!(
        "{api}{}",
        service(
            "web",
            addr,
            // fixed-port-ok: an endpoint never dialled (lbd fails to bind first).
            &[("127.0.0.1:9".parse().expect("addr"), 1)],
            ""
        )
    ));
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains(&addr.to_string()) && stderr.contains("\"web\""),
        "{stderr}"
    );
}

/// The copy path (splice off) carries a bulk transfer byte-exact both ways;
/// the in-process bulk test covers the splice path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_path_bulk_transfer_is_byte_exact() {
    let echo = TestBackend::start("echo", Behavior::Echo).await;
    let addr = listen_addr();
    let _lbd = LbdProcess::start_with_env(
        &service("web", addr, &[(echo.addr, 1)], ""),
        "1s",
        &[("LBD_SPLICE", "0")],
    )
    .await;
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let payload: Vec<u8> = (0..16 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = payload.clone();
    let send = tokio::spawn(async move {
        writer.write_all(&payload).await.expect("send");
        writer.shutdown().await.expect("half-close");
    });
    let mut received = Vec::with_capacity(expected.len());
    tokio::time::timeout(Duration::from_secs(60), reader.read_to_end(&mut received))
        .await
        .expect("received in time")
        .expect("receive");
    send.await.expect("sender");
    assert_eq!(received.len(), expected.len());
    assert!(received == expected, "bytes differ");
}

/// A service with two listen addresses and max_connections = 2: both
/// listeners serve (no place is parked in an idle accept loop), the cap holds
/// across them, and a reload that raises the cap admits the waiting client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_holds_across_listeners_and_follows_reloads() {
    let holder = TestBackend::start("holder", Behavior::IdentifyThenEcho).await;
    let first = listen_addr();
    let second = SocketAddr::new(listen_addr().ip(), first.port());
    let two_listeners = |max: u32| {
        format!(
            "[[service]]\nname = \"capped\"\nlisten = [\"{}\", \"{}\"]\nports = [{{ published = {} }}]\n\
             endpoints = [{{ address = \"{}\" }}]\nmax_connections = {max}\n",
            first.ip(),
            second.ip(),
            first.port(),
            holder.addr
        )
    };
    if first.ip() == second.ip() {
        return; // the two random addresses coincided; nothing to compare
    }
    let lbd = LbdProcess::start(&two_listeners(2), "1s").await;

    let mut a = TcpStream::connect(first).await.expect("connect first");
    assert_eq!(read_line(&mut a).await, "holder");
    let mut b = TcpStream::connect(second).await.expect("connect second");
    assert_eq!(read_line(&mut b).await, "holder");

    // A third client, on either listener, waits.
    let mut c = TcpStream::connect(first).await.expect("connect third");
    let mut byte = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(400), c.read(&mut byte)).await;
    assert!(
        waited.is_err(),
        "a third connection was served over the cap"
    );
    let text = lbd.metrics().await;
    assert_eq!(
        metric(
            &text,
            "lbmesh_service_active_connections",
            &[("service", "capped")]
        ),
        Some(2.0)
    );

    // Raising the cap on reload lets it in; open connections are untouched.
    write_config(&lbd.config, lbd.api, "1s", &two_listeners(3));
    lbd.signal("HUP");
    lbd.wait_for_reloads("ok", 1.0).await;
    assert_eq!(read_line(&mut c).await, "holder");
    echo_round_trip(&mut a, b"a still works").await;

    // Lowering it below the open count admits nobody new until enough close.
    write_config(&lbd.config, lbd.api, "1s", &two_listeners(1));
    lbd.signal("HUP");
    lbd.wait_for_reloads("ok", 2.0).await;
    drop(c);
    let mut d = TcpStream::connect(second).await.expect("connect fourth");
    let waited = tokio::time::timeout(Duration::from_millis(400), d.read(&mut byte)).await;
    assert!(waited.is_err(), "admitted with 2 open and a cap of 1");
    drop(a);
    drop(b);
    assert_eq!(read_line(&mut d).await, "holder");
}

/// A refusing backend is logged once when it is ejected, however many
/// connects it refuses until it answers again, and once when it recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_ejection_and_its_recovery_are_logged_once_each() {
    let live = TestBackend::start("live", Behavior::Identify).await;
    let dead_addr = refusing_addr();
    let addr = listen_addr();
    let lbd = LbdProcess::start(
        &service(
            "web",
            addr,
            &[(live.addr, 1), (dead_addr, 1)],
            "[service.health]\neject_time = \"100ms\"",
        ),
        "1s",
    )
    .await;
    // Two seconds of connections: the dead backend is tried again after
    // each 100 ms ejection and refuses each time.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        assert_eq!(who_answers(addr).await, "live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = metric(
        &lbd.metrics().await,
        "lbmesh_connect_errors_total",
        &[("backend", &dead_addr.to_string()), ("reason", "refused")],
    )
    .unwrap_or(0.0);
    assert!(refused >= 3.0, "the dead backend was retried: {refused}");
    let revived = TestBackend::start_on("revived", dead_addr, Behavior::Identify).await;
    eventually("the revived backend answers", || async move {
        who_answers(addr).await == "revived"
    })
    .await;
    for _ in 0..10 {
        who_answers(addr).await;
    }
    assert!(revived.accepted() >= 2);
    let log = lbd.log_text();
    let count = |message: &str| {
        log.lines()
            .filter(|l| l.contains(message) && l.contains(&dead_addr.to_string()))
            .count()
    };
    assert_eq!(count("backend ejected"), 1, "log:\n{log}");
    assert_eq!(count("backend recovered"), 1, "log:\n{log}");
}
