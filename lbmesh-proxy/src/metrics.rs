//! The data plane's Prometheus metrics, all prefixed `lbmesh_`.
//!
//! [`Metrics`] registers its families on the registry it is given (the
//! daemon's, which adds its own control-plane families and serves
//! `/metrics`). The routing
//! table resolves per-backend and per-service handles ([`BackendMetrics`],
//! [`ServiceMetrics`]) when it builds a snapshot, so the per-connection path
//! only touches atomics and never looks labels up. Label sets of backends and
//! services that leave the configuration are removed on the next build.
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

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::discovery::EndpointLabels;
use crate::error::{ClientFailure, ConnectFailure, End, Side};
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

/// The data plane's metric families.
pub struct Metrics {
    retries: IntCounterVec,
    max_connections: IntGaugeVec,
    max_reached: IntCounterVec,
    duration: HistogramVec,
    closed: IntCounterVec,
    connections: IntCounterVec,
    backend_active: IntGaugeVec,
    service_active: IntGaugeVec,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
    connect_errors: IntCounterVec,
    connect_duration: HistogramVec,
    backend_up: IntGaugeVec,
    ejections: IntCounterVec,
    unanswered: IntCounterVec,
    failed: IntCounterVec,
    refused: IntCounterVec,
    forward_errors: IntCounterVec,
    listener_up: IntGaugeVec,
    udp: UdpFamilies,
}

/// Handles for one (service, backend) pair.
#[derive(Clone)]
pub struct BackendMetrics {
    pub connections: IntCounter,
    pub active: IntGauge,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub refused: IntCounter,
    pub timed_out: IntCounter,
    pub local_errors: IntCounter,
    pub other_errors: IntCounter,
    pub connect_duration: Histogram,
    pub up: IntGauge,
    pub ejections: IntCounter,
    pub unanswered: IntCounter,
    /// A UDP backend's datagram counts; `None` for TCP.
    pub udp: Option<UdpBackendMetrics>,
}

impl BackendMetrics {
    /// Handles registered nowhere, for benchmarks and unit tests.
    pub fn detached() -> Self {
        let counter = || IntCounter::new("detached", "detached").expect("static metric name");
        let gauge = || IntGauge::new("detached", "detached").expect("static metric name");
        Self {
            connections: counter(),
            active: gauge(),
            bytes_in: counter(),
            bytes_out: counter(),
            refused: counter(),
            timed_out: counter(),
            local_errors: counter(),
            other_errors: counter(),
            connect_duration: Histogram::with_opts(HistogramOpts::new("detached", "detached"))
                .expect("static metric name"),
            up: gauge(),
            ejections: counter(),
            unanswered: counter(),
            udp: None,
        }
    }

    pub fn connect_failed(&self, why: ConnectFailure) {
        match why {
            ConnectFailure::Refused => self.refused.inc(),
            ConnectFailure::Timeout => self.timed_out.inc(),
            ConnectFailure::Local => self.local_errors.inc(),
            ConnectFailure::Other => self.other_errors.inc(),
        }
    }
}

/// Handles for one service.
#[derive(Clone)]
pub struct ServiceMetrics {
    pub active: IntGauge,
    pub no_backend: IntCounter,
    pub all_attempts_failed: IntCounter,
    pub client_errors: IntCounter,
    pub backend_errors: IntCounter,
    /// Closed at once: the client address was at its per-client cap.
    pub refused_per_client: IntCounter,
    /// Further backends tried after the first.
    pub retries: IntCounter,
    /// The configured cap, set when the table is committed.
    pub max_connections: IntGauge,
    /// A pending connection found the cap reached.
    pub max_reached: IntCounter,
    pub duration: Histogram,
    /// By [`End`], in the order of [`End::ALL`].
    pub closed: [IntCounter; End::ALL.len()],
}

impl ServiceMetrics {
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
}

impl Metrics {
    /// Creates the families and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let sb = &["service", "backend", "task", "node"];
        let metrics = Self {
            retries: IntCounterVec::new(
                Opts::new(
                    "lbmesh_retries_total",
                    "Further backends tried for a client connection after the first.",
                ),
                &["service"],
            )?,
            max_connections: IntGaugeVec::new(
                Opts::new(
                    "lbmesh_service_max_connections",
                    "The service's configured max_connections.",
                ),
                &["service"],
            )?,
            max_reached: IntCounterVec::new(
                Opts::new(
                    "lbmesh_max_connections_reached_total",
                    "Times an accept loop found a client connection pending with the service \
                     at max_connections (it waits in the listen backlog).",
                ),
                &["service"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "lbmesh_connection_duration_seconds",
                    "Client connections from accept to close.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["service"],
            )?,
            closed: IntCounterVec::new(
                Opts::new(
                    "lbmesh_connections_closed_total",
                    "Client connections by how they ended: finished, idle_timeout, \
                     client_error, backend_error, no_backend.",
                ),
                &["service", "end"],
            )?,
            connections: IntCounterVec::new(
                Opts::new(
                    "lbmesh_connections_total",
                    "Connections forwarded to a backend.",
                ),
                sb,
            )
            ?,
            backend_active: IntGaugeVec::new(
                Opts::new(
                    "lbmesh_backend_active_connections",
                    "Connections to a backend open now.",
                ),
                sb,
            )
            ?,
            service_active: IntGaugeVec::new(
                Opts::new(
                    "lbmesh_service_active_connections",
                    "Client connections of a service open now.",
                ),
                &["service"],
            )
            ?,
            bytes_in: IntCounterVec::new(
                Opts::new("lbmesh_bytes_in_total", "Bytes from clients to a backend."),
                sb,
            )
            ?,
            bytes_out: IntCounterVec::new(
                Opts::new("lbmesh_bytes_out_total", "Bytes from a backend to clients."),
                sb,
            )
            ?,
            connect_errors: IntCounterVec::new(
                Opts::new(
                    "lbmesh_connect_errors_total",
                    "Failed backend connects by reason.",
                ),
                &["service", "backend", "task", "node", "reason"],
            )
            ?,
            connect_duration: HistogramVec::new(
                HistogramOpts::new(
                    "lbmesh_connect_duration_seconds",
                    "Time to establish a backend connection.",
                )
                .buckets(CONNECT_BUCKETS.to_vec()),
                sb,
            )
            ?,
            backend_up: IntGaugeVec::new(
                Opts::new(
                    "lbmesh_backend_up",
                    "1 when the backend is eligible for new connections, 0 while ejected.",
                ),
                sb,
            )
            ?,
            ejections: IntCounterVec::new(
                Opts::new(
                    "lbmesh_backend_ejections_total",
                    "Passive ejections after failed connects.",
                ),
                sb,
            )
            ?,
            unanswered: IntCounterVec::new(
                Opts::new(
                    "lbmesh_unanswered_total",
                    "Connections the backend closed before answering or left unanswered for the reply timeout; the client's bytes went to another backend.",
                ),
                sb,
            )
            ?,
            failed: IntCounterVec::new(
                Opts::new(
                    "lbmesh_connections_failed_total",
                    "Client connections closed without reaching a backend.",
                ),
                &["service", "reason"],
            )
            ?,
            refused: IntCounterVec::new(
                Opts::new(
                    "lbmesh_connections_refused_total",
                    "Client connections closed at once, by reason: per_client.",
                ),
                &["service", "reason"],
            )?,
            forward_errors: IntCounterVec::new(
                Opts::new(
                    "lbmesh_forward_errors_total",
                    "Forwarded connections that ended in an error, by the side at fault.",
                ),
                &["service", "side"],
            )
            ?,
            listener_up: IntGaugeVec::new(
                Opts::new(
                    "lbmesh_listener_up",
                    "1 while a service's listen address is bound, 0 while it fails to bind.",
                ),
                &["service", "address"],
            )?,
            udp: UdpFamilies::new(registry)?,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 19] = [
            Box::new(metrics.retries.clone()),
            Box::new(metrics.max_connections.clone()),
            Box::new(metrics.max_reached.clone()),
            Box::new(metrics.duration.clone()),
            Box::new(metrics.closed.clone()),
            Box::new(metrics.refused.clone()),
            Box::new(metrics.connections.clone()),
            Box::new(metrics.backend_active.clone()),
            Box::new(metrics.service_active.clone()),
            Box::new(metrics.bytes_in.clone()),
            Box::new(metrics.bytes_out.clone()),
            Box::new(metrics.connect_errors.clone()),
            Box::new(metrics.connect_duration.clone()),
            Box::new(metrics.backend_up.clone()),
            Box::new(metrics.ejections.clone()),
            Box::new(metrics.unanswered.clone()),
            Box::new(metrics.failed.clone()),
            Box::new(metrics.forward_errors.clone()),
            Box::new(metrics.listener_up.clone()),
        ];
        for collector in collectors {
            registry.register(collector)?;
        }
        Ok(metrics)
    }

    /// The handles of one backend; `labels` are empty for a static
    /// endpoint.
    pub fn backend(&self, service: &str, backend: &str, labels: &EndpointLabels) -> BackendMetrics {
        let (task, node) = (&*labels.task, &*labels.node);
        let labels = [service, backend, task, node];
        let error = |reason| {
            self.connect_errors
                .with_label_values(&[service, backend, task, node, reason])
        };
        let up = self.backend_up.with_label_values(&labels);
        up.set(1);
        BackendMetrics {
            connections: self.connections.with_label_values(&labels),
            active: self.backend_active.with_label_values(&labels),
            bytes_in: self.bytes_in.with_label_values(&labels),
            bytes_out: self.bytes_out.with_label_values(&labels),
            refused: error("refused"),
            timed_out: error("timeout"),
            local_errors: error("local"),
            other_errors: error("other"),
            connect_duration: self.connect_duration.with_label_values(&labels),
            up,
            ejections: self.ejections.with_label_values(&labels),
            unanswered: self.unanswered.with_label_values(&labels),
            udp: None,
        }
    }

    /// A UDP backend's handles: [`Metrics::backend`]'s and its datagram
    /// counts (`backend` is its `ADDR/udp` label).
    pub fn udp_backend(
        &self,
        service: &str,
        backend: &str,
        labels: &EndpointLabels,
    ) -> BackendMetrics {
        BackendMetrics {
            udp: Some(self.udp.backend(service, backend)),
            ..self.backend(service, backend, labels)
        }
    }

    /// The UDP handles of a service with UDP ports.
    pub fn udp_service(&self, service: &str) -> UdpServiceMetrics {
        self.udp.service(service)
    }

    /// Drops the label sets of a backend that left the configuration.
    pub fn remove_backend(&self, service: &str, backend: &str, labels: &EndpointLabels) {
        let (task, node) = (&*labels.task, &*labels.node);
        let labels = [service, backend, task, node];
        for family in [
            &self.connections,
            &self.bytes_in,
            &self.bytes_out,
            &self.ejections,
            &self.unanswered,
        ] {
            let _ = family.remove_label_values(&labels);
        }
        for family in [&self.backend_active, &self.backend_up] {
            let _ = family.remove_label_values(&labels);
        }
        let _ = self.connect_duration.remove_label_values(&labels);
        self.udp.remove_backend(service, backend);
        for reason in ["refused", "timeout", "local", "other"] {
            let _ = self
                .connect_errors
                .remove_label_values(&[service, backend, task, node, reason]);
        }
    }

    pub fn service(&self, service: &str) -> ServiceMetrics {
        ServiceMetrics {
            active: self.service_active.with_label_values(&[service]),
            no_backend: self.failed.with_label_values(&[service, "no_backend"]),
            all_attempts_failed: self
                .failed
                .with_label_values(&[service, "all_attempts_failed"]),
            client_errors: self
                .forward_errors
                .with_label_values(&[service, Side::Client.as_str()]),
            backend_errors: self
                .forward_errors
                .with_label_values(&[service, Side::Backend.as_str()]),
            refused_per_client: self.refused.with_label_values(&[service, "per_client"]),
            retries: self.retries.with_label_values(&[service]),
            max_connections: self.max_connections.with_label_values(&[service]),
            max_reached: self.max_reached.with_label_values(&[service]),
            duration: self.duration.with_label_values(&[service]),
            closed: End::ALL.map(|end| self.closed.with_label_values(&[service, end.as_str()])),
        }
    }

    /// Drops the UDP series of a service that has no UDP port any more.
    pub fn remove_udp_service(&self, service: &str) {
        self.udp.remove_service(service);
    }

    pub fn remove_service(&self, service: &str) {
        self.udp.remove_service(service);
        let _ = self.service_active.remove_label_values(&[service]);
        for reason in ["no_backend", "all_attempts_failed"] {
            let _ = self.failed.remove_label_values(&[service, reason]);
        }
        let _ = self.refused.remove_label_values(&[service, "per_client"]);
        for family in [&self.retries, &self.max_reached] {
            let _ = family.remove_label_values(&[service]);
        }
        let _ = self.max_connections.remove_label_values(&[service]);
        let _ = self.duration.remove_label_values(&[service]);
        for end in End::ALL {
            let _ = self.closed.remove_label_values(&[service, end.as_str()]);
        }
        for side in [Side::Client, Side::Backend] {
            let _ = self
                .forward_errors
                .remove_label_values(&[service, side.as_str()]);
        }
    }

    /// The gauge of one listen address of `service` (control path only: the
    /// proxy sets it when the address binds or fails to).
    pub fn listener_up(&self, service: &str, address: &str) -> IntGauge {
        self.listener_up.with_label_values(&[service, address])
    }

    /// Drops the gauge of a listen address that left the table (or moved
    /// to another service).
    pub fn remove_listener(&self, service: &str, address: &str) {
        let _ = self.listener_up.remove_label_values(&[service, address]);
    }
}
