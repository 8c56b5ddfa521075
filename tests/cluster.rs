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
        let token = cluster.control_token.clone();
        let malformed = cluster.api_request(
            0,
            format!("POST /v1/services HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{{nop}}").as_bytes(),
        );
        assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed}");
        let huge = "x".repeat(2 * 1024 * 1024 + 1);
        let oversized = cluster.api_request(
            0,
            format!("POST /v1/services HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{huge}", huge.len()).as_bytes(),
        );
        assert!(oversized.starts_with("HTTP/1.1 413"), "{}", &oversized[..oversized.len().min(200)]);
        let (code, _, err) = cluster.lbctl(0, &["--token", "wrong", "service", "ls"]);
        assert_ne!(code, 0);
        assert!(err.contains("control token") && err.contains("LBMCTL-2-"), "{err}");
        let wrong = wrong_token(&cluster.control_token);
        let (code, _, err) = cluster.lbctl(0, &["--token", &wrong, "service", "ls"]);
        assert_ne!(code, 0);
        assert!(err.contains("authorization"), "{err}");
        let no_token = cluster.api_request(0, b"GET /v1/services HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(no_token.starts_with("HTTP/1.1 401"), "{no_token}");
        let unknown_field = br#"{"name":"other","ports":[{"published":3}],"colour":"red"}"#;
        let unknown = cluster.api_request(
            0,
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
        // The plan first, then what was done.
        assert!(out.contains("web: update\n") && out.contains("fresh: create\n"), "{out}");
        assert!(out.contains("applied: 1 created, 1 updated, 0 unchanged, "), "{out}");
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

/// Nodes that join at the same moment all join. The leader passed each
/// join's membership changes to Raft as they came, and openraft refuses a
/// change while another is in flight ("the cluster is already undergoing
/// a configuration change"): one joiner of two started together exited
/// with that error (seen in `loadtest/scale.py --nodes 3`).
#[test]
fn nodes_joining_at_the_same_moment_all_join() {
    const JOINERS: usize = 4;
    let mut cluster = Cluster::bootstrap(&[], None);
    let host = cluster.api(0);
    let token = cluster.manager_token.clone();
    let joiners: Vec<_> = (1..=JOINERS)
        .map(|n| cluster.spawn(n, Some((&host, &token))))
        .collect();
    cluster.nodes.extend(joiners.into_iter().map(Some));
    cluster.wait_for_nodes(JOINERS + 1);
    for n in 1..=JOINERS {
        assert!(
            cluster.nodes[n].as_mut().is_some_and(|child| child
                .try_wait()
                .ok()
                .flatten()
                .is_none()),
            "joiner {n} exited; its log:\n{}",
            cluster.log(n)
        );
    }
}

/// A follower stopped while 25 versions of a 950 KB spec are written
/// catches up within 10 s of its restart. The leader used to send the
/// whole gap (about 25 MB) as one append-entries frame, over the
/// transport's 16 MiB frame limit, and retried that batch forever.
#[test]
fn a_follower_behind_large_specs_catches_up_after_restart() {
    let mut cluster = Cluster::form();
    let leader = wait_for(
        "a leader",
        WAIT,
        || cluster.leader_index(),
        || cluster.log(0),
    );
    let follower = (leader + 1) % 3;
    cluster.stop(follower);
    let port = free_port_on_all(&cluster);
    for version in 0..25 {
        let (status, response) = write_spec(&cluster, leader, version, 950_000, port);
        assert!(
            matches!(status, 200 | 201),
            "write {version}: {}",
            response.get(..400).unwrap_or(&response)
        );
    }
    let apis: Vec<String> = (0..3).map(|n| cluster.api(n)).collect();
    let applied = |n: usize| {
        let (_, metrics) = http_get_blocking(&apis[n], "/metrics");
        metric(&metrics, "lbmesh_raft", &[("field", "applied_index")])
    };
    let target = applied(leader).expect("the leader's applied index");
    cluster.restart(follower);
    let restarted = Instant::now();
    wait_for(
        "the restarted follower to apply the leader's index",
        Duration::from_secs(10),
        || applied(follower).filter(|index| *index >= target),
        || {
            format!(
                "follower at {:?} of {target}; log:\n{}",
                applied(follower),
                cluster.log(leader)
            )
        },
    );
    eprintln!("caught up {:?} after the restart", restarted.elapsed());
    let service = cluster
        .json(follower, &["service", "inspect", "big"])
        .expect("service inspect on the follower");
    let env = service["spec"]["env"].as_array().expect("env");
    assert_eq!(env[0], "V=24", "the follower serves the last version");

    // A spec over the cap is refused before it is proposed, naming the
    // limit, and nothing changes.
    let (status, response) = write_spec(&cluster, follower, 25, 1_100_000, port);
    assert_eq!(status, 413, "{}", response.get(..400).unwrap_or(&response));
    assert!(
        response.contains(r#""spec""#) && response.contains("at most 1048576 bytes are allowed"),
        "{}",
        response.get(..400).unwrap_or(&response)
    );
    let service = cluster
        .json(leader, &["service", "inspect", "big"])
        .expect("service inspect on the leader");
    assert_eq!(
        service["spec"]["env"][0], "V=24",
        "the refused spec changed nothing"
    );
}

/// Writes version `version` of the service `big` (a command service with
/// no replicas, `pad` bytes of environment) through node `n`: the status
/// and the raw response.
fn write_spec(cluster: &Cluster, n: usize, version: usize, pad: usize, port: u16) -> (u16, String) {
    let pad = char::from(b'a' + (version % 26) as u8)
        .to_string()
        .repeat(pad);
    let body = format!(
        r#"{{"name":"big","command":"true","replicas":0,"ports":[{{"published":{port},"target":80}}],"env":["V={version}","PAD={pad}"]}}"#
    );
    let (method, path) = if version == 0 {
        ("POST", "/v1/services")
    } else {
        ("PUT", "/v1/services/big")
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: lbd\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        cluster.control_token,
        body.len()
    );
    let response = cluster.api_request(n, request.as_bytes());
    (status_of(&response), response)
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
        let response = cluster.api_request(0, request.as_bytes());
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

/// The uid a cut-off node runs as, so its packets can be matched.
const NOBODY: u32 = 65534;

/// Firewall rules that cut node traffic of user `uid` (the node at `ip`)
/// off from the cluster's block, both ways; removed on drop, also when the
/// test fails.
struct Cut {
    rules: Vec<Vec<String>>,
}

impl Cut {
    fn new(ip: IpAddr, block: &str, uid: u32) -> Self {
        let (uid, ip) = (uid.to_string(), ip.to_string());
        let outbound = [
            "OUTPUT",
            "-m",
            "owner",
            "--uid-owner",
            &uid,
            "-d",
            block,
            "-j",
            "DROP",
        ];
        let inbound = ["INPUT", "-d", &ip, "-j", "DROP"];
        let rules = [outbound.as_slice(), inbound.as_slice()];
        let mut cut = Cut { rules: Vec::new() };
        for rule in rules {
            let status = Command::new("iptables")
                .args(["-w", "-I"])
                .args(rule)
                .status()
                .expect("iptables (the test needs root and iptables)");
            assert!(status.success(), "iptables -I {rule:?}");
            cut.rules
                .push(rule.iter().map(|arg| (*arg).to_owned()).collect());
        }
        cut
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = Command::new("iptables")
                .args(["-w", "-D"])
                .args(rule)
                .status();
        }
    }
}

/// openraft 0.9 has no pre-vote: a follower cut off from its peers kept
/// starting elections, its term climbed (3 to 10 in the issue's run), and
/// when the cut healed the leader saw the higher term and stepped down,
/// leaving seconds without a leader. With the election guard a voter that
/// cannot reach a quorum does not campaign, so the healed follower comes
/// back under the same leader in the same term.
#[test]
fn healing_a_cut_off_follower_leaves_the_leader_in_place() {
    let mut cluster = Cluster::form();
    let leader = wait_for(
        "a leader",
        Duration::from_secs(20),
        || cluster.leader_index(),
        || cluster.log(0),
    );
    let follower = (0..3).find(|n| *n != leader).unwrap_or(1);
    cluster.stop(follower);
    cluster.restart_as(follower, NOBODY);
    let info = |n: usize| cluster.json(n, &["cluster", "info"]).unwrap_or_default();
    let before = wait_for(
        "the follower back under the leader",
        Duration::from_secs(30),
        || {
            let (ours, theirs) = (info(leader), info(follower));
            (ours["leader"] == theirs["leader"] && !ours["leader"].is_null()).then_some(ours)
        },
        || cluster.log(follower),
    );
    let block = match cluster.ip(0) {
        IpAddr::V4(ip) => format!("{}.{}.0.0/16", ip.octets()[0], ip.octets()[1]),
        IpAddr::V6(_) => unreachable!("the harness uses IPv4 loopback"),
    };
    {
        let _cut = Cut::new(cluster.ip(follower), &block, NOBODY);
        // Four to eight of the follower's election timeouts (1–2 s).
        std::thread::sleep(Duration::from_secs(8));
        let port = free_port_on_all(&cluster).to_string();
        let (code, _, err) = cluster.lbctl(
            leader,
            &["service", "create", "during-the-cut", "-p", &port],
        );
        assert_eq!(
            code, 0,
            "the leader and the other follower take writes: {err}"
        );
    }
    wait_for(
        "the healed follower following the same leader",
        Duration::from_secs(15),
        || (info(follower)["leader"] == before["leader"]).then_some(()),
        || cluster.log(follower),
    );
    // The leader's heartbeats reach the follower within 0.2 s; a deposed
    // leader would show in a second.
    std::thread::sleep(Duration::from_secs(2));
    let after = info(leader);
    assert_eq!(
        after["leader"],
        before["leader"],
        "{after}\n{}",
        cluster.log(follower)
    );
    assert_eq!(
        after["term"],
        before["term"],
        "{after}\n{}",
        cluster.log(follower)
    );
    let port = free_port_on_all(&cluster).to_string();
    let (code, _, err) = cluster.lbctl(
        follower,
        &["service", "create", "after-the-cut", "-p", &port],
    );
    assert_eq!(code, 0, "a write through the healed follower: {err}");
}

/// `lbmesh_listener_up{service, address}` on node `n`, if the series exists.
fn listener_up(cluster: &Cluster, n: usize, service: &str, address: SocketAddr) -> Option<f64> {
    let (_, metrics) = http_get_blocking(&cluster.api(n), "/metrics");
    metric(
        &metrics,
        "lbmesh_listener_up",
        &[("service", service), ("address", &address.to_string())],
    )
}

/// A port another process holds on one node: that node used to throw away
/// every later routing change (an unrelated update left it routing to the
/// old endpoint) and could not restart. Now it skips the address, routes
/// everything else, reports the address (inspect, ps, metric), starts with
/// it taken, and binds it once it is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_taken_on_one_node_stops_no_other_change_there() {
    let b0 = TestBackend::start("b0", Behavior::Identify).await;
    let b1 = TestBackend::start("b1", Behavior::Identify).await;
    let (b0_addr, b1_addr) = (b0.addr.to_string(), b1.addr.to_string());
    tokio::task::spawn_blocking(move || {
        let mut cluster = Cluster::form();
        let web_port = free_port_on_all(&cluster).to_string();
        let (code, _, err) = cluster.lbctl(0, &["service", "create", "web", "-p", &web_port, "--endpoint", &b0_addr]);
        assert_eq!(code, 0, "{err}");
        let web_on_1: SocketAddr = format!("{}:{web_port}", cluster.ip(1)).parse().expect("addr");
        wait_until("web answers on node 1", || answer(web_on_1).as_deref() == Some("b0"));

        // Another process holds the next service's port on node 1 only.
        let port = free_port_on_all(&cluster);
        let blocked_on_1 = SocketAddr::new(cluster.ip(1), port);
        let holder = std::net::TcpListener::bind(blocked_on_1).expect("hold the port on node 1");
        let (code, _, err) = cluster.lbctl(0, &["service", "create", "blocked", "-p", &port.to_string(), "--endpoint", &b1_addr]);
        assert_eq!(code, 0, "{err}");

        // An unrelated change still reaches node 1's routing table.
        let (code, _, err) = cluster.lbctl(0, &["service", "update", "web", "--endpoint-rm", &b0_addr, "--endpoint", &b1_addr]);
        assert_eq!(code, 0, "{err}");
        wait_for(
            "node 1 routes web's update",
            WAIT,
            || (0..3).all(|_| answer(web_on_1).as_deref() == Some("b1")).then_some(()),
            || cluster.log(1),
        );
        for n in [0, 2] {
            assert_eq!(answer(SocketAddr::new(cluster.ip(n), port)).as_deref(), Some("b1"), "node {n}");
            assert_eq!(listener_up(&cluster, n, "blocked", SocketAddr::new(cluster.ip(n), port)), Some(1.0));
        }

        // Reported per node: inspect, ps and node 1's metric.
        let node = format!("node-127-{}-0-2", cluster.block);
        let expected = serde_json::json!([{ "node": node, "address": blocked_on_1.to_string(), "error": "address in use" }]);
        wait_for(
            "node 1's failure in service inspect",
            WAIT,
            || (cluster.json(2, &["service", "inspect", "blocked"])?["listener_errors"] == expected).then_some(()),
            || format!("{:?}", cluster.json(2, &["service", "inspect", "blocked"])),
        );
        let (code, ps, err) = cluster.lbctl(0, &["service", "ps", "blocked"]);
        assert_eq!(code, 0, "{err}");
        assert!(ps.ends_with(&format!("\n\n{node}: cannot bind {blocked_on_1}: address in use\n")), "{ps}");
        assert_eq!(listener_up(&cluster, 1, "blocked", blocked_on_1), Some(0.0));
        let (code, ps, _) = cluster.lbctl(0, &["service", "ps", "web"]);
        assert_eq!(code, 0);
        assert!(!ps.contains("cannot bind"), "{ps}");

        // Node 1 restarts with the port still taken, and serves.
        cluster.stop(1);
        cluster.restart(1);
        wait_for(
            "restarted node 1 serves web",
            Duration::from_secs(30),
            || (answer(web_on_1).as_deref() == Some("b1")).then_some(()),
            || cluster.log(1),
        );
        assert_eq!(listener_up(&cluster, 1, "blocked", blocked_on_1), Some(0.0));

        // Freed: bound on the next retry, and the report clears.
        drop(holder);
        wait_for(
            "node 1 binds the freed port",
            WAIT,
            || (answer(blocked_on_1).as_deref() == Some("b1")).then_some(()),
            || cluster.log(1),
        );
        assert_eq!(listener_up(&cluster, 1, "blocked", blocked_on_1), Some(1.0));
        wait_until("the report clears", || {
            cluster.json(0, &["service", "inspect", "blocked"]).is_some_and(|s| s["listener_errors"] == serde_json::json!([]))
        });
        let (_, ps, _) = cluster.lbctl(0, &["service", "ps", "blocked"]);
        assert!(!ps.contains("cannot bind"), "{ps}");

        // Removed: its series goes with it.
        let (code, _, err) = cluster.lbctl(0, &["service", "rm", "blocked"]);
        assert_eq!(code, 0, "{err}");
        wait_until("node 1 drops the series", || listener_up(&cluster, 1, "blocked", blocked_on_1).is_none());
    })
    .await
    .expect("cluster test");
    drop((b0, b1));
}

/// A node whose API or Raft port a service publishes is refused at the
/// join, naming the service, before it is added to Raft.
#[test]
fn a_node_whose_api_or_raft_port_is_published_cannot_join() {
    let cluster = Cluster::form();
    let port = free_port_on_all(&cluster);
    let (code, _, err) = cluster.lbctl(0, &["service", "create", "taken", "-p", &port.to_string()]);
    assert_eq!(code, 0, "{err}");
    let ip = format!("127.{}.0.9", cluster.block);
    for (flag, field) in [
        ("--api-addr", "node.api_addr"),
        ("--raft-addr", "node.raft_addr"),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lbd"))
            .args(["--advertise-addr", &ip, "--data-dir"])
            .arg(cluster.dir.path().join(&flag[2..]))
            .args([flag, &format!("{ip}:{port}")])
            .args(["--join", &cluster.api(0), "--token", &cluster.manager_token])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the joiner");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the joiner") {
                break status;
            }
            if started.elapsed() > WAIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{flag}: the refused joiner kept running");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
            .expect("read stderr");
        assert!(!status.success(), "{flag} on a published port joined");
        assert!(
            stderr.contains(&format!("{field}: the "))
                && stderr.contains(&format!(
                    "port {port} ({ip}:{port}) is published by service \"taken\""
                )),
            "{stderr}"
        );
    }
    let info = cluster.json(0, &["cluster", "info"]).expect("cluster info");
    assert_eq!(info["voters"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        info["learners"],
        serde_json::json!([]),
        "no learner left behind"
    );
    assert_eq!(
        cluster
            .json(0, &["node", "ls"])
            .expect("ls")
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}

/// A create sent twice with one `Idempotency-Key` (a client, or a node
/// passing it on, that lost the first answer) is answered 201 with the same
/// service each time, through a follower and through the leader, and made
/// once; the resend used to be answered 409 "already exists". A new key is
/// a new write, a malformed key is refused, and the key reused for another
/// kind of write is refused (it used to get the create's answer, or a 500).
#[test]
fn a_create_resent_with_its_idempotency_key_gets_the_first_answer() {
    let cluster = Cluster::form();
    let leader = cluster.leader_index().expect("a leader");
    let follower = (leader + 1) % 3;
    let port = free_port_on_all(&cluster);
    let body = format!(r#"{{"name":"once","ports":[{{"published":{port}}}]}}"#);
    let post = |key: &str| {
        format!(
            "POST /v1/services HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\
             Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Idempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
            cluster.control_token,
            body.len()
        )
    };
    let first = cluster.api_request(follower, post("client-1").as_bytes());
    assert_eq!(status_of(&first), 201, "{first}");
    for node in [follower, leader] {
        let resent = cluster.api_request(node, post("client-1").as_bytes());
        assert_eq!(
            status_of(&resent),
            201,
            "resend through node {node}: {resent}"
        );
        assert_eq!(body_of(&resent), body_of(&first), "the first answer");
    }
    let new = cluster.api_request(follower, post("client-2").as_bytes());
    assert_eq!(status_of(&new), 409, "{new}");
    let bad = cluster.api_request(follower, post("no spaces").as_bytes());
    assert_eq!(status_of(&bad), 400, "{bad}");
    assert!(body_of(&bad).contains("idempotency-key"), "{bad}");
    // The create's key on a removal is no resend: refused, nothing removed.
    let remove = format!(
        "DELETE /v1/services/once HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nIdempotency-Key: client-1\r\n\r\n",
        cluster.control_token
    );
    let reused = cluster.api_request(follower, remove.as_bytes());
    assert_eq!(status_of(&reused), 409, "{reused}");
    assert!(body_of(&reused).contains("a different request"), "{reused}");
    let listed = cluster
        .json(follower, &["service", "ls"])
        .expect("service ls");
    assert_eq!(service_names(&listed), ["once"]);
    let version = cluster
        .json(follower, &["service", "inspect", "once"])
        .and_then(|v| v["version"].as_u64());
    assert_eq!(version, Some(1), "created once, never updated");
}

/// Sends one request to `addr` with the control token: the status and
/// the body, or the error when no answer came.
fn send(
    addr: SocketAddr,
    ca_pem: &str,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls_exchange(addr, ca_pem, request.as_bytes(), Duration::from_secs(40))
        .map(|r| (status_of(&r), body_of(&r).to_owned()))
}

/// Issue 12's acceptance for idempotent writes, run by hand (a few
/// minutes): `cargo test -p lbmesh -p lbctl --test cluster -- --ignored
/// creates_through_followers`. Two writers send 1,000 creates in all, each
/// followed by its removal, each sent once (no key of their own) to a
/// follower, while the leader is killed (SIGKILL) and restarted again and
/// again. No write may be answered with an error although it took effect
/// (a create answered 409 for its own name, a create that failed but whose
/// removal found it, a removal answered 404 after its create succeeded).
#[test]
#[ignore = "a long run: the figures of the acceptance"]
fn creates_through_followers_survive_repeated_leader_kills() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    const CREATES: usize = 1_000;
    const WRITERS: usize = 2;
    let mut cluster = Cluster::form();
    let first_leader = wait_for(
        "a leader",
        Duration::from_secs(10),
        || cluster.leader_index(),
        || cluster.log(0),
    );
    let leader = Arc::new(AtomicUsize::new(first_leader));
    let apis: Vec<SocketAddr> = (0..3)
        .map(|n| cluster.api(n).parse().expect("addr"))
        .collect();
    // Per create: its answer, then its removal's.
    type Answer = Result<(u16, String), String>;
    let answers: Arc<Mutex<Vec<(String, Answer, Answer)>>> = Arc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (leader, apis, answers) = (Arc::clone(&leader), apis.clone(), Arc::clone(&answers));
            let token = cluster.control_token.clone();
            let ca_pem = cluster.ca_pem();
            std::thread::spawn(move || {
                // Only a refused connection is tried again, at the other
                // follower: nothing reached a node.
                let to_follower = |i: usize, method: &str, path: &str, body: &str| {
                    let mut answer = Err(String::new());
                    for attempt in 0..50 {
                        let target = (leader.load(Ordering::Relaxed) + 1 + (i + attempt) % 2) % 3;
                        answer = send(apis[target], &ca_pem, &token, method, path, body);
                        match &answer {
                            Err(e) if e.starts_with("connect ") => {
                                std::thread::sleep(Duration::from_millis(100))
                            }
                            _ => break,
                        }
                    }
                    answer
                };
                for i in (w..CREATES).step_by(WRITERS) {
                    let name = format!("c{i}");
                    // fixed-port-ok: on this cluster's own 127.B.0.N addresses.
                    let port = 41_000 + i % 500;
                    let body = format!(r#"{{"name":"{name}","ports":[{{"published":{port}}}]}}"#);
                    let created = to_follower(i, "POST", "/v1/services", &body);
                    let removed = to_follower(i, "DELETE", &format!("/v1/services/{name}"), "");
                    answers
                        .lock()
                        .expect("answers")
                        .push((name, created, removed));
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut kills = 0;
    while answers.lock().expect("answers").len() < CREATES
        && started.elapsed() < Duration::from_secs(900)
    {
        std::thread::sleep(Duration::from_millis(1_500 + 500 * (kills % 4)));
        let Some(n) = cluster.leader_index() else {
            continue;
        };
        cluster.kill(n);
        kills += 1;
        let new_leader = (0..40).find_map(|_| {
            std::thread::sleep(Duration::from_millis(250));
            cluster.leader_index()
        });
        if let Some(new_leader) = new_leader {
            leader.store(new_leader, Ordering::Relaxed);
        }
        cluster.restart(n);
        wait_for(
            "the killed leader's API",
            Duration::from_secs(30),
            || (http_get_blocking(&cluster.api(n), "/live").0 == 200).then_some(()),
            || cluster.log(n),
        );
    }
    for writer in writers {
        writer.join().expect("writer");
    }
    let left: Vec<String> = (0..40)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(250));
            cluster.json(0, &["service", "ls"])
        })
        .map(|v| service_names(&v))
        .expect("service ls");
    let answers = answers.lock().expect("answers");
    let status = |a: &Answer| a.as_ref().map(|(s, _)| *s).ok();
    let mut false_errors = Vec::new();
    let (mut ok, mut honest_failures) = (0, 0);
    for (name, created, removed) in answers.iter() {
        let still_there = left.contains(name);
        match (status(created), status(removed)) {
            (Some(201), Some(200)) => ok += 1,
            // Its own earlier copy made the name taken: applied, then refused.
            (Some(409), _)
                if created
                    .as_ref()
                    .is_ok_and(|(_, b)| b.contains("already exists")) =>
            {
                false_errors.push(format!("{name}: create {created:?}"))
            }
            (Some(201), Some(404)) => false_errors.push(format!("{name}: remove {removed:?}")),
            (Some(201), _) if !still_there => {
                false_errors.push(format!("{name}: remove {removed:?}"))
            }
            (_, Some(200)) => false_errors.push(format!("{name}: create {created:?}")),
            _ => honest_failures += 1,
        }
    }
    println!(
        "{} creates and removals through followers, {kills} leader kills in {:?}: \
         {ok} both answered OK, {} answered an error but took effect, \
         {honest_failures} failed without effect; left over: {left:?}",
        answers.len(),
        started.elapsed(),
        false_errors.len(),
    );
    assert_eq!(answers.len(), CREATES);
    assert!(kills >= 3, "only {kills} kills");
    assert!(
        false_errors.is_empty(),
        "errors that took effect: {false_errors:#?}"
    );
}

/// A node id as a float64 JSON reader (jq before 1.7, JavaScript,
/// Prometheus) reads it: a string is kept, a number goes through f64.
fn float64_read(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Number(n) => format!("{}", n.as_f64().expect("a number") as u64),
        other => panic!("not an id: {other}"),
    }
}

/// Node ids are random 63-bit numbers. As JSON numbers, a float64 reader
/// rounded them into other ids, so `node inspect` of an id read back from
/// `node ls --format json` failed and `lbmesh_raft{field="leader_id"}`
/// named no node; now ids are decimal strings in the API and lbctl, and
/// the leader is a label. A new spec over the ports cap is refused naming
/// the limit, and nothing is created.
#[test]
fn node_ids_survive_float64_json_readers() {
    let cluster = Cluster::form();
    let nodes = cluster.json(0, &["node", "ls"]).expect("node ls json");
    let ids: Vec<String> = nodes
        .as_array()
        .expect("array")
        .iter()
        .map(|node| float64_read(&node["id"]))
        .collect();
    assert_eq!(ids.len(), 3, "{nodes}");
    // Each id is odd (so rounded by float64 above 2^53) and above 2^53
    // with odds 1 - 2^-10: all three below it has odds 2^-30.
    assert!(
        ids.iter()
            .any(|id| id.parse::<u64>().is_ok_and(|v| v > 1 << 53)),
        "{ids:?}"
    );
    for id in &ids {
        let node = cluster
            .json(1, &["node", "inspect", id])
            .unwrap_or_else(|| panic!("node inspect {id} (from node ls) failed"));
        assert_eq!(float64_read(&node["id"]), *id);
    }
    let info = cluster
        .json(2, &["cluster", "info"])
        .expect("cluster info json");
    let leader = float64_read(&info["leader"]);
    assert!(
        ids.contains(&leader),
        "leader {leader} is not one of {ids:?}"
    );
    assert!(ids.contains(&float64_read(&info["node_id"])), "{info}");
    let voters = info["voters"].as_array().expect("voters");
    assert!(
        voters.iter().all(|v| ids.contains(&float64_read(v))),
        "{info}"
    );
    let (_, metrics) = http_get_blocking(&cluster.api(2), "/metrics");
    assert!(
        metrics.contains(&format!("lbmesh_raft_leader{{leader_id=\"{leader}\"}} 1\n")),
        "{metrics}"
    );
    assert!(!metrics.contains("field=\"leader_id\""), "{metrics}");

    let published: Vec<String> = (0..65).map(|i| format!("{}:80", 20_000 + i)).collect();
    let mut args = vec!["service", "create", "wide"];
    for port in &published {
        args.extend(["-p", port.as_str()]);
    }
    let (code, _, err) = cluster.lbctl(0, &args);
    assert_eq!(
        (code, err.as_str()),
        (
            1,
            "Error: ports: 65 ports; at most 64 are allowed per service\n"
        )
    );
    let services = cluster.json(0, &["service", "ls"]).expect("service ls");
    assert_eq!(services.as_array().map(Vec::len), Some(0), "{services}");
}
