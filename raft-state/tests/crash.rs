//! Crash safety of the log store: a child process appends entries one by one
//! and reports each acknowledged append; the test kills it with SIGKILL in the
//! middle of the stream, reopens the store and checks that every acknowledged
//! entry is there and that the log has no holes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftLogReader};
use raft_state::state::Command as RegistryCommand;
use raft_state::store;
use raft_state::types::Entry;

const CHILD_ENV: &str = "RAFT_STATE_CRASH_CHILD";
const TEST_NAME: &str = "acknowledged_entries_survive_sigkill";

fn entry(index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(
            RegistryCommand::RemoveService {
                name: format!("service-{index}"),
            }
            .into(),
        ),
    }
}

/// The child: appends entries 1, 2, 3, ... and prints `acked N` once the
/// append of N has returned (and so is durable).
fn run_child(path: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (mut log, _sm) = store::open(std::path::Path::new(path)).await.expect("open");
        for index in 1..=100_000u64 {
            log.blocking_append(vec![entry(index)])
                .await
                .expect("append");
            println!("acked {index}");
        }
    });
}

#[test]
fn acknowledged_entries_survive_sigkill() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        run_child(&path);
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("registry.redb");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();

    // Let it acknowledge a few hundred appends, then kill it mid-stream.
    let started = Instant::now();
    let mut acked = 0u64;
    while acked < 300 && started.elapsed() < Duration::from_secs(60) {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(n) = line.strip_prefix("acked ") {
                    acked = n.parse().expect("index");
                }
            }
            _ => break,
        }
    }
    assert!(acked >= 300, "the child acknowledged only {acked} appends");
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // Acknowledgements already in the pipe count too.
    for line in lines.map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.parse().expect("index");
        }
    }

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (mut log, _sm) = store::open(&path).await.expect("reopen after SIGKILL");
        let state = log.get_log_state().await.expect("log state");
        let last = state.last_log_id.expect("a non-empty log").index;
        assert!(
            last >= acked,
            "acknowledged {acked} but the log ends at {last}"
        );
        let entries = log.try_get_log_entries(1..=last).await.expect("read log");
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        let expected: Vec<u64> = (1..=last).collect();
        assert_eq!(indexes, expected, "the log has holes");
        for e in &entries {
            assert_eq!(
                *e,
                entry(e.log_id.index),
                "entry {} changed",
                e.log_id.index
            );
        }
    });
}
