//! Task listings shared by `service ps` and `node ps`: docker's columns,
//! `-q` (ids only) and the `id`, `name`, `node` and `desired-state`
//! filters.

use std::time::{Duration, SystemTime};

use lbmesh_api::Task;

use crate::cli::{Format, ListArgs};
use crate::error::CtlError;
use crate::filter::{Filters, TASK_PS};
use crate::output::json;
use crate::table::table;

/// `tasks` less those the filters drop.
pub fn filtered(mut tasks: Vec<Task>, list: &ListArgs) -> Result<Vec<Task>, CtlError> {
    let filters = Filters::new(&list.filter, TASK_PS)?;
    tasks.retain(|task| {
        let name = task_name(task);
        filters.keep("id", |v| task.id.starts_with(v))
            && filters.keep("name", |v| name.starts_with(v))
            && filters.keep("node", |v| {
                task.node_name.as_deref() == Some(v)
                    || task.node.is_some_and(|id| id.to_string() == v)
            })
            && filters.keep("desired-state", |v| task.desired.as_str() == v)
    });
    Ok(tasks)
}

/// The listing as JSON, ids (`-q`) or the table.
pub fn render(tasks: &[Task], list: &ListArgs, format: Format) -> Result<String, CtlError> {
    if list.quiet {
        return Ok(tasks.iter().map(|t| format!("{}\n", t.id)).collect());
    }
    match format {
        Format::Json => json(&tasks),
        Format::Table => Ok(task_table(tasks)),
    }
}

/// `web.2`, or `web.node-a` for a global service's task (slot 0).
pub fn task_name(task: &Task) -> String {
    if task.slot == 0 {
        format!(
            "{}.{}",
            task.service,
            task.node_name.as_deref().unwrap_or_default()
        )
    } else {
        format!("{}.{}", task.service, task.slot)
    }
}

/// One row per task, like `docker service ps`.
fn task_table(tasks: &[Task]) -> String {
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|task| {
            let age = now
                .duration_since(task.updated_at.system_time())
                .unwrap_or_default();
            let age = Duration::from_secs(age.as_secs());
            vec![
                task.id.clone(),
                task_name(task),
                task.node_name.as_deref().unwrap_or("-").to_owned(),
                task.desired.to_string(),
                format!("{} {} ago", task.state, humantime::format_duration(age)),
                task.health.to_string(),
                task.endpoint
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), endpoint),
                task.message.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "NAME", "NODE", "DESIRED", "CURRENT", "HEALTH", "ENDPOINT", "MESSAGE",
        ],
        &rows,
    )
}

/// A task endpoint as `ip:port[,ip:port]`, `-` without ports.
fn endpoint(endpoint: &lbmesh_api::TaskEndpoint) -> String {
    let addrs: Vec<String> = endpoint
        .ports
        .iter()
        .map(|(_, host)| format!("{}:{host}", endpoint.ip))
        .collect();
    if addrs.is_empty() {
        "-".to_owned()
    } else {
        addrs.join(",")
    }
}
