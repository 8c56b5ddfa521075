//! The error body of every `/v1` route, and what the client reports.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `{"error": {"field": ..., "reason": ...}}`: what a route answers with
/// any status other than 2xx.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// Which part of the request was wrong, and why, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A field path of the body (`ports[0].published`), or what else the
    /// error is about (`name`, `authorization`, `leader`, ...).
    pub field: String,
    pub reason: String,
}

impl ErrorBody {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                field: field.into(),
                reason: reason.into(),
            },
        }
    }
}

/// Why a request through [`crate::Client`] brought no answer of the
/// expected type.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("host: {host:?} is not host:port or http://host:port")]
    InvalidHost { host: String },
    #[error("cannot connect to {host}: {source}")]
    Connect {
        host: String,
        source: std::io::Error,
    },
    /// The TLS handshake failed: the node is not of the pinned cluster, or
    /// its certificate is not valid.
    #[error("TLS to {host}: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} did not answer within {after:?}")]
    Timeout { host: String, after: Duration },
    /// The connection broke or the answer was not HTTP/1.1.
    #[error("talking to {host}: {source}")]
    Exchange { host: String, source: hyper::Error },
    /// A streamed answer ([`crate::client::Streamed`]) broke off.
    #[error("the answer broke off: {source}")]
    Stream { source: hyper::Error },
    #[error("request body: {0}")]
    Encode(serde_json::Error),
    /// The request could not be built (a path that is not a URI).
    #[error("request {path:?}: {source}")]
    Request {
        path: String,
        source: hyper::http::Error,
    },
    /// The server answered with an error status; `field` and `reason` are
    /// its [`ErrorBody`], or `response` and the raw answer when the body
    /// was not one.
    #[error("{field}: {reason}")]
    Status {
        status: u16,
        field: String,
        reason: String,
    },
    /// A success status whose body is not the JSON the route answers.
    #[error("response: {host} answered {path} with unexpected JSON: {source}")]
    BadAnswer {
        host: String,
        path: String,
        source: serde_json::Error,
    },
}
