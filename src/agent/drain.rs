//! This node's part in ending drains when the last connection does (the
//! protocol is in `raft_state::drains`): what its heartbeats say about the
//! departing tasks, read off the proxy's routing table.
//!
//! # Flow, each heartbeat
//!
//! ```text
//! registry copy changed? ─> the departing tasks again (id, service, endpoint addresses)
//! routing table (one load) ─> per departing task: RoutingTable::connections_left of each
//!   address; listed only when no address is routed any more
//! ─> DrainReport { task id ─> open connections }
//! ```
//!
//! Nothing here touches a connection: the counts are the ones every
//! connection keeps on its backend anyway (least-connections reads them),
//! and the table keeps the backends that left with connections open.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use lbmesh_proxy::routing::RoutingTable;
use raft_state::drains::{departing, DrainReport};
use raft_state::store::Applied;

/// A departing task as a drain report needs it.
struct Departing {
    id: String,
    service: String,
    addrs: Vec<SocketAddr>,
}

/// Makes this node's drain reports.
pub struct DrainCounts {
    table: Arc<ArcSwap<RoutingTable>>,
    /// The registry index `departing` was read at.
    index: Option<u64>,
    /// The departing tasks of that copy, found once per registry change
    /// rather than on every heartbeat.
    departing: Vec<Departing>,
}

impl DrainCounts {
    /// Reads the connections of the proxy serving `table`.
    pub fn new(table: Arc<ArcSwap<RoutingTable>>) -> Self {
        Self {
            table,
            index: None,
            departing: Vec::new(),
        }
    }

    /// What this node holds open to each departing task of `applied` that
    /// its table no longer routes to.
    pub fn report(&mut self, applied: &Applied) -> DrainReport {
        if self.index != Some(applied.index) {
            self.index = Some(applied.index);
            self.departing = applied
                .state
                .tasks()
                .values()
                .filter(|task| departing(task))
                .map(|task| Departing {
                    id: task.id.clone(),
                    service: task.service.clone(),
                    addrs: task.endpoint.as_ref().map_or_else(Vec::new, |endpoint| {
                        endpoint
                            .ports
                            .iter()
                            .map(|(_, host)| SocketAddr::new(endpoint.ip, *host))
                            .collect()
                    }),
                })
                .collect();
        }
        let table = self.table.load();
        let open = self
            .departing
            .iter()
            .filter_map(|task| {
                let open: Option<u32> = task
                    .addrs
                    .iter()
                    .map(|addr| table.connections_left(&task.service, *addr))
                    .sum();
                Some((task.id.clone(), open?))
            })
            .collect();
        DrainReport { open }
    }
}
