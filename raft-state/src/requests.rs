//! Recent request ids and the answers they got: what makes a resent write
//! idempotent.
//!
//! # Flow
//!
//! ```text
//! client request ─> request id (the API's Idempotency-Key, or one made by the node)
//!   ─> Proposal { request, command } in the log ─> RegistryState::apply_proposal
//!        id remembered: its answer rebuilt from the current state, nothing applied
//!        id new:        apply the command, remember (id, what the answer names)
//! ```
//!
//! What is remembered is the answer's kind and the name of the record it
//! carried ([`Answer`]), not the record: a service record holds its spec
//! and the previous one (up to 1 MiB each), and the state, ids included, is
//! written on every applied batch. A resend gets the record as it is when
//! the resend is applied, which is the first answer unless a later write
//! changed it.
//!
//! A follower that forwards a write and loses the answer (the leader died
//! after committing it) sends the same proposal again; without this the
//! second copy answered 409 "already exists" to a create that took effect.
//! The check runs when the entry is applied, not when it is proposed, so it
//! holds however many copies reach the log and in whatever terms.
//!
//! Invariants: the log is part of [`crate::state::RegistryState`], so it is
//! replicated, persisted with the state in one transaction and carried in
//! snapshots; it changes only through `apply_proposal`, in log order, so
//! every node holds the same one at the same index. It keeps the last
//! [`REMEMBERED_REQUESTS`] ids (the oldest goes first); a resend that comes
//! after its id was forgotten is applied again, as every write was before.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::command::RequestId;
use crate::node::NodeId;
use crate::outcome::{Outcome, Rejection};

/// How many request ids the registry remembers. A resend comes within the
/// API's and the registry's retry deadlines (10 s each); 1,024 ids cover
/// them at 50 writes a second, while the log stays small enough to be
/// cloned and written with the state on every applied batch.
pub const REMEMBERED_REQUESTS: usize = 1024;

/// What a write's answer named: enough to answer its resend from the
/// current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    Node { id: NodeId },
    Service { name: String },
    Task { id: String },
    Removed,
    Nothing,
    Rejected { rejection: Rejection },
}

impl Answer {
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Node { node } => Self::Node { id: node.id },
            Outcome::Service { service } => Self::Service {
                name: service.spec.name.clone(),
            },
            Outcome::Task { task } => Self::Task {
                id: task.id.clone(),
            },
            Outcome::Removed => Self::Removed,
            Outcome::Nothing => Self::Nothing,
            Outcome::Rejected { rejection } => Self::Rejected {
                rejection: rejection.clone(),
            },
        }
    }
}

/// One remembered request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remembered {
    pub request: RequestId,
    pub answer: Answer,
}

/// The last [`REMEMBERED_REQUESTS`] request ids, oldest first. Entries are
/// shared (`Arc`), so cloning the state, which every applied batch and
/// every scheduler round does, copies pointers, not answers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecentRequests(VecDeque<Arc<Remembered>>);

impl RecentRequests {
    /// What the answer to `request` named, if it is remembered.
    pub fn answer(&self, request: &str) -> Option<&Answer> {
        // Newest first: a resend follows its original closely.
        self.0
            .iter()
            .rev()
            .find(|r| r.request == request)
            .map(|r| &r.answer)
    }

    /// Remembers the answer of `request`, forgetting the oldest id when
    /// the log is full.
    pub(crate) fn remember(&mut self, request: RequestId, outcome: &Outcome) {
        while self.0.len() >= REMEMBERED_REQUESTS {
            self.0.pop_front();
        }
        self.0.push_back(Arc::new(Remembered {
            request,
            answer: Answer::of(outcome),
        }));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for RecentRequests {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|r| &**r))
    }
}

impl<'de> Deserialize<'de> for RecentRequests {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<Remembered>::deserialize(deserializer)?;
        Ok(Self(entries.into_iter().map(Arc::new).collect()))
    }
}
