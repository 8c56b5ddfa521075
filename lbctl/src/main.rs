//! `lbctl`, the command-line client of an lbmesh cluster.
//!
//! # Layout and flow
//!
//! ```text
//! argv ─> cli (clap types, parse: flag syntaxes) ─> one module per noun: cluster, node, service, stack, apply, shell
//!      ─> lbmesh-api Client calls, typed answers ─> output (table or --format json) ─> stdout
//! ```
//!
//! - [`cli`]: nouns, verbs and flags; nothing runs there.
//! - [`cluster`], [`node`], [`service`], [`apply`]: each runs its verbs as
//!   `/v1` requests and returns what to print.
//! - [`stack`]: `stack deploy|ls|services|ps|rm`; [`compose`] reads the
//!   compose files (after [`interpolate`]) into specs, and deploy plans and
//!   acts through [`apply::execute`].
//! - [`filter`]: docker's `--filter KEY=VALUE`; [`tasks`]: the task
//!   listing `service ps` and `node ps` share; [`follow`]: a service
//!   write followed to convergence with its progress.
//! - [`logs`]: `service logs`, read once or followed as the tasks write.
//! - [`shell`]: completion scripts and man pages, from the clap types.
//! - [`table`]: the one table builder; [`output`] picks table or JSON.
//! - [`error`]: what a failed command reports.
//!
//! Nouns and verbs follow docker's. Errors print to stderr as
//! `Error: <field>: <reason>` with exit code 1; a malformed argument is
//! clap's error with exit code 2. A command sends nothing once one of its
//! arguments is found invalid.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use lbmesh_api::Client;
use lbmesh_tls::CaPin;

mod apply;
mod cli;
mod cluster;
mod compose;
mod error;
mod filter;
mod follow;
mod interpolate;
mod logs;
mod node;
mod output;
mod parse;
mod service;
mod shell;
mod stack;
mod table;
mod tasks;

use cli::{Cli, Noun};
use cluster::LOCAL_SOCKET;
use error::CtlError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("Error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The admin API lbctl talks to without `--host`.
const DEFAULT_HOST: &str = "127.0.0.1:9900"; // fixed-port-ok: the documented default admin API

/// How lbctl reaches the cluster: the node's local socket when `--host` is
/// not given and the socket exists (root on a node needs no token), else
/// TLS to `--host`, trusting the CA the control token's digest (or `--ca`)
/// names.
fn connect(cli: &Cli, host: &str) -> Result<Client, CtlError> {
    if cli.host.is_none() {
        let socket = cluster::default_data_dir(host)?.join(LOCAL_SOCKET);
        if socket.exists() {
            return Ok(Client::local(socket));
        }
    }
    let token = lbmesh_api::token::read_token(cli.token.as_deref(), cli.token_file.as_deref())
        .map_err(CtlError::Token)?;
    let pin =
        match (&cli.ca, token.as_deref()) {
            (Some(path), _) => {
                let pem = std::fs::read_to_string(path).map_err(|source| CtlError::Read {
                    path: path.clone(),
                    source,
                })?;
                CaPin::Cert(pem)
            }
            (None, Some(token)) => CaPin::Digest(ca_digest_of(token)?),
            (None, None) => return Err(CtlError::Token(
                "no control token: give --token or --token-file (or run lbctl as root on a node, \
                 which uses its local socket)"
                    .to_owned(),
            )),
        };
    let tls = pin
        .client_config()
        .map_err(|e| CtlError::Token(format!("--ca: {e}")))?;
    Ok(Client::new(host, token)?.with_tls(tls))
}

/// The CA digest a control token carries (`LBMCTL-2-<digest>-<secret>`).
fn ca_digest_of(token: &str) -> Result<String, CtlError> {
    lbmesh_api::token::TokenParts::parse(token, lbmesh_api::token::CONTROL_PREFIX)
        .map(|parts| parts.ca_digest)
        .map_err(|reason| {
            CtlError::Token(format!("the control token: {reason} (or give --ca FILE)"))
        })
}

/// Runs a parsed command; returns what to print on stdout. `completion`
/// and `man` need no cluster, so neither a reachable nor a valid `--host`.
async fn run(cli: &Cli) -> Result<String, CtlError> {
    let host = cli.host.as_deref().unwrap_or(DEFAULT_HOST);
    let client = || connect(cli, host);
    match &cli.command {
        Noun::Cluster(command) => cluster::run(client, host, command, cli.format).await,
        Noun::Node(command) => node::run(&client()?, command, cli.format).await,
        Noun::Service(command) => service::run(&client()?, command, cli.format).await,
        Noun::Stack(command) => stack::run(&client()?, command, cli.format).await,
        Noun::Apply {
            file,
            prune,
            dry_run,
        } => apply::run(&client()?, file, *prune, *dry_run).await,
        Noun::Completion { shell } => Ok(shell::completion(*shell)),
        Noun::Man { dir } => shell::man_pages(dir),
    }
}
