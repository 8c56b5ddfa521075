//! `lbctl cluster info|join-token|token`.
//!
//! `token` reads the control token lbd keeps in its data dir
//! (`control-token`, mode 0600) and sends nothing: whoever can read that
//! file on the node (root, or the user lbd runs as) may have it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use lbmesh_api::{Client, ClusterInfo, JoinToken, NodeId, Role};

use crate::cli::{ClusterCommand, Format, JoinRole};
use crate::error::CtlError;
use crate::output::render;

/// The file in lbd's data dir holding the control token.
const CONTROL_TOKEN_FILE: &str = "control-token";
/// lbd's default data dir is `lbmesh-data/<advertise address>`.
const DEFAULT_DATA_ROOT: &str = "lbmesh-data";
/// lbd's local socket in its data dir.
pub const LOCAL_SOCKET: &str = "lbd.sock";

/// `client` makes the API client: `cluster token` needs none.
pub async fn run(
    client: impl FnOnce() -> Result<Client, CtlError>,
    host: &str,
    command: &ClusterCommand,
    format: Format,
) -> Result<String, CtlError> {
    match command {
        ClusterCommand::Token { data_dir } => {
            let dir = match data_dir {
                Some(dir) => dir.clone(),
                None => default_data_dir(host)?,
            };
            let token = JoinToken {
                token: local_token(&dir)?,
            };
            render(format, &token, |token| format!("{}\n", token.token))
        }
        ClusterCommand::Info => render(format, &client()?.cluster_info().await?, info_text),
        ClusterCommand::JoinToken { role, rotate } => {
            let client = client()?;
            let role = match role {
                JoinRole::Manager => Role::Manager,
                JoinRole::Worker => Role::Worker,
            };
            let token = if *rotate {
                client.rotate_join_token(role).await?
            } else {
                client.join_token(role).await?
            };
            render(format, &token, |token| format!("{}\n", token.token))
        }
    }
}

/// lbd's default data dir for the node at `host` (`http://IP:PORT`,
/// `IP:PORT` or `[IPv6]:PORT`).
pub fn default_data_dir(host: &str) -> Result<PathBuf, CtlError> {
    let authority = host
        .split_once("://")
        .map_or(host, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    let ip = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(ip, _)| ip),
        None if authority.matches(':').count() == 1 => authority.split_once(':').map(|(ip, _)| ip),
        None => Some(authority),
    };
    let ip: IpAddr = ip.and_then(|ip| ip.parse().ok()).ok_or_else(|| {
        CtlError::Token(format!(
            "--host {host:?} names no IP address to find the data dir by; give --data-dir"
        ))
    })?;
    Ok(Path::new(DEFAULT_DATA_ROOT).join(ip.to_string()))
}

/// The control token in `dir`'s token file.
fn local_token(dir: &Path) -> Result<String, CtlError> {
    let path = dir.join(CONTROL_TOKEN_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| CtlError::Read {
        path: path.clone(),
        source,
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(CtlError::Token(format!("{}: empty", path.display())));
    }
    Ok(token.to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_data_dir_is_lbds_for_the_hosts_ip() {
        let dir = |host| default_data_dir(host).map(|d| d.display().to_string());
        assert_eq!(
            dir("http://127.0.0.1:9900").ok().as_deref(), // fixed-port-ok: parsed, nothing bound
            Some("lbmesh-data/127.0.0.1")
        );
        assert_eq!(
            dir("10.0.0.3:9900").ok().as_deref(), // fixed-port-ok: parsed, nothing bound
            Some("lbmesh-data/10.0.0.3")
        );
        assert_eq!(
            dir("http://[::1]:9900/").ok().as_deref(), // fixed-port-ok: parsed, nothing bound
            Some("lbmesh-data/::1")
        );
        assert!(dir("http://node-a:9900").is_err()); // fixed-port-ok: parsed, nothing bound
    }
}
