//! The command line as clap types: global flags, nouns, verbs and their
//! flags. Nothing here runs; [`crate::cluster`], [`crate::node`],
//! [`crate::service`], [`crate::stack`] and [`crate::apply`] do. Every flag with a fixed set
//! of values is a [`ValueEnum`], so a misspelt value is clap's error listing
//! the valid ones.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lb_config::{EndpointSpec, PortSpec};

use crate::parse::{parse_endpoint, parse_filter, parse_label, parse_publish, parse_scale, Filter};

/// `lbctl --version`: the package version and the commit it was built from
/// (`build.rs`; `unknown` outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LBCTL_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "lbctl",
    version = VERSION,
    about = "Drive an lbmesh cluster",
    propagate_version = true
)]
pub struct Cli {
    /// Admin API of any node [default: this node's local socket
    /// (lbmesh-data/127.0.0.1/lbd.sock) when it exists, else
    /// 127.0.0.1:9900]. The API is TLS; lbctl pins the cluster CA by the
    /// digest in the control token, or by --ca.
    #[arg(long, global = true, env = "LBCTL_HOST")]
    pub host: Option<String>,
    /// The cluster CA's certificate (a node's `DATA_DIR/ca.crt`), to trust
    /// instead of the digest in the control token.
    #[arg(long, global = true, value_name = "FILE", env = "LBCTL_CA")]
    pub ca: Option<PathBuf>,
    /// Control token printed when the cluster was bootstrapped (`-`: read
    /// it from standard input; on the command line other local users can
    /// read it).
    #[arg(long, global = true, env = "LBCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the control token from FILE (a node's `DATA_DIR/control-token`
    /// works as it is).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "LBCTL_TOKEN_FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
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
    /// Stacks: the services of a compose file, deployed together.
    #[command(subcommand)]
    Stack(StackCommand),
    /// Create or update the services of a `[[service]]` file to match it.
    Apply {
        /// The file (the `lbd --config` `[[service]]` format).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Also remove services the file does not name.
        #[arg(long)]
        prune: bool,
        /// Print the plan and change nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
    },
    /// Print a shell completion script: `source <(lbctl completion bash)`.
    Completion {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write man pages, one per command (`lbctl.1`, `lbctl-service-create.1`, ...).
    Man {
        /// The directory to write them into (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

/// `lbctl completion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, indexes and members.
    Info,
    /// Print the token that joins a node as manager or worker.
    JoinToken {
        /// Which token: for managers (voters) or workers.
        #[arg(value_enum)]
        role: JoinRole,
        /// Replace the token first: the old one admits no one; nodes that
        /// joined with it keep running.
        #[arg(long)]
        rotate: bool,
    },
    /// Print the control token, read from this node's data dir (run on a
    /// manager, as the user lbd runs as; nothing is sent).
    Token {
        /// The node's data dir [default: lbmesh-data/<IP of --host>, lbd's
        /// default].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
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
    Ls {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show nodes as JSON (one: an object; several: an array).
    Inspect {
        /// Node names or ids.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// List the tasks assigned to nodes (like `service ps`).
    Ps {
        /// Node names or ids.
        #[arg(required = true)]
        nodes: Vec<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Change a node's availability or labels.
    Update {
        /// Node name or id.
        node: String,
        /// Whether the scheduler may place tasks on the node.
        #[arg(long, value_enum)]
        availability: Option<Availability>,
        /// Add or change a label (`key=value`), repeatable.
        #[arg(long = "label-add", value_name = "KEY=VALUE", value_parser = parse_label)]
        label_add: Vec<(String, String)>,
        /// Remove a label, repeatable.
        #[arg(long = "label-rm", value_name = "KEY")]
        label_rm: Vec<String>,
    },
    /// Make nodes managers: they vote in Raft (kept at an odd count of at
    /// most five).
    Promote {
        /// Node names or ids.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make nodes workers: they keep a copy of the registry but do not
    /// vote (not the leader, nor the last manager).
    Demote {
        /// Node names or ids.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove a node that is down (`--force` for one that is not).
    #[command(alias = "remove")]
    Rm {
        /// Node name or id.
        node: String,
        /// Remove it even if it is not down.
        #[arg(long)]
        force: bool,
    },
}

/// `-q` and `--filter`, shared by the `ls` and `ps` verbs.
#[derive(Debug, Args, Default)]
pub struct ListArgs {
    /// Print only the ids (service names for `service ls`).
    #[arg(short, long)]
    pub quiet: bool,
    /// Keep only matching rows, docker's `KEY=VALUE` (repeatable; the
    /// same key ORs, different keys AND). `service ls`: id, name, mode;
    /// `service ps`, `node ps`: id, name, node, desired-state; `node ls`:
    /// id, name, label (or node.label), role, membership.
    #[arg(short, long = "filter", value_name = "KEY=VALUE", value_parser = parse_filter)]
    pub filter: Vec<Filter>,
}

/// `node update --availability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service.
    Create {
        /// The service's name (unique in the cluster).
        name: String,
        #[command(flatten)]
        spec: SpecArgs,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// List services.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show services as JSON, with their update status (one: an object;
    /// several: an array).
    Inspect {
        /// Service names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List services' tasks: node, desired and current state, health,
    /// endpoint, error.
    Ps {
        /// Service names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Only tasks that are wanted (desired state running).
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show the output of services' tasks, each line prefixed with its
    /// task (`web.1.ID@NODE | ...`), read through any node.
    Logs {
        /// Service names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Only the last N lines of each task.
        #[arg(short = 'n', long, value_name = "N")]
        tail: Option<usize>,
        /// Keep printing what the tasks write, as they write it, until
        /// they stop or Ctrl-C.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Set replica counts: `lbctl service scale web=5 api=2`.
    Scale {
        /// Services and their new replica counts.
        #[arg(required = true, value_name = "SERVICE=REPLICAS", value_parser = parse_scale)]
        targets: Vec<(String, i64)>,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Change a service; flags given replace those settings.
    Update {
        /// The service to change.
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
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Return a service to its previous spec.
    Rollback {
        /// The service to roll back.
        name: String,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Remove services.
    #[command(alias = "remove")]
    Rm {
        /// Service names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// How a service write waits for its tasks (`create`, `update`, `scale`,
/// `rollback`, `stack deploy`).
#[derive(Debug, Args, Clone, Copy)]
pub struct FollowArgs {
    /// Return once the write is stored, without following the tasks to
    /// convergence.
    #[arg(short, long)]
    pub detach: bool,
    /// Give up following after this long (exit 1 with what is not running).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `lbctl stack`, docker's verbs.
#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Create or update a stack's services from compose files; a service
    /// whose spec is unchanged is left running as it is.
    Deploy {
        /// A compose file (repeatable: later files override earlier ones).
        #[arg(
            short = 'c',
            long = "compose-file",
            value_name = "FILE",
            required = true
        )]
        files: Vec<PathBuf>,
        /// Also remove the stack's services the files no longer name.
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        follow: FollowArgs,
        /// The stack's name (its services are NAME-<service>).
        name: String,
    },
    /// List stacks and their number of services.
    #[command(alias = "list")]
    Ls,
    /// List a stack's services (like `service ls`).
    Services {
        /// The stack.
        name: String,
        /// Print only the service names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List the tasks of a stack's services (like `service ps`).
    Ps {
        /// The stack.
        name: String,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Remove every service of stacks.
    #[command(alias = "remove")]
    Rm {
        /// Stack names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Spec flags shared by `service create` and `service update`.
#[derive(Debug, Args, Default)]
pub struct SpecArgs {
    /// Publish a port: `8080:80`, `53:53/udp`, `8080`, or `published=8080,target=80[,protocol=tcp|udp]`.
    #[arg(short = 'p', long = "publish", value_name = "SPEC", value_parser = parse_publish)]
    pub publish: Vec<PortSpec>,
    /// Static backend `ADDR[,weight=N]`, repeatable.
    #[arg(long = "endpoint", value_name = "ADDR[,weight=N]", value_parser = parse_endpoint)]
    pub endpoint: Vec<EndpointSpec>,
    /// How a connection picks its backend.
    #[arg(long, value_enum)]
    pub algorithm: Option<lb_config::Algorithm>,
    /// Tasks to run (replicated mode).
    #[arg(long, value_name = "N")]
    pub replicas: Option<i64>,
    /// Send a PROXY protocol header to the backends.
    #[arg(long = "proxy-protocol", value_enum)]
    pub proxy_protocol: Option<lb_config::ProxyProtocol>,
    /// Open connections the service accepts on each node (more wait).
    #[arg(long = "max-connections", value_name = "N")]
    pub max_connections: Option<i64>,
    /// Open connections one client address may hold (0: no cap; clients
    /// behind one NAT share an address).
    #[arg(long = "max-connections-per-client", value_name = "N")]
    pub max_connections_per_client: Option<i64>,
    /// UDP ports: a client flow keeps its task until it sends or gets no
    /// datagram for this long (default 60s).
    #[arg(long = "udp-idle-timeout", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub udp_idle_timeout: Option<Duration>,
    /// UDP ports: open sessions (client flows) the service holds on each
    /// node; a new flow past it is dropped (default 10000).
    #[arg(long = "max-udp-sessions", value_name = "N")]
    pub max_udp_sessions: Option<i64>,
    /// Resend a request to another task when one closes the connection
    /// before answering (a killed task's in-flight requests); a request may
    /// then reach two tasks, so keep it off for non-idempotent protocols.
    #[arg(long = "retry-on-empty", value_name = "BOOL")]
    pub retry_on_empty: Option<bool>,
    /// One JSON line per closed connection in each node's access log
    /// (`lbd --access-log`; default off).
    #[arg(long = "access-log", value_name = "BOOL")]
    pub access_log: Option<bool>,
    /// How long a connect to a task may take before the next task is tried
    /// (default 3s).
    #[arg(long = "connect-timeout", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Close a connection after this long with no byte moved (default 1h).
    #[arg(long = "idle-timeout", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// With --retry-on-empty: how long a task that has a request may stay
    /// silent before it is ejected and the request goes to another task
    /// (a task cut off mid-request).
    #[arg(long = "reply-timeout", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub reply_timeout: Option<Duration>,
    /// Docker image the tasks run.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Shell command of each task; without --image it runs as a local
    /// process with HOST and PORT set.
    #[arg(long, value_name = "COMMAND")]
    pub command: Option<String>,
    /// Run each task as NAME|UID[:GROUP|GID] (a process task's user must
    /// exist on the node that runs it).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Set an environment variable `KEY=VALUE`, repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Replicated (a number of tasks) or global (one per eligible node).
    #[arg(long, value_enum)]
    pub mode: Option<lb_config::ServiceMode>,
    /// Placement constraint (`node.labels.zone==a`), repeatable.
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraint: Vec<String>,
    /// Tasks of the service one node may run (0: no cap).
    #[arg(long = "replicas-max-per-node", value_name = "N")]
    pub replicas_max_per_node: Option<i64>,
    /// When an ended task is replaced.
    #[arg(long = "restart-condition", value_enum)]
    pub restart_condition: Option<lb_config::RestartCondition>,
    /// Wait between a task's end and its replacement (`5s`, `1m`).
    #[arg(long = "restart-delay", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub restart_delay: Option<Duration>,
    /// Replacements of a failing slot before giving up (0: no limit).
    #[arg(long = "restart-max-attempts", value_name = "N")]
    pub restart_max_attempts: Option<i64>,
    /// Tasks replaced at a time (0: all).
    #[arg(long = "update-parallelism", value_name = "N")]
    pub update_parallelism: Option<i64>,
    /// Wait between batches of a rolling update.
    #[arg(long = "update-delay", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub update_delay: Option<Duration>,
    /// Stop the old task before starting the new one, or the reverse.
    #[arg(long = "update-order", value_enum)]
    pub update_order: Option<lb_config::UpdateOrder>,
    /// What a rolling update does when a new task fails.
    #[arg(long = "update-failure-action", value_enum)]
    pub update_failure_action: Option<lb_config::FailureAction>,
    /// How long a new task is watched for failure before the next batch.
    #[arg(long = "update-monitor", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub update_monitor: Option<Duration>,
    /// Tasks a rollback replaces at a time (0: all; absent rollback
    /// flags: a rollback rolls as the update does).
    #[arg(long = "rollback-parallelism", value_name = "N")]
    pub rollback_parallelism: Option<i64>,
    /// Wait between batches of a rollback.
    #[arg(long = "rollback-delay", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub rollback_delay: Option<Duration>,
    /// Stop the old task before starting the new one, or the reverse, in
    /// a rollback.
    #[arg(long = "rollback-order", value_enum)]
    pub rollback_order: Option<lb_config::UpdateOrder>,
    /// What a rollback does when a task fails (pause or continue).
    #[arg(long = "rollback-failure-action", value_enum)]
    pub rollback_failure_action: Option<lb_config::FailureAction>,
    /// How long a rolled-back task is watched for failure.
    #[arg(long = "rollback-monitor", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub rollback_monitor: Option<Duration>,
    /// SIGTERM to SIGKILL when a task stops.
    #[arg(long = "stop-grace-period", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub stop_grace_period: Option<Duration>,
    /// How long a departing task keeps its open connections.
    #[arg(long = "drain-timeout", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// The active health check of each task.
    #[arg(long = "health-type", value_enum)]
    pub health_type: Option<lb_config::HealthCheckKind>,
    /// Path an `http` check requests.
    #[arg(long = "health-path", value_name = "PATH")]
    pub health_path: Option<String>,
    /// Time between two checks of a task.
    #[arg(long = "health-interval", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub health_interval: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every command has an about line and every argument a help line, so
    /// `--help` and the man pages describe them all.
    #[test]
    fn every_command_and_argument_is_described() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            if command.get_about().is_none() && !path.is_empty() {
                missing.push(format!("command {path}"));
            }
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &format!("{path} {}", sub.get_name()), missing);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no help for: {missing:#?}");
    }
}
