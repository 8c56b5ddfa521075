//! The files in `deploy/` name only metrics a live lbd exports: every
//! `lbmesh_*` and `process_*` name in the Grafana dashboard and the
//! Prometheus alert rules must be a sample on a cluster node's `/metrics`
//! that serves a service with a running task. A renamed metric fails here.
//! (`promtool check rules` checks the rules' syntax in `.ci/run`.)
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use test_support::cluster::{free_port_on_all, Cluster, FAST_HEARTBEATS};
use test_support::http::exchange;

/// A process task: busybox httpd answering with its task id.
const SERVER: &str = "d=$(mktemp -d) && echo \"$LBMESH_TASK_ID\" > $d/index.html && exec busybox httpd -f -p $HOST:$PORT -h $d";

const DEPLOY_FILES: &[&str] = &[
    "deploy/grafana/lbmesh-dashboard.json",
    "deploy/prometheus/lbmesh-alerts.yml",
];

/// The metric names a file uses.
fn names_in(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    for prefix in ["lbmesh_", "process_"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix) {
            let start = from + at;
            let preceded =
                start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            let end = text[start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .map_or(text.len(), |n| start + n);
            let name = &text[start..end];
            // `lbmesh_*` in a comment is no name.
            if !preceded && name.len() > prefix.len() {
                names.insert(name.to_owned());
            }
            from = end.max(start + 1);
        }
    }
    names
}

/// The sample names on a Prometheus text page.
fn samples_in(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn names_are_found_in_text() {
    let names = names_in(
        "rate(lbmesh_retries_total{a=\"b\"}[5m]) / process_open_fds, lbmesh_* x_lbmesh_no",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["lbmesh_retries_total", "process_open_fds"]
    );
}

#[test]
fn every_metric_the_dashboard_and_rules_name_is_exported() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut wanted = BTreeSet::new();
    for file in DEPLOY_FILES {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect("read deploy file");
        let names = names_in(&text);
        assert!(names.len() >= 5, "{file} names only {names:?}");
        wanted.extend(names.into_iter().map(|name| (name, *file)));
    }

    let cluster = Cluster::bootstrap(FAST_HEARTBEATS, None);
    let port = free_port_on_all(&cluster);
    let publish = format!("{port}:80");
    let (code, _, err) = cluster.lbctl(
        0,
        &[
            "service",
            "create",
            "web",
            "--command",
            SERVER,
            "-p",
            &publish,
        ],
    );
    assert_eq!(code, 0, "{err}");
    // One request through the mesh, so the task answers and is a backend.
    let ingress = std::net::SocketAddr::new(cluster.ip(0), port);
    let started = Instant::now();
    let mut missing = Vec::new();
    while started.elapsed() < Duration::from_secs(30) {
        let _ = exchange(ingress, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(2));
        let page = exchange(
            cluster.api(0).parse().expect("api address"),
            b"GET /metrics HTTP/1.0\r\n\r\n",
            Duration::from_secs(5),
        )
        .unwrap_or_default();
        let samples = samples_in(&page);
        missing = wanted
            .iter()
            .filter(|(name, _)| !samples.contains(name))
            .map(|(name, file)| format!("{name} (in {file})"))
            .collect();
        if missing.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "metrics named in deploy/ that lbd does not export: {missing:#?}\nlog:\n{}",
        cluster.log(0)
    );
}
