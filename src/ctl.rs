//! `lbctl`: the command-line client of the admin API.
//!
//! Nouns and verbs follow docker's: `cluster info|join-token`, `node
//! ls|inspect|update|rm`, `service create|ls|inspect|scale|update|rollback|rm`,
//! `apply -f`. Each command is one or a few `/v1` requests (routes in
//! [`crate::api`]); answers print as a table (docker-like) or as JSON with
//! `--format json`. Errors print to stderr as `Error: <field>: <reason>` and
//! the exit code is non-zero; a command sends nothing once one of its
//! arguments is found invalid.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lb_config::{ConfigFile, EndpointSpec, PortSpec, ServiceSpec};
use serde_json::{json, Value};

use crate::api::client;

#[derive(Debug, Parser)]
#[command(
    name = "lbctl",
    version,
    about = "Drive an lbmesh cluster",
    propagate_version = true
)]
pub struct Cli {
    /// Admin API of any node.
    #[arg(
        long,
        global = true,
        env = "LBCTL_HOST",
        default_value = "http://127.0.0.1:9900" // fixed-port-ok: the documented default admin API
    )]
    pub host: String,
    /// Control token printed when the cluster was bootstrapped.
    #[arg(long, global = true, env = "LBCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(subcommand)]
    pub command: Noun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Noun {
    /// Cluster-wide information and join tokens.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Nodes of the cluster.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Services.
    #[command(subcommand)]
    Service(Box<ServiceCommand>),
    /// Create or update the services of a `[[service]]` file to match it.
    Apply {
        /// The file (the `lbd --config` `[[service]]` format).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Also remove services the file does not name.
        #[arg(long)]
        prune: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, indexes and members.
    Info,
    /// Print the token that joins a node as manager or worker.
    JoinToken {
        #[arg(value_enum)]
        role: JoinRole,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum JoinRole {
    Manager,
    Worker,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    #[command(alias = "list")]
    Ls,
    /// Show one node.
    Inspect { node: String },
    /// Change a node's availability or labels.
    Update {
        node: String,
        #[arg(long, value_parser = ["active", "pause", "drain"])]
        availability: Option<String>,
        /// Add or change a label (`key=value`), repeatable.
        #[arg(long = "label-add", value_name = "KEY=VALUE", value_parser = parse_label)]
        label_add: Vec<(String, String)>,
        /// Remove a label, repeatable.
        #[arg(long = "label-rm", value_name = "KEY")]
        label_rm: Vec<String>,
    },
    /// Remove a node that is down (`--force` for one that is not).
    #[command(alias = "remove")]
    Rm {
        node: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service.
    Create {
        name: String,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// List services.
    #[command(alias = "list")]
    Ls,
    /// Show one service, with its update status.
    Inspect { name: String },
    /// List a service's tasks: node, desired and current state, health,
    /// endpoint, error.
    Ps {
        name: String,
        /// Only tasks that are wanted (desired state running).
        #[arg(long)]
        live: bool,
    },
    /// Set replica counts: `lbctl service scale web=5 api=2`.
    Scale {
        #[arg(required = true, value_name = "SERVICE=REPLICAS", value_parser = parse_scale)]
        targets: Vec<(String, i64)>,
    },
    /// Change a service; flags given replace those settings.
    Update {
        name: String,
        #[command(flatten)]
        spec: SpecArgs,
        /// Remove a published port (by published number), repeatable.
        #[arg(long = "publish-rm", value_name = "PORT")]
        publish_rm: Vec<i64>,
        /// Remove a static endpoint (by address), repeatable.
        #[arg(long = "endpoint-rm", value_name = "ADDR")]
        endpoint_rm: Vec<String>,
        /// Remove an environment variable (by key), repeatable.
        #[arg(long = "env-rm", value_name = "KEY")]
        env_rm: Vec<String>,
        /// Remove a placement constraint, repeatable.
        #[arg(long = "constraint-rm", value_name = "EXPR")]
        constraint_rm: Vec<String>,
    },
    /// Return a service to its previous spec.
    Rollback { name: String },
    /// Remove services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Spec flags shared by `service create` and `service update`.
#[derive(Debug, Args, Default)]
pub struct SpecArgs {
    /// Publish a port: `8080:80`, `8080`, or `published=8080,target=80[,protocol=tcp]`.
    #[arg(short = 'p', long = "publish", value_name = "SPEC", value_parser = parse_publish)]
    pub publish: Vec<PortSpec>,
    /// Static backend `ADDR[,weight=N]`, repeatable.
    #[arg(long = "endpoint", value_name = "ADDR[,weight=N]", value_parser = parse_endpoint)]
    pub endpoint: Vec<EndpointSpec>,
    #[arg(long, value_parser = ["round-robin", "random", "weighted", "least-conn", "maglev"])]
    pub algorithm: Option<String>,
    #[arg(long)]
    pub replicas: Option<i64>,
    #[arg(long = "proxy-protocol", value_parser = ["none", "v1", "v2"])]
    pub proxy_protocol: Option<String>,
    #[arg(long = "max-connections")]
    pub max_connections: Option<i64>,
    /// Resend a request to another task when one closes the connection
    /// before answering (a killed task's in-flight requests); a request may
    /// then reach two tasks, so keep it off for non-idempotent protocols.
    #[arg(long = "retry-on-empty", value_name = "BOOL")]
    pub retry_on_empty: Option<bool>,
    /// Docker image the tasks run.
    #[arg(long)]
    pub image: Option<String>,
    /// Shell command of each task; without --image it runs as a local
    /// process with HOST and PORT set.
    #[arg(long)]
    pub command: Option<String>,
    /// Set an environment variable `KEY=VALUE`, repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    #[arg(long, value_parser = ["replicated", "global"])]
    pub mode: Option<String>,
    /// Placement constraint (`node.labels.zone==a`), repeatable.
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraint: Vec<String>,
    #[arg(long = "replicas-max-per-node", value_name = "N")]
    pub replicas_max_per_node: Option<i64>,
    #[arg(long = "restart-condition", value_parser = ["any", "on-failure", "none"])]
    pub restart_condition: Option<String>,
    #[arg(long = "restart-delay", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub restart_delay: Option<Duration>,
    #[arg(long = "restart-max-attempts", value_name = "N")]
    pub restart_max_attempts: Option<i64>,
    /// Tasks replaced at a time (0: all).
    #[arg(long = "update-parallelism", value_name = "N")]
    pub update_parallelism: Option<i64>,
    #[arg(long = "update-delay", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub update_delay: Option<Duration>,
    #[arg(long = "update-order", value_parser = ["stop-first", "start-first"])]
    pub update_order: Option<String>,
    #[arg(long = "update-failure-action", value_parser = ["pause", "rollback", "continue"])]
    pub update_failure_action: Option<String>,
    #[arg(long = "update-monitor", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub update_monitor: Option<Duration>,
    /// SIGTERM to SIGKILL when a task stops.
    #[arg(long = "stop-grace-period", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub stop_grace_period: Option<Duration>,
    /// How long a departing task keeps its open connections.
    #[arg(long = "drain-timeout", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
    #[arg(long = "health-type", value_parser = ["tcp", "http", "none"])]
    pub health_type: Option<String>,
    #[arg(long = "health-path", value_name = "PATH")]
    pub health_path: Option<String>,
    #[arg(long = "health-interval", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub health_interval: Option<Duration>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn parse_scale(text: &str) -> Result<(String, i64), String> {
    let (name, replicas) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not SERVICE=REPLICAS"))?;
    let replicas = replicas
        .parse()
        .map_err(|_| format!("{replicas:?} is not a number of replicas"))?;
    Ok((name.to_owned(), replicas))
}

fn parse_port(text: &str, what: &str) -> Result<i64, String> {
    text.parse()
        .map_err(|_| format!("{what} {text:?} is not a port number"))
}

/// docker's publish syntax, short and long.
pub fn parse_publish(text: &str) -> Result<PortSpec, String> {
    if text.contains('=') {
        let mut spec = PortSpec::default();
        let mut published = None;
        for pair in text.split(',') {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not key=value"))?;
            match key {
                "published" => published = Some(parse_port(value, "published")?),
                "target" => spec.target = Some(parse_port(value, "target")?),
                "protocol" => spec.protocol = Some(value.to_owned()),
                other => return Err(format!("unknown publish key {other:?}")),
            }
        }
        spec.published = published.ok_or("published= is required")?;
        return Ok(spec);
    }
    let (published, target) = match text.split_once(':') {
        Some((p, t)) => (parse_port(p, "published")?, Some(parse_port(t, "target")?)),
        None => (parse_port(text, "published")?, None),
    };
    let (target, protocol) = match text.rsplit_once('/') {
        Some((_, protocol)) => (target, Some(protocol.to_owned())),
        None => (target, None),
    };
    Ok(PortSpec {
        published,
        target,
        protocol,
    })
}

fn parse_endpoint(text: &str) -> Result<EndpointSpec, String> {
    let mut parts = text.split(',');
    let address = parts.next().unwrap_or_default().to_owned();
    let mut weight = None;
    for part in parts {
        match part.split_once('=') {
            Some(("weight", value)) => {
                weight = Some(
                    value
                        .parse()
                        .map_err(|_| format!("weight {value:?} is not a number"))?,
                )
            }
            _ => return Err(format!("{part:?}: only weight=N may follow the address")),
        }
    }
    Ok(EndpointSpec { address, weight })
}

impl SpecArgs {
    /// Writes the flags that were given into `spec`.
    fn apply_to(&self, spec: &mut ServiceSpec, replace_lists: bool) {
        if replace_lists {
            spec.ports = self.publish.clone();
            spec.endpoints = self.endpoint.clone();
        } else {
            for port in &self.publish {
                spec.ports.retain(|p| p.published != port.published);
                spec.ports.push(port.clone());
            }
            for endpoint in &self.endpoint {
                spec.endpoints.retain(|e| e.address != endpoint.address);
                spec.endpoints.push(endpoint.clone());
            }
        }
        if let Some(algorithm) = &self.algorithm {
            spec.algorithm = choice(algorithm);
        }
        if let Some(replicas) = self.replicas {
            spec.replicas = Some(replicas);
        }
        if let Some(version) = &self.proxy_protocol {
            spec.proxy_protocol = choice(version);
        }
        if let Some(max) = self.max_connections {
            spec.max_connections = Some(max);
        }
        if let Some(retry) = self.retry_on_empty {
            spec.retry_on_empty = Some(retry);
        }
        if let Some(image) = &self.image {
            spec.image = Some(image.clone());
        }
        if let Some(command) = &self.command {
            spec.command = Some(command.clone());
        }
        for pair in &self.env {
            let key = pair.split_once('=').map_or(pair.as_str(), |(k, _)| k);
            spec.env
                .retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
            spec.env.push(pair.clone());
        }
        if let Some(mode) = &self.mode {
            spec.mode = choice(mode);
        }
        for constraint in &self.constraint {
            if !spec.constraints.contains(constraint) {
                spec.constraints.push(constraint.clone());
            }
        }
        if let Some(max) = self.replicas_max_per_node {
            spec.max_replicas_per_node = Some(max);
        }
        if let Some(condition) = &self.restart_condition {
            spec.restart.condition = Some(choice(condition));
        }
        if let Some(delay) = self.restart_delay {
            spec.restart.delay = Some(delay);
        }
        if let Some(max) = self.restart_max_attempts {
            spec.restart.max_attempts = Some(max);
        }
        if let Some(parallelism) = self.update_parallelism {
            spec.update.parallelism = Some(parallelism);
        }
        if let Some(delay) = self.update_delay {
            spec.update.delay = Some(delay);
        }
        if let Some(order) = &self.update_order {
            spec.update.order = Some(choice(order));
        }
        if let Some(action) = &self.update_failure_action {
            spec.update.failure_action = Some(choice(action));
        }
        if let Some(monitor) = self.update_monitor {
            spec.update.monitor = Some(monitor);
        }
        if let Some(grace) = self.stop_grace_period {
            spec.stop_grace_period = Some(grace);
        }
        if let Some(drain) = self.drain_timeout {
            spec.drain_timeout = Some(drain);
        }
        if let Some(kind) = &self.health_type {
            spec.health.kind = Some(choice(kind));
        }
        if let Some(path) = &self.health_path {
            spec.health.path = Some(path.clone());
        }
        if let Some(interval) = self.health_interval {
            spec.health.interval = Some(interval);
        }
    }
}

/// A value clap already restricted to the enum's spellings.
fn choice<T: serde::de::DeserializeOwned + Default>(text: &str) -> T {
    serde_json::from_value(json!(text)).unwrap_or_default()
}

/// A failed command: what to print on stderr.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CtlError(pub String);

struct Api<'a> {
    cli: &'a Cli,
}

impl Api<'_> {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CtlError> {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let (status, body) = client::request(
            &self.cli.host,
            method,
            path,
            self.cli.token.as_deref(),
            bytes.as_deref(),
        )
        .await
        .map_err(CtlError)?;
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let field = value["error"]["field"].as_str().unwrap_or("response");
        let reason = value["error"]["reason"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        Err(CtlError(format!("{field}: {reason}")))
    }
}

/// Runs a parsed command; returns what to print on stdout.
pub async fn run(cli: &Cli) -> Result<String, CtlError> {
    let api = Api { cli };
    let json_out = cli.format == Format::Json;
    match &cli.command {
        Noun::Cluster(ClusterCommand::Info) => {
            let info = api.call("GET", "/v1/cluster", None).await?;
            Ok(if json_out {
                pretty(&info)
            } else {
                let list = |v: &Value| {
                    v.as_array()
                        .map(|a| {
                            a.iter()
                                .map(Value::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default()
                };
                format!(
                    "Cluster:   {}\nNode:      {}\nLeader:    {}\nTerm:      {}\nCommitted: {}\nApplied:   {}\nVoters:    {}\nLearners:  {}\nNodes:     {}\nServices:  {}\n",
                    text(&info["id"]),
                    info["node_id"],
                    info["leader"],
                    info["term"],
                    info["commit_index"],
                    info["applied_index"],
                    list(&info["voters"]),
                    list(&info["learners"]),
                    info["nodes"],
                    info["services"]
                )
            })
        }
        Noun::Cluster(ClusterCommand::JoinToken { role }) => {
            let role = match role {
                JoinRole::Manager => "manager",
                JoinRole::Worker => "worker",
            };
            let token = api
                .call("GET", &format!("/v1/cluster/join-token/{role}"), None)
                .await?;
            Ok(if json_out {
                pretty(&token)
            } else {
                format!("{}\n", text(&token["token"]))
            })
        }
        Noun::Node(NodeCommand::Ls) => {
            let nodes = api.call("GET", "/v1/nodes", None).await?;
            Ok(if json_out {
                pretty(&nodes)
            } else {
                let rows = rows(&nodes, |n| {
                    vec![
                        n["id"].to_string(),
                        text(&n["name"]),
                        text(&n["status"]),
                        text(&n["availability"]),
                        text(&n["role"]),
                        text(&n["raft"]),
                        text(&n["ingress_addr"]),
                    ]
                });
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
            })
        }
        Noun::Node(NodeCommand::Inspect { node }) => Ok(pretty(
            &api.call("GET", &format!("/v1/nodes/{node}"), None).await?,
        )),
        Noun::Node(NodeCommand::Update {
            node,
            availability,
            label_add,
            label_rm,
        }) => {
            let body = json!({
                "availability": availability,
                "labels_add": label_add.iter().cloned().collect::<BTreeMap<_, _>>(),
                "labels_remove": label_rm,
            });
            let updated = api
                .call("POST", &format!("/v1/nodes/{node}"), Some(&body))
                .await?;
            Ok(if json_out {
                pretty(&updated)
            } else {
                format!("{}\n", text(&updated["name"]))
            })
        }
        Noun::Node(NodeCommand::Rm { node, force }) => {
            let path = if *force {
                format!("/v1/nodes/{node}?force=true")
            } else {
                format!("/v1/nodes/{node}")
            };
            api.call("DELETE", &path, None).await?;
            Ok(format!("{node}\n"))
        }
        Noun::Service(command) => service(&api, command, json_out).await,
        Noun::Apply { file, prune } => apply(&api, file, *prune).await,
    }
}

async fn service(
    api: &Api<'_>,
    command: &ServiceCommand,
    json_out: bool,
) -> Result<String, CtlError> {
    match command {
        ServiceCommand::Create { name, spec } => {
            let mut body = ServiceSpec {
                name: name.clone(),
                ..ServiceSpec::default()
            };
            spec.apply_to(&mut body, true);
            let created = api.call("POST", "/v1/services", Some(&json!(body))).await?;
            Ok(if json_out {
                pretty(&created)
            } else {
                format!("{name}\n")
            })
        }
        ServiceCommand::Ls => {
            let services = api.call("GET", "/v1/services", None).await?;
            Ok(if json_out {
                pretty(&services)
            } else {
                let rows = rows(&services, |s| {
                    let spec = &s["spec"];
                    let ports = spec["ports"]
                        .as_array()
                        .map(|ports| {
                            ports
                                .iter()
                                .map(|p| {
                                    let target = p["target"].as_i64().or(p["published"].as_i64());
                                    format!("*:{}->{}/tcp", p["published"], target.unwrap_or(0))
                                })
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    let replicas = if spec["image"].is_null() && spec["command"].is_null() {
                        "-".to_owned()
                    } else {
                        format!("{}/{}", s["running"], s["desired"])
                    };
                    let mode = if spec["mode"] == "global" {
                        "global"
                    } else {
                        "replicated"
                    };
                    vec![
                        text(&spec["name"]),
                        mode.to_owned(),
                        replicas,
                        spec["image"].as_str().unwrap_or("-").to_owned(),
                        text(&s["vip"]),
                        spec["endpoints"].as_array().map_or(0, Vec::len).to_string(),
                        spec["algorithm"]
                            .as_str()
                            .unwrap_or("round-robin")
                            .to_owned(),
                        s["version"].to_string(),
                        ports,
                    ]
                });
                table(
                    &[
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
            })
        }
        ServiceCommand::Inspect { name } => Ok(pretty(
            &api.call("GET", &format!("/v1/services/{name}"), None)
                .await?,
        )),
        ServiceCommand::Ps { name, live } => {
            let mut tasks = api
                .call("GET", &format!("/v1/services/{name}/tasks"), None)
                .await?;
            if *live {
                if let Some(list) = tasks.as_array_mut() {
                    list.retain(|t| t["desired"] == "running");
                }
            }
            Ok(if json_out {
                pretty(&tasks)
            } else {
                task_table(&tasks)
            })
        }
        ServiceCommand::Scale { targets } => {
            // Check every target exists before changing any.
            for (name, _) in targets {
                api.call("GET", &format!("/v1/services/{name}"), None)
                    .await?;
            }
            let mut out = String::new();
            for (name, replicas) in targets {
                api.call(
                    "POST",
                    &format!("/v1/services/{name}/scale"),
                    Some(&json!({"replicas": replicas})),
                )
                .await?;
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
            let current = api
                .call("GET", &format!("/v1/services/{name}"), None)
                .await?;
            let mut body: ServiceSpec = serde_json::from_value(current["spec"].clone())
                .map_err(|e| CtlError(format!("spec: {e}")))?;
            body.ports.retain(|p| !publish_rm.contains(&p.published));
            body.endpoints.retain(|e| !endpoint_rm.contains(&e.address));
            body.env.retain(|e| {
                let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
                !env_rm.iter().any(|rm| rm == key)
            });
            body.constraints.retain(|c| !constraint_rm.contains(c));
            spec.apply_to(&mut body, false);
            let updated = api
                .call("PUT", &format!("/v1/services/{name}"), Some(&json!(body)))
                .await?;
            Ok(if json_out {
                pretty(&updated)
            } else {
                format!("{name}\n")
            })
        }
        ServiceCommand::Rollback { name } => {
            api.call("POST", &format!("/v1/services/{name}/rollback"), None)
                .await?;
            Ok(format!("{name}\n"))
        }
        ServiceCommand::Rm { names } => {
            let mut out = String::new();
            for name in names {
                api.call("DELETE", &format!("/v1/services/{name}"), None)
                    .await?;
                out.push_str(&format!("{name}\n"));
            }
            Ok(out)
        }
    }
}

/// `apply -f`: every spec in the file is validated first; only then are
/// services created or updated (and, with `--prune`, others removed).
async fn apply(api: &Api<'_>, file: &PathBuf, prune: bool) -> Result<String, CtlError> {
    let contents =
        std::fs::read_to_string(file).map_err(|e| CtlError(format!("{}: {e}", file.display())))?;
    let parsed =
        ConfigFile::parse(&contents).map_err(|e| CtlError(format!("{}: {e}", file.display())))?;
    parsed
        .validate()
        .map_err(|e| CtlError(format!("{}: {e}", file.display())))?;
    let existing = api.call("GET", "/v1/services", None).await?;
    let existing: BTreeMap<String, Value> = existing
        .as_array()
        .map(|all| {
            all.iter()
                .map(|s| (text(&s["spec"]["name"]), s["spec"].clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut out = String::new();
    for spec in &parsed.services {
        match existing.get(&spec.name) {
            None => {
                api.call("POST", "/v1/services", Some(&json!(spec))).await?;
                out.push_str(&format!("{}: created\n", spec.name));
            }
            Some(current) if *current == json!(spec) => {
                out.push_str(&format!("{}: unchanged\n", spec.name));
            }
            Some(_) => {
                api.call(
                    "PUT",
                    &format!("/v1/services/{}", spec.name),
                    Some(&json!(spec)),
                )
                .await?;
                out.push_str(&format!("{}: updated\n", spec.name));
            }
        }
    }
    if prune {
        for name in existing.keys() {
            if !parsed.services.iter().any(|s| &s.name == name) {
                api.call("DELETE", &format!("/v1/services/{name}"), None)
                    .await?;
                out.push_str(&format!("{name}: removed\n"));
            }
        }
    }
    Ok(out)
}

/// `service ps`: one row per task, like `docker service ps`.
fn task_table(tasks: &Value) -> String {
    let now = crate::scheduler::now_millis();
    let rows = rows(tasks, |t| {
        let name = if t["slot"] == 0 {
            format!("{}.{}", text(&t["service"]), text(&t["node_name"]))
        } else {
            format!("{}.{}", text(&t["service"]), t["slot"])
        };
        let since = t["updated_at"].as_u64().unwrap_or(now);
        let age = Duration::from_secs(now.saturating_sub(since) / 1000);
        vec![
            text(&t["id"]),
            name,
            t["node_name"].as_str().unwrap_or("-").to_owned(),
            text(&t["desired"]),
            format!(
                "{} {} ago",
                text(&t["state"]),
                humantime::format_duration(age)
            ),
            text(&t["health"]),
            endpoint(&t["endpoint"]),
            text(&t["message"]),
        ]
    });
    table(
        &[
            "ID", "NAME", "NODE", "DESIRED", "CURRENT", "HEALTH", "ENDPOINT", "MESSAGE",
        ],
        &rows,
    )
}

/// A task endpoint as `ip:port[,ip:port]`.
fn endpoint(value: &Value) -> String {
    let ip = text(&value["ip"]);
    value["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .map(|pair| format!("{ip}:{}", pair[1]))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".to_owned())
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn pretty(value: &Value) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(value).unwrap_or_default()
    )
}

fn rows(list: &Value, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    list.as_array()
        .map(|items| items.iter().map(row).collect())
        .unwrap_or_default()
}

/// docker-style columns: left-aligned, padded to the widest cell, three
/// spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn publish_syntaxes() {
        let short = parse_publish("8080:80").unwrap();
        assert_eq!((short.published, short.target), (8080, Some(80)));
        let long = parse_publish("published=8080,target=80,protocol=tcp").unwrap();
        assert_eq!(
            (long.published, long.target, long.protocol.as_deref()),
            (8080, Some(80), Some("tcp"))
        );
        assert_eq!(parse_publish("9000").unwrap().target, None);
        assert!(parse_publish("x:80").is_err());
        assert!(parse_publish("target=80").is_err());
    }

    #[test]
    fn endpoint_and_scale_syntaxes() {
        let e = parse_endpoint("10.0.0.1:80,weight=3").unwrap();
        assert_eq!((e.address.as_str(), e.weight), ("10.0.0.1:80", Some(3)));
        assert!(parse_endpoint("10.0.0.1,colour=red").is_err());
        assert_eq!(parse_scale("web=5").unwrap(), ("web".to_owned(), 5));
        assert!(parse_scale("web").is_err());
    }

    #[test]
    fn tables_align_columns() {
        let out = table(&["NAME", "VIP"], &[vec!["web".into(), "127.77.0.1".into()]]);
        assert_eq!(out, "NAME   VIP\nweb    127.77.0.1\n");
    }
}
