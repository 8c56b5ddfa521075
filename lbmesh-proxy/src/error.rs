//! Whose fault a data-plane failure was, as types that become metric labels.
//!
//! A connection fails on one of three sides: the client (it reset, or
//! stopped reading), a backend (it refused, timed out, reset), or this node
//! (out of descriptors or ephemeral ports). Each class below maps onto the
//! `reason` or `side` label of a metric in [`crate::metrics`], so an operator
//! can tell a flaky backend from a flaky client from a node in trouble.

use std::fmt;
use std::io;

/// Why a backend connect failed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused,
    Timeout,
    /// This node ran short (descriptors, ephemeral ports): not the backend's fault.
    Local,
    Other,
}

impl ConnectFailure {
    /// Classifies the error of a failed connect.
    pub fn of(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::TimedOut => Self::Timeout,
            io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse => Self::Local,
            _ => Self::Other,
        }
    }
}

/// Why a client connection was closed without reaching a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFailure {
    NoBackend,
    AllAttemptsFailed,
}

/// How a client connection ended: the `end` label of
/// `lbmesh_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed and every byte was delivered.
    Finished,
    /// No byte moved for the service's idle timeout.
    IdleTimeout,
    /// Aborted by the client (a reset, a failed read or write on its side).
    ClientError,
    /// Aborted by the backend.
    BackendError,
    /// Closed without a backend to forward to.
    NoBackend,
}

impl End {
    pub const ALL: [End; 5] = [
        End::Finished,
        End::IdleTimeout,
        End::ClientError,
        End::BackendError,
        End::NoBackend,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            End::Finished => "finished",
            End::IdleTimeout => "idle_timeout",
            End::ClientError => "client_error",
            End::BackendError => "backend_error",
            End::NoBackend => "no_backend",
        }
    }

    /// A forwarding error's end, by the side at fault.
    pub fn error(side: Side) -> Self {
        match side {
            Side::Client => End::ClientError,
            Side::Backend => End::BackendError,
        }
    }
}

/// Which end of a proxied connection an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl Side {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pump's failure: reading its source or writing its destination. The
/// pump does not know which is the client; [`forward`](crate::forward)
/// turns this into a [`ForwardError`].
#[derive(Debug)]
pub enum PumpError {
    Read(io::Error),
    Write(io::Error),
}

impl PumpError {
    /// The side at fault, for a pump from `source` to the other side.
    pub fn side(&self, source: Side) -> Side {
        match (self, source) {
            (PumpError::Read(_), side) => side,
            (PumpError::Write(_), Side::Client) => Side::Backend,
            (PumpError::Write(_), Side::Backend) => Side::Client,
        }
    }

    pub fn into_io(self) -> io::Error {
        match self {
            PumpError::Read(error) | PumpError::Write(error) => error,
        }
    }
}

/// A proxied connection that ended in an error, with the side that caused it.
#[derive(Debug, thiserror::Error)]
#[error("{side} side: {source}")]
pub struct ForwardError {
    pub side: Side,
    #[source]
    pub source: io::Error,
}

impl ForwardError {
    pub fn new(side: Side, source: io::Error) -> Self {
        Self { side, source }
    }

    /// A pump's error, for the pump that reads from `source`.
    pub fn from_pump(source: Side, error: PumpError) -> Self {
        Self::new(error.side(source), error.into_io())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pump_error_blames_the_reader_or_the_writer_by_direction() {
        let read = || PumpError::Read(io::ErrorKind::ConnectionReset.into());
        let write = || PumpError::Write(io::ErrorKind::BrokenPipe.into());
        assert_eq!(read().side(Side::Client), Side::Client);
        assert_eq!(read().side(Side::Backend), Side::Backend);
        assert_eq!(write().side(Side::Client), Side::Backend);
        assert_eq!(write().side(Side::Backend), Side::Client);
        let error = ForwardError::from_pump(Side::Backend, write());
        assert_eq!(error.to_string(), "client side: broken pipe");
    }

    #[test]
    fn connect_errors_are_classified_by_kind() {
        let of = |kind: io::ErrorKind| ConnectFailure::of(&kind.into());
        assert_eq!(
            of(io::ErrorKind::ConnectionRefused),
            ConnectFailure::Refused
        );
        assert_eq!(of(io::ErrorKind::TimedOut), ConnectFailure::Timeout);
        assert_eq!(of(io::ErrorKind::AddrNotAvailable), ConnectFailure::Local);
        assert_eq!(of(io::ErrorKind::PermissionDenied), ConnectFailure::Other);
    }
}
