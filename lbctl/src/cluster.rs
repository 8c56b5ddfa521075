//! `lbctl cluster info|join-token`.

use lbmesh_api::{Client, ClusterInfo, NodeId, Role};

use crate::cli::{ClusterCommand, Format, JoinRole};
use crate::error::CtlError;
use crate::output::render;

pub async fn run(
    client: &Client,
    command: &ClusterCommand,
    format: Format,
) -> Result<String, CtlError> {
    match command {
        ClusterCommand::Info => render(format, &client.cluster_info().await?, info_text),
        ClusterCommand::JoinToken { role } => {
            let role = match role {
                JoinRole::Manager => Role::Manager,
                JoinRole::Worker => Role::Worker,
            };
            let token = client.join_token(role).await?;
            render(format, &token, |token| format!("{}\n", token.token))
        }
    }
}

fn info_text(info: &ClusterInfo) -> String {
    let list = |ids: &[NodeId]| {
        ids.iter()
            .map(NodeId::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    // No leader shows as JSON's `null`, as it always has.
    let leader = info
        .leader
        .map_or_else(|| "null".to_owned(), |id| id.to_string());
    format!(
        "Cluster:   {}\nNode:      {}\nLeader:    {}\nTerm:      {}\nCommitted: {}\nApplied:   {}\nVoters:    {}\nLearners:  {}\nNodes:     {}\nServices:  {}\n",
        info.id,
        info.node_id,
        leader,
        info.term,
        info.commit_index,
        info.applied_index,
        list(&info.voters),
        list(&info.learners),
        info.nodes,
        info.services
    )
}
