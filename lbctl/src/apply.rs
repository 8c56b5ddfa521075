//! `lbctl apply -f FILE [--prune] [--dry-run]`.
//!
//! ```text
//! read + parse + validate every spec ─> GET /v1/services ─> plan ─> print the plan
//!   ─> (--dry-run: stop) ─> create / update (PUT) / remove (--prune), in plan order
//! ```
//!
//! The plan has one line per service: `create`, `update` with each changed
//! field (`replicas: 2 -> 3`), `unchanged`, and with `--prune` `remove` for
//! a service the file does not name. It is printed before anything is
//! sent, so a failed step leaves it on screen above the error. A file's
//! `[node]` table configures one `lbd --config` process, not the cluster:
//! apply says on stderr that it is ignored. A compose file is refused with
//! a pointer to `lbctl stack deploy`, which plans and acts through
//! [`execute`] too.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use lb_config::{ConfigFile, NodeConfig, ServiceSpec};
use lbmesh_api::{Client, Service, Task};
use serde_json::Value;

use crate::error::CtlError;

/// What apply does to one service.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Create(&'a ServiceSpec),
    /// The new spec and its changed fields (`path: old -> new`).
    Update(&'a ServiceSpec, Vec<String>),
    Unchanged(&'a str),
    Remove(&'a str),
}

pub async fn run(
    client: &Client,
    file: &Path,
    prune: bool,
    dry_run: bool,
) -> Result<String, CtlError> {
    let path = file.to_path_buf();
    let contents = std::fs::read_to_string(file).map_err(|source| CtlError::Read {
        path: path.clone(),
        source,
    })?;
    let parsed = ConfigFile::parse(&contents).map_err(|reason| CtlError::Parse {
        path: path.clone(),
        reason: if looks_like_compose(file, &contents) {
            format!(
                "this is a compose file, not lbmesh's [[service]] TOML: deploy it with \
                 `lbctl stack deploy -c {} NAME`",
                file.display()
            )
        } else {
            reason
        },
    })?;
    parsed.validate().map_err(|source| CtlError::Invalid {
        path: path.clone(),
        source,
    })?;
    if parsed.node != NodeConfig::default() {
        eprintln!(
            "Notice: {}: the [node] table is ignored: it configures one `lbd --config` process, not the cluster",
            path.display()
        );
    }
    let existing: BTreeMap<String, ServiceSpec> = client
        .services()
        .await?
        .into_iter()
        .map(|status| (status.service.spec.name.clone(), status.service.spec))
        .collect();
    Ok(execute(client, &parsed.services, &existing, prune, dry_run)
        .await?
        .summary)
}

/// What [`execute`] did.
pub struct Executed {
    /// The line to print last: what was created, updated and removed.
    pub summary: String,
    /// Each created or updated service as the write answered, with its
    /// tasks read just before the write (none for a create), for
    /// following the write ([`crate::follow::Target::new`]).
    pub written: Vec<(Service, Vec<Task>)>,
}

/// Plans `wanted` against `existing` (the services it may update or, with
/// `prune`, remove), prints the plan, then acts on it unless `dry_run`.
/// `lbctl stack deploy` takes this path too, with its stack's services.
pub async fn execute(
    client: &Client,
    wanted: &[ServiceSpec],
    existing: &BTreeMap<String, ServiceSpec>,
    prune: bool,
    dry_run: bool,
) -> Result<Executed, CtlError> {
    let steps = plan(wanted, existing, prune)?;
    let mut stdout = std::io::stdout();
    // Shown before the first write; a write error still leaves it visible.
    write!(stdout, "{}", plan_text(&steps))
        .and_then(|()| stdout.flush())
        .map_err(|source| CtlError::Write {
            path: "stdout".into(),
            source,
        })?;
    let mut written = Vec::new();
    if dry_run {
        return Ok(Executed {
            summary: "dry run: nothing changed\n".to_owned(),
            written,
        });
    }
    let mut counts = [0usize; 4];
    for step in &steps {
        match step {
            Step::Create(spec) => {
                written.push((client.create_service(spec).await?, Vec::new()));
                counts[0] += 1;
            }
            Step::Update(spec, _) => {
                let before = client.service_tasks(&spec.name).await?;
                written.push((client.update_service(spec).await?, before));
                counts[1] += 1;
            }
            Step::Unchanged(_) => counts[2] += 1,
            Step::Remove(name) => {
                client.remove_service(name).await?;
                counts[3] += 1;
            }
        }
    }
    let [created, updated, unchanged, removed] = counts;
    Ok(Executed {
        summary: format!(
            "applied: {created} created, {updated} updated, {unchanged} unchanged, {removed} removed\n"
        ),
        written,
    })
}

/// A file `apply` cannot read that a compose user meant for `stack
/// deploy`: named `.yml`/`.yaml`, or with a top-level `services:` line.
fn looks_like_compose(file: &Path, contents: &str) -> bool {
    let yaml = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml"));
    yaml || contents.lines().any(|line| line.trim_end() == "services:")
}

/// The steps that make the cluster's services match the file's: the
/// file's services in file order, then (with `prune`) the removals.
fn plan<'a>(
    wanted: &'a [ServiceSpec],
    existing: &'a BTreeMap<String, ServiceSpec>,
    prune: bool,
) -> Result<Vec<Step<'a>>, CtlError> {
    let mut steps = Vec::new();
    for spec in wanted {
        steps.push(match existing.get(&spec.name) {
            None => Step::Create(spec),
            Some(current) if current == spec => Step::Unchanged(&spec.name),
            Some(current) => Step::Update(spec, changes(current, spec)?),
        });
    }
    if prune {
        for name in existing.keys() {
            if !wanted.iter().any(|s| &s.name == name) {
                steps.push(Step::Remove(name));
            }
        }
    }
    Ok(steps)
}

fn plan_text(steps: &[Step<'_>]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Create(spec) => out.push_str(&format!("{}: create\n", spec.name)),
            Step::Update(spec, fields) => {
                out.push_str(&format!("{}: update\n", spec.name));
                for field in fields {
                    out.push_str(&format!("    {field}\n"));
                }
            }
            Step::Unchanged(name) => out.push_str(&format!("{name}: unchanged\n")),
            Step::Remove(name) => out.push_str(&format!("{name}: remove\n")),
        }
    }
    out
}

/// The fields that differ between two specs, as `path: old -> new` with
/// values in compact JSON (`-` for one not set), walking nested tables
/// (`update.order`). The specs' own serde form is what is compared, so a
/// field added to `ServiceSpec` is covered without a change here.
fn changes(current: &ServiceSpec, wanted: &ServiceSpec) -> Result<Vec<String>, CtlError> {
    let mut out = Vec::new();
    diff(
        "",
        &serde_json::to_value(current)?,
        &serde_json::to_value(wanted)?,
        &mut out,
    );
    Ok(out)
}

fn diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
            for key in keys {
                let at = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                diff(
                    &at,
                    old.get(key).unwrap_or(&Value::Null),
                    new.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (old, new) if old != new => {
            let show = |v: &Value| match v {
                Value::Null => "-".to_owned(),
                other => other.to_string(),
            };
            out.push(format!("{path}: {} -> {}", show(old), show(new)));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml: &str) -> ServiceSpec {
        let file = ConfigFile::parse(toml).expect("spec");
        file.services.into_iter().next().expect("one service")
    }

    #[test]
    fn the_plan_names_each_step_and_the_changed_fields() {
        let web_old = spec(
            "[[service]]\nname = \"web\"\nreplicas = 2\ncommand = \"srv\"\nports = [{ published = 8080, target = 80 }]\n",
        );
        let web_new = spec(
            "[[service]]\nname = \"web\"\nreplicas = 3\ncommand = \"srv\"\nports = [{ published = 8080, target = 81 }]\n[service.update]\norder = \"start-first\"\n",
        );
        let api =
            spec("[[service]]\nname = \"api\"\nendpoints = [{ address = \"127.0.0.1:9\" }]\n");
        let db = spec("[[service]]\nname = \"db\"\nendpoints = [{ address = \"127.0.0.1:7\" }]\n");
        let old =
            spec("[[service]]\nname = \"old\"\nendpoints = [{ address = \"127.0.0.1:5\" }]\n");
        let existing = BTreeMap::from([
            ("web".to_owned(), web_old),
            ("db".to_owned(), db.clone()),
            ("old".to_owned(), old),
        ]);
        let wanted = [web_new, api, db];
        let text = plan_text(&plan(&wanted, &existing, true).unwrap());
        assert_eq!(
            text,
            "web: update\n    ports: [{\"published\":8080,\"target\":80}] -> [{\"published\":8080,\"target\":81}]\n    replicas: 2 -> 3\n    update.order: - -> \"start-first\"\napi: create\ndb: unchanged\nold: remove\n"
        );
        let without_prune = plan_text(&plan(&wanted, &existing, false).unwrap());
        assert!(!without_prune.contains("old"), "{without_prune}");
    }
}
