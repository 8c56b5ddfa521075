//! `lbctl`, the command-line client of an lbmesh cluster.
//!
//! # Layout and flow
//!
//! ```text
//! argv ─> cli (clap types, parse: flag syntaxes) ─> one module per noun: cluster, node, service, apply, shell
//!      ─> lbmesh-api Client calls, typed answers ─> output (table or --format json) ─> stdout
//! ```
//!
//! - [`cli`]: nouns, verbs and flags; nothing runs there.
//! - [`cluster`], [`node`], [`service`], [`apply`]: each runs its verbs as
//!   `/v1` requests and returns what to print.
//! - [`filter`]: docker's `--filter KEY=VALUE`; [`tasks`]: the task
//!   listing `service ps` and `node ps` share.
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

mod apply;
mod cli;
mod cluster;
mod error;
mod filter;
mod node;
mod output;
mod parse;
mod service;
mod shell;
mod table;
mod tasks;

use cli::{Cli, Noun};
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

/// Runs a parsed command; returns what to print on stdout. `completion`
/// and `man` need no cluster, so neither a reachable nor a valid `--host`.
async fn run(cli: &Cli) -> Result<String, CtlError> {
    let client = || -> Result<Client, CtlError> {
        let token = lbmesh_api::token::read_token(cli.token.as_deref(), cli.token_file.as_deref())
            .map_err(CtlError::Token)?;
        Ok(Client::new(&cli.host, token)?)
    };
    match &cli.command {
        Noun::Cluster(command) => cluster::run(&client()?, &cli.host, command, cli.format).await,
        Noun::Node(command) => node::run(&client()?, command, cli.format).await,
        Noun::Service(command) => service::run(&client()?, command, cli.format).await,
        Noun::Apply {
            file,
            prune,
            dry_run,
        } => apply::run(&client()?, file, *prune, *dry_run).await,
        Noun::Completion { shell } => Ok(shell::completion(*shell)),
        Noun::Man { dir } => shell::man_pages(dir),
    }
}
