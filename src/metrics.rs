//! The daemon's Prometheus registry: the data plane's families (see
//! [`lbmesh_proxy::metrics`]) and the control plane's, served at `/metrics`.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `lbmesh_config_reloads_total` | counter | result | reloads: `ok` or `error` |
//! | `lbmesh_raft` | gauge | field | cluster mode: `term`, `is_leader`, `commit_index`, `applied_index`, `voters`, `learners` |
//! | `lbmesh_raft_leader` | gauge | leader_id | cluster mode: 1 for the leader this node knows (its id in decimal, a label because a float64 sample rounds 63-bit ids); no series while none is known |
//! | `lbmesh_api_requests_total` | counter | route, method, status | cluster mode: admin API requests (route as a template, e.g. `/v1/services/{name}`) |
//! | `lbmesh_build_info` | gauge | version, commit | 1, labelled with the version and commit lbd was built from |
//! | `lbmesh_raft_leader_changes_total` | counter | | cluster mode: times the leader this node knows changed to another node (or to none) |
//! | `lbmesh_nodes` | gauge | status | cluster mode: node records by status (`ready`, `down`), read when scraped |
//! | `lbmesh_api_log_streams` | gauge | | cluster mode: followed task logs (`service logs -f`) this node serves now, its own tasks' and those it relays, read when scraped |
//! | `lbmesh_tasks` | gauge | service, state | cluster mode: task records by service and state (`pending` ... `orphaned`), read when scraped |
//! | `process_*` | | | CPU seconds, resident and virtual memory, open and maximum descriptors, threads and `process_start_time_seconds` (the `prometheus` crate's process collector) |
//! | `lbmesh_nodes_silent_held` | gauge | reason | cluster mode, on the leader: silent nodes left ready because the leader heard no quorum (`no_quorum`) or more than half went silent at once (`mass_silence`) |

use std::sync::Arc;

use lbmesh_proxy::metrics::Metrics as ProxyMetrics;
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric family of one lbd.
pub struct DaemonMetrics {
    registry: Registry,
    /// The data plane's families, shared with the proxy.
    pub proxy: Arc<ProxyMetrics>,
    reloads: IntCounterVec,
    raft: IntGaugeVec,
    raft_leader: IntGaugeVec,
    api_requests: IntCounterVec,
    /// Set by the scheduler each round it leads.
    pub silent_held: IntGaugeVec,
    /// Counted by the daemon's watch on Raft's metrics.
    pub leader_changes: IntCounter,
    tasks: IntGaugeVec,
    nodes: IntGaugeVec,
    log_streams: IntGauge,
}

impl DaemonMetrics {
    /// The registry `/metrics` serves, for families registered elsewhere
    /// (the access log's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

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
                "Raft state of this node's registry, by field: term, \
                 is_leader, commit_index, applied_index, voters, learners.",
            ),
            &["field"],
        )?;
        let raft_leader = IntGaugeVec::new(
            Opts::new(
                "lbmesh_raft_leader",
                "1 for the Raft leader this node knows, by its node id.",
            ),
            &["leader_id"],
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
        let build_info = IntGaugeVec::new(
            Opts::new(
                "lbmesh_build_info",
                "1, labelled with the version and commit lbd was built from.",
            ),
            &["version", "commit"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("LBMESH_COMMIT")])
            .set(1);
        let leader_changes = IntCounter::new(
            "lbmesh_raft_leader_changes_total",
            "Times the Raft leader this node knows changed.",
        )?;
        let tasks = IntGaugeVec::new(
            Opts::new("lbmesh_tasks", "Task records by service and state."),
            &["service", "state"],
        )?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(leader_changes.clone()))?;
        registry.register(Box::new(tasks.clone()))?;
        let nodes = IntGaugeVec::new(
            Opts::new("lbmesh_nodes", "Node records by status: ready, down."),
            &["status"],
        )?;
        registry.register(Box::new(nodes.clone()))?;
        let log_streams = IntGauge::new(
            "lbmesh_api_log_streams",
            "Followed task logs this node serves now (its own tasks' and relayed ones).",
        )?;
        registry.register(Box::new(log_streams.clone()))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        registry.register(Box::new(silent_held.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(raft.clone()))?;
        registry.register(Box::new(raft_leader.clone()))?;
        registry.register(Box::new(api_requests.clone()))?;
        Ok(Self {
            registry,
            proxy,
            reloads,
            raft,
            raft_leader,
            api_requests,
            silent_held,
            leader_changes,
            tasks,
            nodes,
            log_streams,
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

    /// Records the leader this node knows, read when `/metrics` is scraped:
    /// one series, labelled with its id, or none.
    pub fn set_raft_leader(&self, leader: Option<u64>) {
        self.raft_leader.reset();
        if let Some(id) = leader {
            self.raft_leader
                .with_label_values(&[&id.to_string()])
                .set(1);
        }
    }

    /// Records the task counts, read when `/metrics` is scraped: one series
    /// per (service, state) that has tasks.
    pub fn set_tasks<'a>(&self, tasks: impl Iterator<Item = (&'a str, &'static str)>) {
        let mut counts: std::collections::BTreeMap<(&str, &str), i64> = Default::default();
        for key in tasks {
            *counts.entry(key).or_default() += 1;
        }
        self.tasks.reset();
        for ((service, state), count) in counts {
            self.tasks.with_label_values(&[service, state]).set(count);
        }
    }

    /// Records the node counts, read when `/metrics` is scraped.
    pub fn set_nodes(&self, ready: usize, down: usize) {
        for (status, count) in [("ready", ready), ("down", down)] {
            self.nodes
                .with_label_values(&[status])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Records the followed logs open now, read when `/metrics` is scraped.
    pub fn set_log_streams(&self, open: usize) {
        self.log_streams
            .set(i64::try_from(open).unwrap_or(i64::MAX));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_is_a_label_with_the_whole_id() {
        let metrics = DaemonMetrics::new().unwrap();
        let id = (1u64 << 62) + 1;
        metrics.set_raft_leader(Some(7));
        metrics.set_raft_leader(Some(id));
        let text = metrics.render();
        assert!(
            text.contains(&format!("lbmesh_raft_leader{{leader_id=\"{id}\"}} 1\n")),
            "{text}"
        );
        assert!(
            !text.contains("leader_id=\"7\""),
            "a former leader stays: {text}"
        );
        metrics.set_raft_leader(None);
        assert!(!metrics.render().contains("lbmesh_raft_leader{"));
    }

    #[test]
    fn tasks_are_counted_by_service_and_state_and_gone_ones_dropped() {
        let metrics = DaemonMetrics::new().unwrap();
        metrics.set_tasks(
            [
                ("web", "running"),
                ("web", "running"),
                ("web", "failed"),
                ("db", "pending"),
            ]
            .into_iter(),
        );
        let text = metrics.render();
        for line in [
            "lbmesh_tasks{service=\"web\",state=\"running\"} 2\n",
            "lbmesh_tasks{service=\"web\",state=\"failed\"} 1\n",
            "lbmesh_tasks{service=\"db\",state=\"pending\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        metrics.set_tasks([("web", "running")].into_iter());
        let text = metrics.render();
        assert!(!text.contains("service=\"db\""), "{text}");
    }

    #[test]
    fn build_info_and_process_metrics_are_exported() {
        let text = DaemonMetrics::new().unwrap().render();
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!(
                "lbmesh_build_info{{commit=\"{}\",version=\"{version}\"}} 1",
                env!("LBMESH_COMMIT")
            )),
            "{text}"
        );
        for name in [
            "process_start_time_seconds ",
            "process_open_fds ",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
