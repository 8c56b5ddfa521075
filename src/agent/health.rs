//! Active health checks of one node's own tasks.
//!
//! # Flow
//!
//! ```text
//! agent starts or adopts a task ─> spawn(check loop) ─> probe (tcp connect | http GET)
//!   ─> rise/fall counters ─> on a transition only: send (task id, health) to the agent
//! ```
//!
//! While a task is still `starting` it is probed every [`STARTING_PROBE`]
//! (or its interval, if shorter), so a fresh task enters the routing table
//! within a fraction of a second of listening rather than `rise × interval`
//! later; failures during [`START_PERIOD`] do not count against it. Once
//! healthy it is probed at the service's interval.
use std::net::SocketAddr;
use std::time::Duration;

use lb_config::{HealthCheck, HealthCheckKind};
use raft_state::task::TaskHealth;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

/// Probe cadence of a task that has not been healthy yet.
pub const STARTING_PROBE: Duration = Duration::from_millis(200);
/// Failures of a new task in this period do not make it unhealthy: slow
/// starters get time to listen.
pub const START_PERIOD: Duration = Duration::from_secs(30);

/// A check result for the agent: the task and its new health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    pub task_id: String,
    pub health: TaskHealth,
    /// Why the last probe failed, for `service ps`.
    pub reason: String,
}

/// Rise/fall bookkeeping, separate from the I/O so it can be tested alone.
#[derive(Debug, Clone)]
pub struct Verdict {
    rise: u32,
    fall: u32,
    successes: u32,
    failures: u32,
    pub health: TaskHealth,
}

impl Verdict {
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise,
            fall,
            successes: 0,
            failures: 0,
            health: TaskHealth::Starting,
        }
    }

    /// Records one probe; returns the new health if it changed.
    /// `in_start_period` keeps failures of a task that never was healthy
    /// from counting.
    pub fn record(&mut self, ok: bool, in_start_period: bool) -> Option<TaskHealth> {
        let before = self.health;
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= self.rise {
                self.health = TaskHealth::Healthy;
            }
        } else {
            self.successes = 0;
            if self.health == TaskHealth::Starting && in_start_period {
                return None;
            }
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.fall {
                self.health = TaskHealth::Unhealthy;
            }
        }
        (self.health != before).then_some(self.health)
    }
}

/// Starts checking `addr` for `task_id`; the handle aborts the loop.
pub fn spawn(
    task_id: String,
    addr: SocketAddr,
    check: HealthCheck,
    changes: UnboundedSender<HealthChange>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut verdict = Verdict::new(check.rise, check.fall);
        loop {
            let result = probe(&check, addr).await;
            let in_start_period = started.elapsed() < START_PERIOD;
            if let Some(health) = verdict.record(result.is_ok(), in_start_period) {
                let change = HealthChange {
                    task_id: task_id.clone(),
                    health,
                    reason: result.err().unwrap_or_default(),
                };
                if changes.send(change).is_err() {
                    return;
                }
            }
            let pause = if verdict.health == TaskHealth::Starting {
                check.interval.min(STARTING_PROBE)
            } else {
                check.interval
            };
            tokio::time::sleep(pause).await;
        }
    })
}

/// One probe: a TCP connect, or an HTTP GET answered with 2xx or 3xx.
pub async fn probe(check: &HealthCheck, addr: SocketAddr) -> Result<(), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        if check.kind != HealthCheckKind::Http {
            return Ok(());
        }
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: lbmesh-health\r\nConnection: close\r\n\r\n",
            check.path
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut head = [0u8; 32];
        let mut read = 0;
        while read < 12 {
            let n = stream
                .read(&mut head[read..])
                .await
                .map_err(|e| format!("read from {addr}: {e}"))?;
            if n == 0 {
                break;
            }
            read += n;
        }
        let line = String::from_utf8_lossy(&head[..read]);
        let status: Option<u16> = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse().ok());
        match status {
            Some(code) if (200..400).contains(&code) => Ok(()),
            Some(code) => Err(format!("GET {} answered {code}", check.path)),
            None => Err(format!("GET {}: not an HTTP answer", check.path)),
        }
    };
    tokio::time::timeout(check.timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", check.timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall() {
        let mut v = Verdict::new(2, 3);
        assert_eq!(v.record(true, true), None);
        assert_eq!(v.record(true, true), Some(TaskHealth::Healthy));
        assert_eq!(v.record(false, false), None);
        assert_eq!(v.record(false, false), None);
        assert_eq!(v.record(false, false), Some(TaskHealth::Unhealthy));
        assert_eq!(v.record(true, false), None);
        assert_eq!(v.record(true, false), Some(TaskHealth::Healthy));
    }

    #[test]
    fn start_period_forgives_a_slow_starter() {
        let mut v = Verdict::new(1, 1);
        for _ in 0..10 {
            assert_eq!(v.record(false, true), None);
        }
        assert_eq!(v.health, TaskHealth::Starting);
        assert_eq!(v.record(false, false), Some(TaskHealth::Unhealthy));
    }

    #[tokio::test]
    async fn http_probe_reads_the_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in ["HTTP/1.0 200 OK\r\n\r\n", "HTTP/1.1 503 Busy\r\n\r\n"] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = stream.read(&mut buf).await;
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let check = HealthCheck {
            kind: HealthCheckKind::Http,
            port: None,
            path: "/healthz".to_owned(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            rise: 1,
            fall: 1,
            eject_time: Duration::from_secs(1),
        };
        assert_eq!(probe(&check, addr).await, Ok(()));
        let err = probe(&check, addr).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
    }
}
