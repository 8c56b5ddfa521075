//! Following a service write to convergence, as `docker service create`
//! does: `service create|update|scale|rollback` wait until the tasks of the
//! spec they wrote run, showing progress, unless `--detach`.
//!
//! # Flow
//!
//! ```text
//! the write's answer (version, task_version) ─┐
//! failed task ids before the write ───────────┤
//!   every POLL: GET service + GET its tasks ──┴─> assess (pure) ─> Progress { slots, outcome }
//!     Pending   ─> draw: a terminal gets one line per slot, redrawn in place;
//!                  otherwise one plain line per slot change and per count change
//!     Converged ─> "verify: Service NAME converged", exit 0
//!     Failed    ─> Error: NAME: the task's (or the update's) error, exit 1
//!   --timeout passed ─> Error: NAME: not converged within T, with every slot not yet running
//! ```
//!
//! Converged means: exactly `desired` tasks are wanted, all of them of the
//! written task template, running and healthy (or unchecked); no rolling
//! update of that template is still in progress; a global service has at
//! least one task. A task of the written template that fails, a rolling
//! update that pauses, or another write to the service ends the wait with
//! that error: the scheduler keeps replacing the task per the restart
//! policy, but the command reports what went wrong instead of waiting for
//! a fix that may never come. A read that predates the write (a follower
//! that has not applied it yet) counts as not converged.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::time::Duration;

use lbmesh_api::{Client, DesiredState, Service, ServiceStatus, Task, TaskHealth, TaskState};

use crate::error::CtlError;
use crate::tasks::task_name;

/// Time between two looks at the service: quick enough that progress
/// looks live, two small reads per look.
const POLL: Duration = Duration::from_millis(500);

/// Width of a slot's progress bar, docker's.
const BAR: usize = 50;

/// How the wait shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// stdout is a terminal: the slot lines are redrawn in place.
    Terminal,
    /// A pipe or file: plain lines, one per change.
    Lines,
    /// `--format json`: nothing until the answer.
    Quiet,
}

/// One slot as the progress shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    /// `1/3`, or a global service's node name.
    label: String,
    /// `web.1` or `web.node-a`.
    task_name: String,
    /// `running`, `starting`, `pending`, ...
    state: String,
    /// The task's message when it is not running (why it is pending, its
    /// error).
    message: String,
    /// Steps done of four (pending, assigned, starting, running and
    /// healthy), for the bar.
    steps: usize,
}

/// What one look found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Pending,
    Converged,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Progress {
    slots: Vec<Slot>,
    /// Tasks of the written template that serve.
    done: usize,
    desired: usize,
    outcome: Outcome,
}

/// What the follow compares against: the write's answer and the failures
/// that happened before it.
pub struct Target {
    pub name: String,
    pub version: u64,
    pub task_version: u64,
    /// Ids of tasks that had failed before the write, which are history,
    /// not this write's failure.
    pub failed_before: HashSet<String>,
}

impl Target {
    /// The target of a write that answered `service`; `before` is the
    /// service's task list read before the write (empty for a create).
    pub fn new(service: &Service, before: &[Task]) -> Self {
        Self {
            name: service.spec.name.clone(),
            version: service.version,
            task_version: service.task_version,
            failed_before: before
                .iter()
                .filter(|t| t.state == TaskState::Failed)
                .map(|t| t.id.clone())
                .collect(),
        }
    }
}

/// Whether the service runs tasks at all (a service of static endpoints
/// has nothing to follow).
pub fn has_tasks(service: &Service) -> bool {
    service.spec.image.is_some() || service.spec.command.is_some()
}

/// Waits until `target` converges, fails or `timeout` passes, drawing
/// progress on `out`. `Ok` with the final line(s) to print.
pub async fn converge(
    client: &Client,
    target: &Target,
    timeout: Duration,
    display: Display,
    out: &mut dyn Write,
) -> Result<String, CtlError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut drawn = Drawn::default();
    let last = loop {
        let status = client.service(&target.name).await?;
        let tasks = client.service_tasks(&target.name).await?;
        let progress = assess(target, &status, &tasks);
        drawn.draw(display, &progress, out);
        match &progress.outcome {
            Outcome::Converged => {
                return Ok(match display {
                    Display::Quiet => String::new(),
                    _ => format!("verify: Service {} converged\n", target.name),
                })
            }
            Outcome::Failed(reason) => {
                return Err(CtlError::NotConverged {
                    service: target.name.clone(),
                    reason: reason.clone(),
                })
            }
            Outcome::Pending => {}
        }
        if tokio::time::Instant::now() + POLL > deadline {
            break progress;
        }
        tokio::time::sleep(POLL).await;
    };
    let waiting: Vec<String> = last
        .slots
        .iter()
        .filter(|s| s.steps < 4)
        .map(|s| {
            let mut line = format!("{} {}", s.task_name, s.state);
            if !s.message.is_empty() {
                line.push_str(&format!(": {}", s.message));
            }
            line
        })
        .collect();
    let mut reason = format!(
        "not converged within {}",
        humantime::format_duration(timeout)
    );
    if !waiting.is_empty() {
        reason.push_str(&format!(" ({})", waiting.join("; ")));
    }
    Err(CtlError::NotConverged {
        service: target.name.clone(),
        reason,
    })
}

/// The pure part of one look: the slots, the count and the outcome.
fn assess(target: &Target, status: &ServiceStatus, tasks: &[Task]) -> Progress {
    let service = &status.service;
    let current = |t: &Task| t.spec_version == target.task_version;
    let serves = |t: &Task| {
        t.state == TaskState::Running && matches!(t.health, TaskHealth::Healthy | TaskHealth::None)
    };
    let live: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.desired == DesiredState::Running)
        .collect();
    let done = live.iter().filter(|t| current(t) && serves(t)).count();
    let desired = status.desired;
    let slots = slots(target, status, tasks);
    let progress = |outcome| Progress {
        slots: slots.clone(),
        done,
        desired,
        outcome,
    };
    if service.version < target.version {
        // A follower that has not applied the write yet.
        return progress(Outcome::Pending);
    }
    let update = service
        .update
        .as_ref()
        .filter(|u| u.task_version == target.task_version);
    // A failed task of the written template is the most precise error,
    // also when the failure has already rolled the service back.
    let failed = tasks.iter().find(|t| {
        current(t) && t.state == TaskState::Failed && !target.failed_before.contains(&t.id)
    });
    if let Some(task) = failed {
        let message = if task.message.is_empty() {
            "unknown error"
        } else {
            &task.message
        };
        return progress(Outcome::Failed(format!(
            "task {} ({}) failed: {message}",
            task_name(task),
            task.id
        )));
    }
    if service.version > target.version {
        let why = match &service.update {
            Some(update) if !update.message.is_empty() => format!(": {}", update.message),
            _ => String::new(),
        };
        return progress(Outcome::Failed(format!(
            "the service changed while following it (now version {}){why}",
            service.version
        )));
    }
    if let Some(update) = update {
        use lbmesh_api::UpdateState::{Paused, RollbackPaused};
        if matches!(update.state, Paused | RollbackPaused) {
            return progress(Outcome::Failed(update.message.clone()));
        }
    }
    let updating = update.is_some_and(|u| {
        use lbmesh_api::UpdateState::{RollbackStarted, Updating};
        matches!(u.state, Updating | RollbackStarted)
    });
    let global = service.spec.mode == lb_config::ServiceMode::Global;
    let converged =
        done == desired && live.len() == desired && !updating && (!global || desired > 0);
    progress(if converged {
        Outcome::Converged
    } else {
        Outcome::Pending
    })
}

/// One line per slot: replicated slots 1..=replicas, a global service's
/// nodes by name. Each shows the newest task of the written template, or
/// the newest task at all while that template has none there yet.
fn slots(target: &Target, status: &ServiceStatus, tasks: &[Task]) -> Vec<Slot> {
    let global = status.service.spec.mode == lb_config::ServiceMode::Global;
    let mut by_key: BTreeMap<(u32, String), Option<&Task>> = BTreeMap::new();
    for task in tasks.iter().filter(|t| t.desired == DesiredState::Running) {
        let key = if global {
            (0, task.node_name.clone().unwrap_or_default())
        } else {
            (task.slot, String::new())
        };
        let held = by_key.entry(key).or_default();
        let better = held.is_none_or(|held| {
            let held_current = held.spec_version == target.task_version;
            let current = task.spec_version == target.task_version;
            (current, task.created_at) > (held_current, held.created_at)
        });
        if better {
            *held = Some(task);
        }
    }
    // Replicated: every slot up to the count shows, with a task or not.
    if !global {
        for slot in 1..=u32::try_from(status.desired).unwrap_or(u32::MAX) {
            by_key.entry((slot, String::new())).or_default();
        }
    }
    let total = status.desired;
    by_key
        .into_iter()
        .map(|((slot, node), task)| {
            let label = if global {
                node
            } else {
                format!("{slot}/{total}")
            };
            let Some(task) = task else {
                return Slot {
                    label,
                    task_name: format!("{}.{slot}", target.name),
                    state: "new".to_owned(),
                    message: String::new(),
                    steps: 0,
                };
            };
            let current = task.spec_version == target.task_version;
            let (state, steps) = match (task.state, task.health) {
                (TaskState::Running, TaskHealth::Healthy | TaskHealth::None) if current => {
                    ("running", 4)
                }
                (TaskState::Running, TaskHealth::Unhealthy) => ("unhealthy", 3),
                (TaskState::Running, _) if current => ("starting", 3),
                (TaskState::Running, _) => ("running (old spec)", 0),
                (TaskState::Starting, _) => ("starting", 3),
                (TaskState::Assigned, _) => ("assigned", 2),
                (TaskState::Pending, _) => ("pending", 1),
                (TaskState::Failed, _) => ("failed", 0),
                (TaskState::Shutdown, _) => ("shutdown", 0),
                (TaskState::Orphaned, _) => ("orphaned", 0),
            };
            Slot {
                label,
                task_name: task_name(task),
                state: state.to_owned(),
                message: if steps == 4 {
                    String::new()
                } else {
                    task.message.clone()
                },
                steps,
            }
        })
        .collect()
}

/// What has been drawn so far, to redraw in place or print only changes.
#[derive(Default)]
struct Drawn {
    /// Terminal: lines drawn last time (the cursor goes up that many).
    lines: usize,
    /// Lines: the last line printed for each slot, and the last count.
    slots: BTreeMap<String, String>,
    count: Option<(usize, usize)>,
}

impl Drawn {
    fn draw(&mut self, display: Display, progress: &Progress, out: &mut dyn Write) {
        let overall = format!(
            "overall progress: {} out of {} tasks",
            progress.done, progress.desired
        );
        let mut text = String::new();
        match display {
            Display::Quiet => return,
            Display::Terminal => {
                if self.lines > 0 {
                    text.push_str(&format!("\x1b[{}A", self.lines));
                }
                let mut lines = vec![overall];
                lines.extend(progress.slots.iter().map(bar_line));
                for line in &lines {
                    text.push_str(&format!("\x1b[2K{line}\n"));
                }
                // Clear what a longer drawing left below.
                for _ in lines.len()..self.lines {
                    text.push_str("\x1b[2K\n");
                }
                self.lines = lines.len().max(self.lines);
            }
            Display::Lines => {
                let count = (progress.done, progress.desired);
                if self.count != Some(count) {
                    text.push_str(&format!("{overall}\n"));
                    self.count = Some(count);
                }
                for slot in &progress.slots {
                    let mut line = format!("{}: {}", slot.task_name, slot.state);
                    if !slot.message.is_empty() {
                        line.push_str(&format!(" ({})", slot.message));
                    }
                    if self.slots.get(&slot.label) != Some(&line) {
                        text.push_str(&line);
                        text.push('\n');
                        self.slots.insert(slot.label.clone(), line);
                    }
                }
            }
        }
        // Progress is best effort: a closed stdout must not fail the command.
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

/// `1/3: running   [==================================================>]`.
fn bar_line(slot: &Slot) -> String {
    let filled = BAR * slot.steps / 4;
    let bar = if slot.steps == 0 {
        String::new()
    } else {
        format!(
            "[{}>{}]",
            "=".repeat(filled.saturating_sub(1)),
            " ".repeat(BAR - filled)
        )
    };
    let mut line = format!("{}: {:<10} {bar}", slot.label, slot.state);
    if !slot.message.is_empty() {
        line.push_str(&format!(" {}", slot.message));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_config::ServiceSpec;
    use lbmesh_api::{UpdateState, UpdateStatus};

    fn status(replicas: usize, version: u64, task_version: u64) -> ServiceStatus {
        ServiceStatus {
            service: Service {
                id: "abc".into(),
                spec: ServiceSpec {
                    name: "web".into(),
                    command: Some("serve".into()),
                    ..ServiceSpec::default()
                },
                version,
                vip: "127.77.0.1".parse().expect("ip"),
                vip_v6: None,
                previous: None,
                task_version,
                previous_task_version: 0,
                update: None,
            },
            running: 0,
            desired: replicas,
            listener_errors: Vec::new(),
        }
    }

    fn task(slot: u32, version: u64, state: TaskState, health: TaskHealth) -> Task {
        Task {
            id: format!("t{slot}v{version}"),
            service: "web".into(),
            slot,
            spec_version: version,
            state,
            health,
            node: None,
            desired: DesiredState::Running,
            endpoint: None,
            runtime_id: None,
            message: String::new(),
            attempt: 0,
            created_at: 0.into(),
            updated_at: 0.into(),
            started_at: None,
            node_name: None,
        }
    }

    fn target(version: u64, task_version: u64) -> Target {
        Target {
            name: "web".into(),
            version,
            task_version,
            failed_before: HashSet::new(),
        }
    }

    #[test]
    fn three_of_three_running_and_healthy_converge() {
        let status = status(3, 1, 1);
        let mut tasks: Vec<Task> = (1..=3)
            .map(|s| task(s, 1, TaskState::Running, TaskHealth::Healthy))
            .collect();
        let progress = assess(&target(1, 1), &status, &tasks);
        assert_eq!((progress.done, progress.outcome), (3, Outcome::Converged));
        tasks[2].health = TaskHealth::Starting;
        let progress = assess(&target(1, 1), &status, &tasks);
        assert_eq!((progress.done, progress.outcome), (2, Outcome::Pending));
        assert_eq!(progress.slots[2].state, "starting");
        // A slot without a task yet shows as new.
        tasks.pop();
        let progress = assess(&target(1, 1), &status, &tasks);
        assert_eq!(progress.slots.len(), 3);
        assert_eq!(progress.slots[2].state, "new");
    }

    #[test]
    fn a_failed_task_of_the_new_template_fails_with_its_message() {
        let status = status(2, 1, 1);
        let mut failed = task(2, 1, TaskState::Failed, TaskHealth::None);
        failed.message = "image \"nosuch\" not found on this node".into();
        let tasks = vec![task(1, 1, TaskState::Running, TaskHealth::None), failed];
        let Outcome::Failed(reason) = assess(&target(1, 1), &status, &tasks).outcome else {
            panic!("not failed");
        };
        assert_eq!(
            reason,
            "task web.2 (t2v1) failed: image \"nosuch\" not found on this node"
        );
        // The same failure from before the write is history.
        let mut before = target(1, 1);
        before.failed_before.insert("t2v1".into());
        assert_eq!(assess(&before, &status, &tasks).outcome, Outcome::Pending);
    }

    #[test]
    fn old_template_tasks_and_rolling_updates_hold_convergence() {
        let mut status = status(1, 2, 2);
        let old = task(1, 1, TaskState::Running, TaskHealth::None);
        let new = task(1, 2, TaskState::Running, TaskHealth::None);
        // start-first: the old task is still wanted.
        let both = vec![old.clone(), new.clone()];
        assert_eq!(
            assess(&target(2, 2), &status, &both).outcome,
            Outcome::Pending
        );
        let mut update = UpdateStatus {
            state: UpdateState::Updating,
            task_version: 2,
            started_at: None,
            completed_at: None,
            message: "update in progress".into(),
        };
        status.service.update = Some(update.clone());
        let only_new = vec![new];
        assert_eq!(
            assess(&target(2, 2), &status, &only_new).outcome,
            Outcome::Pending
        );
        update.state = UpdateState::Completed;
        status.service.update = Some(update.clone());
        assert_eq!(
            assess(&target(2, 2), &status, &only_new).outcome,
            Outcome::Converged
        );
        update.state = UpdateState::Paused;
        update.message = "update paused: task x failed: boom".into();
        status.service.update = Some(update);
        assert_eq!(
            assess(&target(2, 2), &status, &only_new).outcome,
            Outcome::Failed("update paused: task x failed: boom".into())
        );
    }

    #[test]
    fn a_stale_read_waits_and_a_later_write_fails() {
        let status = status(1, 1, 1);
        let tasks = vec![task(1, 1, TaskState::Running, TaskHealth::None)];
        assert_eq!(
            assess(&target(2, 2), &status, &tasks).outcome,
            Outcome::Pending
        );
        let Outcome::Failed(reason) = assess(&target(0, 1), &status, &tasks).outcome else {
            panic!("not failed");
        };
        assert!(reason.contains("changed"), "{reason}");
        // An update whose failure already rolled the service back (a later
        // version) reports the failed task, not only the change.
        let mut crashed = task(1, 2, TaskState::Failed, TaskHealth::None);
        crashed.message = "exited with code 1".into();
        let tasks = vec![task(1, 1, TaskState::Running, TaskHealth::None), crashed];
        let mut rolled_back = status.clone();
        rolled_back.service.version = 3;
        assert_eq!(
            assess(&target(2, 2), &rolled_back, &tasks).outcome,
            Outcome::Failed("task web.1 (t1v2) failed: exited with code 1".into())
        );
    }

    #[test]
    fn plain_lines_print_only_changes() {
        let status = status(2, 1, 1);
        let mut tasks = vec![
            task(1, 1, TaskState::Running, TaskHealth::None),
            task(2, 1, TaskState::Starting, TaskHealth::None),
        ];
        let mut out = Vec::new();
        let mut drawn = Drawn::default();
        let progress = assess(&target(1, 1), &status, &tasks);
        drawn.draw(Display::Lines, &progress, &mut out);
        drawn.draw(Display::Lines, &progress, &mut out);
        tasks[1].state = TaskState::Running;
        let progress = assess(&target(1, 1), &status, &tasks);
        drawn.draw(Display::Lines, &progress, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "overall progress: 1 out of 2 tasks\nweb.1: running\nweb.2: starting\n\
             overall progress: 2 out of 2 tasks\nweb.2: running\n"
        );
    }

    #[test]
    fn a_terminal_gets_one_redrawn_line_per_slot() {
        let status = status(2, 1, 1);
        let tasks = vec![task(1, 1, TaskState::Running, TaskHealth::None)];
        let mut out = Vec::new();
        let mut drawn = Drawn::default();
        let progress = assess(&target(1, 1), &status, &tasks);
        drawn.draw(Display::Terminal, &progress, &mut out);
        drawn.draw(Display::Terminal, &progress, &mut out);
        let text = String::from_utf8(out).expect("utf-8");
        let full = format!("[{}>]", "=".repeat(BAR - 1));
        assert_eq!(
            text,
            format!(
                "\x1b[2Koverall progress: 1 out of 2 tasks\n\x1b[2K1/2: running    {full}\n\
                 \x1b[2K2/2: new        \n\x1b[3A\x1b[2Koverall progress: 1 out of 2 tasks\n\
                 \x1b[2K1/2: running    {full}\n\x1b[2K2/2: new        \n"
            )
        );
    }
}
