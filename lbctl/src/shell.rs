//! `lbctl completion bash|zsh|fish` (clap_complete) and `lbctl man --dir
//! DIR` (clap_mangen): both generated from the clap definition in
//! [`crate::cli`], so they list exactly the commands and flags there are.
//! Neither talks to a cluster.

use std::path::Path;

use clap::CommandFactory;

use crate::cli::{Cli, Shell};
use crate::error::CtlError;

/// The completion script for `shell`.
pub fn completion(shell: Shell) -> String {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "lbctl", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `lbctl.1` and one page per subcommand (`lbctl-service-create.1`)
/// into `dir` (created if missing); answers the files written, one a line.
pub fn man_pages(dir: &Path) -> Result<String, CtlError> {
    let write_error = |source| CtlError::Write {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(write_error)?;
    clap_mangen::generate_to(Cli::command(), dir).map_err(write_error)?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .map_err(write_error)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "1"))
        .map(|path| path.display().to_string())
        .collect();
    pages.sort();
    Ok(pages.iter().map(|page| format!("{page}\n")).collect())
}
