//! The scheduler, agents and runtimes end to end: three `lbd` processes on
//! 127.A.0.1/.2/.3 sharing this machine's Docker engine (each agent touches
//! only its own labelled containers), driven with `lbctl`, with traffic
//! through the mesh.
//!
//! With `CI=true` the Docker test fails when no engine answers; elsewhere it
//! is skipped with a note. The process-runtime and bad-input tests need no
//! engine.
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use test_support::cluster::*;
use test_support::images::{
    ensure_test_images, ensure_udp_echo_image, require_docker, UDP_ECHO_IMAGE,
};
use test_support::mesh::*;
use test_support::{get, wait_for};

fn cluster_id(cluster: &Cluster) -> String {
    cluster
        .json(0, &["cluster", "info"])
        .and_then(|info| info["id"].as_str().map(str::to_owned))
        .expect("cluster id")
}

/// Containers of this cluster on the engine: `(id, task label)`.
fn containers(cluster_id: &str, all: bool) -> Vec<(String, String)> {
    let mut command = Command::new("docker");
    command.args([
        "ps",
        "--no-trunc",
        "--format",
        "{{.ID}} {{.Label \"io.lbmesh.task\"}}",
    ]);
    if all {
        command.arg("-a");
    }
    command.args(["--filter", &format!("label=io.lbmesh.cluster={cluster_id}")]);
    let out = command.output().expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(id, task)| (id.to_owned(), task.to_owned()))
        .collect()
}

/// Removes this cluster's containers whatever happens to the test.
struct ContainerCleanup(String);

impl Drop for ContainerCleanup {
    fn drop(&mut self) {
        let ids: Vec<String> = containers(&self.0, true)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
    }
}

fn describe(cluster: &Cluster, service: &str) -> String {
    let (_, out, _) = cluster.lbctl(0, &["service", "ps", service]);
    format!("{out}\nnode ls:\n{}", cluster.lbctl(0, &["node", "ls"]).1)
}

/// The container names (short ids) that answer through the mesh, asking
/// every node until each of `expected` answered (bounded).
fn answering(cluster: &Cluster, port: u16, expected: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for i in 0..(expected * 30) {
        let addr = cluster.mesh_addrs(port)[i % 3];
        let body = get(addr).unwrap_or_else(|e| panic!("GET through the mesh: {e}"));
        seen.insert(body);
        if seen.len() >= expected && i >= 6 {
            break;
        }
    }
    seen
}

#[test]
fn docker_tasks_scale_heal_drain_update_and_survive_restarts() {
    if !require_docker() {
        return;
    }
    ensure_test_images().expect("test images");
    let mut cluster = Cluster::form_with(FAST_HEARTBEATS);
    let id = cluster_id(&cluster);
    let _cleanup = ContainerCleanup(id.clone());
    let port = free_port_on_all(&cluster);
    let publish = format!("{port}:80");

    // Create: three tasks, one per node, each reached through every node.
    let (code, out, err) = cluster.lbctl(
        0,
        &[
            "service",
            "create",
            "web",
            "--image",
            "lbmesh-test:v1",
            "--replicas",
            "3",
            "-p",
            &publish,
            "--drain-timeout",
            "1s",
            // A request in flight when a task is killed is resent to
            // another task instead of failing.
            "--retry-on-empty",
            "true",
            "--restart-delay",
            "500ms",
            "--stop-grace-period",
            "2s",
            "--update-order",
            "start-first",
            "--update-monitor",
            "3s",
        ],
    );
    // create followed the containers until all three served.
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\noverall progress: 3 out of 3 tasks\n")
            && out.ends_with("verify: Service web converged\n"),
        "{out}"
    );
    let now = tasks(&cluster, 0, "web");
    assert_eq!((serving(&now).len(), live(&now).len()), (3, 3), "{now:?}");
    let running = wait_serving(&cluster, "web", 3, Duration::from_secs(30));
    let nodes: BTreeSet<&str> = running
        .iter()
        .filter_map(|t| t["node_name"].as_str())
        .collect();
    assert_eq!(nodes.len(), 3, "one task per node: {running:?}");
    let seen = answering(&cluster, port, 3);
    let runtime_ids: Vec<String> = running
        .iter()
        .filter_map(|t| t["runtime_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for body in &seen {
        let name = body.strip_prefix("v1 ").expect("a v1 page");
        assert!(
            runtime_ids.iter().any(|id| id.starts_with(name)),
            "{name} is not a task of web"
        );
    }

    // Scale up and down: 2 per node, then 2 in all; the rest drained and
    // stopped, their containers gone.
    assert_eq!(cluster.lbctl(0, &["service", "scale", "web=6"]).0, 0);
    let six = wait_serving(&cluster, "web", 6, Duration::from_secs(30));
    assert!(
        per_node(&six).values().all(|c| *c == 2),
        "{:?}",
        per_node(&six)
    );
    assert_eq!(cluster.lbctl(1, &["service", "scale", "web=2"]).0, 0);
    wait_serving(&cluster, "web", 2, Duration::from_secs(20));
    wait_for(
        "two containers left",
        Duration::from_secs(20),
        || (containers(&id, true).len() == 2).then_some(()),
        || format!("{:?}", containers(&id, true)),
    );

    // docker kill under a steady client: replaced, and no request fails.
    let before = serving(&tasks(&cluster, 0, "web"));
    let victim = before[0]["runtime_id"]
        .as_str()
        .expect("runtime id")
        .to_owned();
    let client = ClientLoop::start(cluster.mesh_addrs(port));
    std::thread::sleep(Duration::from_secs(1));
    let killed = Command::new("docker")
        .args(["kill", &victim])
        .output()
        .expect("docker kill");
    assert!(
        killed.status.success(),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );
    wait_for(
        "the killed task replaced",
        Duration::from_secs(30),
        || {
            let now = serving(&tasks(&cluster, 0, "web"));
            (now.len() == 2 && now.iter().all(|t| t["runtime_id"] != victim.as_str())).then_some(())
        },
        || describe(&cluster, "web"),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_no_failures("docker kill", &client.finish());

    // Drain node 2 (index 1): its tasks move; active allows placement again.
    let node2 = format!("node-{}", cluster.ip(1).to_string().replace('.', "-"));
    assert_eq!(
        cluster
            .lbctl(0, &["node", "update", "--availability", "drain", &node2])
            .0,
        0
    );
    wait_for(
        "node 2 drained",
        Duration::from_secs(30),
        || {
            let all = tasks(&cluster, 0, "web");
            let on_node2 = all
                .iter()
                .filter(|t| {
                    t["node_name"] == node2.as_str()
                        && t["state"] != "shutdown"
                        && t["state"] != "failed"
                })
                .count();
            (on_node2 == 0 && serving(&all).len() == 2).then_some(())
        },
        || describe(&cluster, "web"),
    );
    assert_eq!(
        cluster
            .lbctl(0, &["node", "update", "--availability", "active", &node2])
            .0,
        0
    );
    assert_eq!(cluster.lbctl(0, &["service", "scale", "web=3"]).0, 0);
    let three = wait_serving(&cluster, "web", 3, Duration::from_secs(30));
    assert_eq!(
        per_node(&three).get(&node2),
        Some(&1),
        "{:?}",
        per_node(&three)
    );

    // An update to an image that exits at once rolls back by itself.
    let (code, _, err) = cluster.lbctl(
        0,
        &[
            "service",
            "update",
            "web",
            "--image",
            "lbmesh-test:crash",
            "--update-failure-action",
            "rollback",
        ],
    );
    // The update follows its tasks and fails with the new task's exit.
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("Error: web: ") && err.contains("exited with code 1"),
        "{err}"
    );
    wait_for(
        "the automatic rollback",
        Duration::from_secs(60),
        || {
            let service = cluster.json(0, &["service", "inspect", "web"])?;
            (service["spec"]["image"] == "lbmesh-test:v1"
                && service["update"]["state"] == "rollback_completed")
                .then_some(())
        },
        || cluster.lbctl(0, &["service", "inspect", "web"]).1 + &describe(&cluster, "web"),
    );
    wait_serving(&cluster, "web", 3, Duration::from_secs(30));
    assert!(answering(&cluster, port, 3)
        .iter()
        .all(|b| b.starts_with("v1 ")));

    // Rolling update v1 -> v2, start-first, under a steady client.
    let client = ClientLoop::start(cluster.mesh_addrs(port));
    std::thread::sleep(Duration::from_millis(500));
    let (code, _, err) = cluster.lbctl(
        0,
        &["service", "update", "web", "--image", "lbmesh-test:v2"],
    );
    assert_eq!(code, 0, "{err}");
    wait_for(
        "the update to complete",
        Duration::from_secs(90),
        || {
            let service = cluster.json(0, &["service", "inspect", "web"])?;
            (service["update"]["state"] == "completed").then_some(())
        },
        || describe(&cluster, "web"),
    );
    // Old tasks drain for 1 s after they leave the tables.
    std::thread::sleep(Duration::from_secs(2));
    let marker = client.count();
    std::thread::sleep(Duration::from_secs(2));
    let results = client.finish();
    assert_no_failures("rolling update", &results);
    let after: Vec<&String> = results[marker..]
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|b| b.starts_with("v2 ")),
        "after the update: {after:?}"
    );

    // A graceful restart of lbd on node 2 adopts its containers: same
    // containers, no duplicates.
    let before: BTreeSet<String> = containers(&id, false).into_iter().map(|(c, _)| c).collect();
    assert_eq!(before.len(), 3);
    cluster.stop(1);
    cluster.restart(1);
    cluster.wait_for_nodes(3);
    std::thread::sleep(Duration::from_secs(3));
    wait_serving(&cluster, "web", 3, Duration::from_secs(30));
    let after: BTreeSet<String> = containers(&id, false).into_iter().map(|(c, _)| c).collect();
    assert_eq!(before, after, "a restart must adopt, not replace");

    // kill -9 of a non-leader: down, its tasks elsewhere within 15 s; back,
    // it removes its old containers and exactly three serve.
    let leader = cluster.leader_index().expect("a leader");
    let victim = (0..3).find(|n| *n != leader).expect("a follower");
    let victim_name = format!("node-{}", cluster.ip(victim).to_string().replace('.', "-"));
    cluster.kill(victim);
    let healthy = (0..3).find(|n| *n != victim).expect("another node");
    wait_for(
        "the dead node's tasks elsewhere",
        Duration::from_secs(15),
        || {
            let all = tasks(&cluster, healthy, "web");
            let moved = serving(&all)
                .iter()
                .all(|t| t["node_name"] != victim_name.as_str());
            (moved && serving(&all).len() == 3).then_some(())
        },
        || cluster.lbctl(healthy, &["service", "ps", "web"]).1,
    );
    cluster.restart(victim);
    cluster.wait_for_nodes(3);
    wait_for(
        "exactly three containers, all serving",
        Duration::from_secs(40),
        || {
            let live_containers: BTreeSet<String> = containers(&id, true)
                .into_iter()
                .map(|(_, task)| task)
                .collect();
            let serving: BTreeSet<String> = serving(&tasks(&cluster, healthy, "web"))
                .iter()
                .filter_map(|t| t["id"].as_str().map(str::to_owned))
                .collect();
            (live_containers.len() == 3 && live_containers == serving).then_some(())
        },
        || format!("{:?}\n{}", containers(&id, true), describe(&cluster, "web")),
    );
    let body = get(SocketAddr::new(cluster.ip(victim), port)).expect("mesh on the restarted node");
    assert!(body.starts_with("v2 "), "{body}");

    // Removing the service stops every container.
    assert_eq!(cluster.lbctl(0, &["service", "rm", "web"]).0, 0);
    wait_for(
        "no containers left",
        Duration::from_secs(30),
        || containers(&id, true).is_empty().then_some(()),
        || format!("{:?}", containers(&id, true)),
    );
}

#[test]
fn bad_input_shows_in_service_ps_and_changes_nothing() {
    if !require_docker() {
        return;
    }
    let cluster = Cluster::form_with(FAST_HEARTBEATS);
    let id = cluster_id(&cluster);
    let _cleanup = ContainerCleanup(id);
    let port = free_port_on_all(&cluster);

    // An unknown image: a task error in `service ps`, nothing crashes.
    let publish = format!("{port}:80");
    let (code, _, err) = cluster.lbctl(
        0,
        &[
            "service",
            "create",
            "ghost",
            "--image",
            "lbmesh-test:no-such-tag",
            "-p",
            &publish,
            "--restart-delay",
            "30s",
        ],
    );
    // create follows the task, and the engine's answer fails it by name.
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("Error: ghost: task ghost.1 (")
            && err.ends_with("failed: image \"lbmesh-test:no-such-tag\" not found on this node\n"),
        "{err}"
    );
    let message = wait_for(
        "the image error",
        Duration::from_secs(45),
        || {
            tasks(&cluster, 0, "ghost")
                .iter()
                .find(|t| t["state"] == "failed")
                .and_then(|t| t["message"].as_str().map(str::to_owned))
        },
        || describe(&cluster, "ghost"),
    );
    assert!(message.contains("lbmesh-test:no-such-tag"), "{message}");
    let (_, table, _) = cluster.lbctl(0, &["service", "ps", "ghost"]);
    assert!(
        table.contains("failed") && table.contains("no-such-tag"),
        "{table}"
    );

    // A constraint no node meets: pending, with the reason.
    let publish = format!("{}:80", port + 1);
    let (code, _, err) = cluster.lbctl(
        0,
        &[
            "service",
            "create",
            "picky",
            "--image",
            "lbmesh-test:v1",
            "-p",
            &publish,
            "--constraint",
            "node.labels.gpu==yes",
            "--detach",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let pending = wait_for(
        "a pending task",
        Duration::from_secs(10),
        || {
            tasks(&cluster, 1, "picky")
                .into_iter()
                .find(|t| t["state"] == "pending")
        },
        || describe(&cluster, "picky"),
    );
    let reason = pending["message"].as_str().unwrap_or("");
    assert!(reason.contains("node.labels.gpu==yes"), "{reason}");

    // Invalid task specs are refused by name and change nothing.
    let before = cluster.json(0, &["service", "ls"]).expect("ls");
    let cases: [(&[&str], &str); 4] = [
        (
            &["service", "create", "x", "-p", "1:80", "--replicas", "2"],
            "replicas",
        ),
        (
            &["service", "create", "x", "-p", "1:80", "--image", "a b"],
            "image",
        ),
        (
            &[
                "service",
                "create",
                "x",
                "-p",
                "1:80",
                "--image",
                "i",
                "--constraint",
                "node.colour==red",
            ],
            "constraints[0]",
        ),
        (
            &[
                "service", "create", "x", "-p", "1:80", "--image", "i", "-e", "1X=y",
            ],
            "env[0]",
        ),
    ];
    for (args, field) in cases {
        let (code, _, err) = cluster.lbctl(0, args);
        assert_ne!(code, 0, "{args:?} succeeded");
        assert!(err.contains(field), "{args:?}: {err}");
    }
    let after = cluster.json(0, &["service", "ls"]).expect("ls");
    assert_eq!(service_names(&after), service_names(&before));

    // service logs of a container, asked on every node: the engine's
    // output of the node that runs it, prefixed with the task.
    ensure_test_images().expect("test images");
    let publish = format!("{}:80", port + 2);
    let (code, _, err) = cluster.lbctl(
        0,
        &[
            "service",
            "create",
            "talky",
            "--image",
            "lbmesh-test:v1",
            "--command",
            "echo hello-docker; echo to-stderr >&2; exec httpd -f -p 80 -h /",
            "-p",
            &publish,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let task = serving(&tasks(&cluster, 0, "talky"))
        .pop()
        .expect("a serving talky task");
    let prefix = format!(
        "talky.1.{}@{}",
        task["id"].as_str().unwrap_or_default(),
        task["node_name"].as_str().unwrap_or("-")
    );
    for n in 0..3 {
        let (code, out, err) = cluster.lbctl(n, &["service", "logs", "talky"]);
        assert_eq!(code, 0, "node {n}: {err}");
        let mut lines: Vec<&str> = out.lines().collect();
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                format!("{prefix} | hello-docker"),
                format!("{prefix} | to-stderr")
            ],
            "node {n}"
        );
    }
}

/// A Docker task with a udp port serves UDP through every node (the engine
/// publishes its target as udp), and `service logs -f` follows its
/// container's output as it grows, relayed by another node, until the
/// container stops.
#[test]
fn docker_udp_tasks_serve_through_the_mesh_and_their_logs_follow() {
    if !require_docker() {
        return;
    }
    ensure_udp_echo_image().expect("udp echo image");
    let cluster = Cluster::form_with(FAST_HEARTBEATS);
    let _cleanup = ContainerCleanup(cluster_id(&cluster));
    let ips: Vec<IpAddr> = (0..3).map(|n| cluster.ip(n)).collect();
    let port = test_support::udp::free_udp_port_on(&ips);
    let publish = format!("{port}:5353/udp");
    let ticker = "(i=0; while :; do i=$((i+1)); echo \"tick $i\"; sleep 0.2; done) & \
                  exec /bin/udp_load echo 0.0.0.0:5353 1";
    let (code, out, err) = cluster.lbctl(
        0,
        &[
            "service",
            "create",
            "echo",
            "--image",
            UDP_ECHO_IMAGE,
            "--command",
            ticker,
            "-p",
            &publish,
            "--stop-grace-period",
            "1s",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let task = serving(&tasks(&cluster, 0, "echo"))
        .pop()
        .expect("a serving echo task");
    let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp client");
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("read timeout");
    for (n, node) in cluster.mesh_addrs(port).into_iter().enumerate() {
        let payload = format!("through node {n}");
        wait_for(
            &format!("an echo through {node}"),
            Duration::from_secs(10),
            || {
                client.send_to(payload.as_bytes(), node).ok()?;
                let mut buffer = [0u8; 64];
                let (len, from) = client.recv_from(&mut buffer).ok()?;
                (from == node && &buffer[..len] == payload.as_bytes()).then_some(())
            },
            || describe(&cluster, "echo"),
        );
    }

    // Its logs, followed through a node that does not run it.
    let ip = task["endpoint"]["ip"].as_str().unwrap_or_default();
    let runs_it = (0..3)
        .find(|&n| cluster.ip(n).to_string() == ip)
        .expect("the task's node");
    let asked = (runs_it + 1) % 3;
    let prefix = format!(
        "echo.1.{}@{}",
        task["id"].as_str().unwrap_or_default(),
        task["node_name"].as_str().unwrap_or("-")
    );
    let mut follow = cluster.lbctl_stream(asked, &["service", "logs", "-f", "--tail", "1", "echo"]);
    let mut ticks = Vec::new();
    while ticks.len() < 3 {
        let line = follow
            .next_line(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no more lines after {ticks:?}"));
        let n: u64 = line
            .strip_prefix(&format!("{prefix} | tick "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line:?} is not {prefix} | tick N"));
        ticks.push(n);
    }
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
    assert_eq!(cluster.log_streams(asked), Some(1.0));
    assert_eq!(cluster.log_streams(runs_it), Some(1.0));
    // The container stops: the engine ends its stream, the follow ends.
    assert_eq!(cluster.lbctl(0, &["service", "rm", "echo"]).0, 0);
    assert_eq!(follow.exit_code(Duration::from_secs(20)), Some(0));
    wait_for(
        "no log streams left",
        Duration::from_secs(10),
        || {
            (cluster.log_streams(asked) == Some(0.0) && cluster.log_streams(runs_it) == Some(0.0))
                .then_some(())
        },
        || {
            format!(
                "{:?}",
                (0..3).map(|n| cluster.log_streams(n)).collect::<Vec<_>>()
            )
        },
    );
}
