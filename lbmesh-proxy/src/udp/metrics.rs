//! The UDP relay's own metric families, beside the data plane's
//! ([`crate::metrics`] registers them with its own).
//!
//! A UDP backend also has the data plane's per-backend series, under the
//! label `backend="ADDR/udp"`: `lbmesh_connections_total` counts the
//! sessions created to it, `lbmesh_backend_active_connections` the open
//! ones, `lbmesh_bytes_in_total` and `lbmesh_bytes_out_total` the payload
//! bytes each way, `lbmesh_connect_errors_total{reason="refused"}` the ICMP
//! port unreachables, `lbmesh_backend_up` and
//! `lbmesh_backend_ejections_total` as for TCP. These count what TCP has no
//! word for:
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `lbmesh_udp_datagrams_in_total` | counter | service, backend | datagrams from clients sent to the backend |
//! | `lbmesh_udp_datagrams_out_total` | counter | service, backend | datagrams from the backend sent back to clients |
//! | `lbmesh_udp_sessions` | gauge | service | open UDP sessions (bounded by `max_udp_sessions`) |
//! | `lbmesh_udp_sessions_expired_total` | counter | service | sessions ended by `udp_idle_timeout` |
//! | `lbmesh_udp_dropped_total` | counter | service, reason | datagrams dropped: `over_cap` (a new flow with the service at `max_udp_sessions`), `no_backend`, `error` (a send that failed or found the socket buffer full) |
//!
//! Handles are resolved when the routing table is built; the relay only
//! touches atomics.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Why a datagram was dropped: the `reason` label of
/// `lbmesh_udp_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A new flow found the service at `max_udp_sessions`.
    OverCap,
    /// The service has no backend.
    NoBackend,
    /// A send failed (full socket buffer, a session socket that could not
    /// be opened, a backend that refused again right away).
    Error,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::OverCap,
        DropReason::NoBackend,
        DropReason::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::OverCap => "over_cap",
            DropReason::NoBackend => "no_backend",
            DropReason::Error => "error",
        }
    }
}

/// The UDP families.
pub struct UdpFamilies {
    datagrams_in: IntCounterVec,
    datagrams_out: IntCounterVec,
    sessions: IntGaugeVec,
    expired: IntCounterVec,
    dropped: IntCounterVec,
}

/// Handles of one UDP (service, backend) pair.
#[derive(Clone)]
pub struct UdpBackendMetrics {
    pub datagrams_in: IntCounter,
    pub datagrams_out: IntCounter,
}

/// Handles of one service with UDP ports.
#[derive(Clone)]
pub struct UdpServiceMetrics {
    pub sessions: IntGauge,
    pub expired: IntCounter,
    /// By [`DropReason`], in the order of [`DropReason::ALL`].
    pub dropped: [IntCounter; DropReason::ALL.len()],
}

impl UdpServiceMetrics {
    pub fn drop(&self, reason: DropReason) {
        self.dropped[reason as usize].inc();
    }
}

impl UdpFamilies {
    /// Creates the families and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let sb = &["service", "backend"];
        let families = Self {
            datagrams_in: IntCounterVec::new(
                Opts::new(
                    "lbmesh_udp_datagrams_in_total",
                    "UDP datagrams from clients sent to a backend.",
                ),
                sb,
            )?,
            datagrams_out: IntCounterVec::new(
                Opts::new(
                    "lbmesh_udp_datagrams_out_total",
                    "UDP datagrams from a backend sent back to clients.",
                ),
                sb,
            )?,
            sessions: IntGaugeVec::new(
                Opts::new("lbmesh_udp_sessions", "Open UDP sessions of a service."),
                &["service"],
            )?,
            expired: IntCounterVec::new(
                Opts::new(
                    "lbmesh_udp_sessions_expired_total",
                    "UDP sessions ended by the service's udp_idle_timeout.",
                ),
                &["service"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "lbmesh_udp_dropped_total",
                    "UDP datagrams dropped, by reason: over_cap, no_backend, error.",
                ),
                &["service", "reason"],
            )?,
        };
        registry.register(Box::new(families.datagrams_in.clone()))?;
        registry.register(Box::new(families.datagrams_out.clone()))?;
        registry.register(Box::new(families.sessions.clone()))?;
        registry.register(Box::new(families.expired.clone()))?;
        registry.register(Box::new(families.dropped.clone()))?;
        Ok(families)
    }

    pub fn backend(&self, service: &str, backend: &str) -> UdpBackendMetrics {
        let labels = [service, backend];
        UdpBackendMetrics {
            datagrams_in: self.datagrams_in.with_label_values(&labels),
            datagrams_out: self.datagrams_out.with_label_values(&labels),
        }
    }

    pub fn remove_backend(&self, service: &str, backend: &str) {
        let labels = [service, backend];
        let _ = self.datagrams_in.remove_label_values(&labels);
        let _ = self.datagrams_out.remove_label_values(&labels);
    }

    pub fn service(&self, service: &str) -> UdpServiceMetrics {
        UdpServiceMetrics {
            sessions: self.sessions.with_label_values(&[service]),
            expired: self.expired.with_label_values(&[service]),
            dropped: DropReason::ALL
                .map(|reason| self.dropped.with_label_values(&[service, reason.as_str()])),
        }
    }

    pub fn remove_service(&self, service: &str) {
        let _ = self.sessions.remove_label_values(&[service]);
        let _ = self.expired.remove_label_values(&[service]);
        for reason in DropReason::ALL {
            let _ = self
                .dropped
                .remove_label_values(&[service, reason.as_str()]);
        }
    }
}
