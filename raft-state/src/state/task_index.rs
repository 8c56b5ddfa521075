//! Which tasks belong to each service and each node, and how many live
//! tasks each node runs, kept as the tasks change instead of gathered
//! from all of them by every reader.
//!
//! The routes of a changed service, a scheduler round over the services
//! that changed (it weighs every node's load) and an agent's own tasks
//! each read a few tasks of a map that holds all of them: walking the map
//! made each of those cost O(tasks) per change. The index answers them in
//! O(log tasks + what they read).
//!
//! It is derived from [`RegistryState::tasks`] alone, so it is neither
//! stored nor replicated. A state read from disk or installed from a
//! snapshot has none: the first reader builds it (once, O(tasks)), and
//! [`RegistryState::apply`] builds it before its first task change, so
//! every state the registry publishes carries one. From then on the task
//! changes keep it (`insert_task`, `remove_task`, `change_task`: the only
//! ways the task map changes). Its answers are the ones a scan gives, in
//! the same (id) order.
//!
//! [`RegistryState::tasks`]: super::RegistryState::tasks
//! [`RegistryState::apply`]: super::RegistryState::apply

use std::sync::OnceLock;

use imbl::{OrdMap, OrdSet};

use crate::node::NodeId;
use crate::task::TaskRecord;

/// The index; see the module doc.
#[derive(Debug, Clone, Default)]
pub(super) struct TaskIndex {
    by_service: OrdMap<String, OrdSet<String>>,
    by_node: OrdMap<NodeId, OrdSet<String>>,
    /// Live tasks (desired running, not terminal) per node; a node with
    /// none has no entry.
    live_on: OrdMap<NodeId, usize>,
}

/// What of a task the index holds besides its id and service (which never
/// change): where it runs and whether it is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Placement {
    node: Option<NodeId>,
    live: bool,
}

impl Placement {
    pub(super) fn of(task: &TaskRecord) -> Self {
        Self {
            node: task.node,
            live: task.is_live(),
        }
    }
}

impl TaskIndex {
    fn of(tasks: &OrdMap<String, TaskRecord>) -> Self {
        let mut index = Self::default();
        for task in tasks.values() {
            index.add(task);
        }
        index
    }

    pub(super) fn add(&mut self, task: &TaskRecord) {
        self.by_service
            .entry(task.service.clone())
            .or_default()
            .insert(task.id.clone());
        self.place(&task.id, Placement::of(task));
    }

    pub(super) fn remove(&mut self, task: &TaskRecord) {
        remove_member(&mut self.by_service, &task.service, &task.id);
        self.unplace(&task.id, Placement::of(task));
    }

    /// Task `id` moved from `before` to `after` (assigned, stopped, ...).
    pub(super) fn moved(&mut self, id: &str, before: Placement, after: Placement) {
        if before != after {
            self.unplace(id, before);
            self.place(id, after);
        }
    }

    fn place(&mut self, id: &str, placement: Placement) {
        let Some(node) = placement.node else { return };
        self.by_node.entry(node).or_default().insert(id.to_owned());
        if placement.live {
            *self.live_on.entry(node).or_default() += 1;
        }
    }

    fn unplace(&mut self, id: &str, placement: Placement) {
        let Some(node) = placement.node else { return };
        remove_member(&mut self.by_node, &node, id);
        if placement.live {
            if let Some(count) = self.live_on.get_mut(&node) {
                *count -= 1;
                if *count == 0 {
                    self.live_on.remove(&node);
                }
            }
        }
    }

    pub(super) fn of_service(&self, service: &str) -> Option<&OrdSet<String>> {
        self.by_service.get(service)
    }

    pub(super) fn on_node(&self, node: NodeId) -> Option<&OrdSet<String>> {
        self.by_node.get(&node)
    }

    pub(super) fn live_on(&self) -> &OrdMap<NodeId, usize> {
        &self.live_on
    }
}

/// Removes `id` from `key`'s set, and the set once it is empty.
fn remove_member<K: Ord + Clone>(sets: &mut OrdMap<K, OrdSet<String>>, key: &K, id: &str) {
    if let Some(set) = sets.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            sets.remove(key);
        }
    }
}

/// The index of a state, built at first use (see the module doc).
#[derive(Debug, Clone, Default)]
pub(super) struct TaskIndexCell(OnceLock<TaskIndex>);

impl TaskIndexCell {
    /// The index, built from `tasks` if this state has none yet.
    pub(super) fn get(&self, tasks: &OrdMap<String, TaskRecord>) -> &TaskIndex {
        self.0.get_or_init(|| TaskIndex::of(tasks))
    }

    /// The index if built: a task change with none to keep up needs no
    /// work (the first reader builds it from the changed tasks).
    pub(super) fn built(&mut self) -> Option<&mut TaskIndex> {
        self.0.get_mut()
    }
}

impl PartialEq for TaskIndexCell {
    /// Derived data: two states are equal by their tasks alone.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
