//! The errors of this crate: a field that failed validation, and why a file
//! could not be used.
//!
//! A [`FieldError`] names the field by its path in the document
//! (`service[1].ports[0].published`); [`ConfigError`] adds the file.

use std::path::PathBuf;

/// A field that failed validation: its path inside the document and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Dotted path of the field, e.g. `ports[0].published`.
    pub field: String,
    /// What is wrong with it, in words a user can act on.
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error, one level deeper in the document.
    pub(crate) fn within(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}.{}", self.field),
            reason: self.reason,
        }
    }
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown or mistyped field; the message
    /// from the parser names the line and the key.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {error}")]
    Invalid { path: PathBuf, error: FieldError },
}
