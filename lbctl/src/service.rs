//! `lbctl service create|ls|inspect|ps|logs|scale|update|rollback|rm`.
//!
//! `ls` and `ps` take `-q` and `--filter` ([`crate::filter`]); `inspect`
//! and `ps` take several names.
//!
//! `create` builds a spec from the flags; `update` reads the current spec,
//! drops what the `--*-rm` flags name, applies the flags given and sends the
//! whole spec back. `scale` checks every target exists before changing any.
//! `create`, `update`, `scale` and `rollback` then follow the tasks to
//! convergence ([`crate::follow`]) unless `--detach`.

use lb_config::{ServiceMode, ServiceSpec, UpdateSpec};
use std::io::{IsTerminal, Write};

use lbmesh_api::{Client, DesiredState, ListenerError, Service, ServiceStatus};

use crate::cli::{FollowArgs, Format, ServiceCommand, SpecArgs};
use crate::error::CtlError;
use crate::filter::{Filters, SERVICE_LS};
use crate::follow::{converge, has_tasks, Display, Target};
use crate::output::{json, render};
use crate::table::table;
use crate::tasks;

pub async fn run(
    client: &Client,
    command: &ServiceCommand,
    format: Format,
) -> Result<String, CtlError> {
    match command {
        ServiceCommand::Create { name, spec, follow } => {
            let mut body = ServiceSpec {
                name: name.clone(),
                ..ServiceSpec::default()
            };
            apply_flags(spec, &mut body, true);
            let created = client.create_service(&body).await?;
            let head = render(format, &created, |_| format!("{name}\n"))?;
            followed(client, &[(created, Vec::new())], *follow, format, head).await
        }
        ServiceCommand::Ls { list } => {
            let filters = Filters::new(&list.filter, SERVICE_LS)?;
            let mut services = client.services().await?;
            services.retain(|status| {
                let spec = &status.service.spec;
                filters.keep("id", |v| status.service.id.starts_with(v))
                    && filters.keep("name", |v| spec.name.starts_with(v))
                    && filters.keep("mode", |v| mode(spec.mode) == v)
            });
            if list.quiet {
                return Ok(services
                    .iter()
                    .map(|s| format!("{}\n", s.service.spec.name))
                    .collect());
            }
            render(format, &services, |services| service_table(services))
        }
        ServiceCommand::Inspect { names } => {
            let mut found = Vec::new();
            for name in names {
                found.push(client.service(name).await?);
            }
            match found.as_slice() {
                [one] => json(one),
                several => json(&several),
            }
        }
        ServiceCommand::Ps { names, live, list } => {
            let mut tasks = Vec::new();
            let mut statuses = Vec::new();
            for name in names {
                tasks.extend(client.service_tasks(name).await?);
                statuses.push(client.service(name).await?);
            }
            if *live {
                tasks.retain(|t| t.desired == DesiredState::Running);
            }
            let tasks = tasks::filtered(tasks, list)?;
            let out = tasks::render(&tasks, list, format)?;
            // The table also says which nodes cannot bind the services.
            if format == Format::Table && !list.quiet {
                let errors: Vec<ListenerError> = statuses
                    .into_iter()
                    .flat_map(|s| s.listener_errors)
                    .collect();
                return Ok(out + &listener_lines(&errors));
            }
            Ok(out)
        }
        ServiceCommand::Logs {
            names,
            tail,
            follow,
        } => crate::logs::run(client, names, *tail, *follow).await,
        ServiceCommand::Scale { targets, follow } => {
            let mut before = Vec::new();
            for (name, _) in targets {
                client.service(name).await?;
                before.push(tasks_before(client, name, follow).await?);
            }
            let mut out = String::new();
            let mut written = Vec::new();
            for ((name, replicas), tasks) in targets.iter().zip(before) {
                let scaled = client.scale_service(name, *replicas).await?;
                out.push_str(&format!("{name} scaled to {replicas}\n"));
                written.push((scaled, tasks));
            }
            followed(client, &written, *follow, Format::Table, out).await
        }
        ServiceCommand::Update {
            name,
            spec,
            publish_rm,
            endpoint_rm,
            env_rm,
            constraint_rm,
            follow,
        } => {
            let mut body = client.service(name).await?.service.spec;
            body.ports.retain(|p| !publish_rm.contains(&p.published));
            body.endpoints.retain(|e| !endpoint_rm.contains(&e.address));
            body.env
                .retain(|e| !env_rm.iter().any(|rm| rm == env_key(e)));
            body.constraints.retain(|c| !constraint_rm.contains(c));
            apply_flags(spec, &mut body, false);
            let before = tasks_before(client, name, follow).await?;
            let updated = client.update_service(&body).await?;
            let head = render(format, &updated, |_| format!("{name}\n"))?;
            followed(client, &[(updated, before)], *follow, format, head).await
        }
        ServiceCommand::Rollback { name, follow } => {
            let before = tasks_before(client, name, follow).await?;
            let rolled_back = client.rollback_service(name).await?;
            followed(
                client,
                &[(rolled_back, before)],
                *follow,
                Format::Table,
                format!("{name}\n"),
            )
            .await
        }
        ServiceCommand::Rm { names } => {
            let mut out = String::new();
            for name in names {
                client.remove_service(name).await?;
                out.push_str(&format!("{name}\n"));
            }
            Ok(out)
        }
    }
}

/// The service's tasks before a write that will be followed (none when
/// `--detach`), so that failures from before the write are not taken for
/// its own.
async fn tasks_before(
    client: &Client,
    name: &str,
    follow: &FollowArgs,
) -> Result<Vec<lbmesh_api::Task>, CtlError> {
    if follow.detach {
        return Ok(Vec::new());
    }
    Ok(client.service_tasks(name).await?)
}

/// `head` (what the write prints), then, unless `--detach`, the progress
/// of each written service until it converges ([`crate::follow`]). In a
/// table, `head` prints before the progress; as JSON, after the wait.
pub async fn followed(
    client: &Client,
    written: &[(Service, Vec<lbmesh_api::Task>)],
    follow: FollowArgs,
    format: Format,
    head: String,
) -> Result<String, CtlError> {
    let written: Vec<_> = written.iter().filter(|(s, _)| has_tasks(s)).collect();
    if follow.detach || written.is_empty() {
        return Ok(head);
    }
    let mut stdout = std::io::stdout();
    let display = match format {
        Format::Json => Display::Quiet,
        Format::Table if stdout.is_terminal() => Display::Terminal,
        Format::Table => Display::Lines,
    };
    if display != Display::Quiet {
        // Best effort, as the progress is: a closed stdout fails nothing.
        let _ = stdout.write_all(head.as_bytes());
        let _ = stdout.flush();
    }
    let mut tail = String::new();
    for (service, before) in written {
        let target = Target::new(service, before);
        tail.push_str(&converge(client, &target, follow.timeout, display, &mut stdout).await?);
    }
    Ok(if display == Display::Quiet {
        head
    } else {
        tail
    })
}

/// The key of a `KEY=VALUE` environment entry.
fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(key, _)| key)
}

/// Writes the flags that were given into `spec`. `replace_lists` (create)
/// makes the published ports and endpoints exactly the flags'; otherwise
/// (update) each flag replaces the entry with the same port and protocol
/// (53/tcp and 53/udp are two entries) or the same address.
fn apply_flags(args: &SpecArgs, spec: &mut ServiceSpec, replace_lists: bool) {
    if replace_lists {
        spec.ports = args.publish.clone();
        spec.endpoints = args.endpoint.clone();
    } else {
        let protocol =
            |p: &lb_config::PortSpec| p.protocol.clone().unwrap_or_else(|| "tcp".to_owned());
        for port in &args.publish {
            spec.ports
                .retain(|p| (p.published, protocol(p)) != (port.published, protocol(port)));
            spec.ports.push(port.clone());
        }
        for endpoint in &args.endpoint {
            spec.endpoints.retain(|e| e.address != endpoint.address);
            spec.endpoints.push(endpoint.clone());
        }
    }
    if let Some(algorithm) = args.algorithm {
        spec.algorithm = algorithm;
    }
    if let Some(replicas) = args.replicas {
        spec.replicas = Some(replicas);
    }
    if let Some(version) = args.proxy_protocol {
        spec.proxy_protocol = version;
    }
    if let Some(max) = args.max_connections_per_client {
        spec.max_connections_per_client = Some(max);
    }
    if let Some(max) = args.max_connections {
        spec.max_connections = Some(max);
    }
    if let Some(idle) = args.udp_idle_timeout {
        spec.udp_idle_timeout = Some(idle);
    }
    if let Some(max) = args.max_udp_sessions {
        spec.max_udp_sessions = Some(max);
    }
    if let Some(retry) = args.retry_on_empty {
        spec.retry_on_empty = Some(retry);
    }
    if let Some(on) = args.access_log {
        spec.access_log = Some(on);
    }
    if let Some(connect) = args.connect_timeout {
        spec.connect_timeout = Some(connect);
    }
    if let Some(idle) = args.idle_timeout {
        spec.idle_timeout = Some(idle);
    }
    if let Some(reply) = args.reply_timeout {
        spec.reply_timeout = Some(reply);
    }
    if let Some(image) = &args.image {
        spec.image = Some(image.clone());
    }
    if let Some(command) = &args.command {
        spec.command = Some(command.clone());
    }
    if let Some(user) = &args.user {
        spec.user = Some(user.clone());
    }
    for pair in &args.env {
        spec.env.retain(|e| env_key(e) != env_key(pair));
        spec.env.push(pair.clone());
    }
    if let Some(mode) = args.mode {
        spec.mode = mode;
    }
    for constraint in &args.constraint {
        if !spec.constraints.contains(constraint) {
            spec.constraints.push(constraint.clone());
        }
    }
    if let Some(max) = args.replicas_max_per_node {
        spec.max_replicas_per_node = Some(max);
    }
    if let Some(condition) = args.restart_condition {
        spec.restart.condition = Some(condition);
    }
    if let Some(delay) = args.restart_delay {
        spec.restart.delay = Some(delay);
    }
    if let Some(max) = args.restart_max_attempts {
        spec.restart.max_attempts = Some(max);
    }
    if let Some(parallelism) = args.update_parallelism {
        spec.update.parallelism = Some(parallelism);
    }
    if let Some(delay) = args.update_delay {
        spec.update.delay = Some(delay);
    }
    if let Some(order) = args.update_order {
        spec.update.order = Some(order);
    }
    if let Some(action) = args.update_failure_action {
        spec.update.failure_action = Some(action);
    }
    if let Some(monitor) = args.update_monitor {
        spec.update.monitor = Some(monitor);
    }
    let rollback_set = args.rollback_parallelism.is_some()
        || args.rollback_delay.is_some()
        || args.rollback_order.is_some()
        || args.rollback_failure_action.is_some()
        || args.rollback_monitor.is_some();
    if rollback_set {
        let rollback = spec.rollback.get_or_insert_with(UpdateSpec::default);
        if let Some(parallelism) = args.rollback_parallelism {
            rollback.parallelism = Some(parallelism);
        }
        if let Some(delay) = args.rollback_delay {
            rollback.delay = Some(delay);
        }
        if let Some(order) = args.rollback_order {
            rollback.order = Some(order);
        }
        if let Some(action) = args.rollback_failure_action {
            rollback.failure_action = Some(action);
        }
        if let Some(monitor) = args.rollback_monitor {
            rollback.monitor = Some(monitor);
        }
    }
    if let Some(grace) = args.stop_grace_period {
        spec.stop_grace_period = Some(grace);
    }
    if let Some(drain) = args.drain_timeout {
        spec.drain_timeout = Some(drain);
    }
    if let Some(kind) = args.health_type {
        spec.health.kind = Some(kind);
    }
    if let Some(path) = &args.health_path {
        spec.health.path = Some(path.clone());
    }
    if let Some(interval) = args.health_interval {
        spec.health.interval = Some(interval);
    }
}

/// A mode as `--mode` and the `mode` filter spell it.
fn mode(mode: ServiceMode) -> &'static str {
    match mode {
        ServiceMode::Replicated => "replicated",
        ServiceMode::Global => "global",
    }
}

/// `service ls`: one row per service, like `docker service ls`.
pub(crate) fn service_table(services: &[ServiceStatus]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|status| {
            let service = &status.service;
            let spec = &service.spec;
            let ports = spec
                .ports
                .iter()
                .map(|p| {
                    let target = p.target.unwrap_or(p.published);
                    let protocol = p.protocol.as_deref().unwrap_or("tcp");
                    if p.is_published() {
                        format!("*:{}->{target}/{protocol}", p.published)
                    } else {
                        // VIP only, as docker shows an exposed port.
                        format!("{target}/{protocol}")
                    }
                })
                .collect::<Vec<_>>()
                .join(",");
            let replicas = if spec.image.is_none() && spec.command.is_none() && spec.args.is_empty()
            {
                "-".to_owned()
            } else {
                format!("{}/{}", status.running, status.desired)
            };
            let id = if service.id.is_empty() {
                "-".to_owned()
            } else {
                service.id.clone()
            };
            vec![
                id,
                spec.name.clone(),
                mode(spec.mode).to_owned(),
                replicas,
                spec.image.clone().unwrap_or_else(|| "-".to_owned()),
                match service.vip_v6 {
                    Some(v6) => format!("{},{v6}", service.vip),
                    None => service.vip.to_string(),
                },
                spec.endpoints.len().to_string(),
                spec.algorithm.to_string(),
                service.version.to_string(),
                ports,
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "MODE",
            "REPLICAS",
            "IMAGE",
            "VIP",
            "ENDPOINTS",
            "ALGORITHM",
            "VERSION",
            "PORTS",
        ],
        &rows,
    )
}

/// `service ps`'s lines under the table, one per listen address a node
/// cannot bind (`node-2: cannot bind 127.0.0.2:8080: address in use`),
/// after a blank line; nothing when every node binds every address.
fn listener_lines(errors: &[ListenerError]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let lines: String = errors.iter().map(|error| format!("{error}\n")).collect();
    format!("\n{lines}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Noun, ServiceCommand};
    use clap::Parser;
    use std::time::Duration;

    /// The timeout flags reach the spec the API gets.
    #[test]
    fn timeout_flags_set_the_spec() {
        let cli = Cli::try_parse_from([
            "lbctl",
            "service",
            "create",
            "web",
            "--connect-timeout",
            "1s",
            "--idle-timeout",
            "5m",
            "--retry-on-empty",
            "true",
            "--reply-timeout",
            "750ms",
            "--access-log",
            "true",
            "-p",
            "53:53/udp",
            "--udp-idle-timeout",
            "30s",
            "--max-udp-sessions",
            "500",
        ])
        .expect("flags parse");
        let Noun::Service(command) = cli.command else {
            panic!("not a service command");
        };
        let ServiceCommand::Create { spec: args, .. } = *command else {
            panic!("not a service create");
        };
        let mut spec = ServiceSpec::default();
        apply_flags(&args, &mut spec, true);
        assert_eq!(spec.connect_timeout, Some(Duration::from_secs(1)));
        assert_eq!(spec.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(spec.retry_on_empty, Some(true));
        assert_eq!(spec.reply_timeout, Some(Duration::from_millis(750)));
        assert_eq!(spec.access_log, Some(true));
        assert_eq!(spec.udp_idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(spec.max_udp_sessions, Some(500));
        assert_eq!(spec.ports[0].protocol.as_deref(), Some("udp"));
    }

    /// Rollback flags fill the spec's `rollback` table, and an update
    /// that sets one keeps the others it had.
    #[test]
    fn rollback_flags_set_the_rollback_policy() {
        let parse = |args: &[&str]| -> SpecArgs {
            let cli = Cli::try_parse_from(["lbctl", "service", "update", "web"].iter().chain(args))
                .expect("flags parse");
            let Noun::Service(command) = cli.command else {
                panic!("not a service command");
            };
            let ServiceCommand::Update { spec, .. } = *command else {
                panic!("not a service update");
            };
            spec
        };
        let mut spec = ServiceSpec::default();
        apply_flags(&parse(&["--update-parallelism", "1"]), &mut spec, false);
        assert_eq!(spec.rollback, None, "no rollback flag: as the update");
        let flags = parse(&[
            "--rollback-parallelism",
            "0",
            "--rollback-order",
            "start-first",
            "--rollback-failure-action",
            "continue",
            "--rollback-monitor",
            "2s",
            "--rollback-delay",
            "1s",
        ]);
        apply_flags(&flags, &mut spec, false);
        let expected = UpdateSpec {
            parallelism: Some(0),
            delay: Some(Duration::from_secs(1)),
            order: Some(lb_config::UpdateOrder::StartFirst),
            failure_action: Some(lb_config::FailureAction::Continue),
            monitor: Some(Duration::from_secs(2)),
        };
        assert_eq!(spec.rollback.as_ref(), Some(&expected));
        apply_flags(&parse(&["--rollback-parallelism", "2"]), &mut spec, false);
        let rollback = spec.rollback.expect("rollback");
        assert_eq!(rollback.parallelism, Some(2));
        assert_eq!(rollback.order, expected.order, "kept");
        assert_eq!(spec.update.parallelism, Some(1), "the update's untouched");
    }

    #[test]
    fn an_update_adds_a_udp_port_beside_the_tcp_one_of_its_number() {
        let cli = Cli::try_parse_from([
            "lbctl",
            "service",
            "update",
            "dns",
            "-p",
            "53:53/udp",
            "-p",
            "54:54",
        ])
        .expect("flags parse");
        let Noun::Service(command) = cli.command else {
            panic!("not a service command");
        };
        let ServiceCommand::Update { spec: args, .. } = *command else {
            panic!("not a service update");
        };
        let mut spec = ServiceSpec {
            ports: vec![
                lb_config::PortSpec {
                    published: 53,
                    target: Some(53),
                    protocol: None,
                },
                lb_config::PortSpec {
                    published: 54,
                    target: Some(1),
                    protocol: Some("tcp".to_owned()),
                },
            ],
            ..ServiceSpec::default()
        };
        apply_flags(&args, &mut spec, false);
        let ports: Vec<(i64, Option<i64>, Option<&str>)> = spec
            .ports
            .iter()
            .map(|p| (p.published, p.target, p.protocol.as_deref()))
            .collect();
        assert_eq!(
            ports,
            [
                (53, Some(53), None),
                (53, Some(53), Some("udp")),
                (54, Some(54), None)
            ]
        );
    }

    #[test]
    fn listener_errors_are_one_line_each_under_the_table() {
        assert_eq!(listener_lines(&[]), "");
        let errors = [
            ListenerError {
                node: "node-2".to_owned(),
                address: "127.0.0.2:8080".parse().expect("address"), // fixed-port-ok: text only
                protocol: lb_config::Protocol::Tcp,
                error: "address in use".to_owned(),
            },
            ListenerError {
                node: "node-2".to_owned(),
                address: "127.0.0.2:53".parse().expect("address"), // fixed-port-ok: text only
                protocol: lb_config::Protocol::Udp,
                error: "address in use".to_owned(),
            },
        ];
        assert_eq!(
            listener_lines(&errors),
            "\nnode-2: cannot bind 127.0.0.2:8080: address in use\nnode-2: cannot bind 127.0.0.2:53/udp: address in use\n"
        );
    }
}
