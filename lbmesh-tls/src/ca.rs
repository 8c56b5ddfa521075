//! The cluster CA and node keys, with rcgen (ECDSA P-256).
//!
//! The CA is made once, at bootstrap; its key is kept by managers only
//! (`ca.key`), its certificate by every node (`ca.crt`). A node makes its
//! own key and sends a CSR; the signer ignores everything the CSR asks for
//! but its public key, and writes the subject and names itself, so a
//! joiner cannot ask for another node's id or a role its token does not
//! give.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::config::NodeCredentials;
use crate::error::TlsError;
use crate::identity::{ca_digest, cert_der, node_server_name, CertRole, API_SERVER_NAME, BACKDATE};

/// How long the CA certificate is valid: node certificates are short-lived
/// and renewed; the root outlives any cluster.
const CA_LIFETIME: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// The cluster CA: its certificate and its signing key.
pub struct ClusterCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    /// The CA as rcgen's issuer (same subject and key as `cert_pem`).
    issuer: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("digest", &self.digest())
            .field("key", &"<redacted>")
            .finish()
    }
}

fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| TlsError::Random(e.to_string()))?;
    // Positive, as RFC 5280 asks.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn validity(lifetime: Duration) -> Result<(OffsetDateTime, OffsetDateTime), TlsError> {
    let now = OffsetDateTime::now_utc();
    let before = now - BACKDATE;
    let after = now
        .checked_add(time::Duration::try_from(lifetime).map_err(|e| {
            TlsError::Certificate(format!("lifetime {lifetime:?} is too long: {e}"))
        })?)
        .ok_or_else(|| TlsError::Certificate(format!("lifetime {lifetime:?} is too long")))?;
    Ok((before, after))
}

impl ClusterCa {
    /// A new CA for cluster `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "lbmesh cluster CA");
        name.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity(CA_LIFETIME)?;
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().to_vec();
        Ok(Self {
            cert_pem,
            cert_der,
            issuer: cert,
            key,
        })
    }

    /// The CA from its certificate and key (PEM), as kept on a manager.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
        let cert_der = cert_der(cert_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        // The same subject and key as the original, so what it signs chains
        // to the original certificate.
        let issuer = params
            .self_signed(&key)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        if issuer
            .params()
            .distinguished_name
            .get(&DnType::CommonName)
            .is_none()
        {
            return Err(TlsError::Certificate("the CA has no subject".to_owned()));
        }
        let ca = Self {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            issuer,
            key,
        };
        ca.check_key_matches()?;
        Ok(ca)
    }

    /// Refuses a key that is not the certificate's (a mixed-up file).
    fn check_key_matches(&self) -> Result<(), TlsError> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(&self.cert_der)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != self.key.public_key_raw() {
            return Err(TlsError::Key("ca.key is not the key of ca.crt".to_owned()));
        }
        Ok(())
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The digest join and control tokens carry.
    pub fn digest(&self) -> String {
        ca_digest(&self.cert_der)
    }

    /// A certificate for node `node_id` of `cluster_id` in `role`, valid for
    /// `lifetime`, on the public key of `csr_pem` (whose signature is
    /// checked; nothing else it asks for is used).
    pub fn sign(
        &self,
        csr_pem: &str,
        node_id: u64,
        role: CertRole,
        cluster_id: &str,
        lifetime: Duration,
    ) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Request(e.to_string()))?;
        let mut params =
            CertificateParams::new(vec![node_server_name(node_id), API_SERVER_NAME.to_owned()])
                .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, node_id.to_string());
        name.push(DnType::OrganizationalUnitName, role.unit());
        name.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(lifetime)?;
        params.serial_number = Some(random_serial()?);
        let cert = params
            .signed_by(&csr.public_key, &self.issuer, &self.key)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        Ok(cert.pem())
    }

    /// Credentials of node `node_id` in `role` whose key is made here and
    /// signed at once: for tests and benchmarks that stand up nodes in one
    /// process (a real node makes its key and sends only the CSR).
    pub fn node_credentials(
        &self,
        node_id: u64,
        role: CertRole,
        cluster_id: &str,
        lifetime: Duration,
    ) -> Result<Arc<NodeCredentials>, TlsError> {
        let key = NodeKey::generate()?;
        let cert = self.sign(&key.csr(node_id)?, node_id, role, cluster_id, lifetime)?;
        NodeCredentials::new(self.cert_pem(), &cert, &key.pem())
    }

    /// A MAC under the CA key: join and control secrets are derived with
    /// it from seeds in the registry, so only a holder of the CA key (a
    /// manager) can print a token, and a replica's seeds give nothing.
    pub fn derive_secret(&self, parts: &[&[u8]]) -> [u8; 16] {
        let key = self.key.serialize_der();
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC accepts keys of any length");
        mac.update(b"lbmesh-token-v2");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        let full = mac.finalize().into_bytes();
        let mut secret = [0u8; 16];
        secret.copy_from_slice(&full[..16]);
        secret
    }
}

/// A node's own key.
pub struct NodeKey(KeyPair);

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(<redacted>)")
    }
}

impl NodeKey {
    pub fn generate() -> Result<Self, TlsError> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map(Self)
            .map_err(|e| TlsError::Key(e.to_string()))
    }

    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        KeyPair::from_pem(pem)
            .map(Self)
            .map_err(|e| TlsError::Key(e.to_string()))
    }

    pub fn pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// A CSR for this key (the signer writes the subject itself).
    pub fn csr(&self, node_id: u64) -> Result<String, TlsError> {
        let mut params = CertificateParams::new(vec![node_server_name(node_id)])
            .map_err(|e| TlsError::Request(e.to_string()))?;
        params
            .distinguished_name
            .push(DnType::CommonName, node_id.to_string());
        params
            .serialize_request(&self.0)
            .and_then(|csr| csr.pem())
            .map_err(|e| TlsError::Request(e.to_string()))
    }
}

/// Whether `cert_pem`'s public key is `key`'s: a renewed certificate must
/// be for the key the node holds.
pub fn cert_matches_key(cert_pem: &str, key: &NodeKey) -> Result<bool, TlsError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = cert_der(cert_pem)?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| TlsError::Certificate(e.to_string()))?;
    Ok(cert.public_key().subject_public_key.data.as_ref() == key.0.public_key_raw())
}
