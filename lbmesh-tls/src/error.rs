//! The one error type of the crate.

/// What went wrong making, reading or using a certificate or key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("key: {0}")]
    Key(String),
    #[error("certificate signing request: {0}")]
    Request(String),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("no random bytes from the OS: {0}")]
    Random(String),
}
