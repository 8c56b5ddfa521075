//! What a node may ask of the registry, from the role its certificate and
//! its record give it.
//!
//! A worker's certificate lets it state facts about itself: its tasks'
//! states, its unbindable listeners, its own record's addresses (as a
//! worker). Every other write (services, nodes, tokens, the scheduler's
//! rounds) is a manager's. A removed node may do nothing: its certificate
//! is on the deny list until it expires, and after.

use lbmesh_tls::{CertRole, NodeIdentity};

use crate::command::Command;
use crate::node::{NodeId, Role};
use crate::state::RegistryState;

/// The role node `identity` acts in now: the lesser of its certificate's
/// and its record's (a demoted manager is a worker at once; a promoted
/// worker is a manager once its new certificate says so). A node with no
/// record yet (a joiner) acts in its certificate's role. `Err` names why a
/// removed node is refused.
pub fn effective_role(state: &RegistryState, identity: &NodeIdentity) -> Result<CertRole, String> {
    if state.removed_nodes.contains(&identity.node_id) {
        return Err(format!(
            "node {} was removed from the cluster; its certificate is revoked",
            identity.node_id
        ));
    }
    let recorded = state.nodes.get(&identity.node_id).map(|n| n.role);
    Ok(match (identity.role, recorded) {
        (CertRole::Manager, Some(Role::Worker)) | (CertRole::Worker, _) => CertRole::Worker,
        (CertRole::Manager, _) => CertRole::Manager,
    })
}

/// Whether worker `worker` may propose `command`: only facts about itself.
pub fn worker_may_propose(
    state: &RegistryState,
    worker: NodeId,
    command: &Command,
) -> Result<(), String> {
    let own = |what: &str, node: NodeId| {
        if node == worker {
            Ok(())
        } else {
            Err(format!(
                "node {worker} is a worker and may not write {what} of node {node}"
            ))
        }
    };
    match command {
        Command::ReportTask { report } => {
            own("a task report", report.node)?;
            match state.tasks().get(&report.id).and_then(|t| t.node) {
                Some(node) if node != worker => own("a report of the task", node),
                _ => Ok(()),
            }
        }
        Command::ReportListeners { node, .. } => own("the listener report", *node),
        Command::RegisterNode { node } => {
            own("the record", node.id)?;
            let stored = state.nodes.get(&node.id);
            if node.role != Role::Worker || stored.is_some_and(|s| s.role != Role::Worker) {
                return Err(format!(
                    "node {worker} is a worker and may not change its role"
                ));
            }
            if stored.is_none() {
                return Err(format!(
                    "node {worker} is not registered; a manager admits it (join)"
                ));
            }
            Ok(())
        }
        other => Err(format!(
            "node {worker} is a worker; only managers may {}",
            describe(other)
        )),
    }
}

fn describe(command: &Command) -> &'static str {
    match command {
        Command::InitCluster { .. } => "initialise the cluster",
        Command::UpdateNode { .. } | Command::SetNodeStatus { .. } => "change a node",
        Command::RemoveNode { .. } => "remove a node",
        Command::CreateService { .. }
        | Command::UpdateService { .. }
        | Command::RollbackService { .. }
        | Command::RemoveService { .. } => "change a service",
        Command::Schedule { .. } => "schedule tasks",
        Command::RotateToken { .. } => "rotate a token",
        Command::ReportTask { .. }
        | Command::ReportListeners { .. }
        | Command::RegisterNode { .. } => "write this",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Availability, NodeRecord, NodeStatus};
    use std::time::SystemTime;

    fn identity(id: NodeId, role: CertRole) -> NodeIdentity {
        NodeIdentity {
            node_id: id,
            role,
            cluster_id: "c".to_owned(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH,
        }
    }

    fn node(id: NodeId, role: Role) -> NodeRecord {
        NodeRecord {
            id,
            name: format!("n{id}"),
            raft_addr: format!("127.0.0.{id}:2").parse().unwrap(),
            api_addr: format!("127.0.0.{id}:1").parse().unwrap(),
            ingress_addr: format!("127.0.0.{id}").parse().unwrap(),
            role,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            labels: Default::default(),
        }
    }

    #[test]
    fn the_role_is_the_lesser_of_certificate_and_record_and_removed_is_refused() {
        let mut state = RegistryState::default();
        state.nodes.insert(1, node(1, Role::Worker));
        state.nodes.insert(2, node(2, Role::Manager));
        let role = |id, cert| effective_role(&state, &identity(id, cert));
        assert_eq!(role(1, CertRole::Manager), Ok(CertRole::Worker), "demoted");
        assert_eq!(
            role(2, CertRole::Worker),
            Ok(CertRole::Worker),
            "not re-issued yet"
        );
        assert_eq!(role(2, CertRole::Manager), Ok(CertRole::Manager));
        assert_eq!(
            role(3, CertRole::Manager),
            Ok(CertRole::Manager),
            "a joiner"
        );
        state.removed_nodes.insert(2);
        let refused = effective_role(&state, &identity(2, CertRole::Manager)).unwrap_err();
        assert!(refused.contains("removed"), "{refused}");
    }

    #[test]
    fn a_worker_writes_facts_about_itself_only() {
        let mut state = RegistryState::default();
        state.nodes.insert(1, node(1, Role::Worker));
        let spec = lb_config::ServiceSpec {
            name: "evil".to_owned(),
            ..lb_config::ServiceSpec::default()
        };
        let create = Command::CreateService {
            spec,
            id: String::new(),
        };
        let error = worker_may_propose(&state, 1, &create).unwrap_err();
        assert!(
            error.contains("only managers may change a service"),
            "{error}"
        );
        let listeners = |node| Command::ReportListeners {
            node,
            failures: Vec::new(),
        };
        assert!(worker_may_propose(&state, 1, &listeners(1)).is_ok());
        assert!(worker_may_propose(&state, 1, &listeners(2)).is_err());
        let register = |record| Command::RegisterNode { node: record };
        assert!(worker_may_propose(&state, 1, &register(node(1, Role::Worker))).is_ok());
        let error = worker_may_propose(&state, 1, &register(node(1, Role::Manager))).unwrap_err();
        assert!(error.contains("role"), "{error}");
        assert!(worker_may_propose(&state, 1, &register(node(2, Role::Worker))).is_err());
        assert!(worker_may_propose(&state, 3, &register(node(3, Role::Worker))).is_err());
        let remove = Command::RemoveNode { id: 2 };
        assert!(worker_may_propose(&state, 1, &remove).is_err());
    }
}
