//! Where a node's access log goes (`lbd --access-log`); the lines
//! themselves are the data plane's ([`lbmesh_proxy::access_log`]).
//!
//! Standard output by default, where container platforms and systemd's
//! journal collect a process's output (lbd's own log lines go to stderr,
//! so the two never mix); or a file, appended to and created 0600 (client
//! addresses are personal data), which `logrotate`'s `copytruncate`
//! rotates. Only services with `access_log = true` write lines.

use std::io::{self, Write};
use std::path::PathBuf;

use crate::files;

/// The access log's destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AccessLogOutput {
    #[default]
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for AccessLogOutput {
    type Err = String;

    /// `-` is standard output; anything else a file path.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "" => Err("an empty path (use - for standard output)".to_owned()),
            "-" => Ok(Self::Stdout),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

impl AccessLogOutput {
    /// Opens the destination for the access log's writer thread.
    pub fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        match self {
            Self::Stdout => Ok(Box::new(io::stdout())),
            Self::File(path) => Ok(Box::new(files::append_private(path)?)),
        }
    }
}

impl std::fmt::Display for AccessLogOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdout => f.write_str("-"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}
