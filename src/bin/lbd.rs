//! `lbd`, the lbmesh daemon: parses arguments, sets up logging and the
//! runtime, and hands over to [`lbmesh::daemon`].
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// lbmesh daemon: a Layer-4 load balancer for the services in a config file.
#[derive(Debug, Parser)]
#[command(name = "lbd", version, about)]
struct Args {
    /// Config file with [node] settings and [[service]] tables; SIGHUP re-reads it.
    #[arg(short, long, value_name = "FILE", env = "LBD_CONFIG")]
    config: PathBuf,

    /// Check the config file, print what it defines and exit.
    #[arg(long)]
    check: bool,

    /// Runtime worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("LBD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    if args.check {
        return match lb_config::ConfigFile::load(&args.config) {
            Ok(config) => {
                for service in &config.services {
                    println!(
                        "service {}: {} on {:?}, {} endpoint(s)",
                        service.name,
                        service.algorithm,
                        service.listen_addrs(config.node.ingress_addr),
                        service.endpoints.len()
                    );
                }
                println!("{}: ok", args.config.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("lbd: {error}");
                ExitCode::FAILURE
            }
        };
    }

    raise_fd_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = args.threads {
        builder.worker_threads(usize::from(threads));
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lbd: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let daemon = lbmesh::daemon::Daemon::start(&args.config).await?;
        daemon.run().await
    });
    // Connections still open after the grace period are dropped here.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lbd: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Each proxied connection holds two descriptors; the usual soft limit of
/// 1024 would cap lbd near 500 connections.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the file descriptor limit"),
    }
}
