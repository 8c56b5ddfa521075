//! The rustls configurations of a node and of lbctl.
//!
//! A node's [`NodeCredentials`] hold the CA certificate and the node's
//! current certificate and key; the configurations are built once around
//! a resolver that reads the current certificate, so a renewal
//! ([`NodeCredentials::replace`]) changes what every new connection
//! presents without rebuilding anything. Each presents the chain
//! `[node certificate, CA certificate]`, so a client that knows only the
//! CA's digest can find and check the CA in it.
//!
//! - Raft server: a client certificate from the cluster CA is required.
//! - API server: a client certificate is optional (lbctl has none; a
//!   node renewing its certificate presents its own).
//! - Client: presents the node's certificate and checks the server's
//!   against the CA and the name it dials (`node-<id>...` for Raft,
//!   [`API_SERVER_NAME`] for the API).
//! - lbctl: [`CaPin`], the CA by digest (from the control token) or by file.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::error::TlsError;
use crate::identity::{ca_digest, cert_der, NodeIdentity, API_SERVER_NAME};

/// The crypto every configuration uses: ring, no OpenSSL.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(
    ca_der: &CertificateDer<'static>,
    cert_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, TlsError> {
    let leaf = CertificateDer::from(cert_der(cert_pem)?);
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Key(format!("not a PEM key: {e}")))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let certified = CertifiedKey::new(vec![leaf, ca_der.clone()], signing);
    certified
        .keys_match()
        .map_err(|e| TlsError::Key(format!("the key is not the certificate's: {e}")))?;
    Ok(certified)
}

/// The certificate a node presents now.
#[derive(Debug)]
struct Current(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl ResolvesClientCert for Current {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A node's CA, certificate and key, and the configurations made of them.
pub struct NodeCredentials {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    current: Arc<Current>,
    raft_server: Arc<ServerConfig>,
    api_server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCredentials")
            .field("ca", &ca_digest(&self.ca_der))
            .field("key", &"<redacted>")
            .finish()
    }
}

impl NodeCredentials {
    /// Credentials of the node whose certificate is `cert_pem` (signed by
    /// the CA `ca_pem`) with key `key_pem`.
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<Self>, TlsError> {
        let ca_der = CertificateDer::from(cert_der(ca_pem)?);
        let mut roots = RootCertStore::empty();
        roots
            .add(ca_der.clone())
            .map_err(|e| TlsError::Certificate(format!("the CA certificate: {e}")))?;
        let roots = Arc::new(roots);
        let current = Arc::new(Current(ArcSwap::from_pointee(certified_key(
            &ca_der, cert_pem, key_pem,
        )?)));
        let config = |e: rustls::Error| TlsError::Config(e.to_string());
        let required = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let optional = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let server = |verifier| -> Result<Arc<ServerConfig>, TlsError> {
            let mut config = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(config)?
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(current.clone());
            config.alpn_protocols = Vec::new();
            Ok(Arc::new(config))
        };
        let raft_server = server(required)?;
        let api_server = server(optional)?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_root_certificates(roots)
            .with_client_cert_resolver(current.clone());
        Ok(Arc::new(Self {
            ca_pem: ca_pem.to_owned(),
            ca_der,
            current,
            raft_server,
            api_server: api_server.clone(),
            client: Arc::new(client),
        }))
    }

    /// Presents `cert_pem` with `key_pem` from now on (a renewal); open
    /// connections keep what they authenticated with.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let certified = certified_key(&self.ca_der, cert_pem, key_pem)?;
        self.current.0.store(Arc::new(certified));
        Ok(())
    }

    /// What the current certificate says.
    pub fn identity(&self) -> Result<NodeIdentity, TlsError> {
        let current = self.current.0.load();
        let leaf = current
            .cert
            .first()
            .ok_or_else(|| TlsError::Certificate("no certificate".to_owned()))?;
        NodeIdentity::from_der(leaf)
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_digest(&self) -> String {
        ca_digest(&self.ca_der)
    }

    /// For the Raft port: a cluster certificate is required of clients.
    pub fn raft_server(&self) -> Arc<ServerConfig> {
        self.raft_server.clone()
    }

    /// For the API port: a client certificate is optional.
    pub fn api_server(&self) -> Arc<ServerConfig> {
        self.api_server.clone()
    }

    /// For calls to other nodes (Raft and API): presents this node's
    /// certificate and checks the server's against the CA.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }
}

/// The identity in a TLS peer's certificate chain, if it has one.
pub fn peer_identity(certificates: Option<&[CertificateDer<'_>]>) -> Option<NodeIdentity> {
    certificates
        .and_then(<[_]>::first)
        .and_then(|leaf| NodeIdentity::from_der(leaf).ok())
}

/// How lbctl knows the cluster's CA.
#[derive(Debug, Clone)]
pub enum CaPin {
    /// The hex SHA-256 of the CA certificate (from a control or join
    /// token): the server's chain must include a certificate with it.
    Digest(String),
    /// The CA certificate itself (`--ca FILE`, PEM).
    Cert(String),
}

impl CaPin {
    /// A client configuration that trusts only the pinned CA and presents
    /// no certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let verifier = match self {
            Self::Digest(digest) => PinnedCa {
                digest: digest.to_ascii_lowercase(),
                known: None,
            },
            Self::Cert(pem) => {
                let der = cert_der(pem)?;
                PinnedCa {
                    digest: ca_digest(&der),
                    known: Some(CertificateDer::from(der)),
                }
            }
        };
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// Checks a server's certificate against the CA whose digest is pinned:
/// the CA is taken from the chain the server sends (or the file given),
/// its digest must match, and the leaf must chain to it and name
/// [`API_SERVER_NAME`] (webpki's ordinary checks, with that CA as
/// the only root).
#[derive(Debug)]
struct PinnedCa {
    digest: String,
    known: Option<CertificateDer<'static>>,
}

impl PinnedCa {
    fn ca<'a>(&'a self, intermediates: &'a [CertificateDer<'a>]) -> Option<CertificateDer<'a>> {
        self.known.clone().or_else(|| {
            intermediates
                .iter()
                .find(|cert| ca_digest(cert) == self.digest)
                .cloned()
        })
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = self.ca(intermediates).ok_or_else(|| {
            rustls::Error::General(format!(
                "the server's CA is not the pinned one (sha256 {})",
                self.digest
            ))
        })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA: {e}")))?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let name = ServerName::try_from(API_SERVER_NAME)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{ClusterCa, NodeKey};
    use crate::identity::{node_server_name, CertRole};
    use std::time::Duration;

    fn node(ca: &ClusterCa, id: u64, role: CertRole) -> Arc<NodeCredentials> {
        ca.node_credentials(id, role, "c1", Duration::from_secs(60))
            .unwrap()
    }

    #[test]
    fn a_signed_certificate_names_its_node_role_and_cluster() {
        let ca = ClusterCa::generate("c1").unwrap();
        let creds = node(&ca, 42, CertRole::Worker);
        let identity = creds.identity().unwrap();
        assert_eq!(identity.node_id, 42);
        assert_eq!(identity.role, CertRole::Worker);
        assert_eq!(identity.cluster_id, "c1");
        let life = identity
            .not_after
            .duration_since(identity.renew_at())
            .unwrap();
        assert!(
            life <= Duration::from_secs(31) && life >= Duration::from_secs(29),
            "{life:?}"
        );
        assert_eq!(creds.ca_digest(), ca.digest());
    }

    #[test]
    fn a_ca_reloaded_from_pem_signs_what_chains_to_the_original() {
        let ca = ClusterCa::generate("c1").unwrap();
        let reloaded = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        let key = NodeKey::generate().unwrap();
        let cert = reloaded
            .sign(
                &key.csr(7).unwrap(),
                7,
                CertRole::Manager,
                "c1",
                Duration::from_secs(60),
            )
            .unwrap();
        // Verifies with the original CA as the only root.
        let leaf = CertificateDer::from(cert_der(&cert).unwrap());
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(cert_der(ca.cert_pem()).unwrap()))
            .unwrap();
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        let name = ServerName::try_from(node_server_name(7)).unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .expect("chains to the original CA");
        let other = ClusterCa::generate("c1").unwrap();
        assert!(ClusterCa::from_pem(ca.cert_pem(), &other.key_pem()).is_err());
    }

    #[test]
    fn the_pinned_verifier_takes_only_the_pinned_ca() {
        let ca = ClusterCa::generate("c1").unwrap();
        let creds = node(&ca, 3, CertRole::Manager);
        let chain = creds.current.0.load_full().cert.clone();
        let name = ServerName::try_from("anything").unwrap();
        let pinned = PinnedCa {
            digest: ca.digest(),
            known: None,
        };
        pinned
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .expect("the pinned CA is in the chain");
        let wrong = PinnedCa {
            digest: ClusterCa::generate("c1").unwrap().digest(),
            known: None,
        };
        assert!(wrong
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .is_err());
    }
}
