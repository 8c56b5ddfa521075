//! A compose file (the Compose Specification, as `docker stack deploy`
//! reads it) turned into lbmesh service specs, for `lbctl stack deploy`.
//!
//! # Flow
//!
//! ```text
//! each -c FILE ─> YAML (serde_norway) ─> interpolate every string (crate::interpolate)
//!   ─> top-level keys checked ─> services merged over the files, in order
//!   ─> per service: keys sorted into honoured / ignored (a notice) / unknown (an error)
//!   ─> the honoured keys read with serde (deny_unknown_fields) ─> one ServiceSpec
//!   ─> every spec validated, alone and together (lb_config::ConfigFile::validate)
//! ```
//!
//! A compose service `web` of stack `app` becomes the lbmesh service
//! `app-web` (Swarm's `app_web`, but lbmesh's service names are DNS
//! labels), labelled [`STACK_LABEL`]`=app`. The mapping:
//!
//! | compose | spec |
//! |---|---|
//! | `image`, `user`, `stop_grace_period` | the same fields |
//! | `command` (string or list), `entrypoint` | `args`, `entrypoint`: exec form, a string split into words as compose does; without an `image`, a string `command` is a process task's shell line |
//! | `labels` (map or list) | `container_labels` |
//! | `healthcheck` (`test`, `interval`, `timeout`, `retries`, `start_period`, `disable`) | `healthcheck`, Docker's HEALTHCHECK of the container (a string `test` is `CMD-SHELL`) |
//! | `environment` (map or list), `env_file` | `env` (the files first; a key without a value is taken from lbctl's environment, or left out) |
//! | `ports` (`8080:80`, `8080:80/tcp`, `53:53/udp`, ranges, long form with `protocol`) | `ports` |
//! | `ports` with a target only (`"6379"`, long form without `published`), `expose` | `ports` without `published`: on the service's VIP only, on every node, published nowhere |
//! | `deploy.mode`, `replicas`, `placement.constraints`, `placement.max_replicas_per_node` | `mode`, `replicas`, `constraints`, `max_replicas_per_node` |
//! | `deploy.update_config`, `deploy.rollback_config`, `deploy.restart_policy` | `update`, `rollback` (how a rollback rolls; a `failure_action: rollback` there is refused), `restart` |
//! | `deploy.labels` | `labels`, with [`STACK_LABEL`] |
//! | `x-lbmesh` | lbmesh's own settings: `algorithm`, `proxy_protocol`, `retries`, `retry_on_empty`, `health`, timeouts, `max_connections` |
//!
//! Keys lbmesh does not act on are listed on stderr as Swarm does
//! (`Ignoring unsupported options: build, volumes`); a key that cannot be
//! honoured without changing the file's meaning (a `mode: host`
//! port, a host IP, a job) is an error naming
//! the file, the service and the key. Every error is found before the
//! first write, so a bad file changes nothing.
//!
//! A service without an `image` but with a `command` runs as a local
//! process (lbmesh's process runtime), as `lbctl service create
//! --command` does; `entrypoint`, `labels` and `healthcheck` need an
//! image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lb_config::{
    Algorithm, ConfigFile, ContainerHealthcheck, FailureAction, HealthSpec, PortSpec,
    ProxyProtocol, RestartCondition, ServiceMode, ServiceSpec, UpdateOrder, UpdateSpec,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_norway::{Mapping, Value};

use crate::error::CtlError;
use crate::interpolate::interpolate;

pub use lb_config::STACK_LABEL;

/// Top-level keys lbmesh reads (besides `x-` extensions).
const TOP_LEVEL_READ: &[&str] = &["version", "name", "services"];
/// Top-level keys it accepts and does not act on: lbmesh has no networks,
/// volumes, configs or secrets.
const TOP_LEVEL_IGNORED: &[&str] = &["networks", "volumes", "configs", "secrets"];

/// Service keys it acts on.
const SERVICE_HONOURED: &[&str] = &[
    "image",
    "command",
    "environment",
    "env_file",
    "ports",
    "expose",
    "deploy",
    "user",
    "stop_grace_period",
    "x-lbmesh",
    "entrypoint",
    "healthcheck",
    "labels",
];

/// Service keys of the Compose Specification it does not act on (the
/// notice names them). Anything else is an unknown key and an error.
const SERVICE_IGNORED: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "build",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "configs",
    "container_name",
    "cpu_count",
    "cpus",
    "depends_on",
    "develop",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "external_links",
    "extra_hosts",
    "hostname",
    "init",
    "ipc",
    "isolation",
    "links",
    "logging",
    "mem_limit",
    "network_mode",
    "networks",
    "pid",
    "platform",
    "privileged",
    "profiles",
    "pull_policy",
    "read_only",
    "restart",
    "secrets",
    "security_opt",
    "stop_signal",
    "sysctls",
    "tmpfs",
    "ulimits",
    "volumes",
    "shm_size",
    "stdin_open",
    "tty",
    "userns_mode",
    "working_dir",
];
/// `deploy` keys it does not act on.
const DEPLOY_IGNORED: &[&str] = &["resources", "endpoint_mode"];

/// The file's services as lbmesh specs, and what it ignored.
#[derive(Debug)]
pub struct Stack {
    /// In the order of the compose names (sorted).
    pub services: Vec<StackService>,
    /// `Ignoring unsupported options: ...` and the like, for stderr.
    pub notices: Vec<String>,
}

/// One compose service and the spec it became.
#[derive(Debug)]
pub struct StackService {
    /// Its compose name (`web`).
    pub name: String,
    /// The last file that defined it, for errors.
    pub file: PathBuf,
    pub spec: ServiceSpec,
}

/// Reads, interpolates (from `lookup`), merges and maps the files.
pub fn load(
    files: &[PathBuf],
    stack: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Stack, CtlError> {
    let mut sources = Vec::with_capacity(files.len());
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|source| CtlError::Read {
            path: path.clone(),
            source,
        })?;
        sources.push((path.clone(), text));
    }
    parse(&sources, stack, lookup)
}

/// [`load`] on texts already read: `(path, text)` per file.
pub fn parse(
    sources: &[(PathBuf, String)],
    stack: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Stack, CtlError> {
    lb_config::check_dns_label(stack).map_err(|r| compose_error("stack name", r))?;
    let mut ignored: Vec<String> = Vec::new();
    // Compose name -> (merged definition, the last file that named it).
    let mut services: BTreeMap<String, (Value, PathBuf)> = BTreeMap::new();
    for (path, text) in sources {
        let at = |reason: String| compose_error(&path.display().to_string(), reason);
        let mut value: Value = serde_norway::from_str(text).map_err(|e| at(e.to_string()))?;
        // YAML merge keys (`<<: *common`), which compose files use with x- anchors.
        value.apply_merge().map_err(|e| at(e.to_string()))?;
        interpolate_value(&mut value, "", lookup).map_err(at)?;
        let top = match value {
            Value::Mapping(top) => top,
            Value::Null => Mapping::new(),
            _ => return Err(at("the top level must be a mapping with `services`".into())),
        };
        for (key, item) in top {
            let key = key_text(&key).map_err(at)?;
            if key.starts_with("x-") || key == "version" || key == "name" {
                continue;
            }
            if TOP_LEVEL_IGNORED.contains(&key.as_str()) {
                push_once(&mut ignored, key);
                continue;
            }
            if key != "services" {
                let known: Vec<&str> = TOP_LEVEL_READ
                    .iter()
                    .chain(TOP_LEVEL_IGNORED)
                    .copied()
                    .collect();
                return Err(at(format!(
                    "unknown top-level key {key:?} (a compose file has {} and x- extensions)",
                    known.join(", ")
                )));
            }
            let Value::Mapping(defined) = item else {
                if item.is_null() {
                    continue;
                }
                return Err(at("services: must be a mapping of service names".into()));
            };
            for (name, definition) in defined {
                let name = key_text(&name).map_err(&at)?;
                let entry = services
                    .entry(name)
                    .or_insert_with(|| (Value::Mapping(Mapping::new()), path.clone()));
                merge(&mut entry.0, definition);
                entry.1 = path.clone();
            }
        }
    }
    if services.is_empty() {
        let files: Vec<String> = sources
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        return Err(compose_error(&files.join(", "), "no services".into()));
    }
    let mut specs = Vec::with_capacity(services.len());
    for (name, (definition, path)) in &services {
        let at = |key: &str, reason: String| {
            let key = if key.is_empty() {
                format!("services.{name}")
            } else {
                format!("services.{name}.{key}")
            };
            compose_error(&format!("{}: {key}", path.display()), reason)
        };
        lb_config::check_dns_label(name).map_err(|r| at("", r))?;
        let spec = service_spec(stack, name, definition, path, lookup, &mut ignored)
            .map_err(|(key, reason)| at(&key, reason))?;
        spec.check_limits()
            .and_then(|()| spec.validate().map(drop))
            .map_err(|e| at("", format!("as lbmesh service {}: {e}", spec.name)))?;
        specs.push(StackService {
            name: name.clone(),
            file: path.clone(),
            spec,
        });
    }
    // The rules across services (a published port used twice, ...).
    let together = ConfigFile {
        services: specs.iter().map(|s| s.spec.clone()).collect(),
        ..ConfigFile::default()
    };
    together.validate().map_err(|e| {
        let files: Vec<String> = sources
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        compose_error(&files.join(", "), e.to_string())
    })?;
    ignored.sort();
    let notices = if ignored.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "Ignoring unsupported options: {}",
            ignored.join(", ")
        )]
    };
    Ok(Stack {
        services: specs,
        notices,
    })
}

fn compose_error(at: &str, reason: String) -> CtlError {
    CtlError::Compose(format!("{at}: {reason}"))
}

fn push_once(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn key_text(key: &Value) -> Result<String, String> {
    match key {
        Value::String(text) => Ok(text.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("key {other:?} is not a string")),
    }
}

/// Interpolates every string in `value`; `path` names where, for errors.
fn interpolate_value(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    match value {
        Value::String(text) => {
            *text = interpolate(text, lookup).map_err(|reason| {
                if path.is_empty() {
                    reason
                } else {
                    format!("{path}: {reason}")
                }
            })?;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{path}[{i}]"), lookup)?;
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = key_text(key).unwrap_or_default();
                let here = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                interpolate_value(item, &here, lookup)?;
            }
        }
        Value::Tagged(tagged) => interpolate_value(&mut tagged.value, path, lookup)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// A later file's definition over an earlier one: mappings merge key by
/// key, anything else (a list, a scalar) is replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// What fails in a service: the key (relative to the service) and why.
type KeyError = (String, String);

/// The honoured keys of one service, as serde reads them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Service {
    image: Option<String>,
    command: Option<Value>,
    entrypoint: Option<Value>,
    healthcheck: Option<Healthcheck>,
    labels: Option<Value>,
    environment: Option<Value>,
    env_file: Option<Value>,
    #[serde(default)]
    ports: Vec<Value>,
    #[serde(default)]
    expose: Vec<Value>,
    #[serde(default)]
    deploy: Deploy,
    user: Option<Value>,
    stop_grace_period: Option<String>,
    #[serde(rename = "x-lbmesh", default)]
    lbmesh: Extension,
}

/// Docker's HEALTHCHECK of the container.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Healthcheck {
    test: Option<Value>,
    interval: Option<String>,
    timeout: Option<String>,
    retries: Option<Int>,
    start_period: Option<String>,
    #[serde(default)]
    disable: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deploy {
    mode: Option<String>,
    replicas: Option<Int>,
    #[serde(default)]
    placement: Placement,
    update_config: Option<UpdateConfig>,
    rollback_config: Option<UpdateConfig>,
    restart_policy: Option<RestartPolicy>,
    #[serde(default)]
    labels: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Placement {
    #[serde(default)]
    constraints: Vec<String>,
    max_replicas_per_node: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateConfig {
    parallelism: Option<Int>,
    delay: Option<String>,
    order: Option<UpdateOrder>,
    failure_action: Option<FailureAction>,
    monitor: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartPolicy {
    condition: Option<RestartCondition>,
    delay: Option<String>,
    max_attempts: Option<Int>,
}

/// `x-lbmesh`: lbmesh's own settings of a service, with its spec's names
/// and types (durations as `5s`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Extension {
    algorithm: Option<Algorithm>,
    proxy_protocol: Option<ProxyProtocol>,
    retries: Option<i64>,
    retry_on_empty: Option<bool>,
    health: Option<HealthSpec>,
    #[serde(default, with = "humantime_serde")]
    drain_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    reply_timeout: Option<Duration>,
    max_connections: Option<i64>,
    max_connections_per_client: Option<i64>,
}

/// A number that may be written as a string (what interpolation gives:
/// `replicas: ${REPLICAS:-2}`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "Value")]
struct Int(i64);

impl TryFrom<Value> for Int {
    type Error = String;

    fn try_from(value: Value) -> Result<Self, String> {
        match &value {
            Value::Number(n) => n
                .as_i64()
                .map(Int)
                .ok_or_else(|| format!("{n} is not an integer")),
            Value::String(text) => text
                .trim()
                .parse()
                .map(Int)
                .map_err(|_| format!("{text:?} is not an integer")),
            other => Err(format!("{other:?} is not an integer")),
        }
    }
}

/// Reads `value` as `T`, the error naming the path below the service.
fn read<T: DeserializeOwned>(value: Value) -> Result<T, KeyError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let path = if path == "." { String::new() } else { path };
        (path, error.into_inner().to_string())
    })
}

/// One compose service as the spec of lbmesh service `STACK-NAME`.
fn service_spec(
    stack: &str,
    name: &str,
    definition: &Value,
    file: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
    ignored: &mut Vec<String>,
) -> Result<ServiceSpec, KeyError> {
    let Value::Mapping(keys) = definition else {
        return Err((String::new(), "must be a mapping of keys".into()));
    };
    let mut honoured = Mapping::new();
    for (key, value) in keys {
        let key_name = key_text(key).map_err(|r| (String::new(), r))?;
        if SERVICE_HONOURED.contains(&key_name.as_str()) {
            honoured.insert(key.clone(), value.clone());
        } else if key_name.starts_with("x-") {
            // Another tool's extension: not ours to read.
        } else if SERVICE_IGNORED.contains(&key_name.as_str()) {
            push_once(ignored, key_name);
        } else {
            return Err((
                key_name.clone(),
                format!("unknown key {key_name:?} for a compose service"),
            ));
        }
    }
    if let Some(Value::Mapping(deploy)) = honoured.get_mut("deploy") {
        deploy.retain(|key, _| {
            let key = key_text(key).unwrap_or_default();
            let skip = DEPLOY_IGNORED.contains(&key.as_str()) || key.starts_with("x-");
            if skip && !key.starts_with("x-") {
                push_once(ignored, format!("deploy.{key}"));
            }
            !skip
        });
        if let Some(Value::Mapping(placement)) = deploy.get_mut("placement") {
            placement.retain(|key, _| {
                let key = key_text(key).unwrap_or_default();
                let skip = key == "preferences";
                if skip {
                    push_once(ignored, "deploy.placement.preferences".into());
                }
                !skip
            });
        }
    }
    if let Some(Value::Mapping(check)) = honoured.get_mut("healthcheck") {
        if check.remove("start_interval").is_some() {
            push_once(ignored, "healthcheck.start_interval".into());
        }
    }
    let service: Service = read(Value::Mapping(honoured))?;
    let mut spec = ServiceSpec {
        name: format!("{stack}-{name}"),
        image: service.image.clone(),
        ..ServiceSpec::default()
    };
    match &service.command {
        // lbmesh's process tasks take a shell line, as `service create --command`.
        Some(Value::String(line)) if spec.image.is_none() => spec.command = Some(line.clone()),
        Some(command) => spec.args = words(command).map_err(|r| ("command".to_owned(), r))?,
        None => {}
    }
    if let Some(entrypoint) = &service.entrypoint {
        spec.entrypoint = Some(words(entrypoint).map_err(|r| ("entrypoint".to_owned(), r))?);
    }
    if let Some(labels) = &service.labels {
        spec.container_labels = pairs(labels, &|_| None)
            .map_err(|r| ("labels".to_owned(), r))?
            .into_iter()
            .collect();
    }
    if let Some(check) = &service.healthcheck {
        spec.healthcheck = Some(healthcheck(check)?);
    }
    spec.env = environment(&service, file, lookup)?;
    for (i, port) in service.ports.iter().enumerate() {
        spec.ports
            .extend(ports(port).map_err(|r| (format!("ports[{i}]"), r))?);
    }
    for (i, port) in service.expose.iter().enumerate() {
        for target in exposed(port).map_err(|r| (format!("expose[{i}]"), r))? {
            let taken = spec
                .ports
                .iter()
                .any(|p| p.target.unwrap_or(p.published) == target);
            if !taken {
                spec.ports.push(vip_only(target));
            }
        }
    }
    if spec.ports.is_empty() {
        return Err((
            "ports".into(),
            "lbmesh reaches a service through its ports: give one, published on every \
             node (\"6379:6379\") or on its VIP only (\"6379\", or expose: [\"6379\"])"
                .into(),
        ));
    }
    spec.user = match service.user {
        None => None,
        Some(Value::String(user)) => Some(user),
        Some(Value::Number(uid)) => Some(uid.to_string()),
        Some(_) => {
            return Err((
                "user".into(),
                "must be a string: NAME|UID[:GROUP|GID]".into(),
            ))
        }
    };
    if let Some(grace) = &service.stop_grace_period {
        spec.stop_grace_period =
            Some(duration(grace).map_err(|r| ("stop_grace_period".into(), r))?);
    }
    deploy(&service.deploy, &mut spec)?;
    spec.labels.insert(STACK_LABEL.to_owned(), stack.to_owned());
    extension(service.lbmesh, &mut spec);
    Ok(spec)
}

/// `deploy` onto the spec.
fn deploy(deploy: &Deploy, spec: &mut ServiceSpec) -> Result<(), KeyError> {
    let key = |k: &str| format!("deploy.{k}");
    spec.mode = match deploy.mode.as_deref() {
        None | Some("replicated") => ServiceMode::Replicated,
        Some("global") => ServiceMode::Global,
        Some(other @ ("replicated-job" | "global-job")) => {
            return Err((key("mode"), format!("{other:?}: lbmesh has no jobs yet")))
        }
        Some(other) => {
            return Err((
                key("mode"),
                format!("{other:?} is not replicated or global"),
            ))
        }
    };
    spec.replicas = deploy.replicas.map(|r| r.0);
    spec.constraints = deploy
        .placement
        .constraints
        .iter()
        .map(|c| constraint(c))
        .collect();
    spec.max_replicas_per_node = deploy.placement.max_replicas_per_node.map(|n| n.0);
    if let Some(update) = &deploy.update_config {
        spec.update = update_spec(update, "update_config")?;
    }
    if let Some(rollback) = &deploy.rollback_config {
        spec.rollback = Some(update_spec(rollback, "rollback_config")?);
    }
    if let Some(restart) = &deploy.restart_policy {
        spec.restart.condition = restart.condition;
        spec.restart.max_attempts = restart.max_attempts.map(|n| n.0);
        if let Some(delay) = &restart.delay {
            spec.restart.delay =
                Some(duration(delay).map_err(|r| (key("restart_policy.delay"), r))?);
        }
    }
    if let Some(labels) = &deploy.labels {
        spec.labels = pairs(labels, &|_| None)
            .map_err(|r| (key("labels"), r))?
            .into_iter()
            .collect();
    }
    Ok(())
}

/// An `update_config` or `rollback_config` (named `field`) as lbmesh's
/// update settings.
fn update_spec(config: &UpdateConfig, field: &str) -> Result<UpdateSpec, KeyError> {
    let key = |k: &str| format!("deploy.{field}.{k}");
    let delay = config.delay.as_ref().map(|d| duration(d)).transpose();
    let monitor = config.monitor.as_ref().map(|m| duration(m)).transpose();
    Ok(UpdateSpec {
        parallelism: config.parallelism.map(|n| n.0),
        order: config.order,
        failure_action: config.failure_action,
        delay: delay.map_err(|r| (key("delay"), r))?,
        monitor: monitor.map_err(|r| (key("monitor"), r))?,
    })
}

/// Swarm's `node.hostname` is lbmesh's `node.name`; the rest is spelt alike.
fn constraint(text: &str) -> String {
    let text = text.trim();
    match text.strip_prefix("node.hostname") {
        Some(rest) => format!("node.name{rest}"),
        None => text.to_owned(),
    }
}

/// `x-lbmesh` onto the spec.
fn extension(ext: Extension, spec: &mut ServiceSpec) {
    spec.algorithm = ext.algorithm.unwrap_or_default();
    spec.proxy_protocol = ext.proxy_protocol.unwrap_or_default();
    spec.retries = ext.retries;
    spec.retry_on_empty = ext.retry_on_empty;
    spec.health = ext.health.unwrap_or_default();
    spec.drain_timeout = ext.drain_timeout;
    spec.connect_timeout = ext.connect_timeout;
    spec.idle_timeout = ext.idle_timeout;
    spec.reply_timeout = ext.reply_timeout;
    spec.max_connections = ext.max_connections;
    spec.max_connections_per_client = ext.max_connections_per_client;
}

/// A compose duration (`10s`, `1m30s`, `500ms`).
fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration such as 10s or 1m30s: {e}"))
}

/// A `command` or `entrypoint` in exec form: a list as it is, a string
/// split into words as a shell would (compose's reading; no shell runs).
fn words(value: &Value) -> Result<Vec<String>, String> {
    match value {
        Value::String(line) => {
            shlex::split(line).ok_or_else(|| format!("{line:?} has an unclosed quote"))
        }
        Value::Sequence(items) => items
            .iter()
            .map(scalar_text)
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| "every word of the list must be a string".to_owned()),
        _ => Err("must be a string or a list of strings".into()),
    }
}

/// `healthcheck` as the container's: `test` as a string is `CMD-SHELL`,
/// `disable: true` is `["NONE"]`.
fn healthcheck(check: &Healthcheck) -> Result<ContainerHealthcheck, KeyError> {
    let key = |k: &str| format!("healthcheck.{k}");
    let test = match (&check.test, check.disable) {
        (_, true) => vec!["NONE".to_owned()],
        (Some(Value::String(line)), false) => vec!["CMD-SHELL".to_owned(), line.clone()],
        (Some(test), false) => words(test).map_err(|r| (key("test"), r))?,
        (None, false) => return Err((key("test"), "a healthcheck needs its test".into())),
    };
    let time = |field: &str, text: &Option<String>| -> Result<Option<Duration>, KeyError> {
        text.as_deref()
            .map(duration)
            .transpose()
            .map_err(|r| (key(field), r))
    };
    Ok(ContainerHealthcheck {
        test,
        interval: time("interval", &check.interval)?,
        timeout: time("timeout", &check.timeout)?,
        retries: check.retries.map(|n| n.0),
        start_period: time("start_period", &check.start_period)?,
    })
}

/// A scalar as text (`80`, `true`, `web`); `None` for a list or mapping.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `KEY=VALUE` pairs from a compose map (`KEY: value`) or list
/// (`KEY=value`); a key without a value takes `lookup`'s, or is left out
/// when it has none.
fn pairs(
    value: &Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    match value {
        Value::Mapping(map) => {
            for (key, item) in map {
                let key = key_text(key)?;
                match item {
                    Value::Null => {
                        if let Some(v) = lookup(&key) {
                            out.push((key, v));
                        }
                    }
                    item => {
                        let text = scalar_text(item)
                            .ok_or_else(|| format!("{key}: must be a string, number or bool"))?;
                        out.push((key, text));
                    }
                }
            }
        }
        Value::Sequence(items) => {
            for item in items {
                let Value::String(entry) = item else {
                    return Err(format!("{item:?} is not KEY=VALUE"));
                };
                match entry.split_once('=') {
                    Some((key, v)) => out.push((key.to_owned(), v.to_owned())),
                    None => {
                        if let Some(v) = lookup(entry) {
                            out.push((entry.clone(), v));
                        }
                    }
                }
            }
        }
        Value::Null => {}
        _ => return Err("must be a mapping or a list of KEY=VALUE".into()),
    }
    Ok(out)
}

/// `env_file` (relative to the compose file) then `environment`, a later
/// key replacing an earlier one in place.
fn environment(
    service: &Service,
    file: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, KeyError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: String, value: String| match env.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => env.push((key, value)),
    };
    if let Some(files) = &service.env_file {
        let base = file.parent().unwrap_or(Path::new("."));
        for (path, required) in env_files(files).map_err(|r| ("env_file".to_owned(), r))? {
            let full = base.join(&path);
            let text = match std::fs::read_to_string(&full) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
                Err(e) => return Err(("env_file".into(), format!("{}: {e}", full.display()))),
            };
            for (key, value) in env_file_pairs(&text, lookup)
                .map_err(|r| ("env_file".to_owned(), format!("{}: {r}", full.display())))?
            {
                set(key, value);
            }
        }
    }
    if let Some(environment) = &service.environment {
        for (key, value) in pairs(environment, lookup).map_err(|r| ("environment".to_owned(), r))? {
            set(key, value);
        }
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// `env_file`'s forms: a path, a list of paths, or a list of `{ path,
/// required }` (required by default).
fn env_files(value: &Value) -> Result<Vec<(String, bool)>, String> {
    let one = |item: &Value| -> Result<(String, bool), String> {
        match item {
            Value::String(path) => Ok((path.clone(), true)),
            Value::Mapping(map) => {
                let path = map
                    .get("path")
                    .and_then(Value::as_str)
                    .ok_or("an entry needs `path`")?;
                let required = match map.get("required") {
                    None => true,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err("`required` must be true or false".into()),
                };
                Ok((path.to_owned(), required))
            }
            _ => Err("must be a path or a list of paths".into()),
        }
    };
    match value {
        Value::Sequence(items) => items.iter().map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}

/// The `KEY=VALUE` lines of an env file: blank lines and `#` comments
/// skipped, a value in matching quotes unquoted, a bare `KEY` taken from
/// `lookup`.
fn env_file_pairs(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        match line.split_once('=') {
            Some((key, value)) => {
                let key = key.trim();
                if key.is_empty() {
                    return Err(format!("line {}: no key before '='", n + 1));
                }
                let value = value.trim();
                let unquoted = ['"', '\'']
                    .iter()
                    .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
                    .unwrap_or(value);
                out.push((key.to_owned(), unquoted.to_owned()));
            }
            None => {
                if let Some(value) = lookup(line) {
                    out.push((line.to_owned(), value));
                }
            }
        }
    }
    Ok(out)
}

/// One `ports` entry: short (`8080:80`, `8080:80/tcp`, `8000-8001:80-81`)
/// or long (`{ target, published, protocol, mode }`).
fn ports(value: &Value) -> Result<Vec<PortSpec>, String> {
    match value {
        Value::Number(_) => {
            exposed(value).map(|targets| targets.into_iter().map(vip_only).collect())
        }
        Value::String(text) => short_ports(text),
        Value::Mapping(map) => long_port(map).map(|p| vec![p]),
        _ => Err(
            "must be \"PUBLISHED:TARGET[/tcp|udp]\" or a mapping with target and published".into(),
        ),
    }
}

/// A port on the service's VIP only, published on no node.
fn vip_only(target: i64) -> PortSpec {
    PortSpec {
        published: 0,
        target: Some(target),
        protocol: None,
    }
}

/// One `expose` entry (`80`, `"80/tcp"`, `"8000-8001"`): target ports.
fn exposed(value: &Value) -> Result<Vec<i64>, String> {
    let text = scalar_text(value).ok_or("must be a port, e.g. \"6379\" or \"6379/tcp\"")?;
    let (ports, proto) = match text.rsplit_once('/') {
        Some((ports, proto)) => (ports, proto),
        None => (text.as_str(), "tcp"),
    };
    protocol(proto)?;
    port_range(ports)
}

/// A port's protocol as the spec spells it: tcp is the default, left out.
fn protocol(text: &str) -> Result<Option<String>, String> {
    match text {
        "tcp" => Ok(None),
        "udp" => Ok(Some("udp".to_owned())),
        other => Err(format!("protocol {other:?} is not tcp or udp")),
    }
}

fn port_number(text: &str) -> Result<i64, String> {
    let number: i64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a port number"))?;
    if !(1..=65_535).contains(&number) {
        return Err(format!("port {number} is out of range 1-65535"));
    }
    Ok(number)
}

/// `A` or `A-B` as the ports it spans.
fn port_range(text: &str) -> Result<Vec<i64>, String> {
    match text.split_once('-') {
        None => Ok(vec![port_number(text)?]),
        Some((low, high)) => {
            let (low, high) = (port_number(low)?, port_number(high)?);
            if low > high {
                return Err(format!("range {text:?} ends before it starts"));
            }
            Ok((low..=high).collect())
        }
    }
}

fn short_ports(text: &str) -> Result<Vec<PortSpec>, String> {
    let (addrs, proto) = match text.rsplit_once('/') {
        Some((addrs, proto)) => (addrs, proto),
        None => (text, "tcp"),
    };
    let protocol = protocol(proto)?;
    let parts: Vec<&str> = addrs.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [target] => return Ok(port_range(target)?.into_iter().map(vip_only).collect()),
        [published, target] => (*published, *target),
        _ => {
            return Err(format!(
                "{text:?} names a host IP; lbmesh publishes on each node's ingress address, \
                 so give PUBLISHED:TARGET"
            ))
        }
    };
    if published.is_empty() {
        return Ok(port_range(target)?.into_iter().map(vip_only).collect());
    }
    let published = port_range(published)?;
    let target = port_range(target)?;
    if published.len() != target.len() {
        return Err(format!(
            "{text:?}: the published and target ranges differ in length"
        ));
    }
    Ok(published
        .into_iter()
        .zip(target)
        .map(|(published, target)| PortSpec {
            published,
            target: (target != published).then_some(target),
            protocol: protocol.clone(),
        })
        .collect())
}

fn long_port(map: &Mapping) -> Result<PortSpec, String> {
    for (key, _) in map {
        let key = key_text(key)?;
        if ![
            "target",
            "published",
            "protocol",
            "mode",
            "name",
            "app_protocol",
        ]
        .contains(&key.as_str())
            && !key.starts_with("x-")
        {
            return Err(format!("unknown key {key:?} of a port"));
        }
    }
    let text = |key: &str| map.get(key).and_then(scalar_text);
    if let Some(mode) = text("mode") {
        match mode.as_str() {
            "ingress" => {}
            "host" => {
                return Err(
                    "mode: host cannot be honoured: lbmesh publishes every port through its mesh \
                     (mode: ingress)"
                        .into(),
                )
            }
            other => return Err(format!("mode {other:?} is not ingress or host")),
        }
    }
    let protocol = match text("protocol") {
        Some(proto) => protocol(&proto)?,
        None => None,
    };
    let target = port_number(&text("target").ok_or("target: a port needs its target")?)
        .map_err(|r| format!("target: {r}"))?;
    let published = match text("published") {
        Some(p) if !p.is_empty() => port_number(&p).map_err(|r| format!("published: {r}"))?,
        _ => return Ok(vip_only(target)),
    };
    Ok(PortSpec {
        published,
        target: (target != published).then_some(target),
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "WEB_TAG" => Some("v2".to_owned()),
            "SECRET" => Some("from-shell".to_owned()),
            _ => None,
        }
    }

    fn deploy(files: &[(&str, &str)]) -> Result<Stack, String> {
        let sources: Vec<(PathBuf, String)> = files
            .iter()
            .map(|(path, text)| (PathBuf::from(path), (*text).to_owned()))
            .collect();
        parse(&sources, "app", &env).map_err(|e| e.to_string())
    }

    fn one(text: &str) -> Result<ServiceSpec, String> {
        let stack = deploy(&[("c.yml", text)])?;
        Ok(stack.services.into_iter().next().expect("one service").spec)
    }

    const CLASSIC: &str = r#"
version: "3.8"
x-common: &common
  restart_policy:
    condition: on-failure
services:
  web:
    image: "lbmesh-test:${WEB_TAG:-v1}"
    build: .
    command: ["httpd", "-f", "-p", "80", "-h", "/www dir"]
    entrypoint: /sbin/tini --
    labels: ["traefik.enable=true"]
    healthcheck:
      test: wget -qO- localhost
      interval: 2s
      retries: ${RETRIES:-4}
      start_interval: 1s
    ports:
      - "8080:80"
    environment:
      REDIS_HOST: redis
      SECRET:
      MISSING:
      DEBUG: 1
    volumes: ["./data:/data"]
    networks: [front]
    deploy:
      replicas: ${WEB_REPLICAS:-2}
      placement:
        constraints: ["node.hostname==n1", "node.labels.zone!=b"]
        max_replicas_per_node: 1
      update_config:
        parallelism: 1
        delay: 1m30s
        order: start-first
        failure_action: rollback
      rollback_config:
        parallelism: 2
        monitor: 5s
        failure_action: continue
      <<: *common
      labels:
        team: web
    x-lbmesh:
      algorithm: least-conn
      proxy_protocol: v2
      drain_timeout: 2s
      health:
        type: http
        path: /healthz
  redis:
    image: redis:7
    command: redis-server --appendonly "yes please"
    labels: {tier: back}
    healthcheck:
      disable: true
    environment: ["A=1", "SECRET", "NOPE"]
    ports:
      - target: 6379
        published: "16379"
        protocol: tcp
        mode: ingress
    deploy:
      mode: global
networks:
  front: {}
"#;

    #[test]
    fn the_classic_stack_maps_onto_specs() {
        let stack = deploy(&[("c.yml", CLASSIC)]).expect("deploys");
        assert_eq!(
            stack.notices,
            ["Ignoring unsupported options: build, healthcheck.start_interval, networks, volumes"]
        );
        let names: Vec<&str> = stack.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["redis", "web"]);
        let redis = &stack.services[0].spec;
        let web = &stack.services[1].spec;
        assert_eq!(web.name, "app-web");
        assert_eq!(web.image.as_deref(), Some("lbmesh-test:v2"));
        assert_eq!(web.command, None);
        assert_eq!(web.args, ["httpd", "-f", "-p", "80", "-h", "/www dir"]);
        assert_eq!(
            web.entrypoint.as_deref(),
            Some(&["/sbin/tini".to_owned(), "--".to_owned()][..])
        );
        assert_eq!(
            web.container_labels,
            BTreeMap::from([("traefik.enable".to_owned(), "true".to_owned())])
        );
        assert_eq!(
            web.healthcheck,
            Some(ContainerHealthcheck {
                test: vec!["CMD-SHELL".into(), "wget -qO- localhost".into()],
                interval: Some(Duration::from_secs(2)),
                retries: Some(4),
                ..ContainerHealthcheck::default()
            })
        );
        assert_eq!(
            web.ports,
            [PortSpec {
                published: 8080,
                target: Some(80),
                protocol: None
            }]
        );
        assert_eq!(
            web.env,
            ["REDIS_HOST=redis", "SECRET=from-shell", "DEBUG=1"]
        );
        assert_eq!(web.replicas, Some(2));
        assert_eq!(web.constraints, ["node.name==n1", "node.labels.zone!=b"]);
        assert_eq!(web.max_replicas_per_node, Some(1));
        assert_eq!(web.update.parallelism, Some(1));
        assert_eq!(web.update.delay, Some(Duration::from_secs(90)));
        assert_eq!(web.update.order, Some(UpdateOrder::StartFirst));
        assert_eq!(web.update.failure_action, Some(FailureAction::Rollback));
        let rollback = web.rollback.as_ref().expect("rollback_config maps");
        assert_eq!(rollback.parallelism, Some(2));
        assert_eq!(rollback.monitor, Some(Duration::from_secs(5)));
        assert_eq!(rollback.failure_action, Some(FailureAction::Continue));
        assert_eq!(web.restart.condition, Some(RestartCondition::OnFailure));
        assert_eq!(
            web.labels,
            BTreeMap::from([
                (STACK_LABEL.to_owned(), "app".to_owned()),
                ("team".to_owned(), "web".to_owned()),
            ])
        );
        assert_eq!(web.algorithm, Algorithm::LeastConn);
        assert_eq!(web.proxy_protocol, ProxyProtocol::V2);
        assert_eq!(web.drain_timeout, Some(Duration::from_secs(2)));
        assert_eq!(web.health.path.as_deref(), Some("/healthz"));

        assert_eq!(redis.name, "app-redis");
        assert_eq!(redis.args, ["redis-server", "--appendonly", "yes please"]);
        assert_eq!(redis.container_labels["tier"], "back");
        assert_eq!(
            redis.healthcheck.as_ref().map(|h| h.test.clone()),
            Some(vec!["NONE".to_owned()])
        );
        assert_eq!(redis.mode, ServiceMode::Global);
        assert_eq!(redis.env, ["A=1", "SECRET=from-shell"]);
        assert_eq!(
            redis.ports,
            [PortSpec {
                published: 16379,
                target: Some(6379),
                protocol: None
            }]
        );
        assert_eq!(
            redis.labels,
            BTreeMap::from([(STACK_LABEL.to_owned(), "app".to_owned())])
        );
    }

    #[test]
    fn later_files_override_earlier_ones() {
        let base = "services:\n  web:\n    image: a:1\n    ports: [\"80:80\"]\n    environment: {A: \"1\", B: \"2\"}\n";
        let over = "services:\n  web:\n    image: a:2\n    environment: {B: \"3\"}\n  api:\n    command: serve\n    ports: [\"81:81\"]\n";
        let stack = deploy(&[("base.yml", base), ("over.yml", over)]).expect("deploys");
        let web = &stack.services[1].spec;
        assert_eq!(web.image.as_deref(), Some("a:2"));
        assert_eq!(web.env, ["A=1", "B=3"]);
        assert_eq!(web.ports[0].published, 80);
        assert_eq!(stack.services[0].spec.command.as_deref(), Some("serve"));
        assert_eq!(stack.services[0].file, PathBuf::from("over.yml"));
    }

    #[test]
    fn expose_and_target_only_ports_are_vip_only() {
        let file = "services:\n  redis:\n    image: r\n    expose: [\"6379\", 7000]\n    \
                    ports: [{target: 8080}, \"9000:7000\"]\n";
        let stack = deploy(&[("c.yml", file)]).expect("deploys");
        let ports: Vec<(i64, Option<i64>)> = stack.services[0]
            .spec
            .ports
            .iter()
            .map(|p| (p.published, p.target))
            .collect();
        // 7000 is a target of a published port already.
        assert_eq!(
            ports,
            [(0, Some(8080)), (9000, Some(7000)), (0, Some(6379))]
        );
        let bad = "services:\n  redis:\n    image: r\n    expose: [\"6379/sctp\"]\n";
        let err = deploy(&[("c.yml", bad)]).expect_err("refused").to_string();
        assert!(err.contains("services.redis.expose[0]"), "{err}");
    }

    #[test]
    fn short_port_forms() {
        let ports = |text: &str| short_ports(text);
        assert_eq!(
            ports("80:80/tcp").unwrap(),
            [PortSpec {
                published: 80,
                target: None,
                protocol: None
            }]
        );
        let range = ports("8000-8001:90-91").unwrap();
        assert_eq!(
            range
                .iter()
                .map(|p| (p.published, p.target))
                .collect::<Vec<_>>(),
            [(8000, Some(90)), (8001, Some(91))]
        );
        // A target only: on the VIP, published nowhere.
        assert_eq!(
            ports("6379").unwrap(),
            [PortSpec {
                published: 0,
                target: Some(6379),
                protocol: None
            }]
        );
        assert!(ports("127.0.0.1:80:80").unwrap_err().contains("host IP"));
        assert!(ports("1-3:1-2").unwrap_err().contains("differ in length"));
        assert!(ports("80:80/sctp").unwrap_err().contains("sctp"));
    }

    /// udp ports are published as udp, short and long, and the same number
    /// may be both.
    #[test]
    fn udp_ports_map_to_udp() {
        let udp = |published, target| PortSpec {
            published,
            target,
            protocol: Some("udp".to_owned()),
        };
        assert_eq!(short_ports("53:53/udp").unwrap(), [udp(53, None)]);
        assert_eq!(
            short_ports("5000-5001:6000-6001/udp").unwrap(),
            [udp(5000, Some(6000)), udp(5001, Some(6001))]
        );
        let long: Value =
            serde_norway::from_str("{target: 5353, published: 53, protocol: udp}").unwrap();
        assert_eq!(ports(&long).unwrap(), [udp(53, Some(5353))]);
        let spec =
            one("services:\n  dns:\n    command: x\n    ports: [\"53:53/udp\", \"53:53\"]\n")
                .expect("a tcp and a udp port of one number");
        let protocols: Vec<Option<&str>> =
            spec.ports.iter().map(|p| p.protocol.as_deref()).collect();
        assert_eq!(protocols, [Some("udp"), None]);
    }

    /// Each bad file fails naming the file, the service and the key.
    #[test]
    fn bad_files_name_file_service_and_key() {
        let cases: &[(&str, &str)] = &[
            (
                "services:\n  web:\n    image: a\n   ports: [\"80:80\"]\n",
                "c.yml: ",
            ),
            (
                "services:\n  web:\n    image: a\n    ports: [\"80:80\"]\nservers: {}\n",
                "c.yml: unknown top-level key \"servers\"",
            ),
            (
                "services:\n  web:\n    image: a\n    ports: [\"70000:80\"]\n",
                "c.yml: services.web.ports[0]: port 70000 is out of range 1-65535",
            ),
            (
                "services:\n  web:\n    image: a\n    ports: [\"53:53/sctp\"]\n",
                "c.yml: services.web.ports[0]: protocol \"sctp\" is not tcp or udp",
            ),
            (
                "services:\n  web:\n    image: a\n    ports: [{target: 80, published: 80, mode: host}]\n",
                "c.yml: services.web.ports[0]: mode: host cannot be honoured",
            ),
            (
                "services:\n  Web_1:\n    image: a\n    ports: [\"80:80\"]\n",
                "c.yml: services.Web_1: \"Web_1\" contains 'W'",
            ),
            (
                "services:\n  web:\n    imgae: a\n    ports: [\"80:80\"]\n",
                "c.yml: services.web.imgae: unknown key \"imgae\"",
            ),
            (
                "services:\n  web:\n    command: x\n    entrypoint: /bin/x\n    ports: [\"80:80\"]\n",
                "c.yml: services.web: as lbmesh service app-web: entrypoint: only a Docker task",
            ),
            (
                "services:\n  web:\n    image: a\n    ports: [\"80:80\"]\n    healthcheck:\n      test: [\"RUN\", \"x\"]\n",
                "c.yml: services.web: as lbmesh service app-web: healthcheck.test: must be [\"CMD\"",
            ),
            (
                "services:\n  web:\n    image: a\n    ports: [\"80:80\"]\n    healthcheck:\n      interval: 1s\n",
                "c.yml: services.web.healthcheck.test: a healthcheck needs its test",
            ),
            (
                "services:\n  web:\n    image: a\n    ports: [\"80:80\"]\n    command: \"echo 'open\"\n",
                "c.yml: services.web.command: \"echo 'open\" has an unclosed quote",
            ),
            (
                "services:\n  web:\n    image: \"a:${TAG:?set a tag}\"\n    ports: [\"80:80\"]\n",
                "c.yml: services.web.image: required variable TAG is missing a value: set a tag",
            ),
            (
                "services:\n  web:\n    image: a\n",
                "c.yml: services.web.ports: lbmesh reaches a service through its ports",
            ),
            (
                "services:\n  web:\n    image: a\n    ports: [\"80:80\"]\n    deploy:\n      replicas: many\n",
                "c.yml: services.web.deploy.replicas: \"many\" is not an integer",
            ),
            (
                "services:\n  web:\n    image: a\n    ports: [\"80:80\"]\n    deploy:\n      update_config:\n        order: sideways\n",
                "c.yml: services.web.deploy.update_config.order: unknown variant `sideways`",
            ),
            (
                "services:\n  web:\n    image: a\n    ports: [\"80:80\"]\n    deploy:\n      rollback_config:\n        failure_action: rollback\n",
                "c.yml: services.web: as lbmesh service app-web: rollback.failure_action: a rollback cannot roll back",
            ),
            (
                "services:\n  web:\n    image: a\n    ports: [\"80:80\"]\n    x-lbmesh:\n      algorithm: fastest\n",
                "c.yml: services.web.x-lbmesh.algorithm: unknown variant `fastest`",
            ),
            (
                "services:\n  web:\n    image: a\n    ports: [\"80:80\"]\n    deploy:\n      placement:\n        constraints: [\"node.color==red\"]\n",
                "c.yml: services.web: as lbmesh service app-web: constraints[0]:",
            ),
        ];
        for (text, wanted) in cases {
            let err = one(text).unwrap_err();
            assert!(
                err.starts_with(wanted),
                "{text}\nwanted {wanted}\ngot    {err}"
            );
        }
        let syntax = one(cases[0].0).unwrap_err();
        assert!(syntax.contains("line 4"), "{syntax}");
    }

    #[test]
    fn a_port_two_services_publish_is_refused() {
        let text = "services:\n  a:\n    command: x\n    ports: [\"80:80\"]\n  b:\n    command: y\n    ports: [\"80:81\"]\n";
        let err = one(text).unwrap_err();
        assert!(err.starts_with("c.yml: ") && err.contains("80"), "{err}");
    }

    #[test]
    fn env_files_are_read_beside_the_compose_file() {
        let dir = std::env::temp_dir().join(format!("lbctl-compose-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(
            dir.join("web.env"),
            "# comment\n\nA=1\nB=\"two words\"\nexport C='3'\nSECRET\n",
        )
        .expect("env file");
        let compose = dir.join("compose.yml");
        let text = "services:\n  web:\n    command: x\n    ports: [\"80:80\"]\n    env_file: [web.env, {path: none.env, required: false}]\n    environment: [C=4]\n";
        let stack = parse(&[(compose.clone(), text.to_owned())], "app", &env).expect("deploys");
        assert_eq!(
            stack.services[0].spec.env,
            ["A=1", "B=two words", "C=4", "SECRET=from-shell"]
        );
        let missing = "services:\n  web:\n    command: x\n    ports: [\"80:80\"]\n    env_file: nowhere.env\n";
        let err = parse(&[(compose, missing.to_owned())], "app", &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("services.web.env_file: ") && err.contains("nowhere.env"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// The example of the repository deploys as written, with its defaults.
    #[test]
    fn the_example_file_maps_with_its_defaults() {
        let text = include_str!("../../examples/docker-compose.yml");
        let stack = deploy(&[("examples/docker-compose.yml", text)]).expect("deploys");
        assert!(stack.notices.is_empty(), "{:?}", stack.notices);
        let [api, web] = &stack.services[..] else {
            panic!("two services: {stack:?}");
        };
        assert_eq!(
            (api.spec.name.as_str(), api.spec.image.as_deref()),
            ("app-api", Some("lbmesh-test:v2"))
        );
        assert_eq!(
            (api.spec.ports[0].published, api.spec.ports[0].target),
            (8081, Some(80))
        );
        assert_eq!(
            web.spec.image.as_deref(),
            Some("lbmesh-test:v2"),
            "WEB_TAG is v2 here"
        );
        assert_eq!(web.spec.ports[0].published, 8080);
        let words = &web.spec.args;
        assert_eq!(words[..2], ["/bin/sh", "-c"], "{words:?}");
        assert!(
            words[2].starts_with("busybox mkdir -p /www/cgi-bin && printf '#!/bin/sh\\nprintf")
                && words[2].contains("echo \"front $(hostname)\"")
                && words[2].ends_with("exec httpd -f -p 80 -h /www"),
            "{}",
            words[2]
        );
        assert_eq!(web.spec.replicas, Some(3));
        assert_eq!(web.spec.algorithm, Algorithm::LeastConn);
    }

    #[test]
    fn a_stack_name_must_be_a_dns_label() {
        let sources = [(PathBuf::from("c.yml"), "services: {}\n".to_owned())];
        let err = parse(&sources, "My_App", &env).unwrap_err().to_string();
        assert!(err.starts_with("stack name: "), "{err}");
    }
}
