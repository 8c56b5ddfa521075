//! This node's listen addresses that cannot be bound, written to the
//! registry so that every node's API shows them (`service inspect`, `ps`).
//!
//! # Flow
//!
//! ```text
//! Proxy::apply | Proxy::retry_failed (daemon) ─> watch: this node's failures
//!   ─> run: when they differ from what the registry holds for this node
//!      ─> propose ReportListeners { node, failures } (the whole list; empty once all bind)
//!      ─> only while this node has a record (a refusal is a log entry too)
//!      ─> on an error or a refusal (no leader): again after REPORT_RETRY
//! ```
//!
//! Comparing with the registry rather than with the last write makes it
//! converge: a restarted node replaces what its previous run reported, and
//! a write lost in a leader change is written again. Only changes are
//! written (a failing address retried with the same error writes nothing),
//! so a port that stays taken costs one entry, not one per retry.

use std::sync::Arc;
use std::time::Duration;

use lbmesh_proxy::ListenerFailure as ProxyFailure;
use raft_state::registry::RegistryNode;
use raft_state::state::{Command, ListenerFailure, Outcome};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Pause after a write that failed (no leader yet, this node's record not
/// written yet) before the next.
const REPORT_RETRY: Duration = Duration::from_secs(2);

/// The proxy's failures as registry records.
pub fn records(failures: &[ProxyFailure]) -> Vec<ListenerFailure> {
    failures
        .iter()
        .map(|failure| ListenerFailure {
            service: failure.service.clone(),
            address: failure.addr,
            protocol: failure.protocol,
            error: failure.error.clone(),
        })
        .collect()
}

/// Keeps the registry's record of this node's listener failures equal to
/// `failures` until `stop` fires.
pub async fn run(
    registry: Arc<RegistryNode>,
    mut failures: watch::Receiver<Vec<ProxyFailure>>,
    stop: CancellationToken,
) {
    let mut changes = registry.watch();
    loop {
        let wanted = records(&failures.borrow_and_update());
        let state = registry.local().state;
        let held = state
            .listener_failures
            .get(&registry.id)
            .cloned()
            .unwrap_or_default();
        // A node without a record (not registered yet, or removed) would be
        // refused, and every refusal is still a log entry: wait for the
        // registry to change instead.
        let registered = state.nodes.contains_key(&registry.id);
        let mut failed = false;
        if wanted != held && registered {
            let command = Command::ReportListeners {
                node: registry.id,
                failures: wanted,
            };
            match registry.propose(command).await {
                Ok(Outcome::Rejected { rejection }) => {
                    debug!(%rejection, "listener failures not recorded yet");
                    failed = true;
                }
                Ok(_) => {}
                Err(error) => {
                    debug!(%error, "listener failures not recorded yet");
                    failed = true;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = failures.changed() => if changed.is_err() { return },
            changed = changes.changed(), if !failed => if changed.is_err() { return },
            () = tokio::time::sleep(REPORT_RETRY), if failed => {}
        }
    }
}
