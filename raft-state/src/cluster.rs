//! Cluster-wide records: the settings written at bootstrap and the range
//! services' virtual IPs come from.
//!
//! Both are set once, by `Command::InitCluster`. [`VipRange::parse`] checks
//! a range given on the command line; its error is a message for the user.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Cluster-wide settings, written once when the cluster is bootstrapped
/// (the token seeds change on rotation).
///
/// Every node holds the registry, workers too, so nothing here is usable
/// as a credential: the CA's certificate is public, and each token is
/// kept as a [`TokenSeed`], from which only a holder of the CA key (a
/// manager) derives the token's secret, and the secret's SHA-256, which
/// checks a presented token without revealing it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub id: String,
    /// The cluster CA's certificate (PEM).
    pub ca_cert: String,
    /// How long node certificates are valid, in milliseconds.
    pub cert_lifetime_ms: u64,
    pub manager_token: TokenSeed,
    pub worker_token: TokenSeed,
    /// The admin API's bearer token.
    pub control_token: TokenSeed,
}

/// What the registry keeps of one token: a random seed and the SHA-256 of
/// the secret derived from it (both hex).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSeed {
    pub seed: String,
    pub hash: String,
}

/// Which token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Manager,
    Worker,
    Control,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manager => "manager",
            Self::Worker => "worker",
            Self::Control => "control",
        }
    }
}

impl ClusterInfo {
    pub fn token(&self, kind: TokenKind) -> &TokenSeed {
        match kind {
            TokenKind::Manager => &self.manager_token,
            TokenKind::Worker => &self.worker_token,
            TokenKind::Control => &self.control_token,
        }
    }

    fn token_mut(&mut self, kind: TokenKind) -> &mut TokenSeed {
        match kind {
            TokenKind::Manager => &mut self.manager_token,
            TokenKind::Worker => &mut self.worker_token,
            TokenKind::Control => &mut self.control_token,
        }
    }

    /// Replaces one token's seed (a rotation).
    pub(crate) fn rotate(&mut self, kind: TokenKind, seed: TokenSeed) {
        *self.token_mut(kind) = seed;
    }
}

/// Default VIP range of a new cluster: part of 198.18.0.0/15, which is
/// set aside for benchmarking (RFC 2544) and so routed on no real network
/// a node may sit on. It is outside the loopback network, which containers
/// cannot reach: lbd makes it local on each node with one route (`local
/// 198.18.0.0/16 dev lo`), so containers and host processes reach VIPs
/// alike. Clusters made before kept 127.77.0.0/16, their `InitCluster`'s.
pub const DEFAULT_VIP_RANGE: VipRange = VipRange {
    base: Ipv4Addr::new(198, 18, 0, 0),
    prefix_len: 16,
};

/// A range of IPv4 addresses services' virtual IPs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRange {
    pub base: Ipv4Addr,
    pub prefix_len: u8,
}

impl VipRange {
    /// Parses `a.b.c.d/len`; the base must be the first address of the range.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (ip, len) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a CIDR range like 198.18.0.0/16"))?;
        let base: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| (8..=30).contains(l))
            .ok_or_else(|| format!("prefix length {len:?} must be between 8 and 30"))?;
        let mask = u32::MAX << (32 - prefix_len);
        if u32::from(base) & !mask != 0 {
            return Err(format!(
                "{base} is not the first address of a /{prefix_len}"
            ));
        }
        Ok(Self { base, prefix_len })
    }

    /// Usable addresses: the range without its first and last address.
    pub(crate) fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.base);
        let size = 1u32 << (32 - self.prefix_len);
        (1..size - 1).map(move |offset| Ipv4Addr::from(base + offset))
    }
}

impl fmt::Display for VipRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_range_parsing() {
        assert_eq!(VipRange::parse("198.18.0.0/16"), Ok(DEFAULT_VIP_RANGE));
        assert!(VipRange::parse("127.77.0.1/16").is_err());
        assert!(VipRange::parse("127.77.0.0/31").is_err());
        assert!(VipRange::parse("nope").is_err());
        let small = VipRange::parse("10.0.0.0/30").unwrap();
        assert_eq!(small.hosts().count(), 2);
    }
}
