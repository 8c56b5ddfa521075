//! What an operator sees of lbd: its log lines at the default level, the
//! JSON log format, and (below) the metrics it exports.
use std::time::Duration;

use serde_json::Value;
use test_support::cluster::Cluster;

/// Lines a node may log from a fresh start through forming a cluster.
const MAX_START_LINES: usize = 10;
/// The longest line an operator should have to read.
const MAX_LINE_CHARS: usize = 200;

/// A fresh three-node cluster logs a handful of short lines per node at
/// the default level: no openraft INFO chatter, no routing update per
/// change, and no colour codes in a file.
#[test]
fn a_fresh_start_logs_a_few_short_plain_lines() {
    // The default level is what is under test.
    std::env::remove_var("LBD_LOG");
    std::env::remove_var("LBD_LOG_FORMAT");
    let mut cluster = Cluster::form();
    // Let the scheduler, the agents and the heartbeats settle.
    std::thread::sleep(Duration::from_secs(3));
    for n in 0..3 {
        cluster.stop(n);
    }
    for n in 0..3 {
        let log = cluster.log(n);
        let lines: Vec<&str> = log.lines().collect();
        assert!(
            !lines.is_empty() && lines.len() <= MAX_START_LINES,
            "node {n} logged {} lines (at most {MAX_START_LINES}):\n{log}",
            lines.len()
        );
        for line in &lines {
            assert!(
                line.chars().count() <= MAX_LINE_CHARS,
                "node {n} logged a line of {} characters:\n{line}",
                line.chars().count()
            );
            assert!(
                !line.contains('\u{1b}'),
                "node {n} wrote colour codes into a file:\n{line}"
            );
            assert!(
                !line.contains("openraft"),
                "node {n} logged a dependency's INFO line:\n{line}"
            );
        }
    }
}

/// `--log-format json` writes one object per line with the level, the
/// target and the message.
#[test]
fn json_log_lines_parse() {
    std::env::remove_var("LBD_LOG");
    let mut cluster = Cluster::bootstrap(&["--log-format", "json"], None);
    cluster.stop(0);
    let log = cluster.log(0);
    let mut messages = Vec::new();
    for line in log.lines() {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(value["level"].is_string(), "no level: {line}");
        assert!(value["target"].is_string(), "no target: {line}");
        messages.push(value["fields"]["message"].as_str().unwrap_or("").to_owned());
    }
    for expected in ["lbd serving", "SIGTERM: shutting down"] {
        assert!(
            messages.iter().any(|m| m == expected),
            "no {expected:?} line in:\n{log}"
        );
    }
}
