//! A service's cap on open client connections.
//!
//! Accept loops take a [`ConnectionPermit`] before they `accept`, so a
//! service never holds more than its cap; the permit is given back when the
//! connection's task ends. Unlike a semaphore the cap can be resized while
//! connections are open: lowering it lets them finish and admits new ones
//! only once `open` is below the new maximum.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// A service's cap on open client connections. Unlike a semaphore it can be
/// resized at any time: lowering it lets open connections finish and admits
/// new ones only once `open` is below the new maximum.
pub struct ConnectionLimit {
    open: AtomicU32,
    max: AtomicU32,
    /// Woken when a connection closes or the maximum grows.
    freed: Notify,
}

/// One admitted connection; dropping it frees its place.
pub struct ConnectionPermit {
    limit: Arc<ConnectionLimit>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limit.open.fetch_sub(1, Ordering::AcqRel);
        self.limit.freed.notify_one();
    }
}

impl ConnectionLimit {
    pub fn new(max: u32) -> Self {
        Self {
            open: AtomicU32::new(0),
            max: AtomicU32::new(max),
            freed: Notify::new(),
        }
    }

    /// A place if one is free now.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnectionPermit> {
        let max = self.max.load(Ordering::Acquire);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()
            .map(|_| ConnectionPermit {
                limit: Arc::clone(self),
            })
    }

    /// Waits for a free place.
    pub async fn acquire(self: &Arc<Self>) -> ConnectionPermit {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Register before checking, so a release in between is not missed.
            freed.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            freed.await;
        }
    }

    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }

    /// Changes the cap; a higher cap admits waiting connections at once.
    pub fn set_max(&self, max: u32) {
        if self.max.swap(max, Ordering::AcqRel) < max {
            self.freed.notify_waiters();
        }
    }
}
