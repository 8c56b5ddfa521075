//! This node's place in the cluster's PKI: its key and certificate, the
//! CA certificate, and on a manager the CA key; as files in the data dir
//! and in memory; and the loop that keeps the certificate fresh.
//!
//! # Files (all 0600, in the 0700 data dir)
//!
//! ```text
//! node.key   this node's private key (made here, never sent)
//! node.crt   its certificate: node id, role, cluster id, short-lived
//! ca.crt     the cluster CA's certificate (public)
//! ca.key     the CA's key: managers only; removed when a manager is demoted
//! ```
//!
//! # Renewal ([`keep_renewed`])
//!
//! ```text
//! every RENEW_CHECK: due when half the certificate's life has passed, when the registry's
//!   record names another role than the certificate (node promote / demote), or when a
//!   manager has no CA key yet (it just joined or was promoted)
//!   ─> a manager holding the CA key signs its own new certificate
//!   ─> any other node: POST /v1/cluster/renew to a manager (the leader first), over TLS with
//!      its current certificate; the manager signs a certificate of the role the registry
//!      gives it, with the CA key when that role is manager
//!   ─> node.crt (and ca.key) written, then swapped into the live credentials: new
//!      connections present it, open ones keep theirs
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use lbmesh_api::Client;
use lbmesh_tls::{CertRole, ClusterCa, NodeCredentials, NodeKey, TlsError};
use raft_state::registry::RegistryNode;
use raft_state::state::{ClusterInfo, RegistryState, Role, TokenKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub const NODE_KEY_FILE: &str = "node.key";
pub const NODE_CERT_FILE: &str = "node.crt";
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
/// lbctl's control token on a manager (one line).
pub const CONTROL_TOKEN_FILE: &str = "control-token";

/// How often the renewal loop looks at the certificate.
const RENEW_CHECK: Duration = Duration::from_secs(1);
/// Default life of a node certificate (Swarm's too).
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] TlsError),
}

/// The role a certificate carries for a registry role.
pub fn cert_role(role: Role) -> CertRole {
    match role {
        Role::Manager => CertRole::Manager,
        Role::Worker => CertRole::Worker,
    }
}

/// A certificate for node `id` in `role`, signed by `ca` for the cluster
/// `cluster` describes, on the key of `csr`.
pub fn issue(
    ca: &ClusterCa,
    cluster: &ClusterInfo,
    csr: &str,
    id: u64,
    role: CertRole,
) -> Result<String, TlsError> {
    ca.sign(
        csr,
        id,
        role,
        &cluster.id,
        Duration::from_millis(cluster.cert_lifetime_ms.max(1)),
    )
}

/// This node's key, certificate and CA (and the CA key on a manager).
pub struct Pki {
    data_dir: PathBuf,
    key: NodeKey,
    credentials: Arc<NodeCredentials>,
    ca: ArcSwapOption<ClusterCa>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("credentials", &self.credentials)
            .field("ca_key", &self.ca.load().is_some())
            .finish()
    }
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::File {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write(path: &Path, text: &str) -> Result<(), PkiError> {
    crate::files::write_private(path, text.as_bytes()).map_err(|source| PkiError::File {
        path: path.to_owned(),
        source,
    })
}

impl Pki {
    /// The node's data dir (its task logs are under `tasks/`).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Writes a new node's files and returns them loaded: its key, the
    /// certificate a manager signed, the CA certificate, and the CA itself
    /// on a bootstrapping manager.
    pub fn create(
        data_dir: &Path,
        key: NodeKey,
        cert_pem: &str,
        ca_pem: &str,
        ca: Option<ClusterCa>,
    ) -> Result<Arc<Self>, PkiError> {
        let credentials = NodeCredentials::new(ca_pem, cert_pem, &key.pem())?;
        write(&data_dir.join(NODE_KEY_FILE), &key.pem())?;
        write(&data_dir.join(CA_CERT_FILE), ca_pem)?;
        write(&data_dir.join(NODE_CERT_FILE), cert_pem)?;
        if let Some(ca) = &ca {
            write(&data_dir.join(CA_KEY_FILE), &ca.key_pem())?;
        }
        Ok(Arc::new(Self {
            data_dir: data_dir.to_owned(),
            key,
            credentials,
            ca: ArcSwapOption::from(ca.map(Arc::new)),
        }))
    }

    /// The files of a node that has them; `None` for a new node.
    pub fn load(data_dir: &Path) -> Result<Option<Arc<Self>>, PkiError> {
        let (Some(key_pem), Some(cert_pem), Some(ca_pem)) = (
            read(&data_dir.join(NODE_KEY_FILE))?,
            read(&data_dir.join(NODE_CERT_FILE))?,
            read(&data_dir.join(CA_CERT_FILE))?,
        ) else {
            return Ok(None);
        };
        let key = NodeKey::from_pem(&key_pem)?;
        let credentials = NodeCredentials::new(&ca_pem, &cert_pem, &key_pem)?;
        let ca = match read(&data_dir.join(CA_KEY_FILE))? {
            Some(ca_key) => Some(Arc::new(ClusterCa::from_pem(&ca_pem, &ca_key)?)),
            None => None,
        };
        Ok(Some(Arc::new(Self {
            data_dir: data_dir.to_owned(),
            key,
            credentials,
            ca: ArcSwapOption::from(ca),
        })))
    }

    pub fn credentials(&self) -> Arc<NodeCredentials> {
        self.credentials.clone()
    }

    /// The CA, on a manager that holds its key.
    pub fn ca(&self) -> Option<Arc<ClusterCa>> {
        self.ca.load_full()
    }

    /// A CSR for this node's key.
    pub fn csr(&self, id: u64) -> Result<String, TlsError> {
        self.key.csr(id)
    }

    /// Takes a renewed certificate (and the CA key when it comes with one,
    /// or drops the CA key when `manager` is false): on disk first, then
    /// live.
    pub fn install(
        &self,
        cert_pem: &str,
        ca_key: Option<&str>,
        manager: bool,
    ) -> Result<(), PkiError> {
        // Checked against the key and the CA before anything is written.
        NodeCredentials::new(self.credentials.ca_pem(), cert_pem, &self.key.pem())?;
        if let Some(ca_key) = ca_key {
            let ca = ClusterCa::from_pem(self.credentials.ca_pem(), ca_key)?;
            write(&self.data_dir.join(CA_KEY_FILE), ca_key)?;
            self.ca.store(Some(Arc::new(ca)));
        }
        write(&self.data_dir.join(NODE_CERT_FILE), cert_pem)?;
        self.credentials.replace(cert_pem, &self.key.pem())?;
        if !manager && self.ca.load().is_some() {
            self.ca.store(None);
            let path = self.data_dir.join(CA_KEY_FILE);
            match std::fs::remove_file(&path) {
                Ok(()) => info!("demoted: removed the CA key"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(PkiError::File { path, source }),
            }
        }
        Ok(())
    }
}

/// Writes the control token file (mode 0600).
pub fn save_control_token(data_dir: &Path, token: &str) -> Result<(), PkiError> {
    write(&data_dir.join(CONTROL_TOKEN_FILE), &format!("{token}\n"))
}

/// On a manager holding the CA key whose data dir has no control token
/// file (it joined, or was promoted): writes the token, derived from the
/// registry's seed. A worker never writes it (it cannot derive it).
pub fn keep_control_token(
    state: &RegistryState,
    pki: &Pki,
    data_dir: &Path,
) -> Result<(), PkiError> {
    if data_dir.join(CONTROL_TOKEN_FILE).exists() {
        return Ok(());
    }
    match (&state.cluster, pki.ca()) {
        (Some(cluster), Some(ca)) => save_control_token(
            data_dir,
            &crate::tokens::token_text(&ca, TokenKind::Control, &cluster.control_token),
        ),
        _ => Ok(()),
    }
}

/// Why this node's certificate is due now, if it is.
fn due(pki: &Pki, registry: &RegistryNode) -> Option<(CertRole, &'static str)> {
    let identity = pki.credentials.identity().ok()?;
    let state = registry.local().state;
    let wanted = state
        .nodes
        .get(&registry.id)
        .map(|n| cert_role(n.role))
        .unwrap_or(identity.role);
    if wanted != identity.role {
        return Some((wanted, "its role changed"));
    }
    if wanted == CertRole::Manager && pki.ca().is_none() {
        return Some((wanted, "a manager needs the CA key"));
    }
    (SystemTime::now() >= identity.renew_at()).then_some((wanted, "half its life has passed"))
}

/// One renewal: signed here when this manager holds the CA key, else by a
/// manager through its API.
async fn renew(pki: &Pki, registry: &RegistryNode, role: CertRole) -> Result<(), String> {
    let state = registry.local().state;
    let cluster = state
        .cluster
        .as_ref()
        .ok_or("the cluster is not initialised")?;
    let csr = pki.csr(registry.id).map_err(|e| e.to_string())?;
    if let (Some(ca), CertRole::Manager) = (pki.ca(), role) {
        let cert = issue(&ca, cluster, &csr, registry.id, role).map_err(|e| e.to_string())?;
        return pki.install(&cert, None, true).map_err(|e| e.to_string());
    }
    let leader = registry.metrics().current_leader;
    let mut managers: Vec<_> = state
        .nodes
        .values()
        .filter(|n| n.role == Role::Manager && n.id != registry.id)
        .collect();
    managers.sort_by_key(|n| Some(n.id) != leader);
    let mut last = "no other manager is known".to_owned();
    for manager in managers {
        let client = Client::new(&manager.api_addr.to_string(), None)
            .map_err(|e| e.to_string())?
            .with_tls(pki.credentials.client());
        match client.renew(&csr).await {
            Ok(answer) => {
                let manager_role = answer.ca_key.is_some();
                return pki
                    .install(&answer.certificate, answer.ca_key.as_deref(), manager_role)
                    .map_err(|e| e.to_string());
            }
            Err(e) => last = format!("{}: {e}", manager.name),
        }
    }
    Err(last)
}

/// Keeps this node's certificate fresh until `stop` fires (see the module
/// doc). A failure is logged and retried at the next check; a certificate
/// that expires before any renewal succeeds leaves the node unable to
/// reach the others, which it logs.
pub async fn keep_renewed(registry: Arc<RegistryNode>, pki: Arc<Pki>, stop: CancellationToken) {
    let mut warned_at = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RENEW_CHECK) => {}
        }
        let Some((role, why)) = due(&pki, &registry) else {
            continue;
        };
        match renew(&pki, &registry, role).await {
            Ok(()) => {
                let state = registry.local().state;
                if let Err(error) = keep_control_token(&state, &pki, &pki.data_dir) {
                    warn!(%error, "cannot write the control token file");
                }
                let until = pki
                    .credentials
                    .identity()
                    .map(|i| humantime::format_rfc3339_seconds(i.not_after).to_string())
                    .unwrap_or_default();
                info!(reason = why, role = ?role, %until, "node certificate renewed");
                warned_at = None;
            }
            Err(error) => {
                // Once per ten checks: a manager may be down for a while.
                let now = tokio::time::Instant::now();
                if warned_at.is_none_or(|at: tokio::time::Instant| now - at > RENEW_CHECK * 10) {
                    warn!(%error, reason = why, "cannot renew the node certificate yet");
                    warned_at = Some(now);
                }
            }
        }
    }
}
