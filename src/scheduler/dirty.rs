//! Which services a round must plan: the ones whose record or tasks
//! changed since the state the last round planned, or every one when a
//! node changed (any node may change where any service's tasks may run).
//!
//! # Flow
//!
//! ```text
//! round: state now, state last planned ─> changed(last, now)
//!          ├─ a node record differs (status, availability, labels, added, removed)
//!          │      ─> Changed::Everything (a full round)
//!          └─ else ─> Changed::Services(names): records that differ (checked spec by
//!                     pointer, versions, update status), and the service of every task
//!                     added, removed or changed (diffs of the persistent maps)
//! ```
//!
//! The registry's service and task maps are persistent: an applied state
//! shares all but its changed entries' paths with the one before, and the
//! diffs skip what the two share, so the comparison costs what changed
//! (a round after many changes compares more); the plan then costs only
//! what changed too. The
//! periodic full round (`FULL_ROUND_INTERVAL` in the scheduler) stays as
//! a safety net should a change slip past this comparison.

use std::collections::BTreeSet;
use std::sync::Arc;

use imbl::ordmap::DiffItem;
use raft_state::state::{RegistryState, ServiceRecord};

/// What changed between two states, for the scheduler.
#[derive(Debug, PartialEq, Eq)]
pub enum Changed {
    /// A node changed: every service is planned.
    Everything,
    /// Only these services (or removed services' names) need planning.
    Services(BTreeSet<String>),
}

/// What changed from `last` (the state last planned) to `now`.
pub fn changed(last: &RegistryState, now: &RegistryState) -> Changed {
    if last.nodes != now.nodes {
        return Changed::Everything;
    }
    let mut names = BTreeSet::new();
    for item in last.services.diff(&now.services) {
        match item {
            DiffItem::Add(name, _) | DiffItem::Remove(name, _) => {
                names.insert(name.clone());
            }
            DiffItem::Update {
                old: (_, was),
                new: (name, is),
            } => {
                if !plans_alike(was, is) {
                    names.insert(name.clone());
                }
            }
        }
    }
    for item in last.tasks().diff(now.tasks()) {
        match item {
            DiffItem::Add(_, task) | DiffItem::Remove(_, task) => {
                names.insert(task.service.clone());
            }
            DiffItem::Update {
                old: (_, was),
                new: (_, is),
            } => {
                names.insert(was.service.clone());
                names.insert(is.service.clone());
            }
        }
    }
    Changed::Services(names)
}

/// Whether the scheduler plans a service alike under both records: the
/// same checked spec (by pointer, else by value), task version and update.
fn plans_alike(old: &ServiceRecord, new: &ServiceRecord) -> bool {
    let same_spec = match (old.checked(), new.checked()) {
        (Ok(a), Ok(b)) => Arc::ptr_eq(a, b) || old.spec == new.spec,
        _ => old.spec == new.spec,
    };
    same_spec && old.task_version == new.task_version && old.update == new.update
}
