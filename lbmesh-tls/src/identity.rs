//! What a node certificate says: the node id, its role and its cluster,
//! read from the subject (CN, OU, O), and when it is valid.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::error::TlsError;

/// How far before its signing a certificate is valid from, so a node whose
/// clock is a little behind the signer's accepts it at once.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// The DNS name every node certificate carries for API clients.
pub const API_SERVER_NAME: &str = "api.lbmesh.internal";

/// The DNS name of node `id`'s certificate, which a Raft client checks.
pub fn node_server_name(id: u64) -> String {
    format!("node-{id}.lbmesh.internal")
}

/// Hex SHA-256 of a certificate's DER: what join and control tokens carry
/// to pin the cluster CA.
pub fn ca_digest(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The DER of the first certificate in `pem`.
pub fn cert_der(pem: &str) -> Result<Vec<u8>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|e| TlsError::Certificate(format!("not a PEM certificate: {e}")))
}

/// What a node may do, as its certificate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    Manager,
    Worker,
}

impl CertRole {
    /// The subject's organizational unit for this role.
    pub fn unit(self) -> &'static str {
        match self {
            Self::Manager => "lbmesh-manager",
            Self::Worker => "lbmesh-worker",
        }
    }

    fn from_unit(unit: &str) -> Option<Self> {
        match unit {
            "lbmesh-manager" => Some(Self::Manager),
            "lbmesh-worker" => Some(Self::Worker),
            _ => None,
        }
    }
}

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub node_id: u64,
    pub role: CertRole,
    pub cluster_id: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl NodeIdentity {
    /// Reads a node certificate (DER). Its signature and dates are the
    /// TLS verifier's business; this only reads what it names.
    pub fn from_der(der: &[u8]) -> Result<Self, TlsError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| TlsError::Certificate(format!("not a certificate: {e}")))?;
        let subject = cert.subject();
        let field = |values: Vec<&str>, what: &str| -> Result<String, TlsError> {
            match values.as_slice() {
                [one] => Ok((*one).to_owned()),
                _ => Err(TlsError::Certificate(format!(
                    "the subject must have one {what}"
                ))),
            }
        };
        let common_name = field(
            subject
                .iter_common_name()
                .filter_map(|a| a.as_str().ok())
                .collect(),
            "CN",
        )?;
        let unit = field(
            subject
                .iter_organizational_unit()
                .filter_map(|a| a.as_str().ok())
                .collect(),
            "OU",
        )?;
        let cluster_id = field(
            subject
                .iter_organization()
                .filter_map(|a| a.as_str().ok())
                .collect(),
            "O",
        )?;
        let node_id = common_name
            .parse::<u64>()
            .map_err(|_| TlsError::Certificate(format!("CN {common_name:?} is not a node id")))?;
        let role = CertRole::from_unit(&unit)
            .ok_or_else(|| TlsError::Certificate(format!("OU {unit:?} is not a role")))?;
        let time = |seconds: i64| {
            UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or_default())
        };
        Ok(Self {
            node_id,
            role,
            cluster_id,
            not_before: time(cert.validity().not_before.timestamp()),
            not_after: time(cert.validity().not_after.timestamp()),
        })
    }

    /// When this certificate should be replaced: half way through its
    /// life from its signing (its start less [`BACKDATE`]), so a renewal
    /// has the other half to succeed.
    pub fn renew_at(&self) -> SystemTime {
        let signed = self.not_before + BACKDATE;
        let life = self.not_after.duration_since(signed).unwrap_or_default();
        signed + life / 2
    }
}
