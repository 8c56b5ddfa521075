//! Cluster-wide records: the settings written at bootstrap and the range
//! services' virtual IPs come from.
//!
//! Both are set once, by `Command::InitCluster`. [`VipRange::parse`] checks
//! a range given on the command line; its error is a message for the user.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Cluster-wide settings, written once when the cluster is bootstrapped.
/// Its `Debug` hides the tokens, so no log line can carry one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub id: String,
    /// Join tokens. Every node holds the registry, so every node is trusted
    /// with them (as every Swarm manager is).
    pub manager_token: String,
    pub worker_token: String,
    /// Bearer token of the admin API's `/v1` routes.
    pub control_token: String,
}

impl std::fmt::Debug for ClusterInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterInfo")
            .field("id", &self.id)
            .field("manager_token", &"<redacted>")
            .field("worker_token", &"<redacted>")
            .field("control_token", &"<redacted>")
            .finish()
    }
}

/// Default VIP range: inside 127.0.0.0/8, so binding a VIP needs no
/// privileges or interface configuration on Linux.
pub const DEFAULT_VIP_RANGE: VipRange = VipRange {
    base: Ipv4Addr::new(127, 77, 0, 0),
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
            .ok_or_else(|| format!("{text:?} is not a CIDR range like 127.77.0.0/16"))?;
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
    fn debug_hides_every_token() {
        let info = ClusterInfo {
            id: "c1".to_owned(),
            manager_token: "LBMTKN-1-mmm".to_owned(),
            worker_token: "LBMTKN-1-www".to_owned(),
            control_token: "LBMCTL-ccc".to_owned(),
        };
        let text = format!("{info:?} {:?}", Some(&info));
        for secret in ["mmm", "www", "ccc"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("c1"), "{text}");
    }

    #[test]
    fn vip_range_parsing() {
        assert_eq!(VipRange::parse("127.77.0.0/16"), Ok(DEFAULT_VIP_RANGE));
        assert!(VipRange::parse("127.77.0.1/16").is_err());
        assert!(VipRange::parse("127.77.0.0/31").is_err());
        assert!(VipRange::parse("nope").is_err());
        let small = VipRange::parse("10.0.0.0/30").unwrap();
        assert_eq!(small.hosts().count(), 2);
    }
}
