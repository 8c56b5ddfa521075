//! The daemon's Prometheus registry: the data plane's families (see
//! [`lbmesh_proxy::metrics`]) and the control plane's, served at `/metrics`.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `lbmesh_config_reloads_total` | counter | result | reloads: `ok` or `error` |
//! | `lbmesh_raft` | gauge | field | cluster mode: `term`, `leader_id`, `is_leader`, `commit_index`, `applied_index`, `voters`, `learners` |
//! | `lbmesh_api_requests_total` | counter | route, method, status | cluster mode: admin API requests (route as a template, e.g. `/v1/services/{name}`) |
//! | `lbmesh_nodes_silent_held` | gauge | reason | cluster mode, on the leader: silent nodes left ready because the leader heard no quorum (`no_quorum`) or more than half went silent at once (`mass_silence`) |

use std::sync::Arc;

use lbmesh_proxy::metrics::Metrics as ProxyMetrics;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// Every metric family of one lbd.
pub struct DaemonMetrics {
    registry: Registry,
    /// The data plane's families, shared with the proxy.
    pub proxy: Arc<ProxyMetrics>,
    reloads: IntCounterVec,
    raft: IntGaugeVec,
    api_requests: IntCounterVec,
    /// Set by the scheduler each round it leads.
    pub silent_held: IntGaugeVec,
}

impl DaemonMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let proxy = Arc::new(ProxyMetrics::new(&registry)?);
        let reloads = IntCounterVec::new(
            Opts::new(
                "lbmesh_config_reloads_total",
                "Configuration reloads by result.",
            ),
            &["result"],
        )?;
        let raft = IntGaugeVec::new(
            Opts::new(
                "lbmesh_raft",
                "Raft state of this node's registry, by field: term, leader_id, \
                 is_leader, commit_index, applied_index, voters, learners.",
            ),
            &["field"],
        )?;
        let api_requests = IntCounterVec::new(
            Opts::new(
                "lbmesh_api_requests_total",
                "Admin API requests by route template, method and status.",
            ),
            &["route", "method", "status"],
        )?;
        let silent_held = IntGaugeVec::new(
            Opts::new(
                "lbmesh_nodes_silent_held",
                "Silent nodes the leader left ready: it heard no quorum (no_quorum) \
                 or more than half of the ready nodes went silent at once (mass_silence).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(silent_held.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(raft.clone()))?;
        registry.register(Box::new(api_requests.clone()))?;
        Ok(Self {
            registry,
            proxy,
            reloads,
            raft,
            api_requests,
            silent_held,
        })
    }

    pub fn reload_finished(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Records Raft's view, read when `/metrics` is scraped.
    pub fn set_raft(&self, field: &str, value: u64) {
        self.raft
            .with_label_values(&[field])
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    }

    pub fn api_request(&self, route: &str, method: &str, status: u16) {
        self.api_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec only fails on metric families that violate the
        // format, which lbd never registers.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
