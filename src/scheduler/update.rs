//! Rolling updates: outdated slots replaced `parallelism` at a time,
//! `delay` apart, stop-first or start-first; a new task failing within
//! `monitor` triggers the failure action. A rollback (the update state's
//! `Rollback*`) rolls the same way with the spec's `rollback` policy.

use std::collections::{BTreeMap, HashMap};

use lb_config::{FailureAction, ServiceMode, UpdateOrder};
use raft_state::task::{Millis, TaskOp, TaskRecord, TaskState, UpdateState, UpdateStatus};

use super::clock::millis;
use super::plan::{ServicePlan, SlotKey};

impl ServicePlan<'_> {
    pub(super) fn set_update(
        &mut self,
        status: &UpdateStatus,
        state: UpdateState,
        message: String,
    ) {
        let done = matches!(
            state,
            UpdateState::Completed | UpdateState::RollbackCompleted
        );
        self.ops.push(TaskOp::SetUpdate {
            service: self.name().to_owned(),
            status: UpdateStatus {
                state,
                task_version: status.task_version,
                started_at: status.started_at.or(Some(self.now)),
                completed_at: done.then_some(self.now),
                message,
            },
        });
    }

    /// Replaces outdated tasks per the update policy. Returns the service's
    /// name when the failure action is a rollback.
    pub(super) fn update(
        &mut self,
        slots: &BTreeMap<SlotKey, Vec<&TaskRecord>>,
        tasks: &[&TaskRecord],
        last_batch: &mut HashMap<String, Millis>,
        new_id: &mut impl FnMut() -> String,
    ) -> Option<String> {
        let version = self.record.task_version;
        let status = self.record.update.clone().unwrap_or(UpdateStatus {
            state: UpdateState::Completed,
            task_version: version,
            started_at: None,
            completed_at: None,
            message: String::new(),
        });
        // A rollback rolls per the spec's rollback settings (the update's
        // when it has none).
        let policy = if status.state.is_rollback() {
            self.spec.rollback
        } else {
            self.spec.update
        };
        let current = |t: &TaskRecord| t.spec_version == version;
        // start-first: once a slot's new task serves, its old one leaves.
        for slot_tasks in slots.values() {
            if slot_tasks.iter().any(|t| current(t) && t.serves()) {
                for old in slot_tasks.iter().filter(|t| !current(t)) {
                    self.shutdown(old, "replaced by update");
                }
            }
        }
        let outdated: Vec<(&SlotKey, &Vec<&TaskRecord>)> = slots
            .iter()
            .filter(|(_, ts)| !ts.iter().any(|t| current(t)))
            .collect();
        if status.task_version != version || !status.state.in_progress() {
            // Nothing rolling out (or paused): only finish bookkeeping.
            return None;
        }
        // Rolling out: the next batch waits on time (delay, monitor) as
        // well as on changes.
        self.unsettled = true;
        if outdated.is_empty() {
            let pending_new = slots
                .values()
                .flatten()
                .any(|t| t.spec_version == version && !t.serves());
            if !pending_new {
                let state = if status.state.is_rollback() {
                    UpdateState::RollbackCompleted
                } else {
                    UpdateState::Completed
                };
                let message = if status.state.is_rollback() {
                    "rollback completed"
                } else {
                    "update completed"
                };
                self.set_update(&status, state, message.to_owned());
                last_batch.remove(self.name());
            }
            return None;
        }
        let started = status.started_at.unwrap_or(self.now);
        if status.started_at.is_none() {
            self.set_update(&status, status.state, status.message.clone());
        }
        // A new task that failed within the monitor window fails the update.
        let failed = tasks.iter().find(|t| {
            t.spec_version == version
                && t.state == TaskState::Failed
                && t.created_at >= started
                && t.started_at
                    .is_none_or(|s| t.updated_at.saturating_sub(s) <= millis(policy.monitor))
        });
        if let Some(failed) = failed {
            let message = format!(
                "task {} failed: {}",
                failed.id,
                if failed.message.is_empty() {
                    "unknown error"
                } else {
                    &failed.message
                }
            );
            match policy.failure_action {
                FailureAction::Continue => {}
                FailureAction::Pause => {
                    let state = if status.state.is_rollback() {
                        UpdateState::RollbackPaused
                    } else {
                        UpdateState::Paused
                    };
                    self.set_update(&status, state, format!("update paused: {message}"));
                    return None;
                }
                FailureAction::Rollback => {
                    if status.state.is_rollback() {
                        self.set_update(
                            &status,
                            UpdateState::RollbackPaused,
                            format!("rollback paused: {message}"),
                        );
                        return None;
                    }
                    self.set_update(
                        &status,
                        UpdateState::Paused,
                        format!("update failed, rolling back: {message}"),
                    );
                    return Some(self.name().to_owned());
                }
            }
        }
        // One batch at a time: wait until the last batch serves and the
        // delay has passed.
        let in_flight = slots
            .values()
            .flatten()
            .filter(|t| t.spec_version == version && !t.serves())
            .count()
            + tasks
                .iter()
                .filter(|t| !t.is_live() && !t.state.is_terminal())
                .count();
        let missing = match self.spec.mode {
            ServiceMode::Replicated => (self.replicas as usize).saturating_sub(slots.len()),
            ServiceMode::Global => 0,
        };
        let ready_for_batch = last_batch
            .get(self.name())
            .is_none_or(|at| self.now >= at.saturating_add(millis(policy.delay)));
        if in_flight + missing > 0 || !ready_for_batch {
            return None;
        }
        let batch = if policy.parallelism == 0 {
            outdated.len()
        } else {
            policy.parallelism as usize
        };
        let mut order: Vec<(&SlotKey, &Vec<&TaskRecord>)> = outdated;
        // Replace tasks that do not serve first.
        order.sort_by_key(|(key, ts)| (ts.iter().any(|t| t.serves()), **key));
        for (key, slot_tasks) in order.into_iter().take(batch) {
            match policy.order {
                UpdateOrder::StopFirst => {
                    for task in slot_tasks {
                        self.shutdown(task, "stopped for update");
                    }
                    // The slot is refilled with the new version next round.
                }
                UpdateOrder::StartFirst => {
                    let (slot, node) = match self.spec.mode {
                        ServiceMode::Replicated => (u32::try_from(*key).unwrap_or(u32::MAX), None),
                        ServiceMode::Global => (0, Some(*key)),
                    };
                    self.create(new_id, slot, node, 0);
                }
            }
        }
        last_batch.insert(self.name().to_owned(), self.now);
        None
    }
}
