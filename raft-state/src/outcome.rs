//! The answer to one applied command: the changed record, or a rejection
//! that names the field and the reason.
//!
//! Invariant: a command answered with [`Outcome::Rejected`] changed nothing.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::node::NodeRecord;
use crate::service::ServiceRecord;
use crate::task::TaskRecord;

/// Why a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectKind {
    /// The command's content is invalid.
    Invalid,
    /// It names a node or service that does not exist.
    NotFound,
    /// It clashes with existing state (duplicate name, port in use).
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub kind: RejectKind,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// The answer to one applied command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Node {
        node: Box<NodeRecord>,
    },
    Service {
        service: Box<ServiceRecord>,
    },
    Task {
        task: Box<TaskRecord>,
    },
    Removed,
    /// Membership changes and blank entries carry no application answer.
    Nothing,
    Rejected {
        rejection: Rejection,
    },
}

pub(crate) fn reject(
    kind: RejectKind,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> Outcome {
    Outcome::Rejected {
        rejection: Rejection {
            kind,
            field: field.into(),
            reason: reason.into(),
        },
    }
}
