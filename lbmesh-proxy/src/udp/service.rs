//! A service's UDP state that outlives routing snapshots: its count of
//! open sessions (for `max_udp_sessions`) and its UDP metric handles.
//!
//! Every proxy thread's relay of every UDP port of the service takes a
//! place here before it opens a session, so the cap holds per node over
//! all of them; the place goes back when the session ends.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::udp::metrics::UdpServiceMetrics;

/// The UDP state of one service (carried over by identity, like its
/// `ServiceState`).
pub struct UdpService {
    open: AtomicU32,
    pub metrics: Arc<UdpServiceMetrics>,
}

impl UdpService {
    pub fn new(metrics: Arc<UdpServiceMetrics>) -> Self {
        Self {
            open: AtomicU32::new(0),
            metrics,
        }
    }

    /// A place for one more session, unless `max` are open.
    pub fn try_open(self: &Arc<Self>, max: u32) -> Option<SessionPlace> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()?;
        self.metrics.sessions.inc();
        Some(SessionPlace {
            service: Arc::clone(self),
        })
    }

    /// Sessions open now.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }
}

/// One open session's place; dropping it gives the place back.
pub struct SessionPlace {
    service: Arc<UdpService>,
}

impl Drop for SessionPlace {
    fn drop(&mut self) {
        self.service.open.fetch_sub(1, Ordering::AcqRel);
        self.service.metrics.sessions.dec();
    }
}
