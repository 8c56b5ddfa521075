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
//!                     added, removed or changed (one merge of the two sorted task maps)
//! ```
//!
//! The comparison costs one pass over the services and tasks, each a
//! pointer or field compare; the plan then costs only what changed. The
//! periodic full round (`FULL_ROUND_INTERVAL` in the scheduler) stays as
//! a safety net should a change slip past this comparison.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;

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
    for (name, record) in &now.services {
        if !last
            .services
            .get(name)
            .is_some_and(|was| plans_alike(was, record))
        {
            names.insert(name.clone());
        }
    }
    for name in last.services.keys() {
        if !now.services.contains_key(name) {
            names.insert(name.clone());
        }
    }
    // Both maps are sorted by id: one merge finds every difference.
    let mut old = last.tasks.iter().peekable();
    let mut new = now.tasks.iter().peekable();
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some((_, was)), None) => {
                names.insert(was.service.clone());
                old.next();
            }
            (None, Some((_, is))) => {
                names.insert(is.service.clone());
                new.next();
            }
            (Some((old_id, was)), Some((new_id, is))) => match old_id.cmp(new_id) {
                Ordering::Less => {
                    names.insert(was.service.clone());
                    old.next();
                }
                Ordering::Greater => {
                    names.insert(is.service.clone());
                    new.next();
                }
                Ordering::Equal => {
                    if was != is {
                        names.insert(is.service.clone());
                        names.insert(was.service.clone());
                    }
                    old.next();
                    new.next();
                }
            },
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
