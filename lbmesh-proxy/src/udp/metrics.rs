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
//! Series are resolved when the routing table is built; the relay only
//! touches atomics.

use std::sync::Arc;

use crate::series::{Counter, Export, Gauge, Reading, Render, SeriesMap};

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

/// The UDP series, by label values.
pub struct UdpFamilies {
    backends: Arc<SeriesMap<UdpBackendMetrics>>,
    services: Arc<SeriesMap<UdpServiceMetrics>>,
}

/// The datagram counts of one UDP (service, backend) pair.
#[derive(Default)]
pub struct UdpBackendMetrics {
    pub datagrams_in: Counter,
    pub datagrams_out: Counter,
}

/// The series of one service with UDP ports.
#[derive(Default)]
pub struct UdpServiceMetrics {
    pub sessions: Gauge,
    pub expired: Counter,
    /// By [`DropReason`], in the order of [`DropReason::ALL`].
    pub dropped: [Counter; DropReason::ALL.len()],
}

impl UdpServiceMetrics {
    pub fn count_drop(&self, reason: DropReason) {
        self.dropped[reason as usize].inc();
    }
}

impl Default for UdpFamilies {
    fn default() -> Self {
        Self::new()
    }
}

impl UdpFamilies {
    /// The families; [`crate::metrics::Metrics`] registers them with its
    /// own ([`UdpFamilies::maps`]).
    pub fn new() -> Self {
        let backends = vec![
            Export::new(
                "lbmesh_udp_datagrams_in_total",
                "UDP datagrams from clients sent to a backend.",
                Reading::Counter(|b: &UdpBackendMetrics| &b.datagrams_in),
            ),
            Export::new(
                "lbmesh_udp_datagrams_out_total",
                "UDP datagrams from a backend sent back to clients.",
                Reading::Counter(|b: &UdpBackendMetrics| &b.datagrams_out),
            ),
        ];
        let services = vec![
            Export::new(
                "lbmesh_udp_sessions",
                "Open UDP sessions of a service.",
                Reading::Gauge(|s: &UdpServiceMetrics| &s.sessions),
            ),
            Export::new(
                "lbmesh_udp_sessions_expired_total",
                "UDP sessions ended by the service's udp_idle_timeout.",
                Reading::Counter(|s: &UdpServiceMetrics| &s.expired),
            ),
            Export::new(
                "lbmesh_udp_dropped_total",
                "UDP datagrams dropped, by reason: over_cap, no_backend, error.",
                Reading::CounterArray(
                    "reason",
                    DropReason::ALL.map(DropReason::as_str).to_vec(),
                    |s: &UdpServiceMetrics| &s.dropped,
                ),
            ),
        ];
        Self {
            backends: Arc::new(SeriesMap::new(&["service", "backend"], backends)),
            services: Arc::new(SeriesMap::new(&["service"], services)),
        }
    }

    /// The maps to render at a scrape.
    pub fn maps(&self) -> [Arc<dyn Render>; 2] {
        [
            Arc::clone(&self.backends) as _,
            Arc::clone(&self.services) as _,
        ]
    }

    pub fn backend(&self, service: &str, backend: &str) -> Arc<UdpBackendMetrics> {
        self.backends
            .series(&[service, backend], UdpBackendMetrics::default)
    }

    pub fn remove_backend(&self, service: &str, backend: &str) {
        self.backends.remove(&[service, backend]);
    }

    pub fn service(&self, service: &str) -> Arc<UdpServiceMetrics> {
        self.services.series(&[service], UdpServiceMetrics::default)
    }

    pub fn remove_service(&self, service: &str) {
        self.services.remove(&[service]);
    }
}
