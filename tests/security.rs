//! Secrets at rest and what a task inherits (issue 14 items 5 and 6), on
//! real `lbd` processes on 127.A.0.N: the data dir's modes, a process
//! task's environment and user, and tokens read from a file or standard
//! input instead of the command line.
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use test_support::cluster::*;
use test_support::get;
use test_support::mesh::*;

/// Serves a page naming the task on $HOST:$PORT.
const SERVER: &str = "d=$(mktemp -d) && echo \"$LBMESH_TASK_ID\" > $d/index.html && exec busybox httpd -f -p $HOST:$PORT -h $d";

/// `PATH` of every process task (`agent::process::TASK_PATH`).
const TASK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `KEY=VALUE` entries of a process's environment.
fn environ(pid: u32) -> BTreeSet<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    bytes
        .split(|b| *b == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| String::from_utf8_lossy(entry).into_owned())
        .collect()
}

fn key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// Every path under `dir` (itself included) whose mode is not 0700 for a
/// dir or 0600 for a file, with its mode.
fn open_modes(dir: &Path) -> Vec<String> {
    let mut wrong = Vec::new();
    let mode = std::fs::metadata(dir).expect("stat").permissions().mode() & 0o777;
    if mode != 0o700 {
        wrong.push(format!("{} {mode:o}", dir.display()));
    }
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            wrong.extend(open_modes(&entry.path()));
        } else if kind.is_file() {
            let mode = entry.metadata().expect("stat").permissions().mode() & 0o777;
            if mode != 0o600 {
                wrong.push(format!("{} {mode:o}", entry.path().display()));
            }
        }
    }
    wrong
}

#[test]
fn a_process_task_gets_a_clean_environment_its_user_and_private_files() {
    let mut cluster = Cluster::bootstrap(FAST_HEARTBEATS, None);
    // The second node joins with its token on standard input, not in argv.
    let host = cluster.api(0);
    let mut joiner = cluster.command(1, None);
    joiner
        .args(["--join", &host, "--token", "-"])
        .stdin(Stdio::piped());
    let mut child = joiner.spawn().expect("spawn lbd");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{}\n", cluster.manager_token).as_bytes())
        .expect("write the token");
    cluster.nodes.push(Some(child));
    cluster.wait_for_nodes(2);
    let cmdline = std::fs::read(format!(
        "/proc/{}/cmdline",
        cluster.nodes[1].as_ref().expect("node 1").id()
    ))
    .expect("cmdline");
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(&cluster.manager_token),
        "the token is in the joiner's argv"
    );

    let port = free_port_on_all(&cluster);
    let publish = format!("{port}:80");
    let (code, _, err) = cluster.lbctl(
        0,
        &[
            "service",
            "create",
            "envcheck",
            "--command",
            SERVER,
            "--replicas",
            "2",
            "--replicas-max-per-node",
            "1",
            "-p",
            &publish,
            "--env",
            "APP_MODE=test",
            "--user",
            "nobody",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let running = wait_serving(&cluster, "envcheck", 2, Duration::from_secs(30));
    for task in &running {
        let pid: u32 = task["runtime_id"]
            .as_str()
            .and_then(|id| id.strip_prefix("pid:"))
            .and_then(|pid| pid.parse().ok())
            .expect("a process task's pid");
        let task_env = environ(pid);
        let keys: BTreeSet<&str> = task_env.iter().map(|e| key(e)).collect();
        let expected: BTreeSet<&str> = [
            "PATH",
            "HOST",
            "PORT",
            "PORT_80",
            "LBMESH_TASK_ID",
            "LBMESH_SERVICE",
            // The node's DNS responder and the task's search list.
            "LBMESH_DNS",
            "LBMESH_DNS_SEARCH",
            "APP_MODE",
            // /bin/sh sets it to the directory it runs in.
            "PWD",
        ]
        .into_iter()
        .collect();
        assert_eq!(keys, expected, "{task_env:?}");
        assert!(
            task_env.contains(&format!("PATH={TASK_PATH}")),
            "{task_env:?}"
        );
        assert!(task_env.contains("APP_MODE=test"));
        // Nothing of lbd's own environment reached the task.
        for n in 0..2 {
            let lbd_env = environ(cluster.nodes[n].as_ref().expect("node").id());
            assert!(
                lbd_env.iter().any(|e| !expected.contains(key(e))),
                "lbd has variables of its own to leak"
            );
            let leaked: Vec<&String> = lbd_env
                .iter()
                .filter(|e| key(e) != "PWD" && task_env.contains(*e))
                .collect();
            assert!(leaked.is_empty(), "lbd's variables in a task: {leaked:?}");
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let uid_line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap_or_default();
        assert_eq!(
            uid_line.split_whitespace().nth(1),
            Some("65534"),
            "runs as nobody: {uid_line}"
        );
    }
    let page = get(cluster.mesh_addrs(port)[0]).expect("GET through the mesh");
    assert!(
        running
            .iter()
            .any(|t| t["id"].as_str() == Some(page.trim())),
        "{page}"
    );

    // Secrets at rest: every dir 0700, every file 0600, on both nodes.
    for n in 0..2 {
        let dir = cluster.data_dir(n);
        assert!(dir.join("node.json").is_file());
        assert!(dir.join("registry.redb").is_file());
        assert!(dir.join("tasks").is_dir());
        let wrong = open_modes(&dir);
        assert!(wrong.is_empty(), "node {n}: {wrong:?}");
    }

    // An unknown user fails the task's start with a clear reason.
    let (code, _, err) = cluster.lbctl(
        0,
        &[
            "service",
            "update",
            "envcheck",
            "--user",
            "no-such-user-here",
        ],
    );
    // The update follows its tasks and fails with the start's error.
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("user \"no-such-user-here\" does not exist"),
        "{err}"
    );
    test_support::wait_for(
        "a start failing on the unknown user",
        Duration::from_secs(30),
        || {
            tasks(&cluster, 0, "envcheck")
                .iter()
                .filter_map(|t| t["message"].as_str())
                .find(|e| e.contains("user \"no-such-user-here\" does not exist"))
                .map(str::to_owned)
        },
        || cluster.lbctl(0, &["service", "ps", "envcheck"]).1,
    );
}

#[test]
fn lbctl_reads_its_token_from_a_file_or_standard_input() {
    let cluster = Cluster::bootstrap(&[], None);
    let file = cluster.dir.path().join("token");
    std::fs::write(&file, format!("{}\n", cluster.control_token)).expect("write token");
    let lbctl = || {
        let mut command = Command::new(test_support::bins::bin("lbctl"));
        command
            .arg("--host")
            .arg(format!("http://{}", cluster.api(0)))
            .env_remove("LBCTL_TOKEN");
        command
    };
    let out = lbctl()
        .arg("--token-file")
        .arg(&file)
        .args(["cluster", "info"])
        .output()
        .expect("lbctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = lbctl()
        .args(["--token", "-", "cluster", "info"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lbctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(cluster.control_token.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("lbctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A wrong file's token is refused, and an empty one never sent.
    std::fs::write(&file, "LBMCTL-wrong\n").expect("write");
    let out = lbctl()
        .arg("--token-file")
        .arg(&file)
        .args(["cluster", "info"])
        .output()
        .expect("lbctl");
    assert!(!out.status.success());
    std::fs::write(&file, "\n").expect("write");
    let out = lbctl()
        .arg("--token-file")
        .arg(&file)
        .args(["cluster", "info"])
        .output()
        .expect("lbctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no token"), "{stderr}");
}

#[test]
fn the_control_token_is_kept_in_the_data_dir_and_lbctl_prints_it() {
    let mut cluster = Cluster::bootstrap(&[], None);
    let dir = cluster.data_dir(0);
    let file = dir.join("control-token");
    assert_eq!(
        std::fs::read_to_string(&file).expect("control-token"),
        format!("{}\n", cluster.control_token)
    );
    assert_eq!(
        std::fs::metadata(&file).expect("stat").permissions().mode() & 0o777,
        0o600
    );
    let token = || {
        let out = Command::new(test_support::bins::bin("lbctl"))
            .arg("cluster")
            .arg("token")
            .arg("--data-dir")
            .arg(&dir)
            .env_remove("LBCTL_TOKEN")
            .output()
            .expect("lbctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = token();
    assert!(ok, "{err}");
    assert_eq!(out, format!("{}\n", cluster.control_token));
    // What it prints works as the token.
    let (code, _, err) = cluster.lbctl(0, &["cluster", "info"]);
    assert_eq!(code, 0, "{err}");

    // A restart prints nothing, and a manager whose file is gone (made
    // by an older lbd) writes it again from its registry.
    cluster.stop(0);
    std::fs::remove_file(&file).expect("remove control-token");
    let (ok, _, err) = token();
    assert!(!ok);
    assert!(err.contains("control-token"), "{err}");
    cluster.restart(0);
    test_support::wait_for(
        "the control token written again",
        Duration::from_secs(20),
        || std::fs::read_to_string(&file).ok(),
        || cluster.log(0),
    );
    let (ok, out, err) = token();
    assert!(ok, "{err}");
    assert_eq!(out, format!("{}\n", cluster.control_token));
}

#[test]
fn a_rotated_join_token_stops_admitting_and_disturbs_no_node() {
    let mut cluster = Cluster::form_with(FAST_HEARTBEATS);
    let old = cluster.manager_token.clone();
    // Through a follower: the write is passed to the leader.
    let follower = (0..3)
        .find(|n| Some(*n) != cluster.leader_index())
        .expect("a follower");
    let (code, out, err) =
        cluster.lbctl(follower, &["cluster", "join-token", "manager", "--rotate"]);
    assert_eq!(code, 0, "{err}");
    let new = out.trim().to_owned();
    assert!(new.starts_with("LBMTKN-2-"), "{new}");
    assert_ne!(new, old);
    for n in 0..3 {
        // Every manager prints tokens once it holds the CA key, which a
        // joined manager fetches with its first renewal.
        test_support::wait_for(
            &format!("node {n}'s CA key"),
            Duration::from_secs(20),
            || cluster.data_dir(n).join("ca.key").exists().then_some(()),
            || cluster.log(n),
        );
        let (code, out, err) = cluster.lbctl(n, &["cluster", "join-token", "manager"]);
        assert_eq!((code, out.trim()), (0, new.as_str()), "node {n}: {err}");
    }
    let (_, worker, _) = cluster.lbctl(0, &["cluster", "join-token", "worker"]);
    assert_ne!(worker.trim(), new, "only the manager token changed");

    // The old token is refused, and the refused node is no member.
    let host = cluster.api(0);
    let mut refused = cluster.spawn(3, Some((&host, &old)));
    let status = test_support::wait_for(
        "the old token's joiner to exit",
        Duration::from_secs(30),
        || refused.try_wait().ok().flatten(),
        || cluster.log(3),
    );
    assert!(!status.success());
    assert!(
        cluster.log(3).contains("not valid for this cluster"),
        "{}",
        cluster.log(3)
    );
    let nodes = cluster.json(0, &["node", "ls"]).expect("node ls");
    assert_eq!(nodes.as_array().map(Vec::len), Some(3), "{nodes}");

    // The new token admits; the running nodes were not disturbed.
    std::fs::remove_dir_all(cluster.data_dir(3)).ok();
    let joined = cluster.spawn(3, Some((&host, &new)));
    cluster.nodes.push(Some(joined));
    cluster.wait_for_nodes(4);
    let nodes = cluster.json(0, &["node", "ls"]).expect("node ls");
    let ready = nodes
        .as_array()
        .map(|n| n.iter().filter(|n| n["status"] == "ready").count());
    assert_eq!(ready, Some(4), "{nodes}");
    // A node that joined with the old token restarts as before.
    cluster.stop(1);
    cluster.restart(1);
    test_support::wait_for(
        "the restarted node to serve",
        Duration::from_secs(30),
        || (cluster.lbctl(1, &["cluster", "info"]).0 == 0).then_some(()),
        || cluster.log(1),
    );
    cluster.wait_for_nodes(4);
}
