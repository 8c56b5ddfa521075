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
//! node binds its own). The VIP answers on each port's target port, with
//! the port's protocol (a UDP port's VIP is a UDP address). A port's
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
//! # Incremental routing
//!
//! In cluster mode [`RegistryRoutes`] keeps the state it last routed and
//! turns each new one into the [`Update`]s that differ: the services whose
//! record (checked spec or VIP) changed, whose tasks changed or that have a
//! task on a node whose status changed are built again and sent as
//! [`Update::Add`]; the services gone are [`Update::Remove`]d. Finding them
//! is a diff of the two states' persistent maps, which skips the subtrees
//! the states share (all but the changed entries' paths), then cheap
//! comparisons of the changed records (the checked specs by pointer);
//! building routes, and everything the proxy does with them, is for the
//! touched services only.
//!
//! ```text
//! Applied (last routed) ─┐
//! Applied (new)         ─┴─> diff services / tasks / node status ─> touched names
//!   ─> routes of each touched service (its tasks grouped in one pass) ─> [Add, Remove]
//! ```
//!
//! [`ServiceRecord::checked`]: raft_state::state::ServiceRecord::checked

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use imbl::ordmap::DiffItem;
use lb_config::{Service, ServiceMode};
use lbmesh_proxy::discovery::{
    Endpoint, EndpointLabels, PortRoutes, RouteSettings, ServiceRoutes, Update,
};
use raft_state::state::{NodeStatus, RegistryState, ServiceRecord};
use raft_state::store::Applied;
use raft_state::task::{TaskEndpoint, TaskRecord, TaskState};
use tracing::warn;

/// The routes of one service, its published ports bound on `ips`.
pub fn service_routes(
    service: &Service,
    ips: &[IpAddr],
    vip: Option<IpAddr>,
    vip_v6: Option<IpAddr>,
    tasks: &[(TaskEndpoint, EndpointLabels)],
) -> ServiceRoutes {
    let ports = service
        .ports
        .iter()
        .map(|port| {
            let task_backends = tasks.iter().filter_map(|(task, labels)| {
                Some(Endpoint {
                    addr: task.addr_for(port.target)?,
                    weight: 1,
                    labels: labels.clone(),
                })
            });
            PortRoutes {
                protocol: port.protocol,
                // A VIP-only port is published on no address.
                listen: port
                    .published
                    .map(|published| {
                        ips.iter()
                            .map(|ip| SocketAddr::new(*ip, published))
                            .collect()
                    })
                    .unwrap_or_default(),
                vip: vip.map(|vip| SocketAddr::new(vip, port.target)),
                vip_v6: vip_v6.map(|vip| SocketAddr::new(vip, port.target)),
                endpoints: service
                    .backends_for(port)
                    .into_iter()
                    .map(|(addr, weight)| Endpoint {
                        addr,
                        weight,
                        labels: EndpointLabels::default(),
                    })
                    .chain(task_backends)
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
            access_log: service.access_log,
            udp_idle_timeout: service.udp_idle_timeout,
            max_udp_sessions: service.max_udp_sessions,
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
            service_routes(service, ips, None, None, &[])
        })
        .collect()
}

/// Cluster mode: every service of a registry state with its VIP and the
/// endpoints of its running, healthy tasks anywhere in the cluster. A
/// service's `listen` field is ignored: every node binds its own ingress
/// address.
pub fn registry_routes(applied: &Applied, ingress_addrs: &[IpAddr]) -> Vec<ServiceRoutes> {
    let state = &applied.state;
    state
        .services
        .values()
        .filter_map(|record| record_routes(state, record, ingress_addrs))
        .collect()
}

/// The routes of one registry service, `None` for a spec that fails
/// validation (logged).
fn record_routes(
    state: &RegistryState,
    record: &ServiceRecord,
    ingress_addrs: &[IpAddr],
) -> Option<ServiceRoutes> {
    match record.checked() {
        Ok(service) => {
            let tasks: Vec<&TaskRecord> = state.tasks_of(&service.name).collect();
            let routed = routed_tasks(state, service, &tasks);
            Some(service_routes(
                service,
                ingress_addrs,
                Some(record.vip.into()),
                record.vip_v6.map(IpAddr::V6),
                &routed,
            ))
        }
        Err(error) => {
            // The registry validates every spec it stores; a spec that
            // fails here comes from a newer lbd with other rules.
            warn!(service = %record.spec.name, %error, "registry service skipped");
            None
        }
    }
}

/// Cluster mode, incrementally: the registry state last routed, and what
/// changed since (see the module doc).
pub struct RegistryRoutes {
    ingress_addrs: Vec<IpAddr>,
    routed: Arc<RegistryState>,
}

impl RegistryRoutes {
    /// Every route of `applied` (the first table), and the tracker of what
    /// changes after it.
    pub fn start(applied: &Applied, ingress_addrs: &[IpAddr]) -> (Self, Vec<ServiceRoutes>) {
        let routes = registry_routes(applied, ingress_addrs);
        let tracker = Self {
            ingress_addrs: ingress_addrs.to_vec(),
            routed: Arc::clone(&applied.state),
        };
        (tracker, routes)
    }

    /// The updates that take the routes of the last state to `applied`'s:
    /// an `Add` of every touched service, a `Remove` of every one gone.
    /// Empty when no route can have changed.
    pub fn changes(&mut self, applied: &Applied) -> Vec<Update> {
        let (old, new) = (&*self.routed, &*applied.state);
        let (touched, gone) = touched_services(old, new);
        let mut updates = Vec::new();
        if !touched.is_empty() {
            let added: Vec<ServiceRoutes> = touched
                .iter()
                .filter_map(|name| new.services.get(*name))
                .filter_map(|record| record_routes(new, record, &self.ingress_addrs))
                .collect();
            // A touched service whose spec no longer validates is skipped
            // by the full build too: it leaves the table.
            let unroutable: Vec<String> = touched
                .iter()
                .filter(|name| {
                    new.services
                        .get(**name)
                        .is_some_and(|r| r.checked().is_err())
                })
                .map(|name| (*name).to_owned())
                .collect();
            if !added.is_empty() {
                updates.push(Update::Add(added));
            }
            if !unroutable.is_empty() {
                updates.push(Update::Remove(unroutable));
            }
        }
        if !gone.is_empty() {
            updates.push(Update::Remove(gone));
        }
        self.routed = Arc::clone(&applied.state);
        updates
    }
}

/// Whether a service record routes alike in both states: the same checked
/// spec (by pointer, else by value) and VIP.
fn same_record(old: &ServiceRecord, new: &ServiceRecord) -> bool {
    let same_spec = match (old.checked(), new.checked()) {
        (Ok(a), Ok(b)) if Arc::ptr_eq(a, b) => true,
        _ => old.spec == new.spec,
    };
    same_spec && old.vip == new.vip && old.vip_v6 == new.vip_v6
}

/// The services of `new` whose routes may differ from `old`'s, and the
/// names of `old`'s services that `new` lacks. The maps are persistent
/// and each applied state shares all but the changed entries' paths with
/// the one before, so the diffs skip what is shared: the cost follows
/// the change, not the cluster.
fn touched_services<'a>(
    old: &RegistryState,
    new: &'a RegistryState,
) -> (BTreeSet<&'a str>, Vec<String>) {
    let mut touched: BTreeSet<&str> = BTreeSet::new();
    let mut gone = Vec::new();
    for item in old.services.diff(&new.services) {
        match item {
            DiffItem::Add(name, _) => {
                touched.insert(name);
            }
            DiffItem::Update {
                old: (_, was),
                new: (name, record),
            } => {
                if !same_record(was, record) {
                    touched.insert(name);
                }
            }
            DiffItem::Remove(name, _) => gone.push(name.clone()),
        }
    }
    let mut note = |service: &str| {
        if let Some((name, _)) = new.services.get_key_value(service) {
            touched.insert(name);
        }
    };
    for item in old.tasks().diff(new.tasks()) {
        match item {
            DiffItem::Add(_, task) | DiffItem::Remove(_, task) => note(&task.service),
            DiffItem::Update { new: (_, task), .. } => note(&task.service),
        }
    }
    // Make before break reads node status: a node that changed status or
    // left touches the services with a task on it.
    let status = |state: &RegistryState, id| state.nodes.get(&id).map(|node| node.status);
    let moved: Vec<_> = old
        .nodes
        .keys()
        .chain(new.nodes.keys())
        .filter(|id| status(old, **id) != status(new, **id))
        .collect();
    for node in moved {
        for task in new.tasks_on(*node) {
            note(&task.service);
        }
    }
    (touched, gone)
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
fn routed_tasks(
    state: &RegistryState,
    service: &Service,
    tasks: &[&TaskRecord],
) -> Vec<(TaskEndpoint, EndpointLabels)> {
    let tasks = || tasks.iter().copied();
    let routed_task = |task: &TaskRecord| Some((task.endpoint.clone()?, labels(state, task)));
    let mut routed: Vec<(TaskEndpoint, EndpointLabels)> = tasks()
        .filter(|task| task.serves())
        .filter_map(routed_task)
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
                .filter_map(routed_task),
        );
    }
    routed
}

/// A task endpoint's metric labels: its name as `service ps` shows it
/// (`web.2`; `web.node-a` for a global service's task) and its node's name.
fn labels(state: &RegistryState, task: &TaskRecord) -> EndpointLabels {
    let node = task
        .node
        .and_then(|id| state.nodes.get(&id))
        .map_or("", |node| node.name.as_str());
    let name = if task.slot == 0 {
        format!("{}.{node}", task.service)
    } else {
        format!("{}.{}", task.service, task.slot)
    };
    EndpointLabels {
        task: Arc::from(name),
        node: Arc::from(node),
    }
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
            vec!["127.0.0.2:8080".parse().unwrap()] // fixed-port-ok: compared, never bound
        );
        let routes = service_routes(
            &config.services[0],
            &[ingress],
            Some("127.77.0.1".parse().unwrap()),
            Some("fd77::1".parse().unwrap()),
            &[(
                task,
                EndpointLabels {
                    task: Arc::from("web.1"),
                    node: Arc::from("node-3"),
                },
            )],
        );
        let port = &routes.ports[0];
        assert_eq!(port.listen, vec!["127.0.0.2:8080".parse().unwrap()]); // fixed-port-ok
        assert_eq!(port.vip, Some("127.77.0.1:80".parse().unwrap())); // fixed-port-ok
        assert_eq!(port.vip_v6, Some("[fd77::1]:80".parse().unwrap())); // fixed-port-ok
        assert_eq!(
            port.endpoints,
            vec![
                Endpoint {
                    addr: "10.0.0.1:80".parse().unwrap(), // fixed-port-ok
                    weight: 3,
                    labels: EndpointLabels::default(),
                },
                Endpoint {
                    addr: "127.0.0.3:31000".parse().unwrap(), // fixed-port-ok
                    weight: 1,
                    labels: EndpointLabels {
                        task: Arc::from("web.1"),
                        node: Arc::from("node-3"),
                    },
                },
            ]
        );
    }

    /// Each spec is validated once per version, when the registry stores
    /// it: routing a change takes that checked form and never validates the
    /// stored spec again. Shown with a stored spec corrupted behind the
    /// state machine's back (port 70000, which validation refuses): it is
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
        let outcome = state.apply(&Command::CreateService {
            spec,
            id: String::new(),
        });
        assert!(matches!(outcome, Outcome::Service { .. }), "{outcome:?}");
        let record = state.services.get_mut("web").expect("stored");
        record.spec.ports[0].published = 70_000;
        assert!(
            record.spec.validate().is_err(),
            "the corrupt spec would fail"
        );
        let applied = Applied {
            state: Arc::new(state),
            index: 1,
        };
        let ingress: IpAddr = "127.0.0.2".parse().unwrap();
        let routes = registry_routes(&applied, &[ingress]);
        assert_eq!(
            routes.len(),
            1,
            "the service was validated again and skipped"
        );
        assert_eq!(
            routes[0].ports[0].listen,
            // fixed-port-ok: an address in a table, nothing bound
            vec!["127.0.0.2:8080".parse().unwrap()] // fixed-port-ok: compared, never bound
        );
        assert_eq!(
            routes[0].ports[0].endpoints,
            vec![Endpoint {
                addr: "10.0.0.1:80".parse().unwrap(), // fixed-port-ok
                weight: 1,
                labels: EndpointLabels::default(),
            }]
        );
    }

    mod make_before_break {
        use std::net::Ipv4Addr;
        use std::sync::Arc;

        use std::collections::BTreeMap;

        use lb_config::{PortSpec, ServiceSpec};
        use raft_state::state::{
            Availability, ClusterInfo, Command, NodeId, NodeRecord, NodeStatus, Outcome,
            RegistryState, Role,
        };
        use raft_state::task::{DesiredState, TaskHealth, TaskRecord, TaskState};

        use super::*;

        /// Node `id` (127.0.0.id) runs task `t<id>` on host port 30000 + id.
        fn cluster(replicas: i64, tasks: &[(NodeId, DesiredState, TaskState)]) -> RegistryState {
            let mut state = RegistryState::default();
            state.apply(&Command::InitCluster {
                cluster: ClusterInfo {
                    id: "c".into(),
                    ..ClusterInfo::default()
                },
                vip_range: raft_state::state::DEFAULT_VIP_RANGE,
                vip_range_v6: Some(raft_state::state::DEFAULT_VIP_RANGE_V6),
                dns_domain: None,
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
                id: String::new(),
            });
            for (node, desired, task_state) in tasks {
                let id = format!("t{node}");
                state.insert_task(TaskRecord {
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
                });
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
            let routes = registry_routes(&applied, &["127.0.0.9".parse().unwrap()]);
            routes[0].ports[0]
                .endpoints
                .iter()
                .map(|e| e.addr.port())
                .collect()
        }

        const ORPHAN: (DesiredState, TaskState) = (DesiredState::Shutdown, TaskState::Orphaned);

        /// A task endpoint's labels are its `service ps` name and its node's.
        #[test]
        fn task_endpoints_carry_their_task_and_node_names() {
            let state = cluster(1, &[(2, DesiredState::Running, TaskState::Running)]);
            let applied = Applied {
                state: Arc::new(state),
                index: 1,
            };
            let routes = registry_routes(&applied, &["127.0.0.9".parse().unwrap()]);
            let labels = &routes[0].ports[0].endpoints[0].labels;
            assert_eq!((&*labels.task, &*labels.node), ("web.1", "n2"));
        }

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

        // fixed-port-ok: the ports below are in tables; nothing is bound.

        /// A service that routes to a static endpoint only.
        fn static_spec(name: &str, port: i64) -> ServiceSpec {
            ServiceSpec {
                name: name.to_owned(),
                ports: vec![PortSpec {
                    published: port,
                    target: Some(port),
                    protocol: None,
                }],
                endpoints: vec![lb_config::EndpointSpec {
                    address: "10.0.0.1".to_owned(),
                    weight: None,
                }],
                ..ServiceSpec::default()
            }
        }

        type Step = (
            &'static str,
            fn(&mut RegistryState),
            &'static [&'static str],
        );

        /// Each change's updates name only the services it touched, and
        /// applied one after another they give what routing the whole
        /// state gives.
        #[test]
        fn changes_name_only_the_touched_services_and_add_up_to_the_full_routes() {
            let running = (DesiredState::Running, TaskState::Running);
            let mut state = cluster(1, &[(2, running.0, running.1)]);
            for (name, port) in [("db", 5432), ("cache", 6379)] {
                let outcome = state.apply(&Command::CreateService {
                    spec: static_spec(name, port),
                    id: String::new(),
                });
                assert!(matches!(outcome, Outcome::Service { .. }), "{outcome:?}");
            }
            let ingress: IpAddr = "127.0.0.9".parse().unwrap();
            let applied = |state: &RegistryState| Applied {
                state: Arc::new(state.clone()),
                index: 1,
            };
            let (mut tracker, first) = RegistryRoutes::start(&applied(&state), &[ingress]);
            let mut model: BTreeMap<String, ServiceRoutes> =
                first.into_iter().map(|s| (s.name.clone(), s)).collect();
            assert_eq!(model.len(), 3);
            let steps: [Step; 7] = [
                ("nothing", |_| {}, &[]),
                (
                    "web's task turns unhealthy",
                    |s| {
                        s.change_task("t2", |task| {
                            task.health = TaskHealth::Unhealthy;
                        });
                    },
                    &["web"],
                ),
                (
                    "web's task is orphaned and its node goes down",
                    |s| {
                        s.change_task("t2", |task| {
                            task.health = TaskHealth::Healthy;
                            task.desired = DesiredState::Shutdown;
                            task.state = TaskState::Orphaned;
                        });
                        set_status(s, 2, NodeStatus::Down);
                    },
                    &["web"],
                ),
                (
                    "node 2 is ready again",
                    |s| set_status(s, 2, NodeStatus::Ready),
                    &["web"],
                ),
                (
                    "a new service",
                    |s| {
                        s.apply(&Command::CreateService {
                            spec: static_spec("queue", 5672),
                            id: String::new(),
                        });
                    },
                    &["queue"],
                ),
                (
                    "db's spec changes",
                    |s| {
                        let mut spec = static_spec("db", 5433);
                        spec.endpoints[0].address = "10.0.0.2".to_owned();
                        s.apply(&Command::UpdateService { spec });
                    },
                    &["db"],
                ),
                (
                    "cache is removed",
                    |s| {
                        s.apply(&Command::RemoveService {
                            name: "cache".to_owned(),
                        });
                    },
                    &[],
                ),
            ];
            for (step, change, expected) in steps {
                change(&mut state);
                let updates = tracker.changes(&applied(&state));
                let mut added = Vec::new();
                for update in updates {
                    match update {
                        Update::Add(services) => {
                            for service in services {
                                added.push(service.name.clone());
                                model.insert(service.name.clone(), service);
                            }
                        }
                        Update::Remove(names) => {
                            for name in names {
                                model.remove(&name);
                            }
                        }
                        Update::Reset(_) => panic!("{step}: a change is never a reset"),
                    }
                }
                assert_eq!(added, expected, "{step}");
                let full: BTreeMap<String, ServiceRoutes> =
                    registry_routes(&applied(&state), &[ingress])
                        .into_iter()
                        .map(|s| (s.name.clone(), s))
                        .collect();
                assert_eq!(model, full, "{step}");
            }
            assert!(!model.contains_key("cache"));
            assert_eq!(model["web"].ports[0].endpoints, Vec::new());
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
            state.change_task("t1", |task| {
                task.health = TaskHealth::Unhealthy;
            });
            state.change_task("t2", |task| {
                task.started_at = None;
            });
            assert_eq!(routed_ports(state), Vec::<u16>::new());
        }
    }
}
