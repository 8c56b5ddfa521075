//! The data plane's Prometheus metrics, all prefixed `lbmesh_`.
//!
//! [`Metrics`] registers one collector for its families on the registry
//! it is given (the daemon's, which adds its own control-plane families
//! and serves `/metrics`). The routing table resolves per-backend and
//! per-service series ([`BackendMetrics`], [`ServiceMetrics`]: plain
//! atomics, see [`crate::series`]) when it builds a snapshot, so the
//! per-connection path only touches atomics and never looks labels up;
//! the families are rendered from the series when Prometheus scrapes.
//! Series of backends and services that leave the configuration are
//! removed on the next build.
//! A backend's `task` and `node` labels name a task endpoint (`web.2`,
//! `node-a`) and are empty for a static endpoint.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `lbmesh_connections_total` | counter | service, backend, task, node | connections forwarded to the backend |
//! | `lbmesh_backend_active_connections` | gauge | service, backend, task, node | connections to the backend open now |
//! | `lbmesh_service_active_connections` | gauge | service | client connections open now (bounded by `max_connections`) |
//! | `lbmesh_bytes_in_total` | counter | service, backend, task, node | bytes from clients to the backend |
//! | `lbmesh_bytes_out_total` | counter | service, backend, task, node | bytes from the backend to clients |
//! | `lbmesh_connect_errors_total` | counter | service, backend, task, node, reason | failed connects: `refused`, `timeout`, `local` (this node ran short of descriptors or ports; no ejection), `other` |
//! | `lbmesh_connect_duration_seconds` | histogram | service, backend, task, node | time to establish a backend connection |
//! | `lbmesh_backend_up` | gauge | service, backend, task, node | 1 when the backend is eligible, 0 while ejected |
//! | `lbmesh_backend_ejections_total` | counter | service, backend, task, node | passive ejections after failed connects |
//! | `lbmesh_unanswered_total` | counter | service, backend, task, node | connections the backend closed before answering, or left unanswered for `reply_timeout`, whose client bytes were resent to another backend (`retry_on_empty`) |
//! | `lbmesh_connections_failed_total` | counter | service, reason | client connections closed without a backend: `no_backend`, `all_attempts_failed` |
//! | `lbmesh_connections_refused_total` | counter | service, reason | client connections closed at once: `per_client` (the client address was at the service's `max_connections_per_client`) |
//! | `lbmesh_forward_errors_total` | counter | service, side | forwarded connections that ended in an error, by the side at fault: `client` or `backend` |
//! | `lbmesh_listener_up` | gauge | service, address | 1 while the listen address is bound, 0 while it fails to bind (retried); gone with the address |
//! | `lbmesh_retries_total` | counter | service | further backends tried for a client connection after the first (a failed connect, or `retry_on_empty`'s resend) |
//! | `lbmesh_service_max_connections` | gauge | service | the configured `max_connections` |
//! | `lbmesh_max_connections_reached_total` | counter | service | times an accept loop found a client connection pending with the service at `max_connections` (it waits in the listen backlog; each proxy thread's loop counts) |
//! | `lbmesh_connection_duration_seconds` | histogram | service | client connections from accept to close |
//! | `lbmesh_connections_closed_total` | counter | service, end | client connections by how they ended: `finished`, `idle_timeout`, `client_error`, `backend_error` (aborts by side), `no_backend` |
//! | `lbmesh_access_log_lines_total`, `..._dropped_total`, `..._write_errors_total` | counter | | access log lines written, dropped on a full queue, lost to write errors (registered by [`crate::access_log`]) |
//!
//! UDP ports add the families of [`crate::udp::metrics`] and give their
//! backends the per-backend series above under `backend="ADDR/udp"`.

use std::sync::Arc;

use prometheus::Registry;

use crate::discovery::EndpointLabels;
use crate::error::{ClientFailure, ConnectFailure, End, Side};
use crate::series::{Counter, Export, Gauge, Histogram, MapsCollector, Reading, SeriesMap};
use crate::udp::metrics::{UdpBackendMetrics, UdpFamilies, UdpServiceMetrics};

/// Connect durations on loopback are tens of microseconds; across a LAN,
/// hundreds; anything over a second is a backend in trouble.
const CONNECT_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Client connections last from milliseconds (a refused request) to hours
/// (a database session); past the 1 h default idle timeout is rare.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The labels of a backend's series.
const BACKEND_LABELS: &[&str] = &["service", "backend", "task", "node"];

/// The data plane's series, by label values.
pub struct Metrics {
    backends: Arc<SeriesMap<BackendMetrics>>,
    services: Arc<SeriesMap<ServiceMetrics>>,
    listeners: Arc<SeriesMap<Gauge>>,
    udp: UdpFamilies,
}

/// The series of one (service, backend) pair.
pub struct BackendMetrics {
    pub connections: Counter,
    pub active: Gauge,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub refused: Counter,
    pub timed_out: Counter,
    pub local_errors: Counter,
    pub other_errors: Counter,
    pub connect_duration: Histogram,
    pub up: Gauge,
    pub ejections: Counter,
    pub unanswered: Counter,
    /// A UDP backend's datagram counts; `None` for TCP.
    pub udp: Option<Arc<UdpBackendMetrics>>,
}

impl BackendMetrics {
    fn new(udp: Option<Arc<UdpBackendMetrics>>) -> Self {
        Self {
            connections: Counter::default(),
            active: Gauge::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            refused: Counter::default(),
            timed_out: Counter::default(),
            local_errors: Counter::default(),
            other_errors: Counter::default(),
            connect_duration: Histogram::new(CONNECT_BUCKETS),
            up: Gauge::default(),
            ejections: Counter::default(),
            unanswered: Counter::default(),
            udp,
        }
    }

    /// Series exported nowhere, for benchmarks and unit tests.
    pub fn detached() -> Arc<Self> {
        Arc::new(Self::new(None))
    }

    pub fn connect_failed(&self, why: ConnectFailure) {
        match why {
            ConnectFailure::Refused => self.refused.inc(),
            ConnectFailure::Timeout => self.timed_out.inc(),
            ConnectFailure::Local => self.local_errors.inc(),
            ConnectFailure::Other => self.other_errors.inc(),
        }
    }

    fn exports() -> Vec<Export<Self>> {
        vec![
            Export::new(
                "lbmesh_connections_total",
                "Connections forwarded to a backend.",
                Reading::Counter(|b| &b.connections),
            ),
            Export::new(
                "lbmesh_backend_active_connections",
                "Connections to a backend open now.",
                Reading::Gauge(|b| &b.active),
            ),
            Export::new(
                "lbmesh_bytes_in_total",
                "Bytes from clients to a backend.",
                Reading::Counter(|b| &b.bytes_in),
            ),
            Export::new(
                "lbmesh_bytes_out_total",
                "Bytes from a backend to clients.",
                Reading::Counter(|b| &b.bytes_out),
            ),
            Export::new(
                "lbmesh_connect_errors_total",
                "Failed backend connects by reason.",
                Reading::CountersBy(
                    "reason",
                    vec![
                        ("refused", |b| &b.refused),
                        ("timeout", |b| &b.timed_out),
                        ("local", |b| &b.local_errors),
                        ("other", |b| &b.other_errors),
                    ],
                ),
            ),
            Export::new(
                "lbmesh_connect_duration_seconds",
                "Time to establish a backend connection.",
                Reading::Histogram(|b| &b.connect_duration),
            ),
            Export::new(
                "lbmesh_backend_up",
                "1 when the backend is eligible for new connections, 0 while ejected.",
                Reading::Gauge(|b| &b.up),
            ),
            Export::new(
                "lbmesh_backend_ejections_total",
                "Passive ejections after failed connects.",
                Reading::Counter(|b| &b.ejections),
            ),
            Export::new(
                "lbmesh_unanswered_total",
                "Connections the backend closed before answering or left unanswered for \
                       the reply timeout; the client's bytes went to another backend.",
                Reading::Counter(|b| &b.unanswered),
            ),
        ]
    }
}

/// The series of one service.
pub struct ServiceMetrics {
    pub active: Gauge,
    pub no_backend: Counter,
    pub all_attempts_failed: Counter,
    pub client_errors: Counter,
    pub backend_errors: Counter,
    /// Closed at once: the client address was at its per-client cap.
    pub refused_per_client: Counter,
    /// Further backends tried after the first.
    pub retries: Counter,
    /// The configured cap, set when the table is committed.
    pub max_connections: Gauge,
    /// A pending connection found the cap reached.
    pub max_reached: Counter,
    pub duration: Histogram,
    /// By [`End`], in the order of [`End::ALL`].
    pub closed: [Counter; End::ALL.len()],
}

impl ServiceMetrics {
    fn new() -> Self {
        Self {
            active: Gauge::default(),
            no_backend: Counter::default(),
            all_attempts_failed: Counter::default(),
            client_errors: Counter::default(),
            backend_errors: Counter::default(),
            refused_per_client: Counter::default(),
            retries: Counter::default(),
            max_connections: Gauge::default(),
            max_reached: Counter::default(),
            duration: Histogram::new(DURATION_BUCKETS),
            closed: Default::default(),
        }
    }

    pub fn client_failed(&self, why: ClientFailure) {
        match why {
            ClientFailure::NoBackend => self.no_backend.inc(),
            ClientFailure::AllAttemptsFailed => self.all_attempts_failed.inc(),
        }
    }

    /// Counts a closed client connection: how it ended and how long it
    /// lasted.
    pub fn connection_closed(&self, end: End, duration: std::time::Duration) {
        self.closed[end as usize].inc();
        self.duration.observe(duration.as_secs_f64());
    }

    /// Counts a forwarded connection that ended in an error on `side`.
    pub fn forward_failed(&self, side: Side) {
        match side {
            Side::Client => self.client_errors.inc(),
            Side::Backend => self.backend_errors.inc(),
        }
    }

    fn exports() -> Vec<Export<Self>> {
        vec![
            Export::new(
                "lbmesh_retries_total",
                "Further backends tried for a client connection after the first.",
                Reading::Counter(|s| &s.retries),
            ),
            Export::new(
                "lbmesh_service_max_connections",
                "The service's configured max_connections.",
                Reading::Gauge(|s| &s.max_connections),
            ),
            Export::new(
                "lbmesh_max_connections_reached_total",
                "Times an accept loop found a client connection pending with the service \
                       at max_connections (it waits in the listen backlog).",
                Reading::Counter(|s| &s.max_reached),
            ),
            Export::new(
                "lbmesh_connection_duration_seconds",
                "Client connections from accept to close.",
                Reading::Histogram(|s| &s.duration),
            ),
            Export::new(
                "lbmesh_connections_closed_total",
                "Client connections by how they ended: finished, idle_timeout, \
                       client_error, backend_error, no_backend.",
                Reading::CounterArray("end", End::ALL.map(End::as_str).to_vec(), |s| &s.closed),
            ),
            Export::new(
                "lbmesh_service_active_connections",
                "Client connections of a service open now.",
                Reading::Gauge(|s| &s.active),
            ),
            Export::new(
                "lbmesh_connections_failed_total",
                "Client connections closed without reaching a backend.",
                Reading::CountersBy(
                    "reason",
                    vec![
                        ("no_backend", |s| &s.no_backend),
                        ("all_attempts_failed", |s| &s.all_attempts_failed),
                    ],
                ),
            ),
            Export::new(
                "lbmesh_connections_refused_total",
                "Client connections closed at once, by reason: per_client.",
                Reading::CountersBy("reason", vec![("per_client", |s| &s.refused_per_client)]),
            ),
            Export::new(
                "lbmesh_forward_errors_total",
                "Forwarded connections that ended in an error, by the side at fault.",
                Reading::CountersBy(
                    "side",
                    vec![
                        (Side::Client.as_str(), |s| &s.client_errors),
                        (Side::Backend.as_str(), |s| &s.backend_errors),
                    ],
                ),
            ),
        ]
    }
}

impl Metrics {
    /// Creates the families and registers their collector on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            backends: Arc::new(SeriesMap::new(BACKEND_LABELS, BackendMetrics::exports())),
            services: Arc::new(SeriesMap::new(&["service"], ServiceMetrics::exports())),
            listeners: Arc::new(SeriesMap::new(
                &["service", "address"],
                vec![Export::new(
                    "lbmesh_listener_up",
                    "1 while a service's listen address is bound, 0 while it fails to bind.",
                    Reading::Gauge(|up| up),
                )],
            )),
            udp: UdpFamilies::new(),
        };
        let mut maps: Vec<Arc<dyn crate::series::Render>> = vec![
            Arc::clone(&metrics.backends) as _,
            Arc::clone(&metrics.services) as _,
            Arc::clone(&metrics.listeners) as _,
        ];
        maps.extend(metrics.udp.maps());
        registry.register(Box::new(MapsCollector::new(maps)))?;
        Ok(metrics)
    }

    /// The series of one backend; `labels` are empty for a static
    /// endpoint. It counts as up from here until an ejection says not.
    pub fn backend(
        &self,
        service: &str,
        backend: &str,
        labels: &EndpointLabels,
    ) -> Arc<BackendMetrics> {
        let values = [service, backend, &*labels.task, &*labels.node];
        let series = self.backends.series(&values, || BackendMetrics::new(None));
        series.up.set(1);
        series
    }

    /// A UDP backend's series: [`Metrics::backend`]'s and its datagram
    /// counts (`backend` is its `ADDR/udp` label).
    pub fn udp_backend(
        &self,
        service: &str,
        backend: &str,
        labels: &EndpointLabels,
    ) -> Arc<BackendMetrics> {
        let values = [service, backend, &*labels.task, &*labels.node];
        let series = self.backends.series(&values, || {
            BackendMetrics::new(Some(self.udp.backend(service, backend)))
        });
        series.up.set(1);
        series
    }

    /// The UDP series of a service with UDP ports.
    pub fn udp_service(&self, service: &str) -> Arc<UdpServiceMetrics> {
        self.udp.service(service)
    }

    /// Drops the series of a backend that left the configuration.
    pub fn remove_backend(&self, service: &str, backend: &str, labels: &EndpointLabels) {
        self.backends
            .remove(&[service, backend, &*labels.task, &*labels.node]);
        self.udp.remove_backend(service, backend);
    }

    pub fn service(&self, service: &str) -> Arc<ServiceMetrics> {
        self.services.series(&[service], ServiceMetrics::new)
    }

    /// Drops the UDP series of a service that has no UDP port any more.
    pub fn remove_udp_service(&self, service: &str) {
        self.udp.remove_service(service);
    }

    pub fn remove_service(&self, service: &str) {
        self.udp.remove_service(service);
        self.services.remove(&[service]);
    }

    /// The gauge of one listen address of `service` (control path only: the
    /// proxy sets it when the address binds or fails to).
    pub fn listener_up(&self, service: &str, address: &str) -> Arc<Gauge> {
        self.listeners.series(&[service, address], Gauge::default)
    }

    /// Drops the gauge of a listen address that left the table (or moved
    /// to another service).
    pub fn remove_listener(&self, service: &str, address: &str) {
        self.listeners.remove(&[service, address]);
    }
}
