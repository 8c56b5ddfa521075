//! The scheduler: turns services into tasks on nodes. Runs on every node,
//! acts only while this node leads the registry.
//!
//! # Flow of one round (every [`ROUND_INTERVAL`] or registry change)
//!
//! ```text
//! not leader ──> nothing (a deposed leader's proposals fail: it never forwards)
//! leader:
//!   heartbeats (in memory) ─> nodes silent for `heartbeat_grace` marked down, back ones ready
//!   registry state ─> plan():
//!     per service: tasks on down nodes orphaned, on drained/unsuitable nodes shut down
//!                  failed tasks retired; their slots refilled per restart policy (delay, attempts)
//!                  pending tasks placed when a node fits
//!                  replicated: missing slots created, surplus slots shut down
//!                              (most copies per node first, non-running first)
//!                  global:     one task per eligible node
//!                  rolling update: outdated slots replaced `parallelism` at a time,
//!                              `delay` apart, stop-first or start-first; a new task failing
//!                              within `monitor` triggers the failure action
//!     dead tasks beyond a short history removed
//!   ─> one Schedule entry (all or nothing); an automatic rollback is its own entry
//! ```
//!
//! Placement spreads: among ready, active nodes that meet the constraints
//! and the per-node maximum, the one with the fewest tasks of the service,
//! then the fewest tasks overall, then the lowest id. No fitting node: the
//! task is created pending with the reason, and placed in a later round.
//!
//! The plan is a pure function of the registry state and the time, so it is
//! tested without a cluster.
//!
//! # Layout
//!
//! - this file: the loop (`run`), one round, what a leader remembers;
//! - `liveness`: heartbeats → node status changes;
//! - `plan`: one round's task operations per service;
//! - `placement`: which node a new task goes to, whether a task may stay;
//! - `update`: the rolling-update step of a service's plan;
//! - `clock`: registry time (milliseconds since the epoch).

mod clock;
mod liveness;
mod placement;
mod plan;
#[cfg(test)]
mod tests;
mod update;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGaugeVec;
use raft_state::registry::RegistryNode;
use raft_state::state::{Command, NodeStatus};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use clock::now_millis;
use liveness::{judge, Hold, Observation};
pub use plan::{new_task_id, plan, Plan};
use raft_state::task::Millis;

/// How often the leader re-plans even without registry changes (restart
/// delays, update delays and node liveness are time based).
pub const ROUND_INTERVAL: Duration = Duration::from_millis(500);
/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// A node not heard from for this long is marked down.
    pub heartbeat_grace: Duration,
    /// Silent nodes left ready by a hold, by reason (`no_quorum`,
    /// `mass_silence`): `lbmesh_nodes_silent_held`.
    pub silent_held: IntGaugeVec,
}

/// Runs the scheduler until `stop` is cancelled.
pub async fn run(
    registry: Arc<RegistryNode>,
    settings: SchedulerSettings,
    stop: CancellationToken,
) {
    let mut changes = registry.watch();
    let mut leadership: Option<Leadership> = None;
    let mut memory = Memory::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = changes.changed() => {}
            () = tokio::time::sleep(ROUND_INTERVAL) => {}
        }
        if !registry.is_leader() {
            if leadership.take().is_some() {
                info!("no longer the leader: scheduler idle");
                // Only a leader holds nodes back; a follower reports none.
                report_hold(&settings, None, 0, &mut memory.held);
            }
            memory = Memory::default();
            continue;
        }
        let term = registry.metrics().current_term;
        let current = Leadership::observe(leadership, term, Instant::now());
        if leadership != Some(current) {
            info!(term, "leader: scheduler active");
            memory = Memory::default();
        }
        leadership = Some(current);
        let since = current.since;
        if let Err(error) = round(&registry, &settings, since, &mut memory).await {
            debug!(%error, "scheduling round not applied; retrying");
        }
    }
}

/// This node's current term as leader, and when the scheduler first saw
/// it lead in that term: every node's grace is counted from then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leadership {
    term: u64,
    since: Instant,
}

impl Leadership {
    /// The leadership seen now: the same one while the term holds, a new
    /// one when the term moved on, even if no round saw this node follow in
    /// between (it lost and regained the lead within one round).
    fn observe(previous: Option<Self>, term: u64, now: Instant) -> Self {
        match previous {
            Some(seen) if seen.term == term => seen,
            _ => Self { term, since: now },
        }
    }
}

/// What the scheduler remembers between rounds (lost on leader change, which
/// only restarts an update delay).
#[derive(Default)]
struct Memory {
    /// When each service's last update batch started.
    last_batch: HashMap<String, Millis>,
    /// The hold of the last round, so a hold is logged when it starts and
    /// when it ends, not every round.
    held: Option<Hold>,
}

/// Logs a hold when it begins or ends and sets its gauge.
fn report_hold(
    settings: &SchedulerSettings,
    held: Option<Hold>,
    silent: usize,
    last: &mut Option<Hold>,
) {
    let held_reason = match held {
        Some(Hold::NoQuorum) => Some("no_quorum"),
        Some(Hold::MassSilence { .. }) => Some("mass_silence"),
        None => None,
    };
    for reason in ["no_quorum", "mass_silence"] {
        let count = if held_reason == Some(reason) {
            silent
        } else {
            0
        };
        settings
            .silent_held
            .with_label_values(&[reason])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    if held.is_some() != last.is_some() {
        match held {
            Some(Hold::NoQuorum) => warn!(
                silent,
                "no quorum heard within the election timeout: no node is marked down"
            ),
            Some(Hold::MassSilence { silent, ready }) => warn!(
                silent,
                ready, "more than half of the ready nodes are silent at once: none is marked down"
            ),
            None => info!("hold on marking nodes down lifted"),
        }
    }
    *last = held;
}

async fn round(
    registry: &RegistryNode,
    settings: &SchedulerSettings,
    leader_since: Instant,
    memory: &mut Memory,
) -> Result<(), String> {
    let state = registry.local().state;
    let last_heard = registry.last_heard();
    let judgement = judge(
        &state,
        &Observation {
            leader: registry.id,
            last_heard: &last_heard,
            leader_since,
            now: Instant::now(),
            grace: settings.heartbeat_grace,
            quorum_heard: registry.leads_with_quorum(),
        },
    );
    report_hold(settings, judgement.held, judgement.silent, &mut memory.held);
    for (id, status) in judgement.changes {
        let name = state
            .nodes
            .get(&id)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        match status {
            NodeStatus::Down => {
                warn!(node = %name, "no heartbeat within the grace period: node down")
            }
            NodeStatus::Ready => info!(node = %name, "heartbeats again: node ready"),
        }
        registry
            .propose_as_leader(Command::SetNodeStatus { id, status })
            .await
            .map_err(|e| e.to_string())?;
    }
    let state = registry.local().state;
    let now = now_millis();
    let plan = plan(&state, now, &mut memory.last_batch, &mut new_task_id);
    if !plan.ops.is_empty() {
        debug!(ops = plan.ops.len(), "scheduling round");
        let outcome = registry
            .propose_as_leader(Command::Schedule {
                ops: plan.ops,
                at: now,
            })
            .await
            .map_err(|e| e.to_string())?;
        if let raft_state::state::Outcome::Rejected { rejection } = outcome {
            return Err(format!("round rejected: {rejection}"));
        }
    }
    for name in plan.rollbacks {
        warn!(service = %name, "update failed: rolling back");
        registry
            .propose_as_leader(Command::RollbackService { name })
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
