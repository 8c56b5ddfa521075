//! `lbctl stack deploy|ls|services|ps|rm`: the services of a compose file,
//! deployed and listed together, as `docker stack` does.
//!
//! ```text
//! deploy: compose::load (read, interpolate, map, validate every service) ─> GET /v1/services
//!   ─> the stack's services (labelled com.docker.stack.namespace=NAME) and the others
//!   ─> refuse a name another stack or a lone service holds, or a published port that
//!      a service staying after the deploy holds ─> apply::execute (plan, print, act)
//! ls, services, ps, rm: GET /v1/services ─> the services with the stack's label ─> ...
//! ```
//!
//! Everything deploy can find wrong it finds before the first write, so a
//! refused deploy changes nothing. A redeploy updates only the services
//! whose spec changed (each rolls per its update config); an unchanged one
//! is not touched and its tasks keep running. `--prune` also removes the
//! stack's services the files no longer name; services outside the stack
//! are never touched. Deploy then follows every service it created or
//! updated to convergence, as `service create|update` do
//! ([`crate::follow`]): it exits 1 naming the first task of the new specs
//! that fails, or after `--timeout`; `-d` returns once the writes are
//! stored.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lb_config::ServiceSpec;
use lbmesh_api::{Client, ServiceStatus};
use serde::Serialize;

use crate::apply;
use crate::cli::{Format, StackCommand};
use crate::compose::{self, STACK_LABEL};
use crate::error::CtlError;
use crate::output::render;
use crate::service::{followed, service_table};
use crate::table::table;
use crate::tasks;

pub async fn run(
    client: &Client,
    command: &StackCommand,
    format: Format,
) -> Result<String, CtlError> {
    match command {
        StackCommand::Deploy {
            files,
            prune,
            follow,
            name,
        } => {
            let executed = deploy(client, files, name, *prune).await?;
            // The plan is printed; the summary goes before the progress,
            // which follows every service the deploy created or updated.
            followed(client, &executed.written, *follow, format, executed.summary).await
        }
        StackCommand::Ls => {
            let mut stacks: BTreeMap<String, usize> = BTreeMap::new();
            for status in client.services().await? {
                if let Some(stack) = stack_of(&status.service.spec) {
                    *stacks.entry(stack.to_owned()).or_default() += 1;
                }
            }
            let rows: Vec<StackRow> = stacks
                .into_iter()
                .map(|(name, services)| StackRow { name, services })
                .collect();
            render(format, &rows, |rows| {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|row| vec![row.name.clone(), row.services.to_string()])
                    .collect();
                table(&["NAME", "SERVICES"], &cells)
            })
        }
        StackCommand::Services { name, quiet } => {
            let services = members(client, name).await?;
            if *quiet {
                return Ok(services
                    .iter()
                    .map(|s| format!("{}\n", s.service.spec.name))
                    .collect());
            }
            render(format, &services, |services| service_table(services))
        }
        StackCommand::Ps { name, list } => {
            let mut all = Vec::new();
            for status in members(client, name).await? {
                all.extend(client.service_tasks(&status.service.spec.name).await?);
            }
            let all = tasks::filtered(all, list)?;
            tasks::render(&all, list, format)
        }
        StackCommand::Rm { names } => {
            // Every stack is looked up before the first removal.
            let mut doomed = Vec::new();
            for name in names {
                doomed.push(members(client, name).await?);
            }
            let mut out = String::new();
            for status in doomed.iter().flatten() {
                let service = &status.service.spec.name;
                client.remove_service(service).await?;
                out.push_str(&format!("Removing service {service}\n"));
            }
            Ok(out)
        }
    }
}

/// One row of `stack ls`.
#[derive(Debug, Serialize)]
struct StackRow {
    name: String,
    services: usize,
}

/// The stack a service belongs to, from its label.
fn stack_of(spec: &ServiceSpec) -> Option<&str> {
    spec.labels.get(STACK_LABEL).map(String::as_str)
}

/// The services of stack `name`; none is docker's error.
async fn members(client: &Client, name: &str) -> Result<Vec<ServiceStatus>, CtlError> {
    let mut services = client.services().await?;
    services.retain(|status| stack_of(&status.service.spec) == Some(name));
    if services.is_empty() {
        return Err(CtlError::Compose(format!("nothing found in stack: {name}")));
    }
    Ok(services)
}

async fn deploy(
    client: &Client,
    files: &[PathBuf],
    name: &str,
    prune: bool,
) -> Result<apply::Executed, CtlError> {
    let env = |key: &str| std::env::var(key).ok();
    let stack = compose::load(files, name, &env)?;
    for notice in &stack.notices {
        eprintln!("{notice}");
    }
    let mut ours: BTreeMap<String, ServiceSpec> = BTreeMap::new();
    let mut others: Vec<ServiceSpec> = Vec::new();
    for status in client.services().await? {
        let spec = status.service.spec;
        if stack_of(&spec) == Some(name) {
            ours.insert(spec.name.clone(), spec);
        } else {
            others.push(spec);
        }
    }
    let wanted: Vec<ServiceSpec> = stack.services.iter().map(|s| s.spec.clone()).collect();
    // What stays beside the file's services once the deploy is done.
    let staying: Vec<&ServiceSpec> = others
        .iter()
        .chain(
            ours.values()
                .filter(|spec| !prune && !wanted.iter().any(|w| w.name == spec.name)),
        )
        .collect();
    for service in &stack.services {
        let at = |key: &str, reason: String| {
            CtlError::Compose(format!(
                "{}: services.{}{key}: {reason}",
                service.file.display(),
                service.name
            ))
        };
        if let Some(other) = others.iter().find(|o| o.name == service.spec.name) {
            let owner = match stack_of(other) {
                Some(stack) => format!("stack {stack}"),
                None => "no stack".to_owned(),
            };
            return Err(at(
                "",
                format!(
                    "service {} already exists and belongs to {owner}",
                    service.spec.name
                ),
            ));
        }
        for port in service.spec.ports.iter().filter(|p| p.is_published()) {
            // A port is owned per protocol: 53/tcp and 53/udp do not clash.
            fn protocol(port: &lb_config::PortSpec) -> &str {
                port.protocol.as_deref().unwrap_or("tcp")
            }
            let holder = staying.iter().find(|s| {
                s.ports
                    .iter()
                    .any(|p| p.published == port.published && protocol(p) == protocol(port))
            });
            if let Some(holder) = holder {
                return Err(at(
                    ".ports",
                    format!(
                        "published port {}/{} is already published by service {}",
                        port.published,
                        protocol(port),
                        holder.name
                    ),
                ));
            }
        }
    }
    apply::execute(client, &wanted, &ours, prune, false).await
}
