//! Three `lbd` processes on 127.A.B.1/2/3 forming one cluster, driven with
//! `lbctl` and the API: bootstrap and join, a refused token, a service created
//! through a follower and served on every node and on its VIP, bad input
//! refused without changing anything, the leader killed with SIGKILL while
//! writes continue, and a restart of every node from its data dir; names
//! that need encoding in a path name a service and nothing else.
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use test_support::cluster::*;
use test_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_serves_the_mesh() {
    let b0 = TestBackend::start("b0", Behavior::Identify).await;
    let b1 = TestBackend::start("b1", Behavior::Identify).await;
    let (b0_addr, b1_addr) = (b0.addr.to_string(), b1.addr.to_string());
    tokio::task::spawn_blocking(move || {
        let mut cluster = Cluster::form();

        // node ls on any node: three ready managers, one leader.
        for n in 0..3 {
            let nodes = cluster.json(n, &["node", "ls"]).expect("node ls json");
            let all = nodes.as_array().expect("array");
            assert_eq!(all.len(), 3);
            assert!(all.iter().all(|n| n["role"] == "manager" && n["status"] == "ready"));
            assert_eq!(all.iter().filter(|n| n["raft"] == "leader").count(), 1);
        }
        let (code, table, _) = cluster.lbctl(1, &["node", "ls"]);
        assert_eq!(code, 0);
        assert!(table.starts_with("ID "), "{table}");
        let (_, metrics) = http_get_blocking(&cluster.api(1), "/metrics");
        assert!(metrics.contains("lbmesh_raft{field=\"voters\"} 3"), "{metrics}");
        assert!(metrics.contains("lbmesh_api_requests_total{method=\"GET\",route=\"/v1/nodes\",status=\"200\"}"), "{metrics}");

        // Node labels and availability; a ready node is not removed without --force.
        let (code, _, err) = cluster.lbctl(0, &["node", "update", "node-x", "--availability", "drain"]);
        assert_ne!(code, 0);
        assert!(err.contains("node"), "{err}");
        let name = format!("node-127-{}-0-2", cluster.block);
        let (code, _, err) = cluster.lbctl(2, &["node", "update", &name, "--label-add", "zone=a", "--availability", "pause"]);
        assert_eq!(code, 0, "{err}");
        let node = cluster.json(0, &["node", "inspect", &name]).expect("inspect");
        assert_eq!((node["labels"]["zone"].as_str(), node["availability"].as_str()), (Some("a"), Some("pause")));
        let (code, _, err) = cluster.lbctl(0, &["node", "rm", &name]);
        assert_ne!(code, 0);
        assert!(err.contains("not down"), "{err}");

        // A wrong token is refused and that node does not join.
        let bad = cluster.dir.path().join("intruder");
        let out = Command::new(env!("CARGO_BIN_EXE_lbd"))
            .args(["--advertise-addr", &format!("127.{}.0.9", cluster.block)])
            .arg("--data-dir")
            .arg(&bad)
            .args(["--join", &cluster.api(0), "--token"])
            .arg(wrong_token(&cluster.manager_token))
            .output()
            .expect("run intruder");
        assert!(!out.status.success(), "a wrong token joined");
        assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
        assert_eq!(cluster.json(0, &["node", "ls"]).expect("ls").as_array().map(Vec::len), Some(3));

        // A service created through a follower is served by every node, in
        // round-robin over its endpoints, and on its VIP.
        let leader = cluster.leader_index().expect("a leader");
        let follower = (leader + 1) % 3;
        let port = free_port_on_all(&cluster);
        let (code, _, err) = cluster.lbctl(
            follower,
            &["service", "create", "web", "-p", &format!("{port}:80"), "--endpoint", &b0_addr, "--endpoint", &b1_addr],
        );
        assert_eq!(code, 0, "{err}");
        for n in 0..3 {
            let addr = SocketAddr::new(cluster.ip(n), port);
            wait_until("the published port answers", || answer(addr).is_some());
            let mut seen = Vec::new();
            for _ in 0..4 {
                seen.push(answer(addr).expect("answer"));
            }
            seen.sort();
            assert_eq!(seen, ["b0", "b0", "b1", "b1"], "node {n}");
        }
        let service = cluster.json(2, &["service", "inspect", "web"]).expect("inspect");
        let vip: IpAddr = service["vip"].as_str().expect("vip").parse().expect("ip");
        assert!(cluster.vip_range().starts_with(&format!("127.{}.250.", cluster.block)));
        // fixed-port-ok: the VIP listens on the service's target port, on an
        // address of this test's own VIP range.
        wait_until("the VIP answers", || answer(SocketAddr::new(vip, 80)).is_some());

        // Bad input: refused with a named field, and nothing changes.
        let before = cluster.json(0, &["service", "ls"]).expect("ls");
        let cases: [(&[&str], &str); 4] = [
            (&["service", "create", "Web", "-p", "1:80"], "name"),
            (&["service", "create", "web", "-p", "2:80"], "name"),
            (&["service", "create", "other", "-p", &format!("{port}:80")], "ports[0].published"),
            (&["service", "create", "other", "-p", "3:80", "--endpoint", "10.0.0.1,weight=0"], "endpoints[0].weight"),
        ];
        for (args, field) in cases {
            let (code, _, err) = cluster.lbctl(0, args);
            assert_ne!(code, 0, "{args:?} succeeded");
            assert!(err.contains(field), "{args:?}: {err}");
        }
        let (code, _, err) = cluster.lbctl(0, &["service", "scale", "web=5000"]);
        assert_ne!(code, 0);
        assert!(err.contains("replicas"), "{err}");
        let api = cluster.api(0);
        let token = cluster.control_token.clone();
        let malformed = raw_request(
            &api,
            format!("POST /v1/services HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{{nop}}").as_bytes(),
        );
        assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed}");
        let huge = "x".repeat(2 * 1024 * 1024);
        let oversized = raw_request(
            &api,
            format!("POST /v1/services HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{huge}", huge.len()).as_bytes(),
        );
        assert!(oversized.starts_with("HTTP/1.1 413"), "{}", &oversized[..oversized.len().min(200)]);
        let (code, _, err) = cluster.lbctl(0, &["--token", "wrong", "service", "ls"]);
        assert_ne!(code, 0);
        assert!(err.contains("authorization"), "{err}");
        let no_token = raw_request(&api, b"GET /v1/services HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(no_token.starts_with("HTTP/1.1 401"), "{no_token}");
        let unknown_field = br#"{"name":"other","ports":[{"published":3}],"colour":"red"}"#;
        let unknown = raw_request(
            &api,
            &[format!("POST /v1/services HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", unknown_field.len()).as_bytes(), unknown_field].concat(),
        );
        assert!(unknown.starts_with("HTTP/1.1 400") && unknown.contains("colour"), "{unknown}");
        assert_eq!(cluster.json(0, &["service", "ls"]).expect("ls"), before, "bad input changed the registry");

        // Kill -9 the leader while a client keeps creating services through
        // another node: writes resume within 5 s and none is lost or doubled.
        let leader = cluster.leader_index().expect("a leader");
        let writer = (leader + 1) % 3;
        let mut acknowledged = vec!["web".to_owned()];
        let mut first_after_kill = None;
        let mut killed_at = None;
        for i in 0..40 {
            if i == 10 {
                cluster.kill(leader);
                killed_at = Some(Instant::now());
            }
            let name = format!("svc-{i}");
            let (code, _, _) = cluster.lbctl(writer, &["service", "create", &name, "-p", &(port + 1 + i as u16).to_string()]);
            if code == 0 {
                acknowledged.push(name);
                if let (Some(killed), None) = (killed_at, first_after_kill) {
                    first_after_kill = Some(killed.elapsed());
                }
            }
        }
        let recovered = first_after_kill.expect("no write succeeded after the kill");
        assert!(recovered < Duration::from_secs(5), "first write after the kill took {recovered:?}");
        cluster.restart(leader);
        acknowledged.sort();
        for n in 0..3 {
            wait_until("every node has every acknowledged service", || {
                cluster
                    .json(n, &["service", "ls"])
                    .map(|ls| {
                        let names = service_names(&ls);
                        acknowledged.iter().all(|a| names.contains(a))
                    })
                    .unwrap_or(false)
            });
            let names = service_names(&cluster.json(n, &["service", "ls"]).expect("ls"));
            let mut unique = names.clone();
            unique.dedup();
            assert_eq!(names, unique, "a service twice on node {n}");
        }

        // Stop every node and start them again from their data dirs.
        for n in 0..3 {
            cluster.stop(n);
        }
        for n in 0..3 {
            cluster.restart(n);
        }
        wait_until("the cluster is back", || cluster.leader_index().is_some());
        for n in 0..3 {
            let addr = SocketAddr::new(cluster.ip(n), port);
            wait_until("web is served again", || answer(addr).is_some());
        }
        let names = service_names(&cluster.json(1, &["service", "ls"]).expect("ls"));
        assert!(acknowledged.iter().all(|a| names.contains(a)), "state lost in the restart");

        // apply -f creates and updates to match the file; --prune removes the rest.
        let file = cluster.dir.path().join("services.toml");
        std::fs::write(
            &file,
            format!(
                "[[service]]\nname = \"web\"\nports = [{{ published = {port}, target = 80 }}]\n\
                 endpoints = [{{ address = \"{b0_addr}\" }}]\n\n\
                 [[service]]\nname = \"fresh\"\nports = [{{ published = {} }}]\n",
                port + 100
            ),
        )
        .expect("write services file");
        let file_arg = file.to_string_lossy().into_owned();
        let (code, out, err) = cluster.lbctl(1, &["apply", "-f", &file_arg, "--prune"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("web: updated") && out.contains("fresh: created"), "{out}");
        let names = service_names(&cluster.json(2, &["service", "ls"]).expect("ls"));
        assert_eq!(names, ["fresh", "web"]);
        let addr = SocketAddr::new(cluster.ip(2), port);
        wait_until("web follows the file's single endpoint", || {
            (0..4).all(|_| answer(addr).as_deref() == Some("b0"))
        });
        std::fs::write(&file, "[[service]]\nname = \"Bad\"\nports = [{ published = 1 }]\n").expect("write");
        let (code, _, err) = cluster.lbctl(1, &["apply", "-f", &file_arg]);
        assert_ne!(code, 0);
        assert!(err.contains("service[0].name"), "{err}");
        assert_eq!(service_names(&cluster.json(2, &["service", "ls"]).expect("ls")), ["fresh", "web"]);

        // A voter removed with --force leaves the Raft membership too.
        let leader = cluster.leader_index().expect("a leader");
        let removed = (leader + 1) % 3;
        let asker = (leader + 2) % 3;
        let removed_name = format!("node-127-{}-0-{}", cluster.block, removed + 1);
        let (code, _, err) = cluster.lbctl(asker, &["node", "rm", "--force", &removed_name]);
        assert_eq!(code, 0, "{err}");
        wait_until("two nodes and two voters", || {
            let nodes = cluster.json(asker, &["node", "ls"]).and_then(|v| v.as_array().map(Vec::len));
            let voters = cluster
                .json(asker, &["cluster", "info"])
                .and_then(|v| v["voters"].as_array().map(Vec::len));
            nodes == Some(2) && voters == Some(2)
        });
    })
    .await
    .expect("cluster test");
    drop((b0, b1));
}

#[test]
fn service_names_are_one_path_segment() {
    let cluster = Cluster::form();
    let port = free_port_on_all(&cluster).to_string();
    let (code, _, err) = cluster.lbctl(0, &["service", "create", "app", "-p", &port]);
    assert_eq!(code, 0, "{err}");
    // A space used to make lbctl send a malformed request line (`HTTP 400`
    // with no reason); an encoded `/` used to reach `app`'s task list.
    for name in ["a b", "app/tasks"] {
        let (code, out, err) = cluster.lbctl(1, &["service", "inspect", name]);
        assert_eq!(
            (code, out.as_str(), err),
            (1, "", format!("Error: name: no service named {name:?}\n")),
            "service inspect {name:?}"
        );
    }
    let (code, _, err) = cluster.lbctl(1, &["service", "inspect", "app"]);
    assert_eq!(code, 0, "{err}");
}

/// A node restarted while no quorum exists (here: alone of three managers)
/// serves its API at once instead of waiting on a write of its own record
/// that cannot commit (it used to give up after 10 s and exit, and a write
/// whose answer never came held its start forever); once the others are
/// back the cluster is whole and takes writes.
#[test]
fn a_node_restarted_without_a_quorum_serves_its_api_at_once() {
    let mut cluster = Cluster::form();
    for n in 0..3 {
        cluster.stop(n);
    }
    cluster.restart(0);
    let api = cluster.api(0);
    wait_for(
        "node 0's API while it has no quorum",
        Duration::from_secs(5),
        || (http_get_blocking(&api, "/live").0 == 200).then_some(()),
        || cluster.log(0),
    );
    assert!(
        cluster.nodes[0]
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_none()),
        "node 0 keeps running without a quorum; log:\n{}",
        cluster.log(0)
    );
    cluster.restart(1);
    cluster.restart(2);
    wait_for(
        "a leader once the others are back",
        Duration::from_secs(30),
        || (cluster.lbctl(0, &["service", "ls"]).0 == 0).then_some(()),
        || cluster.log(0),
    );
    let port = free_port_on_all(&cluster).to_string();
    let (code, _, err) = cluster.lbctl(0, &["service", "create", "after", "-p", &port]);
    assert_eq!(code, 0, "a write through node 0: {err}");
}

/// Requests with made-up methods and paths, authenticated or not, are
/// counted under fixed labels: they used to add one series per method
/// (and per name under /v1/cluster), growing /metrics without bound.
#[test]
fn api_metric_labels_come_from_fixed_sets() {
    let cluster = Cluster::form();
    let api = cluster.api(0);
    for i in 0..20 {
        let request = format!(
            "XMETHOD{i} /v1/cluster/junk{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let response = raw_request(&api, request.as_bytes());
        assert_eq!(status_of(&response), 401, "{response}");
    }
    let (_, metrics) = http_get_blocking(&api, "/metrics");
    let series: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("lbmesh_api_requests_total{"))
        .collect();
    assert!(
        series
            .iter()
            .all(|line| !line.contains("XMETHOD") && !line.contains("junk")),
        "raw input in labels: {series:#?}"
    );
    assert_eq!(
        metric(
            &metrics,
            "lbmesh_api_requests_total",
            &[
                ("route", "/v1/{unknown}"),
                ("method", "other"),
                ("status", "401")
            ]
        ),
        Some(20.0),
        "{series:#?}"
    );
}

/// A published port that is a node's API or Raft port is refused with a
/// 409 naming the node (it used to be accepted, and every node then failed
/// to bind it), and nothing is created.
#[test]
fn a_published_port_on_a_nodes_api_or_raft_port_is_refused() {
    let cluster = Cluster::form();
    for (port, what) in [("9900", "API"), ("9901", "Raft")] {
        // fixed-port-ok: the nodes' own ports
        let (code, _, err) = cluster.lbctl(0, &["service", "create", "clash", "-p", port]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "Error: ports[0].published: port {port} is node \""
            )),
            "{err}"
        );
        assert!(err.contains(&format!("'s {what} port (")), "{err}");
    }
    let (code, out, err) = cluster.lbctl(0, &["service", "ls", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("clash"), "nothing was created: {out}");
}

/// The token with its last digit changed: right format, wrong secret.
fn wrong_token(token: &str) -> String {
    let mut wrong = token.to_owned();
    let last = wrong.pop().unwrap_or('0');
    wrong.push(if last == '0' { '1' } else { '0' });
    wrong
}

fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// One probe of the proxy (a forwarded connection answered by `b0`) and
/// one of `/v1` (an authenticated read), each bounded by a second.
async fn probe(proxy: SocketAddr, api: SocketAddr, token: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let within = Duration::from_secs(1);
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
    let read = tokio::time::timeout(within, async {
        let mut stream = tokio::net::TcpStream::connect(api).await.map_err(|e| e.to_string())?;
        let request = format!("GET /v1/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(answer)
    })
    .await
    .map_err(|_| "/v1 did not answer within 1 s".to_owned())??;
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
    let started = Instant::now();
    while probe(proxy, api, &token).await.is_err() && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    probe(proxy, api, &token)
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
        if let Err(error) = probe(proxy, api, &token).await {
            failures.push(format!("after {at} flood connects: {error}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(flooding.is_finished(), "the flood did not finish in time");
    let held = flooding.await.expect("flood");
    for _ in 0..3 {
        if let Err(error) = probe(proxy, api, &token).await {
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
