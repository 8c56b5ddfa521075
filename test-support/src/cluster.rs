//! A cluster of `lbd` processes on 127.A.0.1, .2, .3 (and more), driven
//! with `lbctl`: forming, joining, killing, restarting. Every wait is
//! bounded.
//!
//! An IPv6 cluster ([`Family::V6`]) runs on fd7e:0:0:A::1, ::2, ... and
//! takes its v6 VIPs from fd7f:0:0:A::/112: the harness adds the node
//! addresses (and any [`Cluster::add_v6_address`] asks for) to `lo` and
//! removes them, and the VIP range's `local` route that lbd adds, when the
//! cluster is dropped. An IPv4 cluster has no v6 VIP range
//! (`--vip-range-v6 none`), so it leaves no route behind.
//!
//! A dropped cluster also removes the Docker containers its agents
//! started, and the route of a VIP range outside loopback
//! ([`Cluster::form_for_containers`]).
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bins;
use crate::http::exchange;
use crate::wait::WAIT;

/// Quick failure detection keeps the tests short.
pub const FAST_HEARTBEATS: &[&str] = &["--heartbeat-interval", "300ms", "--heartbeat-grace", "3s"];

/// Gives each cluster of this test binary its own 127.A.0.0/16 block, so
/// tests running side by side never share node addresses or VIPs.
pub fn address_block() -> u8 {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let offset = (std::process::id() % 40) as u8 * 3;
    100 + offset + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The address family of a cluster's node addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
    /// IPv6 node addresses, and published ports on both families: each
    /// node's v6 address and 127.A.0.N ([`Cluster::ingress_v4`]).
    DualStack,
}

pub struct Cluster {
    pub block: u8,
    pub family: Family,
    /// IPv6 addresses the harness added to `lo`, removed on drop.
    pub added_v6: std::sync::Mutex<Vec<Ipv6Addr>>,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Option<Child>>,
    pub control_token: String,
    pub manager_token: String,
    /// Extra `lbd` arguments of every node.
    pub extra_args: Vec<String>,
    /// RLIMIT_NOFILE (soft and hard) every node starts with, set with
    /// `prlimit`; `None`: the test's own.
    pub nofile: Option<u64>,
}

impl Cluster {
    pub fn ip(&self, n: usize) -> IpAddr {
        match self.family {
            Family::V4 => self.ingress_v4(n),
            Family::V6 | Family::DualStack => IpAddr::V6(self.v6_address(0, n as u16 + 1)),
        }
    }

    /// Node `n`'s IPv4 address: its node address in an IPv4 cluster, its
    /// second ingress address in a dual-stack one.
    pub fn ingress_v4(&self, n: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.block, 0, n as u8 + 1))
    }

    fn is_v6(&self) -> bool {
        self.family != Family::V4
    }

    /// fd7e:0:0:A:0:0:`group`:`host`, in this cluster's own /64.
    pub fn v6_address(&self, group: u16, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd7e, 0, 0, u16::from(self.block), 0, 0, group, host)
    }

    /// Adds `addr` to `lo` (removed when the cluster is dropped).
    pub fn add_v6_address(&self, addr: Ipv6Addr) {
        let added = Command::new("ip")
            .args([
                "-6",
                "addr",
                "add",
                &format!("{addr}/128"),
                "dev",
                "lo",
                "nodad",
            ])
            .status()
            .expect("run ip");
        assert!(added.success(), "ip -6 addr add {addr}/128 dev lo");
        self.added_v6.lock().expect("added addresses").push(addr);
    }

    pub fn api(&self, n: usize) -> String {
        // fixed-port-ok: the cluster runs on its own 127.A.0.0/16 block (or
        // fd7e:0:0:A::/64) and exercises lbd's default ports there (API
        // :9900, Raft :9901).
        SocketAddr::new(self.ip(n), 9900).to_string()
    }

    pub fn data_dir(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("node{n}"))
    }

    /// The cluster CA's certificate, as node 0 keeps it.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.data_dir(0).join("ca.crt")).expect("node 0's ca.crt")
    }

    /// Sends raw bytes to node `n`'s API over TLS (the API is TLS only) and
    /// returns the raw response.
    pub fn api_request(&self, n: usize, request: &[u8]) -> String {
        crate::http::tls_request(&self.api(n), &self.ca_pem(), request)
    }

    /// Port `port` on the first three nodes: the mesh's ingress addresses.
    pub fn mesh_addrs(&self, port: u16) -> Vec<SocketAddr> {
        (0..3).map(|n| SocketAddr::new(self.ip(n), port)).collect()
    }

    /// The VIP range: `--vip-range` of the extra arguments, else
    /// 127.A.250.0/24 (loopback: host processes reach it without a route).
    pub fn vip_range(&self) -> String {
        self.extra_args
            .iter()
            .position(|arg| arg == "--vip-range")
            .and_then(|at| self.extra_args.get(at + 1))
            .cloned()
            .unwrap_or_else(|| format!("127.{}.250.0/24", self.block))
    }

    /// Where the nodes' DNS responder listens: port 53 of the VIP range's
    /// first address.
    pub fn dns_addr(&self) -> SocketAddr {
        let range = self.vip_range();
        let base = range.split('/').next().unwrap_or_default();
        // fixed-port-ok: DNS resolvers know port 53 only.
        SocketAddr::new(base.parse().expect("VIP range base"), 53)
    }

    /// The v6 VIP range of an IPv6 cluster; `none` (v4 VIPs only) for an
    /// IPv4 one.
    pub fn vip_range_v6(&self) -> String {
        match self.family {
            Family::V4 => "none".to_owned(),
            Family::V6 | Family::DualStack => format!("fd7f:0:0:{:x}::/112", self.block),
        }
    }

    pub fn spawn(&self, n: usize, join: Option<(&str, &str)>) -> Child {
        self.command(n, join).spawn().expect("spawn lbd")
    }

    /// The command line of node `n`.
    pub fn command(&self, n: usize, join: Option<(&str, &str)>) -> Command {
        let mut command = match self.nofile {
            Some(limit) => {
                // prlimit sets the limit and execs lbd in its place.
                let mut command = Command::new("prlimit");
                command
                    .arg(format!("--nofile={limit}:{limit}"))
                    .arg(bins::lbd());
                command
            }
            None => Command::new(bins::lbd()),
        };
        command
            .arg("--advertise-addr")
            .arg(self.ip(n).to_string())
            .arg("--data-dir")
            .arg(self.data_dir(n))
            .args(
                (!self.extra_args.iter().any(|arg| arg == "--vip-range"))
                    .then(|| ["--vip-range".to_owned(), self.vip_range()])
                    .into_iter()
                    .flatten(),
            )
            .arg("--vip-range-v6")
            .arg(self.vip_range_v6())
            .arg("--shutdown-grace")
            .arg("1s")
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::create(self.dir.path().join(format!("node{n}.log")))
                    .expect("log file"),
            );
        if self.family == Family::DualStack {
            command
                .arg("--ingress-addr")
                .arg(self.ip(n).to_string())
                .arg("--ingress-addr")
                .arg(self.ingress_v4(n).to_string());
        }
        if let Some((host, token)) = join {
            command.arg("--join").arg(host).arg("--token").arg(token);
        }
        command.args(&self.extra_args);
        command
    }

    /// Bootstraps node 0 and joins nodes 1 and 2 as managers.
    pub fn form() -> Self {
        Self::form_with(&[])
    }

    /// Bootstraps node 0 and joins nodes 1 and 2 as managers, every node
    /// started with `extra_args`.
    pub fn form_with(extra_args: &[&str]) -> Self {
        Self::form_in(Family::V4, extra_args)
    }

    /// [`Cluster::form_with`] with a VIP range containers can reach
    /// (198.18.B.0/24, outside loopback, made local by lbd's route) and so
    /// the nodes' DNS responder in the containers lbd starts; returns once
    /// the range is local. The route goes when the cluster does.
    pub fn form_for_containers(extra_args: &[&str]) -> Self {
        let range = format!("198.18.{}.0/24", address_block());
        let mut args = vec!["--vip-range", range.as_str()];
        args.extend_from_slice(extra_args);
        let cluster = Self::form_with(&args);
        crate::wait::wait_for(
            "the VIP range to be local",
            WAIT,
            || range_is_local(&range).then_some(()),
            || cluster.log(0),
        );
        cluster
    }

    /// [`Cluster::form_with`] on node addresses of `family`.
    pub fn form_in(family: Family, extra_args: &[&str]) -> Self {
        let mut cluster = Self::bootstrap_in(family, extra_args, None);
        cluster.join_managers(3);
        cluster
    }

    /// Joins nodes 1, 2, ... through node 0 as managers, started with the
    /// cluster's `extra_args` as they are now, one at a time (each waits
    /// until the cluster lists it) until there are `total` nodes.
    pub fn join_managers(&mut self, total: usize) {
        for n in self.nodes.len()..total {
            let host = self.api(0);
            let token = self.manager_token.clone();
            let child = self.spawn(n, Some((&host, &token)));
            self.nodes.push(Some(child));
            self.wait_for_nodes(n + 1);
        }
    }

    /// Bootstraps node 0 alone, started with `extra_args` and, if given,
    /// a descriptor limit of `nofile`.
    pub fn bootstrap(extra_args: &[&str], nofile: Option<u64>) -> Self {
        Self::bootstrap_in(Family::V4, extra_args, nofile)
    }

    /// [`Cluster::bootstrap`] on node addresses of `family` (for IPv6, the
    /// first three node addresses are added to `lo` first).
    pub fn bootstrap_in(family: Family, extra_args: &[&str], nofile: Option<u64>) -> Self {
        let mut cluster = Cluster {
            block: address_block(),
            family,
            added_v6: std::sync::Mutex::new(Vec::new()),
            dir: tempfile::tempdir().expect("temp dir"),
            nodes: Vec::new(),
            control_token: String::new(),
            manager_token: String::new(),
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            nofile,
        };
        if cluster.is_v6() {
            for n in 0..3 {
                cluster.add_v6_address(cluster.v6_address(0, n + 1));
            }
        }
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
        cluster.wait_for_nodes(1);
        cluster
    }

    pub fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{n}.log"))).unwrap_or_default()
    }

    pub fn lbctl(&self, n: usize, args: &[&str]) -> (i32, String, String) {
        self.lbctl_env(n, &[], args)
    }

    /// [`Cluster::lbctl`] with more environment variables (`stack deploy`
    /// interpolates them).
    pub fn lbctl_env(
        &self,
        n: usize,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> (i32, String, String) {
        let out = Command::new(bins::bin("lbctl"))
            .arg("--host")
            .arg(self.api(n))
            .env("LBCTL_TOKEN", &self.control_token)
            .envs(env.iter().copied())
            .args(args)
            .output()
            .expect("run lbctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `lbctl args` against node `n`, left running, its stdout lines read
    /// as they come (`service logs -f`).
    pub fn lbctl_stream(&self, n: usize, args: &[&str]) -> LbctlStream {
        let mut child = Command::new(bins::bin("lbctl"))
            .arg("--host")
            .arg(self.api(n))
            .env("LBCTL_TOKEN", &self.control_token)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run lbctl");
        let stdout = child.stdout.take().expect("lbctl stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        LbctlStream { child, lines }
    }

    /// Node `n`'s `lbmesh_api_log_streams`: the followed logs it serves.
    pub fn log_streams(&self, n: usize) -> Option<f64> {
        let (_, metrics) = crate::http::http_get_blocking(&self.api(n), "/metrics");
        crate::lbd::metric(&metrics, "lbmesh_api_log_streams", &[])
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

    /// Restarts stopped node `n` as user `uid` (its data dir handed over),
    /// so firewall rules can match its packets by owner: on loopback every
    /// node's packets leave from 127.0.0.1, whatever address it binds.
    pub fn restart_as(&mut self, n: usize, uid: u32) {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("open the cluster dir to other users");
        let owner = format!("{uid}:{uid}");
        let chown = Command::new("chown")
            .args(["-R", &owner])
            .arg(self.data_dir(n))
            .status()
            .expect("chown");
        assert!(chown.success(), "chown -R {owner} of node {n}'s data dir");
        let child = self
            .command(n, None)
            .uid(uid)
            .gid(uid)
            .spawn()
            .expect("spawn lbd");
        self.nodes[n] = Some(child);
    }

    pub fn leader_index(&self) -> Option<usize> {
        let count = self.nodes.len();
        let info = (0..count)
            .filter(|n| self.nodes[*n].is_some())
            .find_map(|n| self.json(n, &["cluster", "info"]))?;
        // Ids are decimal strings in lbctl's JSON.
        let leader = info["leader"].as_str()?.to_owned();
        let nodes = (0..count)
            .filter(|n| self.nodes[*n].is_some())
            .find_map(|n| self.json(n, &["node", "ls"]))?;
        let leader_ip = nodes
            .as_array()?
            .iter()
            .find(|node| node["id"].as_str() == Some(leader.as_str()))?["ingress_addr"]
            .as_str()?
            .to_owned();
        (0..count).find(|n| self.ip(*n).to_string() == leader_ip)
    }
}

impl Cluster {
    /// Kills the process groups of the process tasks the nodes started (a
    /// killed lbd leaves them running), found through the records the
    /// process runtime keeps in each node's `tasks` folder.
    fn kill_process_tasks(&self) {
        for n in 0..self.nodes.len() {
            let Ok(entries) = std::fs::read_dir(self.data_dir(n).join("tasks")) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let pid = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                    .and_then(|record| record["pid"].as_i64())
                    .filter(|pid| *pid > 1);
                if let Some(pid) = pid {
                    let _ = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{pid}")])
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
    }
}

impl Cluster {
    /// Removes the Docker containers the nodes' agents started (a killed
    /// `lbd` leaves them behind), found by their `io.lbmesh.node` label.
    fn remove_containers(&self) {
        let Ok(out) = Command::new("docker")
            .args(["ps", "-a", "--filter", "label=io.lbmesh.node"])
            .args(["--format", "{{.ID}} {{.Label \"io.lbmesh.node\"}}"])
            .stderr(Stdio::null())
            .output()
        else {
            return;
        };
        let names: Vec<String> = (0..self.nodes.len())
            .map(|n| format!("node-{}", self.ip(n).to_string().replace(['.', ':'], "-")))
            .collect();
        let ours: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split_once(' '))
            .filter(|(_, node)| names.iter().any(|name| name == node))
            .map(|(id, _)| id.to_owned())
            .collect();
        if !ours.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ours)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in 0..self.nodes.len() {
            self.kill(n);
        }
        self.kill_process_tasks();
        self.remove_containers();
        let ip = |args: &[&str]| {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        };
        for addr in self
            .added_v6
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default()
        {
            ip(&["-6", "addr", "del", &format!("{addr}/128"), "dev", "lo"]);
        }
        let range = self.vip_range();
        if !range.starts_with("127.") {
            ip(&[
                "route", "del", "local", &range, "dev", "lo", "table", "local",
            ]);
        }
        if self.is_v6() {
            let range = self.vip_range_v6();
            ip(&[
                "-6", "route", "del", "local", &range, "dev", "lo", "table", "local",
            ]);
        }
    }
}

/// Whether `ip route show table local` lists `range` as local on `lo`.
pub fn range_is_local(range: &str) -> bool {
    let out = Command::new("ip")
        .args(["route", "show", "table", "local"])
        .output()
        .expect("ip route");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|line| line.starts_with(&format!("local {range} dev lo")))
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

/// What a plain TCP server at `addr` sends before it closes.
pub fn answer(addr: SocketAddr) -> Option<String> {
    exchange(addr, b"", Duration::from_secs(2))
        .ok()
        .map(|out| out.trim_end().to_owned())
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

/// A running `lbctl` ([`Cluster::lbctl_stream`]); killed when dropped.
pub struct LbctlStream {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl LbctlStream {
    /// The next stdout line, waiting at most `wait`; `None` at its end or
    /// after the wait.
    pub fn next_line(&self, wait: Duration) -> Option<String> {
        self.lines.recv_timeout(wait).ok()
    }

    /// Sends SIGINT, as Ctrl-C does.
    pub fn interrupt(&self) {
        let _ = Command::new("kill")
            .args(["-s", "INT", &self.child.id().to_string()])
            .status();
    }

    /// The exit code once lbctl exits within `wait`.
    pub fn exit_code(&mut self, wait: Duration) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < wait {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for LbctlStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
