//! [`Tally`]: where the pumps of `forward` and `splice` count the bytes
//! they deliver.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::series::Counter;

/// Where one direction's bytes are counted: the backend's metric, and the
/// connection's own total (what its access log line reports). Both are
/// atomics the connection already holds: nothing is looked up.
#[derive(Clone, Copy)]
pub struct Tally<'a> {
    pub metric: &'a Counter,
    pub total: &'a AtomicU64,
}

impl Tally<'_> {
    /// Counts `n` bytes delivered.
    #[inline]
    pub fn add(&self, n: usize) {
        self.metric.inc_by(n as u64);
        self.total.fetch_add(n as u64, Ordering::Relaxed);
    }
}
