//! A cluster of `lbd` processes on 127.A.0.1, .2, .3 (and more), driven
//! with `lbctl`: forming, joining, killing, restarting. Every wait is
//! bounded.
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::WAIT;

/// Gives each cluster of this test binary its own 127.A.0.0/16 block, so
/// tests running side by side never share node addresses or VIPs.
pub fn address_block() -> u8 {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let offset = (std::process::id() % 40) as u8 * 3;
    100 + offset + NEXT.fetch_add(1, Ordering::Relaxed)
}

pub struct Cluster {
    pub block: u8,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Option<Child>>,
    pub control_token: String,
    pub manager_token: String,
    /// Extra `lbd` arguments of every node.
    pub extra_args: Vec<String>,
}

impl Cluster {
    pub fn ip(&self, n: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.block, 0, n as u8 + 1))
    }

    pub fn api(&self, n: usize) -> String {
        // fixed-port-ok: the cluster runs on its own 127.A.0.0/16 block and
        // exercises lbd's default ports there (API :9900, Raft :9901).
        format!("{}:9900", self.ip(n))
    }

    pub fn data_dir(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("node{n}"))
    }

    pub fn vip_range(&self) -> String {
        format!("127.{}.250.0/24", self.block)
    }

    pub fn spawn(&self, n: usize, join: Option<(&str, &str)>) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lbd"));
        command
            .arg("--advertise-addr")
            .arg(self.ip(n).to_string())
            .arg("--data-dir")
            .arg(self.data_dir(n))
            .arg("--vip-range")
            .arg(self.vip_range())
            .arg("--shutdown-grace")
            .arg("1s")
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::create(self.dir.path().join(format!("node{n}.log")))
                    .expect("log file"),
            );
        if let Some((host, token)) = join {
            command.arg("--join").arg(host).arg("--token").arg(token);
        }
        command.args(&self.extra_args);
        command.spawn().expect("spawn lbd")
    }

    /// Bootstraps node 0 and joins nodes 1 and 2 as managers.
    pub fn form() -> Self {
        Self::form_with(&[])
    }

    /// Bootstraps node 0 and joins nodes 1 and 2 as managers, every node
    /// started with `extra_args`.
    pub fn form_with(extra_args: &[&str]) -> Self {
        let mut cluster = Cluster {
            block: address_block(),
            dir: tempfile::tempdir().expect("temp dir"),
            nodes: Vec::new(),
            control_token: String::new(),
            manager_token: String::new(),
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
        };
        let mut first = cluster.spawn(0, None);
        let stdout = first.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let started = Instant::now();
        while cluster.control_token.is_empty() && started.elapsed() < WAIT {
            let Some(Ok(line)) = lines.next() else { break };
            if line.starts_with("Add a manager:") {
                cluster.manager_token = line.split_whitespace().last().unwrap_or("").to_owned();
            }
            if line.starts_with("lbctl control token") {
                cluster.control_token = line.split_whitespace().last().unwrap_or("").to_owned();
            }
        }
        assert!(
            !cluster.control_token.is_empty(),
            "no tokens printed; log:\n{}",
            cluster.log(0)
        );
        cluster.nodes.push(Some(first));
        for n in 1..3 {
            let host = cluster.api(0);
            let token = cluster.manager_token.clone();
            let child = cluster.spawn(n, Some((&host, &token)));
            cluster.nodes.push(Some(child));
            cluster.wait_for_nodes(n + 1);
        }
        cluster
    }

    pub fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{n}.log"))).unwrap_or_default()
    }

    pub fn lbctl(&self, n: usize, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(lbctl_binary())
            .arg("--host")
            .arg(self.api(n))
            .env("LBCTL_TOKEN", &self.control_token)
            .args(args)
            .output()
            .expect("run lbctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn json(&self, n: usize, args: &[&str]) -> Option<Value> {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        let (code, out, _) = self.lbctl(n, &all);
        (code == 0)
            .then(|| serde_json::from_str(&out).ok())
            .flatten()
    }

    pub fn wait_for_nodes(&self, count: usize) {
        let started = Instant::now();
        while started.elapsed() < WAIT {
            if let Some(nodes) = self.json(0, &["node", "ls"]) {
                let ready = nodes
                    .as_array()
                    .map(|all| all.iter().filter(|n| n["status"] == "ready").count())
                    .unwrap_or(0);
                if ready == count {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the cluster never had {count} ready nodes; log of node 0:\n{}",
            self.log(0)
        );
    }

    pub fn kill(&mut self, n: usize) {
        if let Some(mut child) = self.nodes[n].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn stop(&mut self, n: usize) {
        if let Some(mut child) = self.nodes[n].take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let started = Instant::now();
            while started.elapsed() < WAIT {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self, n: usize) {
        let child = self.spawn(n, None);
        self.nodes[n] = Some(child);
    }

    pub fn leader_index(&self) -> Option<usize> {
        let count = self.nodes.len();
        let info = (0..count)
            .filter(|n| self.nodes[*n].is_some())
            .find_map(|n| self.json(n, &["cluster", "info"]))?;
        let leader = info["leader"].as_u64()?;
        let nodes = (0..count)
            .filter(|n| self.nodes[*n].is_some())
            .find_map(|n| self.json(n, &["node", "ls"]))?;
        let leader_ip = nodes
            .as_array()?
            .iter()
            .find(|node| node["id"].as_u64() == Some(leader))?["ingress_addr"]
            .as_str()?
            .to_owned();
        (0..count).find(|n| self.ip(*n).to_string() == leader_ip)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in 0..self.nodes.len() {
            self.kill(n);
        }
    }
}

/// The `lbctl` of this build. It is a package of its own, so Cargo sets no
/// `CARGO_BIN_EXE_lbctl` here; it lies in `target/<profile>/`, the parent of
/// the `deps/` this test runs from.
pub fn lbctl_binary() -> PathBuf {
    let test = std::env::current_exe().expect("the test's own path");
    let profile_dir = test
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps/");
    let lbctl = profile_dir.join(format!("lbctl{}", std::env::consts::EXE_SUFFIX));
    assert!(
        lbctl.is_file(),
        "{} is missing; build it first: cargo build -p lbctl (cargo test --workspace does)",
        lbctl.display()
    );
    lbctl
}

pub fn free_port_on_all(cluster: &Cluster) -> u16 {
    for _ in 0..100 {
        let port = fastrand::u16(20_000..40_000);
        let free = (0..3).all(|n| std::net::TcpListener::bind((cluster.ip(n), port)).is_ok());
        if free {
            return port;
        }
    }
    panic!("no common free port");
}

pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < WAIT {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

pub fn answer(addr: SocketAddr) -> Option<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    Some(out.trim_end().to_owned())
}

pub fn service_names(value: &Value) -> Vec<String> {
    let mut names: Vec<String> = value
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|s| s["spec"]["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub fn http_get_blocking(addr: &str, path: &str) -> (u16, String) {
    let response = raw_request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

pub fn raw_request(addr: &str, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect api");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let _ = stream.write_all(request);
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}
