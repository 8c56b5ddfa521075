//! A service's caps on open client connections: in all, and (opt-in) per
//! client address.
//!
//! Accept loops take a [`ConnectionPermit`] before they `accept`, so a
//! service never holds more than its cap; the permit is given back when the
//! connection's task ends. Unlike a semaphore the cap can be resized while
//! connections are open: lowering it lets them finish and admits new ones
//! only once `open` is below the new maximum.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
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

/// Open connections per client address of one service, for the opt-in
/// per-client cap. Only a service that sets the cap touches it (a sharded
/// map: one short shard lock per accepted and per closed connection);
/// without it the accept path stays lock-free. The map (a kilobyte or two
/// of padded shards) is made at the first connection that counts, so a
/// service without the cap holds none.
#[derive(Default)]
pub struct ClientCounts {
    open: OnceLock<DashMap<IpAddr, u32>>,
}

/// One client's place in its service; dropping it frees the place.
pub struct ClientPlace {
    counts: Arc<ClientCounts>,
    ip: IpAddr,
}

impl ClientCounts {
    /// A place for a connection from `ip` if it holds fewer than `max`.
    pub fn try_take(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<ClientPlace> {
        let mut open = self.open.get_or_init(DashMap::new).entry(ip).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(ClientPlace {
            counts: Arc::clone(self),
            ip,
        })
    }

    /// How many connections `ip` holds now.
    pub fn open(&self, ip: IpAddr) -> u32 {
        self.open
            .get()
            .and_then(|counts| counts.get(&ip).map(|open| *open))
            .unwrap_or(0)
    }
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        // Remove the entry with its last connection, so the map holds only
        // clients with connections open.
        if let Some(counts) = self.counts.open.get() {
            counts.remove_if_mut(&self.ip, |_, open| {
                *open = open.saturating_sub(1);
                *open == 0
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_max_places_and_frees_them_on_drop() {
        let counts = Arc::new(ClientCounts::default());
        assert!(
            counts.open.get().is_none(),
            "no map before a connection counts"
        );
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let first = counts.try_take(ip, 2).expect("first");
        let second = counts.try_take(ip, 2).expect("second");
        assert!(counts.try_take(ip, 2).is_none(), "a third is over the cap");
        assert!(
            counts.try_take(other, 2).is_some(),
            "other clients are not affected"
        );
        drop(first);
        assert_eq!(counts.open(ip), 1);
        let _third = counts
            .try_take(ip, 2)
            .expect("a freed place is taken again");
        drop(second);
        assert_eq!(counts.open(ip), 1);
        drop(_third);
        assert!(
            counts.open.get().is_some_and(DashMap::is_empty),
            "no entry outlives its connections"
        );
    }
}
