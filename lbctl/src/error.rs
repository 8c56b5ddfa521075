//! What a failed command prints after `Error: `.

use std::path::PathBuf;

use lb_config::FieldError;
use lbmesh_api::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The API refused (`<field>: <reason>`) or could not be reached.
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A `[[service]]` file that is not TOML of the right shape.
    #[error("{}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    /// A `[[service]]` file whose specs do not validate.
    #[error("{}: {source}", path.display())]
    Invalid { path: PathBuf, source: FieldError },
    /// A compose file that `stack deploy` cannot take:
    /// `FILE: services.NAME.KEY: reason`.
    #[error("{0}")]
    Compose(String),
    /// `--token -` or `--token-file` gave no token.
    #[error("{0}")]
    Token(String),
    /// A `--filter` the verb does not take.
    #[error("filter: {0}")]
    Filter(String),
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A followed write whose tasks failed or did not converge in time.
    #[error("{service}: {reason}")]
    NotConverged { service: String, reason: String },
    /// A followed task log that could not be opened or broke off.
    #[error("logs of {task}: {source}")]
    Logs { task: String, source: ApiError },
    #[error("output: {0}")]
    Json(#[from] serde_json::Error),
}
