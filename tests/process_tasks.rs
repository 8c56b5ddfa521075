//! The process runtime end to end: three `lbd` processes on 127.A.0.1/.2/.3
//! run a small HTTP server (busybox httpd) as each task's `--command`; the
//! same create, scale and kill checks as the Docker test, and global mode
//! with a node that joins later.
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use test_support::cluster::*;
use test_support::mesh::*;
use test_support::{get, wait_for};

/// Serves a page naming the task on $HOST:$PORT.
const SERVER: &str = "d=$(mktemp -d) && echo \"$LBMESH_TASK_ID\" > $d/index.html && exec busybox httpd -f -p $HOST:$PORT -h $d";

/// Creates `name`: `replicas` tasks of [`SERVER`] published on
/// `port`:80, with `extra` flags; fails the test with lbctl's error.
fn create_server(cluster: &Cluster, name: &str, replicas: &str, port: u16, extra: &[&str]) {
    let publish = format!("{port}:80");
    let mut args = vec![
        "service",
        "create",
        name,
        "--command",
        SERVER,
        "--replicas",
        replicas,
        "-p",
        &publish,
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = cluster.lbctl(0, &args);
    assert_eq!(code, 0, "creating {name}: {err}");
}

#[test]
fn process_tasks_create_scale_and_heal() {
    let cluster = Cluster::form_with(FAST_HEARTBEATS);
    let port = free_port_on_all(&cluster);
    let publish = format!("{port}:80");
    let (code, out, err) = cluster.lbctl(
        0,
        &[
            "service",
            "create",
            "web",
            "--command",
            SERVER,
            "--replicas",
            "3",
            "-p",
            &publish,
            "--drain-timeout",
            "500ms",
            // A request in flight when a task is killed is resent to
            // another task instead of failing.
            "--retry-on-empty",
            "true",
            "--restart-delay",
            "300ms",
            "--stop-grace-period",
            "2s",
        ],
    );
    assert_eq!(code, 0, "{err}");
    // create followed the tasks: progress lines, then all three serve.
    assert!(
        out.starts_with("web\noverall progress: 0 out of 3 tasks\n")
            && out.contains("\noverall progress: 3 out of 3 tasks\n")
            && out.ends_with("verify: Service web converged\n"),
        "{out}"
    );
    let now = tasks(&cluster, 0, "web");
    assert_eq!((serving(&now).len(), live(&now).len()), (3, 3), "{now:?}");
    let running = serving(&now);
    let nodes: BTreeSet<&str> = running
        .iter()
        .filter_map(|t| t["node_name"].as_str())
        .collect();
    assert_eq!(nodes.len(), 3, "one per node");
    let ids: BTreeSet<String> = running
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect();
    let mut seen = BTreeSet::new();
    for i in 0..60 {
        seen.insert(get(cluster.mesh_addrs(port)[i % 3]).expect("GET through the mesh"));
    }
    assert_eq!(seen, ids, "every task answers through the mesh");
    // Each task's backend series name its task and node, on every node.
    let (_, metrics) = test_support::http_get_blocking(&cluster.api(1), "/metrics");
    for task in &running {
        let endpoint = &task["endpoint"];
        let backend = format!(
            "{}:{}",
            endpoint["ip"].as_str().unwrap_or(""),
            endpoint["ports"][0][1]
        );
        let labels = [
            ("service", "web"),
            ("backend", backend.as_str()),
            ("task", &format!("web.{}", task["slot"])),
            ("node", task["node_name"].as_str().unwrap_or("-")),
        ];
        assert_eq!(
            test_support::metric(&metrics, "lbmesh_backend_up", &labels),
            Some(1.0),
            "{labels:?} in\n{metrics}"
        );
    }

    // service logs, from node 0: every task's output, its own lines
    // prefixed with its name, id and node; the tasks on the other nodes
    // are read there.
    let talk = format!("echo \"hello from $LBMESH_TASK_ID\"; echo bye; {SERVER}");
    let talk_port = free_port_on_all(&cluster).to_string();
    let (code, _, err) = cluster.lbctl(
        0,
        &[
            "service",
            "create",
            "talker",
            "--command",
            &talk,
            "--replicas",
            "3",
            "--replicas-max-per-node",
            "1",
            "-p",
            &talk_port,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let talkers = serving(&tasks(&cluster, 0, "talker"));
    let mut expected = Vec::new();
    let mut last = Vec::new();
    for task in &talkers {
        let id = task["id"].as_str().unwrap_or_default();
        let prefix = format!(
            "talker.{}.{id}@{}",
            task["slot"],
            task["node_name"].as_str().unwrap_or("-")
        );
        expected.push(format!("{prefix} | hello from {id}"));
        expected.push(format!("{prefix} | bye"));
        last.push(format!("{prefix} | bye"));
    }
    let nodes: BTreeSet<&str> = talkers
        .iter()
        .filter_map(|t| t["node_name"].as_str())
        .collect();
    assert_eq!(nodes.len(), 3, "one talker per node: {talkers:?}");
    let sorted = |text: &str| {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    expected.sort();
    last.sort();
    let (code, out, err) = cluster.lbctl(0, &["service", "logs", "talker"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sorted(&out), expected, "{out}");
    let (code, out, err) = cluster.lbctl(2, &["service", "logs", "--tail", "1", "talker"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sorted(&out), last, "{out}");
    assert_eq!(cluster.lbctl(0, &["service", "rm", "talker"]).0, 0);

    // scale follows too: it returns once the count serves.
    let (code, out, err) = cluster.lbctl(0, &["service", "scale", "web=5"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("overall progress: 5 out of 5 tasks\n"),
        "{out}"
    );
    assert_eq!(serving(&tasks(&cluster, 0, "web")).len(), 5);
    assert_eq!(cluster.lbctl(0, &["service", "scale", "web=2"]).0, 0);
    let now = tasks(&cluster, 0, "web");
    assert_eq!((serving(&now).len(), live(&now).len()), (2, 2), "{now:?}");
    let two = serving(&now);

    // kill -9 of one task's process group under a steady client.
    let client = ClientLoop::start(cluster.mesh_addrs(port));
    std::thread::sleep(Duration::from_secs(1));
    let pid = two[0]["runtime_id"]
        .as_str()
        .and_then(|id| id.strip_prefix("pid:"))
        .expect("a pid")
        .to_owned();
    // `--` so kill(1) reads "-PID" as a process group, never as an option.
    let killed = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pid}")])
        .status()
        .expect("kill");
    assert!(killed.success());
    let victim = two[0]["id"].as_str().unwrap_or_default().to_owned();
    wait_for(
        "the killed task replaced",
        Duration::from_secs(20),
        || {
            let now = serving(&tasks(&cluster, 0, "web"));
            (now.len() == 2 && now.iter().all(|t| t["id"] != victim.as_str())).then_some(())
        },
        || cluster.lbctl(0, &["service", "ps", "web"]).1,
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_no_failures("kill -9 of a task", &client.finish());
}

/// A service write follows its tasks: a task that fails ends it with the
/// task's error, a task that cannot be placed ends it at `--timeout` with
/// the reason, and `--detach` returns at once.
#[test]
fn service_writes_fail_on_task_errors_and_time_out_unless_detached() {
    let cluster = Cluster::bootstrap(&[], None);
    let port = free_port_on_all(&cluster).to_string();
    let (code, out, err) = cluster.lbctl(
        0,
        &[
            "service",
            "create",
            "crash",
            "--command",
            "exit 3",
            "-p",
            &port,
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        err.starts_with("Error: crash: task crash.1 (")
            && err.ends_with(") failed: the command exit status: 3 at once: no output\n"),
        "{err}"
    );
    assert!(
        out.starts_with("crash\noverall progress: 0 out of 1 tasks\n"),
        "{out}"
    );

    let port = free_port_on_all(&cluster).to_string();
    let picky = [
        "service",
        "create",
        "picky",
        "--command",
        SERVER,
        "-p",
        &port,
        "--constraint",
        "node.labels.gpu==yes",
        "--timeout",
        "2s",
    ];
    let (code, _, err) = cluster.lbctl(0, &picky);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("Error: picky: not converged within 2s (picky.1 pending: ")
            && err.contains("node.labels.gpu==yes"),
        "{err}"
    );

    // --detach: the same unplaceable service, and the command returns its
    // name with the task still pending (a wait would have timed out).
    let port = free_port_on_all(&cluster).to_string();
    let mut detached = picky.to_vec();
    detached[2] = "later";
    detached[6] = &port;
    detached.push("--detach");
    let (code, out, err) = cluster.lbctl(0, &detached);
    assert_eq!((code, out.as_str()), (0, "later\n"), "{err}");
    let (code, out, err) = cluster.lbctl(0, &["service", "scale", "-d", "later=2"]);
    assert_eq!((code, out.as_str()), (0, "later scaled to 2\n"), "{err}");
}

#[test]
fn global_service_runs_on_every_node_including_new_ones() {
    let mut cluster = Cluster::form_with(FAST_HEARTBEATS);
    let port = free_port_on_all(&cluster);
    let publish = format!("{port}:80");
    let (code, _, err) = cluster.lbctl(
        0,
        &[
            "service",
            "create",
            "agent",
            "--mode",
            "global",
            "--command",
            SERVER,
            "-p",
            &publish,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let three = wait_serving(&cluster, "agent", 3, Duration::from_secs(30));
    let nodes: BTreeSet<&str> = three
        .iter()
        .filter_map(|t| t["node_name"].as_str())
        .collect();
    assert_eq!(nodes.len(), 3);
    // Scaling a global service is refused by name.
    let (code, _, err) = cluster.lbctl(0, &["service", "scale", "agent=5"]);
    assert_ne!(code, 0);
    assert!(err.contains("replicas"), "{err}");

    let host = cluster.api(0);
    let token = cluster
        .json(0, &["cluster", "join-token", "worker"])
        .and_then(|t| t["token"].as_str().map(str::to_owned))
        .expect("worker token");
    let fourth = cluster.spawn(3, Some((&host, &token)));
    cluster.nodes.push(Some(fourth));
    cluster.wait_for_nodes(4);
    let four = wait_serving(&cluster, "agent", 4, Duration::from_secs(30));
    let fourth_name = format!("node-{}", cluster.ip(3).to_string().replace('.', "-"));
    assert!(
        four.iter().any(|t| t["node_name"] == fourth_name.as_str()),
        "{four:?}"
    );
}

/// Make before break: a node marked down whose task still answers (its lbd
/// is gone, the task process is not) keeps that task in every other node's
/// table until the replacement serves, so a service of one replica never
/// has a moment without a backend.
#[test]
fn a_down_nodes_task_serves_until_its_replacement_does() {
    let mut cluster = Cluster::form_with(FAST_HEARTBEATS);
    let port = free_port_on_all(&cluster);
    create_server(&cluster, "solo", "1", port, &[]);
    let first = wait_serving(&cluster, "solo", 1, Duration::from_secs(30));
    let first_id = first[0]["id"].as_str().unwrap_or_default().to_owned();
    let node_name = first[0]["node_name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let stranded = (0..3)
        .find(|n| node_name == format!("node-{}", cluster.ip(*n).to_string().replace('.', "-")))
        .expect("the task's node is one of the three");
    let survivors: Vec<usize> = (0..3).filter(|n| *n != stranded).collect();
    let addrs: Vec<_> = survivors
        .iter()
        .map(|n| cluster.mesh_addrs(port)[*n])
        .collect();

    let client = ClientLoop::start(addrs.clone());
    std::thread::sleep(Duration::from_millis(500));
    cluster.kill(stranded);
    let survivor = survivors[0];
    let replacement = wait_for(
        "a replacement serving on another node",
        Duration::from_secs(30),
        || {
            serving(&tasks(&cluster, survivor, "solo"))
                .iter()
                .find(|t| t["id"] != first_id.as_str())
                .and_then(|t| t["id"].as_str().map(str::to_owned))
        },
        || cluster.lbctl(survivor, &["service", "ps", "solo"]).1,
    );
    // The stranded task leaves the tables once the replacement serves.
    wait_for(
        "every answer from the replacement",
        Duration::from_secs(10),
        || {
            addrs
                .iter()
                .all(|addr| (0..4).all(|_| get(*addr).as_deref() == Ok(replacement.as_str())))
                .then_some(())
        },
        || cluster.lbctl(survivor, &["service", "ps", "solo"]).1,
    );
    let results = client.finish();
    assert!(
        results
            .iter()
            .any(|r| r.as_deref() == Ok(first_id.as_str())),
        "the first task answered before the kill"
    );
    assert_no_failures("the node of the only task marked down", &results);
}

/// The state of task `id` of `service` as node 0 sees it.
fn task_state(cluster: &Cluster, service: &str, id: &str) -> Option<(String, String)> {
    tasks(cluster, 0, service)
        .into_iter()
        .find(|t| t["id"] == id)
        .map(|t| {
            let field = |name: &str| t[name].as_str().unwrap_or_default().to_owned();
            (field("desired"), field("state"))
        })
}

/// A drain ends when the last connection does: with a drain timeout of
/// ten minutes, a rolling update (stop-first, then start-first) and a
/// scale-down whose departing tasks hold no connection finish within the
/// test's bounds, which they could not if the agent waited the timeout
/// (the old behaviour, which this test fails on: each batch waited ten
/// minutes). No request of a steady client loop fails meanwhile.
#[test]
fn drains_without_connections_end_long_before_the_timeout() {
    let cluster = Cluster::form_with(FAST_HEARTBEATS);
    let port = free_port_on_all(&cluster);
    create_server(
        &cluster,
        "web",
        "3",
        port,
        &["--drain-timeout", "10m", "--retry-on-empty", "true"],
    );
    let before = wait_serving(&cluster, "web", 3, Duration::from_secs(30));
    let client = ClientLoop::start(cluster.mesh_addrs(port));
    for (order, version) in [("stop-first", "1"), ("start-first", "2")] {
        let env = format!("VERSION={version}");
        let (code, out, err) = cluster.lbctl(
            0,
            &[
                "service",
                "update",
                "web",
                "--env",
                &env,
                "--update-order",
                order,
            ],
        );
        assert_eq!(code, 0, "{order}: {out}{err}");
        let now = wait_serving(&cluster, "web", 3, Duration::from_secs(60));
        assert!(
            now.iter()
                .all(|t| before.iter().all(|b| b["id"] != t["id"])),
            "{order}: every task was replaced: {now:?}"
        );
        // Every replaced task was stopped (not left draining).
        wait_for(
            &format!("{order}: no task left draining"),
            Duration::from_secs(30),
            || {
                tasks(&cluster, 0, "web")
                    .iter()
                    .all(|t| t["desired"] == "running" || t["state"] != "running")
                    .then_some(())
            },
            || cluster.lbctl(0, &["service", "ps", "web"]).1,
        );
    }
    let (code, _, err) = cluster.lbctl(0, &["service", "scale", "web=1"]);
    assert_eq!(code, 0, "{err}");
    wait_for(
        "the scaled-down tasks stopped",
        Duration::from_secs(30),
        || {
            let all = tasks(&cluster, 0, "web");
            let running = all.iter().filter(|t| t["state"] == "running").count();
            (running == 1).then_some(())
        },
        || cluster.lbctl(0, &["service", "ps", "web"]).1,
    );
    assert_no_failures("rolling updates that drain early", &client.finish());
}

/// A departing task with a long-lived connection open through one node
/// keeps draining while it is open, however many heartbeats pass, and
/// stops once it closes; with a short drain timeout, it stops at the
/// timeout even though the connection is still open.
#[test]
fn an_open_connection_holds_a_drain_until_it_closes_or_times_out() {
    let cluster = Cluster::form_with(FAST_HEARTBEATS);
    for (service, timeout) in [("held", "10m"), ("timed", "3s")] {
        let port = free_port_on_all(&cluster);
        create_server(&cluster, service, "1", port, &["--drain-timeout", timeout]);
        let task = wait_serving(&cluster, service, 1, Duration::from_secs(30));
        let id = task[0]["id"].as_str().unwrap_or_default().to_owned();
        // An idle connection through node 1 (busybox httpd waits 60 s for
        // a request): the proxy holds it to the task.
        let long_lived = std::net::TcpStream::connect(cluster.mesh_addrs(port)[1])
            .expect("connect through the mesh");
        wait_for(
            "node 1 holds the connection to the task",
            Duration::from_secs(10),
            || {
                let (_, metrics) = test_support::http_get_blocking(&cluster.api(1), "/metrics");
                let open = test_support::metric(
                    &metrics,
                    "lbmesh_backend_active_connections",
                    &[("service", service)],
                );
                (open == Some(1.0)).then_some(())
            },
            || cluster.log(1),
        );
        let (code, _, err) = cluster.lbctl(0, &["service", "scale", &format!("{service}=0")]);
        assert_eq!(code, 0, "{err}");
        wait_for(
            "the task departs",
            Duration::from_secs(10),
            || (task_state(&cluster, service, &id)?.0 == "shutdown").then_some(()),
            || cluster.lbctl(0, &["service", "ps", service]).1,
        );
        if service == "held" {
            // Ten heartbeats later it still drains: node 1 reports one
            // connection open.
            std::thread::sleep(Duration::from_secs(3));
            assert_eq!(
                task_state(&cluster, service, &id),
                Some(("shutdown".to_owned(), "running".to_owned())),
                "the task was stopped under an open connection"
            );
            // The client closes: the proxy's connection to the task ends.
            let _ = long_lived.shutdown(std::net::Shutdown::Both);
        }
        wait_for(
            "the task stopped",
            Duration::from_secs(30),
            || (task_state(&cluster, service, &id)?.1 == "shutdown").then_some(()),
            || cluster.lbctl(0, &["service", "ps", service]).1,
        );
        // "timed" was stopped at its timeout with the connection still
        // open on the client's side.
        drop(long_lived);
    }
}

/// Prints `tick N` every 200 ms beside the page server.
const TICKER: &str = "(i=0; while :; do i=$((i+1)); echo \"tick $i\"; sleep 0.2; done) & d=$(mktemp -d) && exec busybox httpd -f -p $HOST:$PORT -h $d";

/// Reads `stream` until each of `prefixes` has shown `count` lines, each
/// `PREFIX | tick N` with N growing; returns the lines.
fn ticks(stream: &LbctlStream, prefixes: &[String], count: usize) -> Vec<String> {
    let mut seen: Vec<Vec<u64>> = vec![Vec::new(); prefixes.len()];
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.iter().any(|s| s.len() < count) && std::time::Instant::now() < deadline {
        let Some(line) = stream.next_line(Duration::from_secs(5)) else {
            break;
        };
        let (prefix, text) = line.split_once(" | ").expect("a prefixed line");
        let index = prefixes
            .iter()
            .position(|p| p == prefix)
            .unwrap_or_else(|| panic!("{line:?} is none of {prefixes:?}"));
        let n: u64 = text
            .strip_prefix("tick ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line:?}"));
        assert!(
            seen[index].last().is_none_or(|last| n == last + 1),
            "{line:?} after {:?}",
            seen[index]
        );
        seen[index].push(n);
        lines.push(line);
    }
    assert!(seen.iter().all(|s| s.len() >= count), "{lines:?}");
    lines
}

/// `service logs -f`: each task's output as it grows, through a node that
/// runs none of them (each stream relayed over mutual TLS), lines prefixed
/// by task; Ctrl-C and a killed client both end the streams on both nodes
/// (`lbmesh_api_log_streams` back to 0) and leave the tasks running; a
/// removed service ends the follow by itself.
#[test]
fn service_logs_follow_streams_until_the_client_or_the_tasks_go() {
    let cluster = Cluster::form_with(FAST_HEARTBEATS);
    let port = free_port_on_all(&cluster).to_string();
    let (code, _, err) = cluster.lbctl(
        0,
        &[
            "service",
            "create",
            "ticker",
            "--command",
            TICKER,
            "--replicas",
            "2",
            "--replicas-max-per-node",
            "1",
            "-p",
            &port,
            "--stop-grace-period",
            "1s",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let running = serving(&tasks(&cluster, 0, "ticker"));
    assert_eq!(running.len(), 2, "{running:?}");
    // Each task's node, by its endpoint (the node's advertise address).
    let on: Vec<usize> = running
        .iter()
        .map(|t| {
            let ip = t["endpoint"]["ip"].as_str().unwrap_or_default();
            (0..3)
                .find(|&n| cluster.ip(n).to_string() == ip)
                .unwrap_or_else(|| panic!("no node at {ip}"))
        })
        .collect();
    let asked = (0..3)
        .find(|n| !on.contains(n))
        .expect("a node without a task");
    let prefixes: Vec<String> = running
        .iter()
        .map(|t| {
            format!(
                "ticker.{}.{}@{}",
                t["slot"],
                t["id"].as_str().unwrap_or_default(),
                t["node_name"].as_str().unwrap_or("-")
            )
        })
        .collect();
    let ids: BTreeSet<String> = running
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect();
    let streams_are = |want: f64| {
        wait_for(
            &format!("{want} log streams on the asked node and 1/{want} on each task's"),
            Duration::from_secs(10),
            || {
                let asked_count = cluster.log_streams(asked)?;
                let per_task = want.min(1.0);
                (asked_count == want
                    && on.iter().all(|&n| cluster.log_streams(n) == Some(per_task)))
                .then_some(())
            },
            || {
                format!(
                    "{:?}",
                    (0..3).map(|n| cluster.log_streams(n)).collect::<Vec<_>>()
                )
            },
        )
    };

    // Ctrl-C: lbctl exits 0, every stream ends on both sides.
    let mut follow =
        cluster.lbctl_stream(asked, &["service", "logs", "-f", "--tail", "1", "ticker"]);
    ticks(&follow, &prefixes, 3);
    streams_are(2.0);
    follow.interrupt();
    assert_eq!(follow.exit_code(Duration::from_secs(10)), Some(0));
    streams_are(0.0);
    // A client that dies (no goodbye) ends them too.
    let follow = cluster.lbctl_stream(asked, &["service", "logs", "--follow", "ticker"]);
    ticks(&follow, &prefixes, 2);
    streams_are(2.0);
    drop(follow);
    streams_are(0.0);
    // The tasks were never touched.
    let now: BTreeSet<String> = serving(&tasks(&cluster, 0, "ticker"))
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(now, ids);

    // The tasks stop: their streams end, and the follow ends once the
    // service is gone.
    let mut follow = cluster.lbctl_stream(asked, &["service", "logs", "-f", "ticker"]);
    ticks(&follow, &prefixes, 1);
    assert_eq!(cluster.lbctl(0, &["service", "rm", "ticker"]).0, 0);
    assert_eq!(follow.exit_code(Duration::from_secs(20)), Some(0));
    streams_are(0.0);
}
