//! Recent request ids and the answers they got: what makes a resent write
//! idempotent.
//!
//! # Flow
//!
//! ```text
//! client request ─> request id (the API's Idempotency-Key, or one made by the node)
//!   ─> Proposal { request, command } in the log ─> RegistryState::apply_proposal
//!        id remembered: the remembered Outcome, nothing applied
//!        id new:        apply the command, remember (id, Outcome)
//! ```
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
use crate::outcome::Outcome;

/// How many request ids the registry remembers. A resend comes within the
/// API's and the registry's retry deadlines (10 s each); 1,024 ids cover
/// them at 50 writes a second, while the log stays small enough to be
/// cloned and written with the state on every applied batch.
pub const REMEMBERED_REQUESTS: usize = 1024;

/// One remembered request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remembered {
    pub request: RequestId,
    pub outcome: Outcome,
}

/// The last [`REMEMBERED_REQUESTS`] request ids, oldest first. Entries are
/// shared (`Arc`), so cloning the state, which every applied batch and
/// every scheduler round does, copies pointers, not outcomes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecentRequests(VecDeque<Arc<Remembered>>);

impl RecentRequests {
    /// The answer `request` got, if it is remembered.
    pub fn outcome(&self, request: &str) -> Option<&Outcome> {
        // Newest first: a resend follows its original closely.
        self.0
            .iter()
            .rev()
            .find(|r| r.request == request)
            .map(|r| &r.outcome)
    }

    /// Remembers the answer of `request`, forgetting the oldest id when
    /// the log is full.
    pub(crate) fn remember(&mut self, request: RequestId, outcome: Outcome) {
        while self.0.len() >= REMEMBERED_REQUESTS {
            self.0.pop_front();
        }
        self.0.push_back(Arc::new(Remembered { request, outcome }));
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
