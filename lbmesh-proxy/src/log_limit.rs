//! A rate limit for log lines that a failing backend could repeat: passive
//! ejections and recoveries are logged once each, but a flapping fleet must
//! not flood the log.
//!
//! [`RateLimit::admit`] lets [`BURST`] lines through per [`WINDOW`] and
//! counts the rest; the first line admitted after a suppression says how
//! many were left out. It is two atomics and a clock read, taken only on a
//! connect failure or the first success after one, never per connection.

use std::sync::atomic::{AtomicU64, Ordering};

/// Length of one window, in milliseconds.
pub const WINDOW: u64 = 10_000;

/// Lines let through per window: enough to name every backend of a small
/// service that goes down at once.
pub const BURST: u64 = 10;

/// A fixed-window line budget.
pub struct RateLimit {
    /// Start of the current window, in `balance::now_ms` milliseconds.
    window_start: AtomicU64,
    /// Lines admitted in the current window.
    admitted: AtomicU64,
    /// Lines refused since the last one admitted.
    suppressed: AtomicU64,
}

impl RateLimit {
    pub const fn new() -> Self {
        Self {
            window_start: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged at `now_ms`: `Some(n)` with the number
    /// of lines suppressed before it, `None` when it is to be dropped.
    pub fn admit(&self, now_ms: u64) -> Option<u64> {
        let start = self.window_start.load(Ordering::Relaxed);
        if now_ms.saturating_sub(start) >= WINDOW
            && self
                .window_start
                .compare_exchange(start, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.admitted.store(0, Ordering::Relaxed);
        }
        if self.admitted.fetch_add(1, Ordering::Relaxed) < BURST {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_burst_per_window_and_reports_what_it_dropped() {
        let limit = RateLimit::new();
        let t0 = WINDOW;
        for _ in 0..BURST {
            assert_eq!(limit.admit(t0), Some(0));
        }
        assert_eq!(limit.admit(t0 + 1), None);
        assert_eq!(limit.admit(t0 + WINDOW - 1), None);
        // The next window admits again and says two were left out.
        assert_eq!(limit.admit(t0 + WINDOW), Some(2));
        assert_eq!(limit.admit(t0 + WINDOW), Some(0));
    }
}
