//! Cluster-wide records: the settings written at bootstrap and the range
//! services' virtual IPs come from.
//!
//! Both are set once, by `Command::InitCluster`. [`VipRange::parse`] and
//! [`VipRangeV6::parse`] check a range given on the command line; their
//! error is a message for the user.
//!
//! A cluster has an IPv4 range and, if it was bootstrapped by an lbd that
//! knows IPv6 VIPs, an IPv6 range beside it: each service then holds one
//! VIP of each. A cluster bootstrapped before has no v6 range and stays
//! IPv4 only.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

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

/// The DNS domain of a cluster bootstrapped without one (and of those
/// made before the registry kept it): `SERVICE.lbmesh.internal`.
pub const DEFAULT_DNS_DOMAIN: &str = "lbmesh.internal";

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
        let (ip, prefix_len) = split_cidr(text, "198.18.0.0/16", 8..=30)?;
        let base: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let mask = u32::MAX << (32 - prefix_len);
        if u32::from(base) & !mask != 0 {
            return Err(format!(
                "{base} is not the first address of a /{prefix_len}"
            ));
        }
        Ok(Self { base, prefix_len })
    }

    /// The usable addresses (the range without its first and last
    /// address) from `first` on: all of them when `first` is below the
    /// range, none when above.
    pub(crate) fn hosts_from(&self, first: Ipv4Addr) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.base);
        let size = 1u32 << (32 - self.prefix_len);
        let start = u32::from(first).saturating_sub(base).max(1);
        (start..size - 1).map(move |offset| Ipv4Addr::from(base + offset))
    }
}

impl fmt::Display for VipRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix_len)
    }
}

/// Splits `ADDR/LEN` and checks that LEN is in `lengths`; `example` shows
/// the form in the error.
fn split_cidr<'a>(
    text: &'a str,
    example: &str,
    lengths: std::ops::RangeInclusive<u8>,
) -> Result<(&'a str, u8), String> {
    let (ip, len) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not a CIDR range like {example}"))?;
    let prefix_len = len
        .parse()
        .ok()
        .filter(|l| lengths.contains(l))
        .ok_or_else(|| {
            format!(
                "prefix length {len:?} must be between {} and {}",
                lengths.start(),
                lengths.end()
            )
        })?;
    Ok((ip, prefix_len))
}

/// Default IPv6 VIP range: a /112 of the unique local block fd00::/8
/// (65,534 VIPs, as many as the v4 default), echoing 127.77.0.0/16. No
/// v6 range is local as 127.0.0.0/8 is, so lbd makes it local on each
/// node: a `local` route on `lo` and VIP sockets bound with
/// `IPV6_FREEBIND`.
pub const DEFAULT_VIP_RANGE_V6: VipRangeV6 = VipRangeV6 {
    base: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0),
    prefix_len: 112,
};

/// A range of IPv6 addresses services' v6 virtual IPs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRangeV6 {
    pub base: Ipv6Addr,
    pub prefix_len: u8,
}

impl VipRangeV6 {
    /// Parses `addr/len` with a length from 96 to 126 (at most 2^32
    /// addresses); the base must be the first address of the range, and
    /// not an IPv4-mapped one (that is the v4 range's business).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (ip, prefix_len) = split_cidr(text, "fd77::/112", 96..=126)?;
        let base: Ipv6Addr = ip
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
        if base.to_ipv4_mapped().is_some() || base.is_loopback() || base.is_unspecified() {
            return Err(format!("{base} cannot start a VIP range"));
        }
        let mask = u128::MAX << (128 - prefix_len);
        if u128::from(base) & !mask != 0 {
            return Err(format!(
                "{base} is not the first address of a /{prefix_len}"
            ));
        }
        Ok(Self { base, prefix_len })
    }

    /// Usable addresses from `first` on, as [`VipRange::hosts_from`]: the
    /// range without its first (the subnet-router anycast address) and
    /// last address.
    pub(crate) fn hosts_from(&self, first: Ipv6Addr) -> impl Iterator<Item = Ipv6Addr> {
        let base = u128::from(self.base);
        let size = 1u128 << (128 - self.prefix_len);
        let start = u128::from(first).saturating_sub(base).max(1);
        (start..size - 1).map(move |offset| Ipv6Addr::from(base + offset))
    }
}

impl fmt::Display for VipRangeV6 {
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
        assert_eq!(small.hosts_from(small.base).count(), 2);
        let from = |first: [u8; 4]| small.hosts_from(first.into()).collect::<Vec<_>>();
        assert_eq!(from([10, 0, 0, 2]), [Ipv4Addr::new(10, 0, 0, 2)]);
        assert_eq!(from([9, 0, 0, 0]).len(), 2, "below the range: all of it");
        assert!(
            from([10, 0, 0, 3]).is_empty(),
            "the last address is no host"
        );
        assert!(from([11, 0, 0, 0]).is_empty(), "above the range: none");
    }

    #[test]
    fn v6_vip_range_parsing() {
        assert_eq!(VipRangeV6::parse("fd77::/112"), Ok(DEFAULT_VIP_RANGE_V6));
        assert_eq!(VipRangeV6::parse("[fd77::]/112"), Ok(DEFAULT_VIP_RANGE_V6));
        for bad in [
            "fd00::1/112",
            "fd00::/64",
            "fd00::/127",
            "::ffff:127.0.0.0/112",
            "127.77.0.0/16",
            "fd00::",
        ] {
            assert!(VipRangeV6::parse(bad).is_err(), "{bad}");
        }
        let small = VipRangeV6::parse("fd00::/126").unwrap();
        let hosts: Vec<Ipv6Addr> = small.hosts_from(small.base).collect();
        assert_eq!(
            hosts,
            [
                "fd00::1".parse::<Ipv6Addr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
    }
}
