//! lbd in this process (standalone mode, from a config file in a temp
//! dir), the config text its tests write, and metric parsing.

use std::net::SocketAddr;
use std::path::PathBuf;

use lbmesh::access_log::AccessLogOutput;
use lbmesh::daemon::Daemon;

use crate::http::http_get;

/// An lbd running in this process from a config file in a temp dir.
pub struct TestLbd {
    pub daemon: Daemon,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestLbd {
    /// Starts lbd with the admin API on an ephemeral port and `services` as
    /// the `[[service]]` tables.
    pub async fn start(services: &str) -> Self {
        Self::start_with(services, &AccessLogOutput::Stdout).await
    }

    /// [`TestLbd::start`], with the access log going to `access_log`.
    pub async fn start_with(services: &str, access_log: &AccessLogOutput) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("lbd.toml");
        std::fs::write(&config_path, config_text(services)).expect("write config");
        // Two proxy threads: connections spread over threads as in production.
        let daemon = Daemon::start(&config_path, 2, access_log)
            .await
            .expect("lbd starts");
        Self {
            daemon,
            config_path,
            _dir: dir,
        }
    }

    pub async fn metrics(&self) -> String {
        http_get(self.daemon.api_addr(), "/metrics").await.1
    }

    /// Rewrites the config file with `services` and reloads it.
    pub fn reload(&mut self, services: &str) {
        std::fs::write(&self.config_path, config_text(services)).expect("write config");
        self.daemon.reload().expect("reload");
    }
}

/// A whole config file: admin API on an ephemeral port plus `services`.
pub fn config_text(services: &str) -> String {
    format!("[node]\nname = \"test\"\napi_addr = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\n{services}")
}

/// A `[[service]]` table listening on `listen`.
pub fn service(
    name: &str,
    listen: SocketAddr,
    backends: &[(SocketAddr, u32)],
    extra: &str,
) -> String {
    let endpoints: Vec<String> = backends
        .iter()
        .map(|(addr, weight)| format!("{{ address = \"{addr}\", weight = {weight} }}"))
        .collect();
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = [\"{}\"]\nports = [{{ published = {} }}]\nendpoints = [{}]\n{extra}\n",
        listen.ip(),
        listen.port(),
        endpoints.join(", ")
    )
}

/// The value of the sample `name{labels}` in a Prometheus text page, where
/// `labels` must all be present (in any order).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}
