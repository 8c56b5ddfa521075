//! `lbctl node ls|inspect|update|rm`.

use lbmesh_api::{Client, Node, NodeUpdate};

use crate::cli::{Availability, Format, NodeCommand};
use crate::error::CtlError;
use crate::output::{json, render};
use crate::table::table;

pub async fn run(
    client: &Client,
    command: &NodeCommand,
    format: Format,
) -> Result<String, CtlError> {
    match command {
        NodeCommand::Ls => render(format, &client.nodes().await?, |nodes| node_table(nodes)),
        NodeCommand::Inspect { node } => json(&client.node(node).await?),
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
            };
            let updated = client.update_node(node, &update).await?;
            render(format, &updated, |member| format!("{}\n", member.name))
        }
        NodeCommand::Rm { node, force } => {
            client.remove_node(node, *force).await?;
            Ok(format!("{node}\n"))
        }
    }
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
