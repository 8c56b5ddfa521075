//! The registry's records as lbmesh-api's types, and back where a request
//! carries one (a joining node, an availability).
//!
//! Every `match` names each variant, so a new registry state fails to build
//! here until the API decides how to show it.

use lbmesh_api as api;
use raft_state::state::{self as registry, NodeRecord, ServiceRecord};
use raft_state::task::{self, TaskRecord};

pub fn member(record: &NodeRecord) -> api::Member {
    api::Member {
        id: record.id.into(),
        name: record.name.clone(),
        raft_addr: record.raft_addr,
        api_addr: record.api_addr,
        ingress_addr: record.ingress_addr,
        role: role(record.role),
        availability: availability(record.availability),
        status: node_status(record.status),
        labels: record.labels.clone(),
    }
}

/// A joining node's record, as it presented itself.
pub fn member_record(member: api::Member) -> NodeRecord {
    NodeRecord {
        id: member.id.0,
        name: member.name,
        raft_addr: member.raft_addr,
        api_addr: member.api_addr,
        ingress_addr: member.ingress_addr,
        role: match member.role {
            api::Role::Manager => registry::Role::Manager,
            api::Role::Worker => registry::Role::Worker,
        },
        availability: registry_availability(member.availability),
        status: match member.status {
            api::NodeStatus::Ready => registry::NodeStatus::Ready,
            api::NodeStatus::Down => registry::NodeStatus::Down,
        },
        labels: member.labels,
    }
}

pub fn node(record: &NodeRecord, raft: api::RaftRole) -> api::Node {
    api::Node {
        member: member(record),
        raft,
    }
}

fn role(role: registry::Role) -> api::Role {
    match role {
        registry::Role::Manager => api::Role::Manager,
        registry::Role::Worker => api::Role::Worker,
    }
}

fn availability(availability: registry::Availability) -> api::Availability {
    match availability {
        registry::Availability::Active => api::Availability::Active,
        registry::Availability::Pause => api::Availability::Pause,
        registry::Availability::Drain => api::Availability::Drain,
    }
}

pub fn registry_role(role: api::Role) -> registry::Role {
    match role {
        api::Role::Manager => registry::Role::Manager,
        api::Role::Worker => registry::Role::Worker,
    }
}

pub fn registry_availability(availability: api::Availability) -> registry::Availability {
    match availability {
        api::Availability::Active => registry::Availability::Active,
        api::Availability::Pause => registry::Availability::Pause,
        api::Availability::Drain => registry::Availability::Drain,
    }
}

fn node_status(status: registry::NodeStatus) -> api::NodeStatus {
    match status {
        registry::NodeStatus::Ready => api::NodeStatus::Ready,
        registry::NodeStatus::Down => api::NodeStatus::Down,
    }
}

pub fn service(record: &ServiceRecord) -> api::Service {
    api::Service {
        id: record.id.clone(),
        spec: record.spec.clone(),
        version: record.version,
        vip: record.vip,
        vip_v6: record.vip_v6,
        previous: record.previous.as_deref().cloned(),
        task_version: record.task_version,
        previous_task_version: record.previous_task_version,
        update: record.update.as_ref().map(update_status),
    }
}

fn update_status(status: &task::UpdateStatus) -> api::UpdateStatus {
    api::UpdateStatus {
        state: match status.state {
            task::UpdateState::Updating => api::UpdateState::Updating,
            task::UpdateState::Paused => api::UpdateState::Paused,
            task::UpdateState::Completed => api::UpdateState::Completed,
            task::UpdateState::RollbackStarted => api::UpdateState::RollbackStarted,
            task::UpdateState::RollbackPaused => api::UpdateState::RollbackPaused,
            task::UpdateState::RollbackCompleted => api::UpdateState::RollbackCompleted,
        },
        task_version: status.task_version,
        started_at: status.started_at.map(api::Timestamp),
        completed_at: status.completed_at.map(api::Timestamp),
        message: status.message.clone(),
    }
}

pub fn task(record: &TaskRecord, node_name: Option<String>) -> api::Task {
    api::Task {
        id: record.id.clone(),
        service: record.service.clone(),
        slot: record.slot,
        spec_version: record.spec_version,
        node: record.node.map(api::NodeId::from),
        desired: match record.desired {
            task::DesiredState::Running => api::DesiredState::Running,
            task::DesiredState::Shutdown => api::DesiredState::Shutdown,
        },
        state: match record.state {
            task::TaskState::Pending => api::TaskState::Pending,
            task::TaskState::Assigned => api::TaskState::Assigned,
            task::TaskState::Starting => api::TaskState::Starting,
            task::TaskState::Running => api::TaskState::Running,
            task::TaskState::Failed => api::TaskState::Failed,
            task::TaskState::Shutdown => api::TaskState::Shutdown,
            task::TaskState::Orphaned => api::TaskState::Orphaned,
        },
        health: match record.health {
            task::TaskHealth::Starting => api::TaskHealth::Starting,
            task::TaskHealth::Healthy => api::TaskHealth::Healthy,
            task::TaskHealth::Unhealthy => api::TaskHealth::Unhealthy,
            task::TaskHealth::None => api::TaskHealth::None,
        },
        endpoint: record.endpoint.as_ref().map(|endpoint| api::TaskEndpoint {
            ip: endpoint.ip,
            ports: endpoint.ports.clone(),
        }),
        runtime_id: record.runtime_id.clone(),
        message: record.message.clone(),
        attempt: record.attempt,
        created_at: api::Timestamp(record.created_at),
        updated_at: api::Timestamp(record.updated_at),
        started_at: record.started_at.map(api::Timestamp),
        node_name,
    }
}

#[cfg(test)]
mod tests {
    //! The answers were the registry's records flattened, with a field or
    //! two added; the JSON must stay that, field for field, but for times,
    //! which are RFC 3339 strings where the records hold milliseconds.
    use std::collections::BTreeMap;

    use lb_config::ServiceSpec;
    use raft_state::task::{TaskEndpoint, UpdateStatus};
    use serde_json::{json, Value};

    use super::*;

    fn with(record: &impl serde::Serialize, extra: Value) -> Value {
        let mut value = serde_json::to_value(record).expect("record json");
        for (key, field) in extra.as_object().expect("extra fields") {
            value[key] = field.clone();
        }
        value
    }

    /// Above 2^53 and odd: a float64 JSON reader would round it.
    const BIG_ID: u64 = (1 << 62) + 1;

    fn node_record() -> NodeRecord {
        NodeRecord {
            id: BIG_ID,
            name: "node-a".to_owned(),
            raft_addr: "127.0.0.1:9901".parse().expect("addr"),
            api_addr: "127.0.0.1:9900".parse().expect("addr"),
            ingress_addr: "127.0.0.1".parse().expect("ip"),
            role: registry::Role::Worker,
            availability: registry::Availability::Drain,
            status: registry::NodeStatus::Down,
            labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
        }
    }

    #[test]
    fn nodes_keep_their_json() {
        let record = node_record();
        let node = serde_json::to_value(node(&record, api::RaftRole::Voter)).expect("json");
        // The registry's JSON, with the id as a decimal string.
        let id = BIG_ID.to_string();
        assert_eq!(node, with(&record, json!({"raft": "voter", "id": id})));
        let member = serde_json::to_value(member(&record)).expect("json");
        assert_eq!(member, with(&record, json!({"id": id})));
        let parsed: api::Member = serde_json::from_value(member).expect("member");
        assert_eq!(member_record(parsed), record);
    }

    #[test]
    fn services_keep_their_json() {
        let spec = ServiceSpec {
            name: "web".to_owned(),
            replicas: Some(3),
            image: Some("nginx".to_owned()),
            ..ServiceSpec::default()
        };
        let record = ServiceRecord {
            id: "5e1f0c2a9b3d".to_owned(),
            spec: spec.clone(),
            version: 4,
            vip: "127.77.0.9".parse().expect("ip"),
            vip_v6: None,
            previous: Some(Box::new(spec)),
            task_version: 3,
            previous_task_version: 2,
            update: Some(UpdateStatus {
                state: task::UpdateState::RollbackPaused,
                task_version: 3,
                started_at: Some(1_700_000_000_000),
                completed_at: None,
                message: "task failed".to_owned(),
            }),
            validated: Default::default(),
        };
        let stored = serde_json::to_value(service(&record)).expect("json");
        // The registry's JSON, with times in RFC 3339.
        let update = json!({"state": "rollback_paused", "task_version": 3,
            "started_at": "2023-11-14T22:13:20.000Z", "completed_at": null,
            "message": "task failed"});
        assert_eq!(stored, with(&record, json!({"update": update})));
        let status = api::ServiceStatus {
            service: service(&record),
            running: 2,
            desired: 3,
            listener_errors: vec![api::ListenerError {
                node: "node-2".to_owned(),
                address: "127.0.0.2:8080".parse().expect("addr"), // fixed-port-ok: text only
                protocol: lb_config::Protocol::Tcp,
                error: "address in use".to_owned(),
            }],
        };
        assert_eq!(
            serde_json::to_value(status).expect("json"),
            with(
                &record,
                // fixed-port-ok: a reported address, nothing bound
                json!({"running": 2, "desired": 3, "update": update, "listener_errors": [
                    {"node": "node-2", "address": "127.0.0.2:8080", "error": "address in use"}
                ]})
            )
        );
    }

    #[test]
    fn tasks_keep_their_json() {
        let mut record = TaskRecord {
            id: "abc123".to_owned(),
            service: "web".to_owned(),
            slot: 2,
            spec_version: 3,
            node: Some(BIG_ID),
            desired: task::DesiredState::Shutdown,
            state: task::TaskState::Orphaned,
            health: task::TaskHealth::Unhealthy,
            endpoint: Some(TaskEndpoint {
                ip: "127.0.0.1".parse().expect("ip"),
                ports: vec![(80, 31000)],
            }),
            runtime_id: Some("pid:42".to_owned()),
            message: "its node went down".to_owned(),
            attempt: 1,
            created_at: 1_700_000_000_000,
            updated_at: 1_700_000_001_000,
            started_at: Some(1_700_000_000_500),
        };
        let answer = task(&record, Some("node-a".to_owned()));
        assert_eq!(
            serde_json::to_value(answer).expect("json"),
            with(
                &record,
                json!({"node_name": "node-a", "node": BIG_ID.to_string(),
                    "created_at": "2023-11-14T22:13:20.000Z",
                    "updated_at": "2023-11-14T22:13:21.000Z",
                    "started_at": "2023-11-14T22:13:20.500Z"})
            )
        );
        use task::{TaskHealth as H, TaskState as S};
        let states = [
            S::Pending,
            S::Assigned,
            S::Starting,
            S::Running,
            S::Failed,
            S::Shutdown,
        ];
        let healths = [
            H::Starting,
            H::Healthy,
            H::None,
            H::Unhealthy,
            H::None,
            H::Healthy,
        ];
        for (state, health) in states.into_iter().zip(healths) {
            (record.state, record.health) = (state, health);
            record.desired = task::DesiredState::Running;
            record.node = None;
            assert_eq!(
                serde_json::to_value(task(&record, None)).expect("json"),
                with(
                    &record,
                    json!({"node_name": null,
                    "created_at": "2023-11-14T22:13:20.000Z",
                    "updated_at": "2023-11-14T22:13:21.000Z",
                    "started_at": "2023-11-14T22:13:20.500Z"})
                ),
                "{state:?} {health:?}"
            );
        }
    }
}
