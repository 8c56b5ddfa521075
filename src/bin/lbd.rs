//! `lbd`, the lbmesh daemon: parses arguments, sets up logging, the
//! runtime and the signals, and hands over to [`lbmesh::daemon`].
//!
//! SIGHUP asks the daemon to reload its config file; SIGTERM and SIGINT
//! share the graceful stop path. The handlers are installed before the
//! daemon starts, so a signal that arrives right after it is ready is
//! handled rather than killing the process.
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lbmesh::defaults;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

/// `lbd --version`: the package version and the commit it was built from
/// (`build.rs`: `LBMESH_COMMIT`, git, or `unknown`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LBMESH_COMMIT"),
    ")"
);

/// lbmesh daemon: a Layer-4 load balancer and routing mesh.
///
/// Standalone: `lbd --config FILE` serves the services in the file.
/// Cluster: `lbd --advertise-addr IP` bootstraps a new cluster (or rejoins
/// from its data dir); add `--join HOST --token TOKEN` to join one.
#[derive(Debug, Parser)]
#[command(name = "lbd", version = VERSION, about)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["config", "advertise_addr"])))]
#[command(group(clap::ArgGroup::new("join_token").args(["token", "token_file"])))]
struct Args {
    /// Standalone mode: config file with [node] settings and [[service]]
    /// tables; SIGHUP re-reads it.
    #[arg(short, long, value_name = "FILE", env = "LBD_CONFIG")]
    config: Option<PathBuf>,

    /// Check the config file, print what it defines and exit.
    #[arg(long, requires = "config")]
    check: bool,

    /// Cluster mode: the address other nodes reach this one on. The admin
    /// API (:9900), Raft (:9901) and published ports bind here by default.
    #[arg(long, value_name = "IP", conflicts_with = "config")]
    advertise_addr: Option<IpAddr>,

    /// Join the cluster that the node at HOST[:PORT] (its admin API,
    /// default port 9900) belongs to.
    #[arg(long, value_name = "HOST", requires_all = ["join_token", "advertise_addr"])]
    join: Option<String>,

    /// Join token (`lbctl cluster join-token manager|worker`); `-` reads it
    /// from standard input (on the command line, local users can read it).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "LBD_JOIN_TOKEN",
        requires = "join",
        hide_env_values = true
    )]
    token: Option<String>,

    /// Read the join token from FILE.
    #[arg(long, value_name = "FILE", requires = "join", conflicts_with = "token")]
    token_file: Option<PathBuf>,

    /// Where the node keeps its identity and registry
    /// [default: lbmesh-data/<advertise-addr>].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Admin API address [default: <advertise-addr>:9900].
    #[arg(long, value_name = "ADDR")]
    api_addr: Option<SocketAddr>,

    /// Raft RPC address [default: <advertise-addr>:9901].
    #[arg(long, value_name = "ADDR")]
    raft_addr: Option<SocketAddr>,

    /// Where published ports bind [default: the advertise address]. Give
    /// it twice, once per family, for a dual-stack node: IPv6 sockets are
    /// v6-only, so `::` alone never takes IPv4 clients.
    #[arg(long, value_name = "IP", value_parser = parse_ingress)]
    ingress_addr: Vec<IpAddr>,

    /// VIP range of a new cluster (ignored when joining or restarting).
    #[arg(long, value_name = "CIDR", default_value = defaults::VIP_RANGE, value_parser = raft_state::state::VipRange::parse)]
    vip_range: raft_state::state::VipRange,

    /// DNS domain of a new cluster (ignored when joining or restarting):
    /// every node's responder answers `SERVICE.DOMAIN`, and
    /// `NAME.STACK.DOMAIN` for a stack's services.
    #[arg(long, value_name = "DOMAIN", default_value = raft_state::state::DEFAULT_DNS_DOMAIN, value_parser = parse_dns_domain)]
    dns_domain: String,

    /// Where the DNS responder sends names that are not the cluster's
    /// (IP or IP:PORT; repeat for several) [default: the nameservers of
    /// /etc/resolv.conf].
    #[arg(long, value_name = "ADDR", value_parser = parse_dns_upstream)]
    dns_upstream: Vec<SocketAddr>,

    /// IPv6 VIP range of a new cluster, or `none` for IPv4 VIPs only
    /// (ignored when joining or restarting). Each node routes it locally
    /// on `lo`, which needs CAP_NET_ADMIN.
    #[arg(long, value_name = "CIDR", default_value = defaults::VIP_RANGE_V6, value_parser = parse_vip_range_v6)]
    vip_range_v6: ::std::option::Option<raft_state::state::VipRangeV6>,

    /// How long node certificates are valid in a new cluster (ignored when
    /// joining or restarting); each is renewed at half its life.
    #[arg(long, value_name = "DURATION", default_value = defaults::CERT_EXPIRY, value_parser = parse_cert_expiry)]
    cert_expiry: std::time::Duration,

    /// Node name [default: node-<advertise address>].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// How long SIGTERM lets open connections finish.
    #[arg(long, value_name = "DURATION", default_value = defaults::SHUTDOWN_GRACE, value_parser = humantime::parse_duration)]
    shutdown_grace: std::time::Duration,

    /// How often this node tells the leader it is alive (cluster mode).
    #[arg(long, value_name = "DURATION", default_value = defaults::HEARTBEAT_INTERVAL, value_parser = parse_heartbeat)]
    heartbeat_interval: std::time::Duration,

    /// How long the leader waits for a node's heartbeat before marking it
    /// down and rescheduling its tasks.
    #[arg(long, value_name = "DURATION", default_value = defaults::HEARTBEAT_GRACE, value_parser = parse_heartbeat)]
    heartbeat_grace: std::time::Duration,

    /// Build a Raft snapshot every N log entries and purge the log behind
    /// it, keeping N/5 entries for slow followers (a node further behind is
    /// sent the snapshot). Small values are for tests of that path.
    #[arg(long, value_name = "N", default_value_t = raft_state::registry::SNAPSHOT_EVERY, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    snapshot_every: u64,

    /// Proxy threads, each accepting and serving connections on its own
    /// event loop (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,

    /// Log lines as `text` or `json` (one object per line) on stderr.
    /// `LBD_LOG` sets the filter (default: lbmesh at info, dependencies at
    /// warn); text has colour only on a terminal and without `NO_COLOR`.
    #[arg(
        long,
        value_name = "FORMAT",
        env = "LBD_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: lbmesh::logging::LogFormat,

    /// Where services with `access_log = true` write one JSON line per
    /// closed connection: `-` (standard output) or a file, appended to
    /// and created 0600.
    #[arg(long, value_name = "PATH", env = "LBD_ACCESS_LOG", default_value = "-")]
    access_log: lbmesh::access_log::AccessLogOutput,
}

/// A heartbeat setting: 100 ms to 10 minutes.
fn parse_heartbeat(text: &str) -> Result<std::time::Duration, String> {
    let value = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if !defaults::HEARTBEAT_RANGE.contains(&value) {
        return Err(format!("{text} is out of range 100ms..=10m"));
    }
    Ok(value)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let join_token =
        match lbmesh_api::token::read_token(args.token.as_deref(), args.token_file.as_deref()) {
            Ok(token) => token,
            Err(error) => {
                eprintln!("lbd: {error}");
                return ExitCode::from(2);
            }
        };
    if args.heartbeat_grace <= args.heartbeat_interval {
        eprintln!(
            "lbd: --heartbeat-grace ({}) must be longer than --heartbeat-interval ({})",
            humantime::format_duration(args.heartbeat_grace),
            humantime::format_duration(args.heartbeat_interval)
        );
        return ExitCode::from(2);
    }
    lbmesh::logging::Logging::from_env(args.log_format).init();

    if let (true, Some(path)) = (args.check, &args.config) {
        return match lb_config::ConfigFile::load(path) {
            Ok(config) => {
                for service in &config.services {
                    println!(
                        "service {}: {} on {:?}, {} endpoint(s)",
                        service.name,
                        service.algorithm,
                        service
                            .listen_addrs(config.node.ingress_addr)
                            .iter()
                            .map(|(protocol, addr)| match protocol {
                                lb_config::Protocol::Tcp => addr.to_string(),
                                lb_config::Protocol::Udp => format!("{addr}/udp"),
                            })
                            .collect::<Vec<_>>(),
                        service.endpoints.len()
                    );
                }
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("lbd: {error}");
                ExitCode::FAILURE
            }
        };
    }

    raise_fd_limit();
    let proxy_threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    // The control plane (admin API, registry, scheduler, agent) is light:
    // two threads serve it; the connections run on the proxy threads.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(defaults::CONTROL_THREADS)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lbd: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let (reload_requests, shutdown) = Signals::install()?.into_requests();
        tokio::pin!(shutdown);
        let start = async {
            match (
                &args.config,
                cluster_options(&args, join_token, proxy_threads),
            ) {
                (Some(config), _) => {
                    lbmesh::daemon::Daemon::start(config, proxy_threads, &args.access_log).await
                }
                (None, Some(options)) => {
                    let data_dir = options.settings.data_dir.clone();
                    let (daemon, tokens) = lbmesh::daemon::Daemon::start_cluster(options).await?;
                    if let Some(tokens) = tokens {
                        print_tokens(daemon.api_addr(), &data_dir, &tokens);
                    }
                    Ok(daemon)
                }
                (None, None) => unreachable!("clap requires --config or --advertise-addr"),
            }
        };
        // SIGTERM or SIGINT during a slow start (a join waiting on its
        // host) ends the process rather than waiting for the start.
        let daemon = tokio::select! {
            daemon = start => daemon?,
            () = &mut shutdown => return Ok(()),
        };
        daemon.run(reload_requests, shutdown).await?;
        Ok::<(), anyhow::Error>(())
    });
    // Connections still open after the grace period are dropped here.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lbd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The signals lbd answers.
struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        let install =
            |kind| signal(kind).map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"));
        Ok(Self {
            hangup: install(SignalKind::hangup())?,
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
        })
    }

    /// SIGHUP as reload requests, SIGTERM and SIGINT as the shutdown future.
    fn into_requests(self) -> (mpsc::Receiver<()>, impl std::future::Future<Output = ()>) {
        let Signals {
            mut hangup,
            mut terminate,
            mut interrupt,
        } = self;
        let (reload, reload_requests) = mpsc::channel(1);
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                // A reload already pending covers this one too.
                let _ = reload.try_send(());
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
            }
        };
        (reload_requests, shutdown)
    }
}

/// Cluster settings from the flags and their defaults.
fn cluster_options(
    args: &Args,
    join_token: Option<String>,
    proxy_threads: usize,
) -> Option<lbmesh::daemon::ClusterOptions> {
    let advertise = args.advertise_addr?;
    let dashed = advertise.to_string().replace(['.', ':'], "-");
    let settings = lbmesh::cluster::NodeSettings {
        name: args
            .name
            .clone()
            .unwrap_or_else(|| format!("node-{dashed}")),
        advertise_addr: advertise,
        api_addr: args
            .api_addr
            .unwrap_or(SocketAddr::new(advertise, defaults::API_PORT)),
        raft_addr: args
            .raft_addr
            .unwrap_or(SocketAddr::new(advertise, defaults::RAFT_PORT)),
        ingress_addrs: if args.ingress_addr.is_empty() {
            vec![advertise]
        } else {
            args.ingress_addr.clone()
        },
        data_dir: args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(defaults::DATA_DIR).join(advertise.to_string())),
        vip_range: args.vip_range,
        vip_range_v6: args.vip_range_v6,
        dns_domain: args.dns_domain.clone(),
        snapshot_every: args.snapshot_every,
        cert_lifetime: args.cert_expiry,
    };
    let join = args
        .join
        .as_deref()
        .map(|host| (defaults::api_address(host), join_token.unwrap_or_default()));
    Some(lbmesh::daemon::ClusterOptions {
        settings,
        join,
        shutdown_grace: args.shutdown_grace,
        heartbeat_interval: args.heartbeat_interval,
        heartbeat_grace: args.heartbeat_grace,
        proxy_threads,
        access_log: args.access_log.clone(),
        dns: lbmesh::daemon::DnsOptions {
            upstreams: (!args.dns_upstream.is_empty()).then(|| args.dns_upstream.clone()),
        },
    })
}

/// A DNS domain: dot-separated DNS labels, without the final dot.
fn parse_dns_domain(text: &str) -> Result<String, String> {
    let domain = text.trim_end_matches('.').to_ascii_lowercase();
    lb_config::check_dns_domain(&domain)?;
    Ok(domain)
}

/// An upstream resolver: `IP` (port 53) or `IP:PORT`.
fn parse_dns_upstream(text: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, lbmesh::dns::upstream::DNS_PORT));
    }
    text.parse()
        .map_err(|_| format!("{text:?} is not an IP address or IP:PORT"))
}

/// What a new cluster's operator needs, on stdout.
fn print_tokens(api: SocketAddr, data_dir: &std::path::Path, tokens: &lbmesh::cluster::NewTokens) {
    println!(
        "Cluster {} bootstrapped; this node is its first manager.",
        tokens.cluster_id
    );
    println!();
    println!("Join tokens (pass one with --token-file FILE or --token - on standard input):");
    println!(
        "Add a manager:  lbd --advertise-addr <IP> --join {api} --token {}",
        tokens.manager
    );
    println!(
        "Add a worker:   lbd --advertise-addr <IP> --join {api} --token {}",
        tokens.worker
    );
    println!();
    println!(
        "lbctl control token (--token or LBCTL_TOKEN): {}",
        tokens.control
    );
    println!(
        "It is kept in {}; `lbctl cluster token` on this node prints it, and lbctl run as root \
         on this node needs none (the local socket).",
        data_dir.join(lbmesh::cluster::CONTROL_TOKEN_FILE).display()
    );
}

/// `--vip-range-v6`: a range, or `none`.
fn parse_vip_range_v6(text: &str) -> Result<Option<raft_state::state::VipRangeV6>, String> {
    match text {
        "none" => Ok(None),
        range => raft_state::state::VipRangeV6::parse(range).map(Some),
    }
}

/// `--ingress-addr`: an IP address, bare or (IPv6) in brackets.
fn parse_ingress(text: &str) -> Result<IpAddr, String> {
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address"))
}

/// A certificate lifetime: at least 10 s, so a renewal at half of it has
/// time to succeed.
fn parse_cert_expiry(text: &str) -> Result<std::time::Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration < std::time::Duration::from_secs(10) {
        return Err(format!("{text} is shorter than 10s"));
    }
    Ok(duration)
}

/// Each proxied connection holds two descriptors; the usual soft limit of
/// 1024 would cap lbd near 500 connections. The soft limit goes up to the
/// hard one; the admin server takes a quarter of it at most (see
/// `lbmesh::admin::AdminLimits::within`).
fn raise_fd_limit() {
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(_, hard)| hard);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, hard = hard.ok(), "file descriptor limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the file descriptor limit"),
    }
}
