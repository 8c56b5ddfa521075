//! `lbctl node ls|inspect|ps|update|promote|demote|rm`.

use lbmesh_api::{Client, Node, NodeUpdate, Role};

use crate::cli::{Availability, Format, NodeCommand};
use crate::error::CtlError;
use crate::filter::{label_matches, Filters, NODE_LS};
use crate::output::{json, render};
use crate::table::table;
use crate::tasks;

pub async fn run(
    client: &Client,
    command: &NodeCommand,
    format: Format,
) -> Result<String, CtlError> {
    match command {
        NodeCommand::Ls { list } => {
            let filters = Filters::new(&list.filter, NODE_LS)?;
            let mut nodes = client.nodes().await?;
            nodes.retain(|node| {
                let member = &node.member;
                filters.keep("id", |v| member.id.to_string().starts_with(v))
                    && filters.keep("name", |v| member.name.starts_with(v))
                    && filters.keep("label", |v| label_matches(&member.labels, v))
                    && filters.keep("role", |v| member.role.as_str() == v)
            });
            if list.quiet {
                return Ok(nodes.iter().map(|n| format!("{}\n", n.member.id)).collect());
            }
            render(format, &nodes, |nodes| node_table(nodes))
        }
        NodeCommand::Inspect { nodes } => {
            let mut found = Vec::new();
            for node in nodes {
                found.push(client.node(node).await?);
            }
            match found.as_slice() {
                [one] => json(one),
                several => json(&several),
            }
        }
        NodeCommand::Ps { nodes, list } => {
            let mut found = Vec::new();
            for node in nodes {
                found.extend(client.node_tasks(node).await?);
            }
            tasks::render(&tasks::filtered(found, list)?, list, format)
        }
        NodeCommand::Update {
            node,
            availability,
            label_add,
            label_rm,
        } => {
            let update = NodeUpdate {
                availability: availability.map(|a| match a {
                    Availability::Active => lbmesh_api::Availability::Active,
                    Availability::Pause => lbmesh_api::Availability::Pause,
                    Availability::Drain => lbmesh_api::Availability::Drain,
                }),
                labels_add: label_add.iter().cloned().collect(),
                labels_remove: label_rm.clone(),
                role: None,
            };
            let updated = client.update_node(node, &update).await?;
            render(format, &updated, |member| format!("{}\n", member.name))
        }
        NodeCommand::Promote { nodes } => set_role(client, nodes, Role::Manager).await,
        NodeCommand::Demote { nodes } => set_role(client, nodes, Role::Worker).await,
        NodeCommand::Rm { node, force } => {
            client.remove_node(node, *force).await?;
            Ok(format!("{node}\n"))
        }
    }
}

/// `node promote|demote`: one update per node, in the order given; prints
/// each node's name once its role and votes changed.
async fn set_role(client: &Client, nodes: &[String], role: Role) -> Result<String, CtlError> {
    let mut out = String::new();
    for node in nodes {
        let update = NodeUpdate {
            role: Some(role),
            ..NodeUpdate::default()
        };
        let member = client.update_node(node, &update).await?;
        out.push_str(&format!("{} is now a {role}\n", member.name));
    }
    Ok(out)
}

fn node_table(nodes: &[Node]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|node| {
            let member = &node.member;
            vec![
                member.id.to_string(),
                member.name.clone(),
                member.status.to_string(),
                member.availability.to_string(),
                member.role.to_string(),
                node.raft.to_string(),
                member.ingress_addr.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "STATUS",
            "AVAILABILITY",
            "ROLE",
            "RAFT",
            "INGRESS",
        ],
        &rows,
    )
}
