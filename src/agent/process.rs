//! The process runtime: tasks as local commands.
//!
//! # Flow
//!
//! ```text
//! start: free port per target (bind host_ip:0, read, close) ─> /bin/sh -c COMMAND (or the
//!        spec's exec-form args as they are, the program found on PATH) in its own process group, as the service's user if it names one, with a clean environment:
//!        PATH (a minimal one), HOST, PORT, PORT_<target>, LBMESH_TASK_ID, LBMESH_SERVICE,
//!        LBMESH_DNS and LBMESH_DNS_SEARCH (the node's DNS responder and search domains),
//!        then the service env; output appended to <state_dir>/<task>.log (0600); a record file
//!        <state_dir>/<task>.json ─> a waiter reports the exit ─> an exit within the first
//!        STARTUP_CHECK fails the start with the status and the log's tail
//! stop:  SIGTERM to the group ─> grace ─> SIGKILL to the group ─> record removed
//! new(): records left by an earlier lbd are cleaned up: their groups are killed (after
//!        checking, through /proc/<pid>/environ, that the pid is still that task's)
//! ```
//!
//! Processes are not adopted across lbd restarts: the agent reports such
//! tasks failed and the scheduler replaces them.
//!
//! Invariant: a task inherits nothing of lbd's environment (lbd may hold
//! `LBCTL_TOKEN`, `LBD_JOIN_TOKEN` or anything its unit file sets), only
//! the variables listed above.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rustix::process::{kill_process_group, Pid, Signal};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

use super::runtime::{Runtime, RuntimeError, RuntimeEvent, RuntimeTask, TaskLaunch};
use super::user;

/// A command that ends this soon after it started failed to start.
const STARTUP_CHECK: Duration = Duration::from_millis(150);
/// Log bytes quoted in a start error.
const LOG_TAIL: usize = 400;
/// `PATH` of every task (the service env may replace it): the system
/// directories, none of lbd's own.
pub const TASK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What survives an lbd restart about a task: enough to clean it up.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    task_id: String,
    service: String,
    pid: i32,
    ports: Vec<(u16, u16)>,
}

/// Local processes.
pub struct ProcessRuntime {
    state_dir: PathBuf,
    events: UnboundedSender<RuntimeEvent>,
    /// Tasks started by this lbd process, by runtime id.
    running: Arc<Mutex<HashMap<String, Record>>>,
}

fn runtime_id(pid: i32) -> String {
    format!("pid:{pid}")
}

fn pid_of(runtime_id: &str) -> Option<Pid> {
    runtime_id
        .strip_prefix("pid:")
        .and_then(|p| p.parse().ok())
        .and_then(Pid::from_raw)
}

/// Whether `pid` still runs the task (guards against pid reuse).
fn runs_task(pid: i32, task_id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|environ| {
            let wanted = format!("LBMESH_TASK_ID={task_id}");
            environ
                .split(|b| *b == 0)
                .any(|entry| entry == wanted.as_bytes())
        })
        .unwrap_or(false)
}

impl ProcessRuntime {
    /// Creates the state dir and cleans up what an earlier lbd left there.
    pub fn new(
        state_dir: PathBuf,
        events: UnboundedSender<RuntimeEvent>,
    ) -> Result<Self, RuntimeError> {
        crate::files::private_dir(&state_dir)
            .map_err(|e| RuntimeError::Unavailable(format!("{}: {e}", state_dir.display())))?;
        let entries = std::fs::read_dir(&state_dir)
            .map_err(|e| RuntimeError::Unavailable(format!("{}: {e}", state_dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let record: Option<Record> = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok());
            if let Some(record) = record {
                if runs_task(record.pid, &record.task_id) {
                    info!(task = %record.task_id, pid = record.pid, "stopping a process left by an earlier lbd");
                    if let Some(pid) = Pid::from_raw(record.pid) {
                        let _ = kill_process_group(pid, Signal::KILL);
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        Ok(Self {
            state_dir,
            events,
            running: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn record_path(&self, task_id: &str) -> PathBuf {
        self.state_dir.join(format!("{task_id}.json"))
    }

    async fn start_task(&self, launch: TaskLaunch) -> Result<RuntimeTask, RuntimeError> {
        // `args` run as they are; `command` under /bin/sh -c.
        let words: Vec<String> = match (&launch.command, launch.args.as_slice()) {
            (_, [_, ..]) => launch.args.clone(),
            (Some(command), []) => vec!["/bin/sh".to_owned(), "-c".to_owned(), command.clone()],
            (None, []) => {
                return Err(RuntimeError::Failed(
                    "a process task needs a command".to_owned(),
                ))
            }
        };
        let mut ports = Vec::with_capacity(launch.target_ports.len());
        for target in &launch.target_ports {
            ports.push((target.port, free_port(launch.host_ip)?));
        }
        let ids = launch
            .user
            .as_deref()
            .map(user::resolve)
            .transpose()
            .map_err(RuntimeError::Failed)?;
        let log_path = self.state_dir.join(format!("{}.log", launch.task_id));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| RuntimeError::Failed(format!("{}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| RuntimeError::Failed(format!("{}: {e}", log_path.display())))?;
        let mut cmd = tokio::process::Command::new(&words[0]);
        cmd.args(&words[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false)
            .env_clear()
            .env("PATH", TASK_PATH)
            .env("HOST", launch.host_ip.to_string())
            .env("LBMESH_TASK_ID", &launch.task_id)
            .env("LBMESH_SERVICE", &launch.service);
        if let Some((_, port)) = ports.first() {
            cmd.env("PORT", port.to_string());
        }
        for (target, port) in &ports {
            cmd.env(format!("PORT_{target}"), port.to_string());
        }
        if let Some(dns) = &launch.dns {
            cmd.env("LBMESH_DNS", dns.server.to_string())
                .env("LBMESH_DNS_SEARCH", dns.search.join(" "));
        }
        for pair in &launch.env {
            if let Some((key, value)) = pair.split_once('=') {
                cmd.env(key, value);
            }
        }
        if let Some(ids) = ids {
            // std drops the supplementary groups too when root sets a uid.
            cmd.uid(ids.uid).gid(ids.gid);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| RuntimeError::Failed(format!("cannot run {}: {e}", words[0])))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| RuntimeError::Failed("the process ended at once".to_owned()))?;
        if let Ok(Ok(status)) = tokio::time::timeout(STARTUP_CHECK, child.wait()).await {
            return Err(RuntimeError::Failed(format!(
                "the command {status} at once: {}",
                log_tail(&log_path)
            )));
        }
        let record = Record {
            task_id: launch.task_id.clone(),
            service: launch.service.clone(),
            pid,
            ports: ports.clone(),
        };
        if let Ok(text) = serde_json::to_string(&record) {
            if let Err(error) =
                crate::files::write_private(&self.record_path(&launch.task_id), text.as_bytes())
            {
                warn!(%error, "cannot write the task record");
            }
        }
        let id = runtime_id(pid);
        if let Ok(mut running) = self.running.lock() {
            running.insert(id.clone(), record);
        }
        let events = self.events.clone();
        let running = Arc::clone(&self.running);
        let record_path = self.record_path(&launch.task_id);
        let task_id = launch.task_id.clone();
        let waiter_id = id.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            if let Ok(mut running) = running.lock() {
                running.remove(&waiter_id);
            }
            let _ = std::fs::remove_file(record_path);
            let exit_code = status.ok().and_then(|s| s.code()).map(i64::from);
            debug!(task = %task_id, ?exit_code, "process ended");
            let _ = events.send(RuntimeEvent::Exited {
                runtime_id: waiter_id,
                task_id,
                exit_code,
            });
        });
        Ok(RuntimeTask {
            runtime_id: id,
            task_id: launch.task_id,
            service: launch.service,
            ports,
            running: true,
            own_health: None,
        })
    }

    async fn stop_task(&self, runtime_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let Some(pid) = pid_of(runtime_id) else {
            return Err(RuntimeError::Failed(format!(
                "{runtime_id:?} is not a process task"
            )));
        };
        let tracked = self
            .running
            .lock()
            .map(|r| r.contains_key(runtime_id))
            .unwrap_or(false);
        if !tracked {
            // Ended already (its waiter removed it): nothing to stop.
            return Ok(());
        }
        let _ = kill_process_group(pid, Signal::TERM);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            let alive = self
                .running
                .lock()
                .map(|r| r.contains_key(runtime_id))
                .unwrap_or(false);
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The group may hold children that outlived the shell.
        let _ = kill_process_group(pid, Signal::KILL);
        Ok(())
    }
}

/// A port that was free on `ip` a moment ago.
fn free_port(ip: IpAddr) -> Result<u16, RuntimeError> {
    TcpListener::bind(SocketAddr::new(ip, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| RuntimeError::Failed(format!("no free port on {ip}: {e}")))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let text = text.trim();
    let start = text
        .char_indices()
        .rev()
        .nth(LOG_TAIL)
        .map_or(0, |(i, _)| i);
    if text.is_empty() {
        "no output".to_owned()
    } else {
        text[start..].to_owned()
    }
}

impl Runtime for ProcessRuntime {
    fn start(&self, launch: TaskLaunch) -> BoxFuture<'_, Result<RuntimeTask, RuntimeError>> {
        Box::pin(self.start_task(launch))
    }

    fn stop<'a>(
        &'a self,
        runtime_id: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.stop_task(runtime_id, grace))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<RuntimeTask>, RuntimeError>> {
        let tasks = self
            .running
            .lock()
            .map(|running| {
                running
                    .iter()
                    .map(|(id, record)| RuntimeTask {
                        runtime_id: id.clone(),
                        task_id: record.task_id.clone(),
                        service: record.service.clone(),
                        ports: record.ports.clone(),
                        running: true,
                        own_health: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(async move { Ok(tasks) })
    }
}
