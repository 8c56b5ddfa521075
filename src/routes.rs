//! Where the data plane's routes come from: a config file's services, or
//! the registry's services with the endpoints of their serving tasks, both
//! turned into [`ServiceRoutes`], the one type the proxy takes.
//!
//! ```text
//! lb_config::Service ─┐
//!   + VIP, tasks      ├─> service_routes ─> ServiceRoutes { ports: [listen, vip, endpoints] }
//!   + ingress address ┘
//! ```
//!
//! A published port binds on the service's `listen` addresses, or on the
//! node's ingress address when it names none (always, in cluster mode: each
//! node binds its own). The VIP answers on each port's target port. A port's
//! endpoints are the service's static endpoints followed by its serving
//! tasks, each of which serves every target port on its own host port.
//! While a service has fewer serving tasks than it wants, the tasks stranded
//! on down nodes that were serving stay in its table (make before break; see
//! `routed_tasks`).
//!
//! A registry service's checked form is the one the state machine made when
//! it stored the spec ([`ServiceRecord::checked`]): a change re-routes
//! without validating any spec again.
//!
//! [`ServiceRecord::checked`]: raft_state::state::ServiceRecord::checked

use std::net::{IpAddr, SocketAddr};

use lb_config::{Service, ServiceMode};
use lbmesh_proxy::discovery::{Endpoint, PortRoutes, RouteSettings, ServiceRoutes};
use raft_state::state::{NodeStatus, RegistryState};
use raft_state::store::Applied;
use raft_state::task::{TaskEndpoint, TaskRecord, TaskState};
use tracing::warn;

/// The routes of one service, its published ports bound on `ips`.
pub fn service_routes(
    service: &Service,
    ips: &[IpAddr],
    vip: Option<IpAddr>,
    tasks: &[TaskEndpoint],
) -> ServiceRoutes {
    let ports = service
        .ports
        .iter()
        .map(|port| {
            let task_backends = tasks
                .iter()
                .filter_map(|task| task.addr_for(port.target))
                .map(|addr| (addr, 1));
            PortRoutes {
                listen: ips
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, port.published))
                    .collect(),
                vip: vip.map(|vip| SocketAddr::new(vip, port.target)),
                endpoints: service
                    .backends_for(port)
                    .into_iter()
                    .chain(task_backends)
                    .map(|(addr, weight)| Endpoint { addr, weight })
                    .collect(),
            }
        })
        .collect();
    ServiceRoutes {
        name: service.name.clone(),
        algorithm: service.algorithm,
        max_connections: service.max_connections,
        settings: RouteSettings {
            connect_timeout: service.connect_timeout,
            idle_timeout: service.idle_timeout,
            proxy_protocol: service.proxy_protocol,
            retries: service.retries,
            eject_time: service.health.eject_time,
            retry_on_empty: service.retry_on_empty,
            reply_timeout: service.reply_timeout,
            max_connections_per_client: service.max_connections_per_client,
        },
        ports,
    }
}

/// Standalone mode: the services of a config file, with no VIP and no tasks.
pub fn file_routes(services: &[Service], ingress_addr: IpAddr) -> Vec<ServiceRoutes> {
    services
        .iter()
        .map(|service| {
            let ips: &[IpAddr] = if service.listen.is_empty() {
                std::slice::from_ref(&ingress_addr)
            } else {
                &service.listen
            };
            service_routes(service, ips, None, &[])
        })
        .collect()
}

/// Cluster mode: every service of a registry state with its VIP and the
/// endpoints of its running, healthy tasks anywhere in the cluster. A
/// service's `listen` field is ignored: every node binds its own ingress
/// address.
pub fn registry_routes(applied: &Applied, ingress_addr: IpAddr) -> Vec<ServiceRoutes> {
    applied
        .state
        .services
        .values()
        .filter_map(|record| match record.checked() {
            Ok(service) => {
                let tasks = routed_tasks(&applied.state, service);
                Some(service_routes(
                    service,
                    std::slice::from_ref(&ingress_addr),
                    Some(record.vip.into()),
                    &tasks,
                ))
            }
            Err(error) => {
                // The registry validates every spec it stores; a spec that
                // fails here comes from a newer lbd with other rules.
                warn!(service = %record.spec.name, %error, "registry service skipped");
                None
            }
        })
        .collect()
}

/// The endpoints a registry service routes to: its serving tasks, then,
/// while fewer serve than it wants, the tasks stranded on down nodes that
/// were serving when their node went silent (make before break).
///
/// A node marked down is often alive and only cut off from the leader, and
/// its tasks then still answer; one that is really gone costs a refused
/// connect, which passive ejection remembers and the retry hides. So a
/// stranded task keeps its traffic until its replacement serves, and leaves
/// the table in the same change that brings the replacement in. It leaves
/// at once when its node is ready again (the node's agent stops it) or
/// removed. A replicated service wants its replica count; a global one has
/// no replacement for a lost node's task, so its stranded tasks stay only
/// while none of its tasks serves.
fn routed_tasks(state: &RegistryState, service: &Service) -> Vec<TaskEndpoint> {
    let tasks = || state.tasks_of(&service.name);
    let mut routed: Vec<TaskEndpoint> = tasks()
        .filter(|task| task.serves())
        .filter_map(|task| task.endpoint.clone())
        .collect();
    let wanted = match service.tasks.as_ref().map(|tasks| tasks.mode) {
        Some(ServiceMode::Replicated) => service.replicas as usize,
        Some(ServiceMode::Global) => 1,
        None => 0,
    };
    if routed.len() < wanted {
        let node_down = |task: &TaskRecord| {
            task.node
                .and_then(|id| state.nodes.get(&id))
                .is_some_and(|node| node.status == NodeStatus::Down)
        };
        routed.extend(
            tasks()
                .filter(|task| {
                    task.state == TaskState::Orphaned
                        && task.started_at.is_some()
                        && task.health.serves()
                        && node_down(task)
                })
                .filter_map(|task| task.endpoint.clone()),
        );
    }
    routed
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_config::ConfigFile;

    #[test]
    fn ports_bind_on_the_ingress_address_and_the_vip_on_the_target_port() {
        let config = ConfigFile::parse(
            r#"
            [[service]]
            name = "web"
            ports = [{ published = 8080, target = 80 }]
            endpoints = [{ address = "10.0.0.1:80", weight = 3 }]
            "#,
        )
        .unwrap()
        .validate()
        .unwrap();
        let ingress: IpAddr = "127.0.0.2".parse().unwrap();
        let task = TaskEndpoint {
            ip: "127.0.0.3".parse().unwrap(),
            ports: vec![(80, 31000)], // fixed-port-ok: an address in a table, nothing bound
        };
        let routes = file_routes(&config.services, ingress);
        assert_eq!(
            routes[0].ports[0].listen,
            // fixed-port-ok: an address in a table, nothing bound
            vec!["127.0.0.2:8080".parse().unwrap()]
        );
        let routes = service_routes(
            &config.services[0],
            &[ingress],
            Some("127.77.0.1".parse().unwrap()),
            &[task],
        );
        let port = &routes.ports[0];
        assert_eq!(port.listen, vec!["127.0.0.2:8080".parse().unwrap()]); // fixed-port-ok
        assert_eq!(port.vip, Some("127.77.0.1:80".parse().unwrap())); // fixed-port-ok
        assert_eq!(
            port.endpoints,
            vec![
                Endpoint {
                    addr: "10.0.0.1:80".parse().unwrap(), // fixed-port-ok
                    weight: 3
                },
                Endpoint {
                    addr: "127.0.0.3:31000".parse().unwrap(), // fixed-port-ok
                    weight: 1
                },
            ]
        );
    }

    /// Each spec is validated once per version, when the registry stores
    /// it: routing a change takes that checked form and never validates the
    /// stored spec again. Shown with a stored spec corrupted behind the
    /// state machine's back (port 0, which validation refuses): it is
    /// still routed, from the form checked when it was stored.
    #[test]
    fn registry_routes_reuse_the_checked_form_of_each_version() {
        use lb_config::{EndpointSpec, PortSpec, ServiceSpec};
        use raft_state::state::{Command, Outcome, RegistryState};
        use std::sync::Arc;

        let mut state = RegistryState::default();
        let spec = ServiceSpec {
            name: "web".to_owned(),
            ports: vec![PortSpec {
                published: 8080,
                target: Some(80),
                protocol: None,
            }],
            endpoints: vec![EndpointSpec {
                address: "10.0.0.1".to_owned(),
                weight: None,
            }],
            ..ServiceSpec::default()
        };
        let outcome = state.apply(&Command::CreateService { spec });
        assert!(matches!(outcome, Outcome::Service { .. }), "{outcome:?}");
        let record = state.services.get_mut("web").expect("stored");
        record.spec.ports[0].published = 0;
        assert!(
            record.spec.validate().is_err(),
            "the corrupt spec would fail"
        );
        let applied = Applied {
            state: Arc::new(state),
            index: 1,
        };
        let ingress: IpAddr = "127.0.0.2".parse().unwrap();
        let routes = registry_routes(&applied, ingress);
        assert_eq!(
            routes.len(),
            1,
            "the service was validated again and skipped"
        );
        assert_eq!(
            routes[0].ports[0].listen,
            // fixed-port-ok: an address in a table, nothing bound
            vec!["127.0.0.2:8080".parse().unwrap()]
        );
        assert_eq!(
            routes[0].ports[0].endpoints,
            vec![Endpoint {
                addr: "10.0.0.1:80".parse().unwrap(), // fixed-port-ok
                weight: 1
            }]
        );
    }

    mod make_before_break {
        use std::net::Ipv4Addr;
        use std::sync::Arc;

        use lb_config::{PortSpec, ServiceSpec};
        use raft_state::state::{
            Availability, ClusterInfo, Command, NodeId, NodeRecord, NodeStatus, RegistryState, Role,
        };
        use raft_state::task::{DesiredState, TaskHealth, TaskRecord, TaskState};

        use super::*;

        /// Node `id` (127.0.0.id) runs task `t<id>` on host port 30000 + id.
        fn cluster(replicas: i64, tasks: &[(NodeId, DesiredState, TaskState)]) -> RegistryState {
            let mut state = RegistryState::default();
            state.apply(&Command::InitCluster {
                cluster: ClusterInfo {
                    id: "c".into(),
                    manager_token: String::new(),
                    worker_token: String::new(),
                    control_token: String::new(),
                },
                vip_range: raft_state::state::DEFAULT_VIP_RANGE,
            });
            for id in 1..=3 {
                let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, id as u8));
                state.apply(&Command::RegisterNode {
                    node: NodeRecord {
                        id,
                        name: format!("n{id}"),
                        raft_addr: SocketAddr::new(ip, 1),
                        api_addr: SocketAddr::new(ip, 2),
                        ingress_addr: ip,
                        role: Role::Manager,
                        availability: Availability::Active,
                        status: NodeStatus::Ready,
                        labels: Default::default(),
                    },
                });
            }
            state.apply(&Command::CreateService {
                spec: ServiceSpec {
                    name: "web".to_owned(),
                    ports: vec![PortSpec {
                        published: 8080, // fixed-port-ok: a table, nothing bound
                        target: Some(80),
                        protocol: None,
                    }],
                    image: Some("img:v1".to_owned()),
                    replicas: Some(replicas),
                    ..ServiceSpec::default()
                },
            });
            for (node, desired, task_state) in tasks {
                let id = format!("t{node}");
                state.tasks.insert(
                    id.clone(),
                    TaskRecord {
                        id,
                        service: "web".to_owned(),
                        slot: 1,
                        spec_version: 1,
                        node: Some(*node),
                        desired: *desired,
                        state: *task_state,
                        health: TaskHealth::Healthy,
                        endpoint: Some(TaskEndpoint {
                            ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, *node as u8)),
                            ports: vec![(80, 30000 + *node as u16)],
                        }),
                        runtime_id: None,
                        message: String::new(),
                        attempt: 1,
                        created_at: 1,
                        updated_at: 1,
                        started_at: (*task_state != TaskState::Starting).then_some(1),
                    },
                );
            }
            state
        }

        fn set_status(state: &mut RegistryState, id: NodeId, status: NodeStatus) {
            state.apply(&Command::SetNodeStatus { id, status });
        }

        /// The host ports `web` routes to, in table order.
        fn routed_ports(state: RegistryState) -> Vec<u16> {
            let applied = Applied {
                state: Arc::new(state),
                index: 1,
            };
            let routes = registry_routes(&applied, "127.0.0.9".parse().unwrap());
            routes[0].ports[0]
                .endpoints
                .iter()
                .map(|e| e.addr.port())
                .collect()
        }

        const ORPHAN: (DesiredState, TaskState) = (DesiredState::Shutdown, TaskState::Orphaned);

        #[test]
        fn a_down_nodes_task_serves_until_its_replacement_does() {
            let starting = (DesiredState::Running, TaskState::Starting);
            let mut state = cluster(1, &[(2, ORPHAN.0, ORPHAN.1), (3, starting.0, starting.1)]);
            set_status(&mut state, 2, NodeStatus::Down);
            assert_eq!(
                routed_ports(state),
                vec![30002],
                "the stranded task keeps serving"
            );

            let running = (DesiredState::Running, TaskState::Running);
            let mut state = cluster(1, &[(2, ORPHAN.0, ORPHAN.1), (3, running.0, running.1)]);
            set_status(&mut state, 2, NodeStatus::Down);
            assert_eq!(
                routed_ports(state),
                vec![30003],
                "the replacement takes over"
            );
        }

        #[test]
        fn a_stranded_task_leaves_when_its_node_is_ready_again() {
            let state = cluster(1, &[(2, ORPHAN.0, ORPHAN.1)]);
            assert_eq!(routed_ports(state), Vec::<u16>::new(), "its agent stops it");
        }

        #[test]
        fn only_tasks_that_were_serving_stand_in() {
            let mut state = cluster(2, &[(1, ORPHAN.0, ORPHAN.1), (2, ORPHAN.0, ORPHAN.1)]);
            set_status(&mut state, 1, NodeStatus::Down);
            set_status(&mut state, 2, NodeStatus::Down);
            if let Some(task) = state.tasks.get_mut("t1") {
                task.health = TaskHealth::Unhealthy;
            }
            if let Some(task) = state.tasks.get_mut("t2") {
                task.started_at = None;
            }
            assert_eq!(routed_ports(state), Vec::<u16>::new());
        }
    }
}
