//! Cluster identity and transport security (issue 14), on real `lbd`
//! processes on 127.A.0.N: what a worker's token and certificate cannot
//! do, what a client without the cluster CA cannot reach, what a worker's
//! data dir and memory hold, certificate renewal, and a removed node's
//! certificate refused.
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lbmesh_tls::{CertRole, ClusterCa, NodeCredentials};
use raft_state::network::{CallError, Peer, RemoteFailure, Request, Response};
use raft_state::state::{Command, Proposal};
use test_support::cluster::*;
use test_support::*;

/// Node `n`'s id, from the registry.
fn node_id(cluster: &Cluster, n: usize) -> u64 {
    let name = format!("node-{}", cluster.ip(n).to_string().replace('.', "-"));
    let nodes = cluster.json(0, &["node", "ls"]).expect("node ls");
    nodes
        .as_array()
        .and_then(|nodes| nodes.iter().find(|node| node["name"] == name.as_str()))
        .and_then(|node| node["id"].as_str())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no id for {name} in {nodes}"))
}

fn raft_addr(cluster: &Cluster, n: usize) -> String {
    // fixed-port-ok: the cluster's own 127.A.0.0/16 block, lbd's default Raft port.
    format!("{}:9901", cluster.ip(n))
}

/// The credentials in node `n`'s data dir: what an attacker who took that
/// node's files holds.
fn stolen_credentials(cluster: &Cluster, n: usize) -> Arc<NodeCredentials> {
    let dir = cluster.data_dir(n);
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).expect(file);
    NodeCredentials::new(&read("ca.crt"), &read("node.crt"), &read("node.key"))
        .expect("the node's credentials")
}

/// One Raft call to node `n` made with `credentials`, as a peer would
/// make it (its own TLS connection).
fn raft_call(
    cluster: &Cluster,
    n: usize,
    credentials: &Arc<NodeCredentials>,
    request: &Request,
) -> Result<Response, CallError> {
    let target = node_id(cluster, n);
    let addr = raft_addr(cluster, n);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut peer = Peer::new(target, addr, credentials.clone());
        peer.call(request, Duration::from_secs(10)).await
    })
}

/// A vote for a term far ahead: what a node trying to take over sends.
fn takeover_vote() -> Request {
    Request::Vote(openraft::raft::VoteRequest::new(
        openraft::Vote::new(1_000, 3),
        None,
    ))
}

/// Creates `name` through node `n`: no replicas (nothing runs), one free
/// published port; the error is lbctl's stderr.
fn create_idle_service(cluster: &Cluster, n: usize, name: &str) -> Result<(), String> {
    let port = free_port_on_all(cluster).to_string();
    let args = [
        "service",
        "create",
        name,
        "--replicas",
        "0",
        "--command",
        "true",
        "-p",
        &port,
    ];
    match cluster.lbctl(n, &args) {
        (0, _, _) => Ok(()),
        (_, _, err) => Err(err),
    }
}

/// Joins node 3 as a worker and waits until it is ready.
fn add_worker(cluster: &mut Cluster) -> String {
    let (code, out, err) = cluster.lbctl(0, &["cluster", "join-token", "worker"]);
    assert_eq!(code, 0, "{err}");
    let token = out.trim().to_owned();
    let host = cluster.api(0);
    let child = cluster.spawn(3, Some((&host, &token)));
    cluster.nodes.push(Some(child));
    cluster.wait_for_nodes(4);
    token
}

fn service_names(cluster: &Cluster) -> Vec<String> {
    cluster
        .json(0, &["service", "ls"])
        .and_then(|list| {
            list.as_array().map(|services| {
                services
                    .iter()
                    .filter_map(|s| s["name"].as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The worker-token attack of the issue, each way it was tried: with a
/// worker token and with a worker's certificate, on the API and on Raft.
/// None creates, changes or removes a service, votes or appends; the
/// worker still writes facts about itself (its heartbeats).
#[test]
fn a_worker_token_or_certificate_cannot_change_the_cluster() {
    let mut cluster = Cluster::form_with(FAST_HEARTBEATS);
    let worker_token = add_worker(&mut cluster);
    create_idle_service(&cluster, 0, "keep").expect("create");
    let before = service_names(&cluster);

    // The worker token as the API's bearer, and in lbctl.
    let create = r#"{"name":"evil","command":"id > /tmp/lbmesh-pwned","replicas":1,"ports":[{"published":2}]}"#;
    let request = |token: &str, method: &str, path: &str, body: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    for (method, path, body) in [
        ("POST", "/v1/services", create),
        (
            "PUT",
            "/v1/services/keep",
            r#"{"name":"keep","command":"id","replicas":1,"ports":[{"published":1}]}"#,
        ),
        ("DELETE", "/v1/services/keep", ""),
    ] {
        for n in [0, 3] {
            let answer =
                cluster.api_request(n, request(&worker_token, method, path, body).as_bytes());
            assert_eq!(
                status_of(&answer),
                401,
                "{method} {path} via node {n}: {answer}"
            );
        }
    }
    let (code, _, err) = cluster.lbctl(0, &["--token", &worker_token, "service", "rm", "keep"]);
    assert_ne!(code, 0);
    assert!(err.contains("control token"), "{err}");

    // The worker's certificate on Raft: a proposal is forbidden, a vote and
    // an append refused; its heartbeat is served.
    let worker = stolen_credentials(&cluster, 3);
    let leader = cluster.leader_index().expect("a leader");
    let call = |request: Request| raft_call(&cluster, leader, &worker, &request);
    let spec = lb_config::ServiceSpec {
        name: "evil".to_owned(),
        command: Some("id > /tmp/lbmesh-pwned".to_owned()),
        ports: vec![lb_config::PortSpec {
            published: 3,
            ..lb_config::PortSpec::default()
        }],
        ..lb_config::ServiceSpec::default()
    };
    let propose = Request::Propose(Box::new(Proposal::once(Command::CreateService {
        spec,
        id: String::new(),
    })));
    match call(propose) {
        Ok(Response::Propose(Err(RemoteFailure::Forbidden(reason)))) => {
            assert!(reason.contains("only managers"), "{reason}")
        }
        other => panic!("a worker's proposal got {other:?}"),
    }
    let remove = Request::Propose(Box::new(Proposal::once(Command::RemoveService {
        name: "keep".to_owned(),
    })));
    assert!(
        matches!(
            call(remove),
            Ok(Response::Propose(Err(RemoteFailure::Forbidden(_))))
        ),
        "a worker removed a service"
    );
    match call(takeover_vote()) {
        Ok(Response::Refused(reason)) => assert!(reason.contains("worker"), "{reason}"),
        other => panic!("a worker's vote got {other:?}"),
    }
    let append = Request::AppendEntries(openraft::raft::AppendEntriesRequest {
        vote: openraft::Vote::new_committed(1_000, 3),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    });
    match call(append) {
        Ok(Response::Refused(reason)) => assert!(reason.contains("worker"), "{reason}"),
        other => panic!("a worker's append got {other:?}"),
    }
    assert!(matches!(
        call(Request::Heartbeat(None)),
        Ok(Response::Heartbeat(_))
    ));
    assert_eq!(service_names(&cluster), before, "the registry changed");
    assert!(!Path::new("/tmp/lbmesh-pwned").exists());
    // The leader kept its term: the worker's vote counted for nothing.
    assert_eq!(cluster.leader_index(), Some(leader));
}

/// A plain TCP client and a TLS client with another CA's certificate are
/// refused on the Raft port before any RPC is read (the registry is
/// unchanged and the connection closed); `/v1` over plain HTTP is 426
/// and `/metrics` answers.
#[test]
fn clients_without_the_cluster_ca_reach_nothing() {
    let cluster = Cluster::form_with(FAST_HEARTBEATS);
    let before = service_names(&cluster);

    // A Raft frame in the clear, as the old HMAC transport took it after
    // its handshake.
    let addr: SocketAddr = raft_addr(&cluster, 0).parse().expect("addr");
    let mut plain = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let frame = serde_json::to_vec(&Request::Heartbeat(None)).expect("json");
    let length = u32::try_from(frame.len()).expect("small");
    let _ = plain.write_all(&length.to_be_bytes());
    let _ = plain.write_all(&frame);
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("heartbeat"),
        "a plain client was answered: {answer:?}"
    );

    // A certificate of another CA, naming a real node id and manager.
    let other = ClusterCa::generate("other").expect("CA");
    let id = node_id(&cluster, 1);
    let forged = other
        .node_credentials(id, CertRole::Manager, "other", Duration::from_secs(600))
        .expect("credentials");
    let answer = raft_call(&cluster, 0, &forged, &Request::ReadIndex);
    assert!(
        answer.is_err(),
        "another CA's certificate was served: {answer:?}"
    );

    // The API: /v1 in the clear is 426, /metrics answers.
    let (status, response) = http_get_blocking(&cluster.api(0), "/v1/services");
    assert_eq!(status, 426, "{response}");
    assert!(response.contains("TLS"), "{response}");
    let (status, metrics) = http_get_blocking(&cluster.api(0), "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("lbmesh_build_info"),
        "scraped without certificates"
    );
    assert_eq!(service_names(&cluster), before);
}

/// Every token string and its secret part.
fn token_needles(tokens: &[String]) -> Vec<String> {
    let mut needles = Vec::new();
    for token in tokens {
        needles.push(token.clone());
        if let Some(secret) = token.rsplit('-').next() {
            needles.push(secret.to_owned());
        }
    }
    needles
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            files.push((path.display().to_string(), bytes));
        }
    }
    files
}

/// The readable memory of process `pid` (root reads any process's).
fn memory_of(pid: u32) -> Vec<u8> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    let mut all = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        // Heap, stacks and anonymous maps: where a received secret would be.
        if !perms.starts_with("rw") || fields.nth(3).is_some_and(|path| path.starts_with('/')) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let length = usize::try_from(end - start).unwrap_or(0).min(512 << 20);
        let mut region = vec![0u8; length];
        if mem.seek(SeekFrom::Start(start)).is_ok() && mem.read_exact(&mut region).is_ok() {
            all.extend_from_slice(&region);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// A worker holds the registry, but its files hold no token (or a token's
/// secret) in usable form, and its memory none but the join token it was
/// started with (its own argv); a manager's control token file does hold
/// its token (the search finds what is there).
#[test]
fn a_workers_files_and_memory_hold_no_token() {
    let mut cluster = Cluster::form_with(FAST_HEARTBEATS);
    let worker_token = add_worker(&mut cluster);
    let (_, manager_token, _) = cluster.lbctl(0, &["cluster", "join-token", "manager"]);
    let tokens = vec![
        worker_token,
        manager_token.trim().to_owned(),
        cluster.control_token.clone(),
    ];
    let needles = token_needles(&tokens);
    // The worker has applied the cluster record and a service.
    create_idle_service(&cluster, 0, "probe").expect("create");
    wait_for(
        "the worker's registry to hold the service",
        Duration::from_secs(20),
        || {
            files_under(&cluster.data_dir(3))
                .iter()
                .any(|(_, bytes)| contains(bytes, b"probe"))
                .then_some(())
        },
        || {
            format!(
                "worker's log:\n{}\nleader's log:\n{}",
                cluster.log(3),
                cluster.log(0)
            )
        },
    );
    for (path, bytes) in files_under(&cluster.data_dir(3)) {
        for needle in &needles {
            assert!(!contains(&bytes, needle.as_bytes()), "{path} holds a token");
        }
    }
    assert!(
        !cluster.data_dir(3).join("ca.key").exists(),
        "a worker holds the CA key"
    );
    let pid = cluster.nodes[3].as_ref().expect("the worker runs").id();
    let memory = memory_of(pid);
    assert!(
        memory.len() > 1 << 20,
        "read {} bytes of the worker's memory",
        memory.len()
    );
    assert!(
        contains(&memory, tokens[0].as_bytes()),
        "the search finds the worker's own token"
    );
    for (which, needle) in token_needles(&tokens[1..]).iter().enumerate() {
        assert!(
            !contains(&memory, needle.as_bytes()),
            "the worker's memory holds token part {which}"
        );
    }
    // The same search finds the control token where it is kept.
    let manager_files = files_under(&cluster.data_dir(0));
    assert!(manager_files
        .iter()
        .any(|(_, bytes)| contains(bytes, cluster.control_token.as_bytes())));
}

/// With 20 s certificates, every node renews at half-life and the cluster
/// keeps serving and accepting writes through two renewals; a removed
/// node's certificate is refused at once, long before it expires.
#[test]
fn short_lived_certificates_renew_and_a_removed_node_is_refused() {
    let mut args = FAST_HEARTBEATS.to_vec();
    args.extend(["--cert-expiry", "20s"]);
    let mut cluster = Cluster::form_with(&args);
    add_worker(&mut cluster);
    let first: Vec<String> = (0..4)
        .map(|n| std::fs::read_to_string(cluster.data_dir(n).join("node.crt")).expect("node.crt"))
        .collect();
    let started = Instant::now();
    let mut writes = 0;
    // Two renewals: at about 10 s and 20 s after each certificate's signing.
    while started.elapsed() < Duration::from_secs(26) {
        let name = format!("w{writes}");
        if let Err(err) = create_idle_service(&cluster, writes % 3, &name) {
            panic!("write {writes} at {:?}: {err}", started.elapsed());
        }
        writes += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    for (n, before) in first.iter().enumerate() {
        let renewals = cluster.log(n).matches("node certificate renewed").count();
        assert!(
            renewals >= 2,
            "node {n} renewed {renewals} times:\n{}",
            cluster.log(n)
        );
        let now = std::fs::read_to_string(cluster.data_dir(n).join("node.crt")).expect("node.crt");
        assert_ne!(&now, before, "node {n}'s certificate file");
    }
    let (code, out, err) = cluster.lbctl(0, &["service", "ls", "-q"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), writes, "{out}");

    // The worker is removed: its (still valid) certificate is refused.
    let worker = stolen_credentials(&cluster, 3);
    let worker_name = format!("node-{}", cluster.ip(3).to_string().replace('.', "-"));
    let (code, _, err) = cluster.lbctl(0, &["node", "rm", "--force", &worker_name]);
    assert_eq!(code, 0, "{err}");
    let leader = cluster.leader_index().expect("a leader");
    let answer = raft_call(&cluster, leader, &worker, &Request::Heartbeat(None));
    match answer {
        Ok(Response::Refused(reason)) => assert!(reason.contains("removed"), "{reason}"),
        other => panic!("a removed node's heartbeat got {other:?}"),
    }
}

/// Root on a node reaches the API through the data dir's socket (mode
/// 0600) with no token, when `--host` is not given; lbctl finds it where
/// lbd's default data dir is. Writes through it are forwarded like any.
#[test]
fn lbctl_uses_the_local_socket_without_a_token() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let cluster = Cluster::form_with(FAST_HEARTBEATS);
    // A manager that joined fetches the CA key with its first renewal.
    wait_for(
        "node 1's CA key",
        Duration::from_secs(20),
        || cluster.data_dir(1).join("ca.key").exists().then_some(()),
        || cluster.log(1),
    );
    let socket = cluster.data_dir(1).join("lbd.sock");
    let meta = std::fs::metadata(&socket).expect("the socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // lbctl's default: lbmesh-data/127.0.0.1 under its working directory.
    let cwd = tempfile::tempdir().expect("dir");
    std::fs::create_dir(cwd.path().join("lbmesh-data")).expect("mkdir");
    std::os::unix::fs::symlink(
        cluster.data_dir(1),
        cwd.path().join("lbmesh-data/127.0.0.1"),
    )
    .expect("symlink");
    let lbctl = |args: &[&str]| {
        let out = std::process::Command::new(bins::bin("lbctl"))
            .current_dir(cwd.path())
            .env_remove("LBCTL_TOKEN")
            .env_remove("LBCTL_HOST")
            .args(args)
            .output()
            .expect("run lbctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let port = free_port_on_all(&cluster).to_string();
    let (code, _, err) = lbctl(&[
        "service",
        "create",
        "local",
        "--replicas",
        "0",
        "--command",
        "true",
        "-p",
        &port,
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = lbctl(&["service", "ls", "-q"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    // With --host, the socket is not used: no token, no pin, a clear error.
    let (code, _, err) = lbctl(&["--host", &cluster.api(1), "service", "ls"]);
    assert_ne!(code, 0);
    assert!(err.contains("no control token"), "{err}");
}

/// `node promote` re-issues a worker's certificate as a manager's and
/// hands it the CA key; `node demote` re-issues it as a worker's and the
/// CA key leaves the node. Whatever the certificate says, the registry's
/// role counts at once: a demoted manager's old certificate cannot vote.
#[test]
fn promote_and_demote_reissue_the_certificate() {
    let mut cluster = Cluster::form_with(FAST_HEARTBEATS);
    add_worker(&mut cluster);
    let name = format!("node-{}", cluster.ip(3).to_string().replace('.', "-"));
    let role_in_cert = |cluster: &Cluster| {
        stolen_credentials(cluster, 3)
            .identity()
            .map(|identity| identity.role)
            .ok()
    };
    assert_eq!(role_in_cert(&cluster), Some(CertRole::Worker));
    let (code, _, err) = cluster.lbctl(0, &["node", "promote", &name]);
    assert_eq!(code, 0, "{err}");
    wait_for(
        "a manager certificate and the CA key on the promoted node",
        Duration::from_secs(20),
        || {
            (role_in_cert(&cluster) == Some(CertRole::Manager)
                && cluster.data_dir(3).join("ca.key").exists())
            .then_some(())
        },
        || cluster.log(3),
    );
    let manager = stolen_credentials(&cluster, 3);
    let (code, _, err) = cluster.lbctl(0, &["node", "demote", &name]);
    assert_eq!(code, 0, "{err}");
    wait_for(
        "a worker certificate and no CA key on the demoted node",
        Duration::from_secs(20),
        || {
            (role_in_cert(&cluster) == Some(CertRole::Worker)
                && !cluster.data_dir(3).join("ca.key").exists())
            .then_some(())
        },
        || cluster.log(3),
    );
    // The manager certificate it held is still valid, but the record says
    // worker: a vote with it is refused.
    let leader = cluster.leader_index().expect("a leader");
    let answer = raft_call(&cluster, leader, &manager, &takeover_vote());
    match answer {
        Ok(Response::Refused(reason)) => assert!(reason.contains("worker"), "{reason}"),
        other => panic!("a demoted node's vote got {other:?}"),
    }
}
