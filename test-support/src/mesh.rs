//! Helpers of the scheduling tests: tasks as `lbctl service ps` shows them,
//! HTTP through the mesh, and a steady client loop that counts failures.
//! Every wait and loop is bounded in count and time.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::Cluster;
use crate::http::get;
use crate::wait::wait_for;

/// The service's tasks (`service ps --format json`), from node `n`.
pub fn tasks(cluster: &Cluster, n: usize, service: &str) -> Vec<Value> {
    cluster
        .json(n, &["service", "ps", service])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Tasks wanted running.
pub fn live(tasks: &[Value]) -> Vec<Value> {
    tasks
        .iter()
        .filter(|t| t["desired"] == "running")
        .cloned()
        .collect()
}

/// Tasks that receive traffic: running, healthy (or unchecked), wanted.
pub fn serving(tasks: &[Value]) -> Vec<Value> {
    live(tasks)
        .into_iter()
        .filter(|t| t["state"] == "running" && (t["health"] == "healthy" || t["health"] == "none"))
        .collect()
}

/// How many serving tasks each node name has.
pub fn per_node(tasks: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for task in serving(tasks) {
        *counts
            .entry(task["node_name"].as_str().unwrap_or("-").to_owned())
            .or_default() += 1;
    }
    counts
}

/// Waits until exactly `count` tasks of `service` serve (and no more are
/// wanted), showing `service ps` and `node ls` when the wait runs out.
pub fn wait_serving(cluster: &Cluster, service: &str, count: usize, limit: Duration) -> Vec<Value> {
    wait_for(
        &format!("{count} serving tasks of {service}"),
        limit,
        || {
            let all = tasks(cluster, 0, service);
            let serving = serving(&all);
            (serving.len() == count && live(&all).len() == count).then_some(serving)
        },
        || {
            let (_, tasks, _) = cluster.lbctl(0, &["service", "ps", service]);
            format!("{tasks}\nnode ls:\n{}", cluster.lbctl(0, &["node", "ls"]).1)
        },
    )
}

/// A steady client: one request at a time, round-robin over `addrs`, until
/// stopped (at most `MAX_REQUESTS` requests or `MAX_RUN`).
pub struct ClientLoop {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<Result<String, String>>>>,
    thread: Option<JoinHandle<()>>,
}

const MAX_REQUESTS: usize = 20_000;
const MAX_RUN: Duration = Duration::from_secs(180);
/// Pause between requests: a steady, modest rate.
const PACE: Duration = Duration::from_millis(20);

impl ClientLoop {
    pub fn start(addrs: Vec<SocketAddr>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let stop = Arc::clone(&stop);
            let results = Arc::clone(&results);
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed)
                    && i < MAX_REQUESTS
                    && started.elapsed() < MAX_RUN
                {
                    let result = get(addrs[i % addrs.len()]);
                    if let Ok(mut all) = results.lock() {
                        all.push(result);
                    }
                    i += 1;
                    std::thread::sleep(PACE);
                }
            })
        };
        Self {
            stop,
            results,
            thread: Some(thread),
        }
    }

    /// Requests answered so far.
    pub fn count(&self) -> usize {
        self.results.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Stops the loop and returns every result in order.
    pub fn finish(mut self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.results.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Fails with every error when any request failed.
pub fn assert_no_failures(what: &str, results: &[Result<String, String>]) {
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{what}: {} of {} requests failed: {failures:?}",
        failures.len(),
        results.len()
    );
    assert!(
        results.len() >= 20,
        "{what}: only {} requests ran",
        results.len()
    );
}
