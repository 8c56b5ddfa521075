//! Issue 12 item 5: a leader killed with SIGKILL, restarted after the
//! others took enough writes to purge their logs past it (so it must
//! install a snapshot), rejoins and serves its API within 5 s, five times
//! in a row, and leaves none of its old task processes running.
//!
//! The nodes run with `--snapshot-every 50` (10 entries kept behind a
//! snapshot), so 150 writes while the leader is away are enough where the
//! default (500, 100 kept) needs 600; the restarted node's log must show
//! "installed a snapshot from the leader", or the test did not test the path.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::cluster::*;
use test_support::mesh::*;
use test_support::{status_of, wait_for};

/// Serves a page naming the task on $HOST:$PORT.
const SERVER: &str = "d=$(mktemp -d) && echo \"$LBMESH_TASK_ID\" > $d/index.html && exec busybox httpd -f -p $HOST:$PORT -h $d";
/// Acknowledged writes the survivors take while the leader is away: well
/// past one snapshot (50) and the 10 entries kept behind it.
const WRITES: usize = 150;
/// The acceptance bound: the restarted node serves its API this soon.
const REJOIN: Duration = Duration::from_secs(5);
const TRIES: usize = 5;

#[test]
fn a_leader_restarted_after_a_snapshot_rejoins_within_5s_five_times() {
    let mut args = FAST_HEARTBEATS.to_vec();
    args.extend(["--snapshot-every", "50"]);
    let mut cluster = Cluster::form_with(&args);
    // Marks this test's task processes, to find them in /proc.
    let mark = format!("LBMESH_TEST_MARK={}", cluster.dir.path().display());
    let port = free_port_on_all(&cluster);
    let (code, _, err) = cluster.lbctl(
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
            &format!("{port}:80"),
            "-e",
            &mark,
        ],
    );
    assert_eq!(code, 0, "{err}");
    wait_serving(&cluster, "web", 3, Duration::from_secs(30));

    let mut seen = Vec::new();
    for attempt in 0..TRIES {
        let leader = wait_for(
            "a leader",
            Duration::from_secs(20),
            || cluster.leader_index(),
            || cluster.log(0),
        );
        let writer = (leader + 1) % 3;
        let left_behind = task_pids_recorded_by(&cluster, leader);
        cluster.kill(leader);

        let written = write_labels(&cluster, writer, attempt);
        assert!(
            written >= WRITES,
            "try {attempt}: only {written} writes acknowledged while the leader was away"
        );
        let target = cluster
            .json(writer, &["cluster", "info"])
            .and_then(|info| info["applied_index"].as_u64())
            .expect("the survivors' applied index");

        cluster.restart(leader);
        let restarted = Instant::now();
        let name = format!("node-{}", cluster.ip(leader).to_string().replace('.', "-"));
        // What the last poll saw: the API's status, its applied index, and
        // the node's status as the restarted node reports it.
        let last = std::cell::RefCell::new((0, 0, String::new()));
        let rejoined = wait_for(
            &format!("try {attempt}: the restarted leader's API, caught up to {target} and ready"),
            Duration::from_secs(30),
            || {
                let (status, response) = raw_get(&cluster, leader, "/v1/cluster");
                let applied = serde_json::from_str::<Value>(body(&response))
                    .ok()
                    .and_then(|info| info["applied_index"].as_u64())
                    .unwrap_or(0);
                let node = cluster
                    .json(leader, &["node", "inspect", &name])
                    .and_then(|n| n["status"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let done = status == 200 && applied >= target && node == "ready";
                *last.borrow_mut() = (status, applied, node);
                done.then(|| restarted.elapsed())
            },
            || {
                format!(
                    "last seen (API status, applied index, node status): {:?}\n{}",
                    last.borrow(),
                    cluster.log(leader)
                )
            },
        );
        seen.push(rejoined);
        let log = cluster.log(leader);
        assert!(
            log.contains("installed a snapshot from the leader"),
            "try {attempt}: the restarted node never installed a snapshot; the test missed the path:\n{log}"
        );
        assert!(
            rejoined <= REJOIN,
            "try {attempt}: rejoined and served its API after {rejoined:?} (> {REJOIN:?}); all tries: {seen:?}; log:\n{log}"
        );

        // Its old task processes are cleaned up, and every task process of
        // the cluster is a live task's, once.
        wait_for(
            &format!("try {attempt}: no orphaned task processes"),
            Duration::from_secs(15),
            || {
                let running = task_processes(&mark);
                let live: BTreeMap<String, i32> = live(&tasks(&cluster, leader, "web"))
                    .iter()
                    .filter_map(|t| {
                        let pid = t["runtime_id"]
                            .as_str()?
                            .strip_prefix("pid:")?
                            .parse()
                            .ok()?;
                        Some((t["id"].as_str()?.to_owned(), pid))
                    })
                    .collect();
                let stale = left_behind
                    .iter()
                    .any(|pid| running.values().flatten().any(|p| p == pid));
                let orphans = running
                    .iter()
                    .any(|(task, pids)| pids.len() != 1 || live.get(task) != pids.first());
                (!stale && !orphans).then_some(())
            },
            || {
                format!(
                    "processes: {:?}\n{}",
                    task_processes(&mark),
                    cluster.lbctl(0, &["service", "ps", "web"]).1
                )
            },
        );
        wait_serving(&cluster, "web", 3, Duration::from_secs(30));
    }
    eprintln!("rejoined after {seen:?}");
}

/// Adds one label per write through node `n` until `WRITES` were
/// acknowledged (bounded in count and time); returns how many were.
fn write_labels(cluster: &Cluster, n: usize, attempt: usize) -> usize {
    let name = format!("node-{}", cluster.ip(n).to_string().replace('.', "-"));
    let started = Instant::now();
    let mut acknowledged = 0;
    for i in 0..WRITES * 4 {
        if acknowledged == WRITES || started.elapsed() > Duration::from_secs(90) {
            break;
        }
        let body = format!(r#"{{"labels_add": {{"w{attempt}-{i}": "x"}}}}"#);
        let request = format!(
            "POST /v1/nodes/{name} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            cluster.control_token,
            body.len()
        );
        if status_of(&cluster.api_request(n, request.as_bytes())) == 200 {
            acknowledged += 1;
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    acknowledged
}

fn raw_get(cluster: &Cluster, n: usize, path: &str) -> (u16, String) {
    let token = &cluster.control_token;
    let response = cluster.api_request(
        n,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    (status_of(&response), response)
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// The pids node `n`'s process runtime recorded for its tasks.
fn task_pids_recorded_by(cluster: &Cluster, n: usize) -> BTreeSet<i32> {
    let Ok(entries) = std::fs::read_dir(cluster.data_dir(n).join("tasks")) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| serde_json::from_str::<Value>(&text).ok())
        .filter_map(|record| record["pid"].as_i64().and_then(|p| i32::try_from(p).ok()))
        .collect()
}

/// The test's task processes now running, by task id: every process whose
/// environment holds `mark` and a task id, but not the shell's short-lived
/// `$(mktemp -d)` child, which is not a group leader.
fn task_processes(mark: &str) -> BTreeMap<String, Vec<i32>> {
    let mut found: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if !vars.contains(&mark.as_bytes()) || !is_group_leader(pid) {
            continue;
        }
        let task = vars
            .iter()
            .find_map(|v| v.strip_prefix(b"LBMESH_TASK_ID="))
            .map(|id| String::from_utf8_lossy(id).into_owned());
        if let Some(task) = task {
            found.entry(task).or_default().push(pid);
        }
    }
    found
}

/// Whether `pid` leads its process group (field 5 of /proc/PID/stat), as
/// the process runtime's `/bin/sh -c` (then exec'd) task processes do.
fn is_group_leader(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().nth(2)?.parse::<i32>().ok()
        })
        == Some(pid)
}
