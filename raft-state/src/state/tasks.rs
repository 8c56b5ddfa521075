//! The task commands: a scheduler round ([`Command::Schedule`]) and an
//! agent's report ([`Command::ReportTask`]).
//!
//! Invariants: a round applies all or nothing, each op checked against the
//! state the earlier ops leave; a task's service exists when it is created; a
//! report is accepted only from the task's node and never moves a task out of
//! a terminal state.
//!
//! [`Command::Schedule`]: crate::command::Command::Schedule
//! [`Command::ReportTask`]: crate::command::Command::ReportTask

use super::RegistryState;
use crate::outcome::{reject, Outcome, RejectKind};
use crate::task::{DesiredState, Millis, TaskHealth, TaskOp, TaskRecord, TaskReport, TaskState};

/// Task ids: 1 to 32 of `[a-z0-9]`.
fn check_task_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 32
        || !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(format!(
            "task id {id:?} must be 1 to 32 lowercase letters or digits"
        ));
    }
    Ok(())
}

impl RegistryState {
    /// Applies a scheduling round: every op is checked against the state as
    /// the earlier ops of the round leave it; one bad op rejects the round.
    pub(super) fn schedule(&mut self, ops: &[TaskOp], at: Millis) -> Outcome {
        let mut next = self.clone();
        for (i, op) in ops.iter().enumerate() {
            if let Err((kind, field, reason)) = next.apply_op(op, at) {
                return reject(kind, format!("ops[{i}].{field}"), reason);
            }
        }
        *self = next;
        Outcome::Nothing
    }

    fn apply_op(&mut self, op: &TaskOp, at: Millis) -> Result<(), (RejectKind, String, String)> {
        let not_found = |id: &str| {
            (
                RejectKind::NotFound,
                "id".to_owned(),
                format!("no task {id:?}"),
            )
        };
        match op {
            TaskOp::Create { task } => {
                check_task_id(&task.id)
                    .map_err(|r| (RejectKind::Invalid, "task.id".to_owned(), r))?;
                if self.tasks.contains_key(&task.id) {
                    return Err((
                        RejectKind::Conflict,
                        "task.id".to_owned(),
                        format!("task {:?} already exists", task.id),
                    ));
                }
                if !self.services.contains_key(&task.service) {
                    return Err((
                        RejectKind::NotFound,
                        "task.service".to_owned(),
                        format!("no service named {:?}", task.service),
                    ));
                }
                if let Some(node) = task.node {
                    if !self.nodes.contains_key(&node) {
                        return Err((
                            RejectKind::NotFound,
                            "task.node".to_owned(),
                            format!("no node with id {node}"),
                        ));
                    }
                }
                let record = TaskRecord {
                    id: task.id.clone(),
                    service: task.service.clone(),
                    slot: task.slot,
                    spec_version: task.spec_version,
                    node: task.node,
                    desired: DesiredState::Running,
                    state: if task.node.is_some() {
                        TaskState::Assigned
                    } else {
                        TaskState::Pending
                    },
                    health: TaskHealth::Starting,
                    endpoint: None,
                    runtime_id: None,
                    message: task.message.clone(),
                    attempt: task.attempt,
                    created_at: at,
                    updated_at: at,
                    started_at: None,
                };
                self.insert_task(record);
            }
            TaskOp::Assign { id, node } => {
                if !self.nodes.contains_key(node) {
                    return Err((
                        RejectKind::NotFound,
                        "node".to_owned(),
                        format!("no node with id {node}"),
                    ));
                }
                let state = self.tasks.get(id).ok_or_else(|| not_found(id))?.state;
                if state != TaskState::Pending {
                    return Err((
                        RejectKind::Conflict,
                        "id".to_owned(),
                        format!("task {id:?} is {state}, not pending"),
                    ));
                }
                self.change_task(id, |task| {
                    task.node = Some(*node);
                    task.state = TaskState::Assigned;
                    task.message.clear();
                    task.updated_at = at;
                });
            }
            TaskOp::Shutdown { id, reason } => {
                self.change_task(id, |task| {
                    task.desired = DesiredState::Shutdown;
                    if task.state == TaskState::Pending {
                        // Never placed: nothing to stop.
                        task.state = TaskState::Shutdown;
                    }
                    task.message = reason.clone();
                    task.updated_at = at;
                })
                .ok_or_else(|| not_found(id))?;
            }
            TaskOp::Orphan { id } => {
                self.change_task(id, |task| {
                    task.desired = DesiredState::Shutdown;
                    if !task.state.is_terminal() {
                        task.state = TaskState::Orphaned;
                        task.message = "its node is down".to_owned();
                    }
                    task.updated_at = at;
                })
                .ok_or_else(|| not_found(id))?;
            }
            TaskOp::Remove { id } => {
                self.remove_task(id).ok_or_else(|| not_found(id))?;
            }
            TaskOp::SetUpdate { service, status } => {
                let record = self.services.get_mut(service).ok_or_else(|| {
                    (
                        RejectKind::NotFound,
                        "service".to_owned(),
                        format!("no service named {service:?}"),
                    )
                })?;
                record.update = Some(status.clone());
            }
        }
        Ok(())
    }

    /// Applies an agent's report.
    pub(super) fn report(&mut self, report: &TaskReport) -> Outcome {
        let Some(task) = self.tasks.get(&report.id) else {
            return reject(
                RejectKind::NotFound,
                "id",
                format!("no task {:?}", report.id),
            );
        };
        if task.node != Some(report.node) {
            return reject(
                RejectKind::Conflict,
                "node",
                format!(
                    "task {:?} is not assigned to node {}",
                    report.id, report.node
                ),
            );
        }
        if task.state.is_terminal() && report.state != task.state {
            return reject(
                RejectKind::Conflict,
                "state",
                format!(
                    "task {:?} is already {}; a {} report is stale",
                    report.id, task.state, report.state
                ),
            );
        }
        if matches!(report.state, TaskState::Pending | TaskState::Orphaned) {
            return reject(
                RejectKind::Invalid,
                "state",
                format!("an agent does not report {}", report.state),
            );
        }
        let reported = self.change_task(&report.id, |task| {
            if report.state == TaskState::Running && task.started_at.is_none() {
                task.started_at = Some(report.at);
            }
            task.state = report.state;
            task.health = report.health;
            task.endpoint = report.endpoint.clone();
            task.runtime_id = report.runtime_id.clone();
            task.message = report.message.clone();
            task.updated_at = report.at;
            task.clone()
        });
        match reported {
            Some(task) => Outcome::Task {
                task: Box::new(task),
            },
            None => reject(
                RejectKind::NotFound,
                "id",
                format!("no task {:?}", report.id),
            ),
        }
    }
}
