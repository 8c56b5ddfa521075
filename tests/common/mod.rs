//! Helpers shared by the integration tests: test backends on 127.0.0.1:0, an
//! in-process lbd, a tiny HTTP client for the admin API and metric parsing.
//! Every wait is bounded in time.
#![allow(dead_code)] // each test binary uses a different subset

pub mod cluster;
pub mod images;
pub mod mesh;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lbmesh::daemon::Daemon;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// An address for lbd to listen on: a random 127.0.0.X (X ≥ 2) and a port
/// that was free there a moment ago. Outgoing test connections use
/// 127.0.0.1 as their source, so their ephemeral ports can never take this
/// address in the gap before lbd binds it.
pub fn listen_addr() -> SocketAddr {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, fastrand::u8(2..=254)));
    let listener = std::net::TcpListener::bind((ip, 0)).expect("bind port 0");
    listener.local_addr().expect("local addr")
}

/// An address on which nothing listens (connects are refused), in the same
/// private range as `listen_addr`, so a later `TestBackend::start_on` can
/// bind it again.
pub fn refusing_addr() -> SocketAddr {
    listen_addr()
}

/// What a test backend does with each connection.
#[derive(Clone, Copy, Debug)]
pub enum Behavior {
    /// Writes its name and a newline, then closes.
    Identify,
    /// Writes its name and a newline, then echoes every byte until the client
    /// closes.
    IdentifyThenEcho,
    /// Echoes every byte; on EOF from the client, closes its write side.
    Echo,
    /// Reads until EOF, then answers `got N bytes` and closes.
    CountThenReply,
    /// Reads a line and answers `NAME: LINE`, then closes.
    AnswerLine,
    /// Reads what the client sent, then closes without a word (a task killed
    /// while serving a request).
    HangUpAfterRead,
    /// Reads until the client's EOF, then closes without a word (a sink for
    /// one-way messages).
    HangUpAtEof,
}

/// A backend server run by the test.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestBackend {
    pub async fn start(name: &str, behavior: Behavior) -> Self {
        let listener = TcpListener::bind((LOCALHOST, 0))
            .await
            .expect("bind backend");
        Self::serve(name, listener, behavior)
    }

    /// Starts serving on a specific address (e.g. one that refused before).
    pub async fn start_on(name: &str, addr: SocketAddr, behavior: Behavior) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .expect("rebind backend address");
        Self::serve(name, listener, behavior)
    }

    fn serve(name: &str, listener: TcpListener, behavior: Behavior) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let label = format!("{name}\n");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let label = label.clone();
                tokio::spawn(handle(stream, behavior, label));
            }
        });
        Self {
            name: name.to_owned(),
            addr,
            accepted,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes the listening socket.
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn handle(mut stream: TcpStream, behavior: Behavior, label: String) {
    match behavior {
        Behavior::Identify => {
            let _ = stream.write_all(label.as_bytes()).await;
        }
        Behavior::IdentifyThenEcho => {
            let _ = stream.write_all(label.as_bytes()).await;
            echo(&mut stream).await;
        }
        Behavior::Echo => echo(&mut stream).await,
        Behavior::AnswerLine => {
            let request = read_line(&mut stream).await;
            let answer = format!("{}: {request}\n", label.trim_end());
            let _ = stream.write_all(answer.as_bytes()).await;
        }
        Behavior::HangUpAfterRead => {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
        }
        Behavior::HangUpAtEof => {
            let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
        }
        Behavior::CountThenReply => {
            let mut total = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n;
            }
            let _ = stream
                .write_all(format!("got {total} bytes").as_bytes())
                .await;
        }
    }
}

async fn echo(stream: &mut TcpStream) {
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// Connects and reads the first line (a test backend's name).
pub async fn who_answers(addr: SocketAddr) -> String {
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    read_line(&mut stream).await
}

/// Connects from a chosen source address and reads the first line.
pub async fn who_answers_from(source: IpAddr, addr: SocketAddr) -> String {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source");
    let mut stream = tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    read_line(&mut stream).await
}

/// Reads up to a newline or EOF; the stream stays open.
pub async fn read_line(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("reply in time")
            .expect("read");
        if n == 0 || byte[0] == b'\n' {
            break;
        }
        out.push(byte[0]);
    }
    String::from_utf8(out).expect("utf-8 name")
}

/// An lbd running in this process from a config file in a temp dir.
pub struct TestLbd {
    pub daemon: Daemon,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestLbd {
    /// Starts lbd with the admin API on an ephemeral port and `services` as
    /// the `[[service]]` tables.
    pub async fn start(services: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("lbd.toml");
        std::fs::write(&config_path, config_text(services)).expect("write config");
        // Two proxy threads: connections spread over threads as in production.
        let daemon = Daemon::start(&config_path, 2).await.expect("lbd starts");
        Self {
            daemon,
            config_path,
            _dir: dir,
        }
    }

    pub async fn metrics(&self) -> String {
        http_get(self.daemon.api_addr(), "/metrics").await.1
    }

    /// Rewrites the config file with `services` and reloads it.
    pub fn reload(&mut self, services: &str) {
        std::fs::write(&self.config_path, config_text(services)).expect("write config");
        self.daemon.reload().expect("reload");
    }
}

/// A whole config file: admin API on an ephemeral port plus `services`.
pub fn config_text(services: &str) -> String {
    format!("[node]\nname = \"test\"\napi_addr = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\n{services}")
}

/// A `[[service]]` table listening on `listen`.
pub fn service(
    name: &str,
    listen: SocketAddr,
    backends: &[(SocketAddr, u32)],
    extra: &str,
) -> String {
    let endpoints: Vec<String> = backends
        .iter()
        .map(|(addr, weight)| format!("{{ address = \"{addr}\", weight = {weight} }}"))
        .collect();
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = [\"{}\"]\nports = [{{ published = {} }}]\nendpoints = [{}]\n{extra}\n",
        listen.ip(),
        listen.port(),
        endpoints.join(", ")
    )
}

/// GET over a fresh connection; returns the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("admin connect in time")
        .expect("admin connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .expect("admin response in time")
        .expect("read response");
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name{labels}` in a Prometheus text page, where
/// `labels` must all be present (in any order).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

/// Polls `check` every 20 ms until it holds or `WAIT` passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}
