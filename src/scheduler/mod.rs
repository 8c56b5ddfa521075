//! The scheduler: turns services into tasks on nodes. Runs on every node,
//! acts only while this node leads the registry.
//!
//! # Flow of one round (every [`ROUND_INTERVAL`] or registry change)
//!
//! ```text
//! not leader ──> nothing (a deposed leader's proposals fail: it never forwards)
//! leader:
//!   heartbeats (in memory) ─> nodes silent for `heartbeat_grace` marked down, back ones ready
//!   registry state ─> which services to plan (`dirty`):
//!     every one: the first round of a leadership, a node changed, or
//!                [`FULL_ROUND_INTERVAL`] since the last full round (the safety net)
//!     else: those whose record or tasks changed since the state last planned, and
//!           those the last round left unsettled (waiting on a delay); none: no plan
//!   ─> plan_scope():
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
//! - `dirty`: which services changed between two states;
//! - `plan`: one round's task operations per service;
//! - `placement`: which node a new task goes to, whether a task may stay;
//! - `update`: the rolling-update step of a service's plan;
//! - `clock`: registry time (milliseconds since the epoch).

mod clock;
mod dirty;
mod liveness;
mod placement;
mod plan;
#[cfg(test)]
mod tests;
mod update;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGaugeVec;
use raft_state::registry::RegistryNode;
use raft_state::state::{Command, NodeStatus, RegistryState};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use clock::now_millis;
pub use dirty::{changed, Changed};
use liveness::{judge, Hold, Observation};
pub use plan::{new_task_id, plan, plan_scope, Plan, Scope};
use raft_state::task::Millis;

/// How often the leader re-plans even without registry changes (restart
/// delays, update delays and node liveness are time based).
pub const ROUND_INTERVAL: Duration = Duration::from_millis(500);
/// How often a round plans every service even though only some changed:
/// the safety net under the change detection, rare enough that its cost
/// (a pass over every service) does not set the scheduler's.
pub const FULL_ROUND_INTERVAL: Duration = Duration::from_secs(10);
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
    /// The state the last applied round planned: the next plans what
    /// changed since.
    planned: Option<Arc<RegistryState>>,
    /// Services the last round left waiting on time.
    unsettled: BTreeSet<String>,
    /// When the last full round was planned.
    last_full: Option<Instant>,
}

impl Memory {
    /// The services the round planning `state` at `now` covers: `None` for
    /// every one (the first round, a node changed, or the safety net due).
    fn dirty(&self, state: &RegistryState, now: Instant) -> Option<BTreeSet<String>> {
        let due = self
            .last_full
            .is_none_or(|at| now.duration_since(at) >= FULL_ROUND_INTERVAL);
        let last = self.planned.as_ref().filter(|_| !due)?;
        match changed(last, state) {
            Changed::Everything => None,
            Changed::Services(mut names) => {
                names.extend(self.unsettled.iter().cloned());
                Some(names)
            }
        }
    }

    /// Plans the round over `state` at `at` (`now` in registry time): the
    /// services that changed, or all of them; `None` when none changed.
    /// [`Memory::applied`] takes the mark once the plan is committed.
    fn next_round(
        &mut self,
        state: &Arc<RegistryState>,
        now: Millis,
        at: Instant,
        new_id: &mut impl FnMut() -> String,
    ) -> Option<(Plan, RoundMark)> {
        let dirty = self.dirty(state, at);
        if dirty.as_ref().is_some_and(BTreeSet::is_empty) {
            return None;
        }
        let scope = dirty.as_ref().map_or(Scope::All, Scope::Only);
        let mut plan = plan_scope(state, now, scope, &mut self.last_batch, new_id);
        let mark = RoundMark {
            state: Arc::clone(state),
            unsettled: std::mem::take(&mut plan.unsettled),
            full_at: dirty.is_none().then_some(at),
        };
        Some((plan, mark))
    }

    /// The round of `mark` was committed: the next plans what changed
    /// since its state. (After a failed round the next compares against
    /// the older state, so it plans those services again.)
    fn applied(&mut self, mark: RoundMark) {
        self.planned = Some(mark.state);
        self.unsettled = mark.unsettled;
        if let Some(at) = mark.full_at {
            self.last_full = Some(at);
        }
    }
}

/// What a planned round leaves for the next, once it is committed.
struct RoundMark {
    state: Arc<RegistryState>,
    unsettled: BTreeSet<String>,
    /// Set when the round planned every service.
    full_at: Option<Instant>,
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
    let Some((plan, mark)) = memory.next_round(&state, now, Instant::now(), &mut new_task_id)
    else {
        return Ok(());
    };
    if !plan.ops.is_empty() {
        debug!(
            ops = plan.ops.len(),
            planned = plan.planned,
            "scheduling round"
        );
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
    memory.applied(mark);
    Ok(())
}
