//! `lbctl apply -f FILE [--prune]`: every spec in the file is validated
//! first; only then are services created, updated (when their spec
//! differs) and, with `--prune`, the others removed.

use std::collections::BTreeMap;
use std::path::Path;

use lb_config::{ConfigFile, ServiceSpec};
use lbmesh_api::Client;

use crate::error::CtlError;

pub async fn run(client: &Client, file: &Path, prune: bool) -> Result<String, CtlError> {
    let path = file.to_path_buf();
    let contents = std::fs::read_to_string(file).map_err(|source| CtlError::Read {
        path: path.clone(),
        source,
    })?;
    let parsed = ConfigFile::parse(&contents).map_err(|reason| CtlError::Parse {
        path: path.clone(),
        reason,
    })?;
    parsed
        .validate()
        .map_err(|source| CtlError::Invalid { path, source })?;
    let existing: BTreeMap<String, ServiceSpec> = client
        .services()
        .await?
        .into_iter()
        .map(|status| (status.service.spec.name.clone(), status.service.spec))
        .collect();
    let mut out = String::new();
    for spec in &parsed.services {
        match existing.get(&spec.name) {
            None => {
                client.create_service(spec).await?;
                out.push_str(&format!("{}: created\n", spec.name));
            }
            Some(current) if current == spec => {
                out.push_str(&format!("{}: unchanged\n", spec.name));
            }
            Some(_) => {
                client.update_service(spec).await?;
                out.push_str(&format!("{}: updated\n", spec.name));
            }
        }
    }
    if prune {
        for name in existing.keys() {
            if !parsed.services.iter().any(|s| &s.name == name) {
                client.remove_service(name).await?;
                out.push_str(&format!("{name}: removed\n"));
            }
        }
    }
    Ok(out)
}
