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
//!
//! A registry service's checked form is the one the state machine made when
//! it stored the spec ([`ServiceRecord::checked`]): a change re-routes
//! without validating any spec again.
//!
//! [`ServiceRecord::checked`]: raft_state::state::ServiceRecord::checked

use std::net::{IpAddr, SocketAddr};

use lb_config::Service;
use lbmesh_proxy::discovery::{Endpoint, PortRoutes, RouteSettings, ServiceRoutes};
use raft_state::store::Applied;
use raft_state::task::TaskEndpoint;
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
                let tasks: Vec<TaskEndpoint> = applied
                    .state
                    .tasks_of(&record.spec.name)
                    .filter(|task| task.serves())
                    .filter_map(|task| task.endpoint.clone())
                    .collect();
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
            vec!["127.0.0.2:8080".parse().unwrap()]
        ); // fixed-port-ok
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
            vec!["127.0.0.2:8080".parse().unwrap()]
        ); // fixed-port-ok
        assert_eq!(
            routes[0].ports[0].endpoints,
            vec![Endpoint {
                addr: "10.0.0.1:80".parse().unwrap(), // fixed-port-ok
                weight: 1
            }]
        );
    }
}
