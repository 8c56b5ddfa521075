//! `lbctl service create|ls|inspect|ps|scale|update|rollback|rm`.
//!
//! `ls` and `ps` take `-q` and `--filter` ([`crate::filter`]); `inspect`
//! and `ps` take several names.
//!
//! `create` builds a spec from the flags; `update` reads the current spec,
//! drops what the `--*-rm` flags name, applies the flags given and sends the
//! whole spec back. `scale` checks every target exists before changing any.

use lb_config::{ServiceMode, ServiceSpec};
use lbmesh_api::{Client, DesiredState, ListenerError, ServiceStatus};

use crate::cli::{Format, ServiceCommand, SpecArgs};
use crate::error::CtlError;
use crate::filter::{Filters, SERVICE_LS};
use crate::output::{json, render};
use crate::table::table;
use crate::tasks;

pub async fn run(
    client: &Client,
    command: &ServiceCommand,
    format: Format,
) -> Result<String, CtlError> {
    match command {
        ServiceCommand::Create { name, spec } => {
            let mut body = ServiceSpec {
                name: name.clone(),
                ..ServiceSpec::default()
            };
            apply_flags(spec, &mut body, true);
            let created = client.create_service(&body).await?;
            render(format, &created, |_| format!("{name}\n"))
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
        ServiceCommand::Scale { targets } => {
            for (name, _) in targets {
                client.service(name).await?;
            }
            let mut out = String::new();
            for (name, replicas) in targets {
                client.scale_service(name, *replicas).await?;
                out.push_str(&format!("{name} scaled to {replicas}\n"));
            }
            Ok(out)
        }
        ServiceCommand::Update {
            name,
            spec,
            publish_rm,
            endpoint_rm,
            env_rm,
            constraint_rm,
        } => {
            let mut body = client.service(name).await?.service.spec;
            body.ports.retain(|p| !publish_rm.contains(&p.published));
            body.endpoints.retain(|e| !endpoint_rm.contains(&e.address));
            body.env
                .retain(|e| !env_rm.iter().any(|rm| rm == env_key(e)));
            body.constraints.retain(|c| !constraint_rm.contains(c));
            apply_flags(spec, &mut body, false);
            let updated = client.update_service(&body).await?;
            render(format, &updated, |_| format!("{name}\n"))
        }
        ServiceCommand::Rollback { name } => {
            client.rollback_service(name).await?;
            Ok(format!("{name}\n"))
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

/// The key of a `KEY=VALUE` environment entry.
fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(key, _)| key)
}

/// Writes the flags that were given into `spec`. `replace_lists` (create)
/// makes the published ports and endpoints exactly the flags'; otherwise
/// (update) each flag replaces the entry with the same port or address.
fn apply_flags(args: &SpecArgs, spec: &mut ServiceSpec, replace_lists: bool) {
    if replace_lists {
        spec.ports = args.publish.clone();
        spec.endpoints = args.endpoint.clone();
    } else {
        for port in &args.publish {
            spec.ports.retain(|p| p.published != port.published);
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
    if let Some(retry) = args.retry_on_empty {
        spec.retry_on_empty = Some(retry);
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
                    format!("*:{}->{target}/tcp", p.published)
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
                service.vip.to_string(),
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
    }

    #[test]
    fn listener_errors_are_one_line_each_under_the_table() {
        assert_eq!(listener_lines(&[]), "");
        let errors = [ListenerError {
            node: "node-2".to_owned(),
            address: "127.0.0.2:8080".parse().expect("address"), // fixed-port-ok: text only
            error: "address in use".to_owned(),
        }];
        assert_eq!(
            listener_lines(&errors),
            "\nnode-2: cannot bind 127.0.0.2:8080: address in use\n"
        );
    }
}
