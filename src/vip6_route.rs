//! Makes the cluster's IPv6 VIP range local on this node: a `local` route
//! for the range on `lo`, as `ip -6 route replace local RANGE dev lo`
//! would add it, sent over rtnetlink (no `ip` binary in the image).
//!
//! IPv4 VIPs need none: 127.0.0.0/8 is local by itself. No IPv6 range is,
//! so without the route a packet to a v6 VIP would leave for the default
//! gateway. With it the kernel delivers the range's packets here, and the
//! VIP sockets, bound with `IPV6_FREEBIND` (`lbmesh_proxy::listeners`),
//! take them. The route needs `CAP_NET_ADMIN`; without it lbd logs a
//! warning once and the v6 VIPs answer only where an operator added the
//! route. The route stays when lbd stops: nodes sharing a machine share
//! it, and `replace` makes adding it again a no-op.
//!
//! Flow: the daemon calls [`LocalRange::ensure`] with each applied state's
//! range; it acts only when the range differs from the one made local.

use std::io;
use std::net::Ipv6Addr;

use raft_state::state::VipRangeV6;
use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};
use tracing::{info, warn};

/// `lo` is always interface 1 (`LOOPBACK_IFINDEX`), in every namespace.
const LOOPBACK_INDEX: u32 = 1;

// rtnetlink constants (linux/rtnetlink.h, linux/netlink.h).
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET6: u8 = 10;
const RT_TABLE_LOCAL: u8 = 255;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;

/// The v6 range this node made local, so each applied state costs a
/// comparison, not a syscall.
#[derive(Debug, Default)]
pub struct LocalRange {
    made: Option<VipRangeV6>,
}

impl LocalRange {
    /// Makes `range` local unless it already is (or is `None`: a cluster
    /// without v6 VIPs). A failure is logged, and tried again only when
    /// the range changes (it is set once per cluster).
    pub fn ensure(&mut self, range: Option<VipRangeV6>) {
        let Some(range) = range else { return };
        if self.made == Some(range) {
            return;
        }
        self.made = Some(range);
        match add_local_route(range) {
            Ok(()) => info!(%range, "IPv6 VIP range routed locally on lo"),
            Err(error) => warn!(
                %range,
                %error,
                "cannot route the IPv6 VIP range locally (needs CAP_NET_ADMIN); \
                 add it with `ip -6 route replace local {range} dev lo`"
            ),
        }
    }
}

/// Adds (or replaces) the `local` route of `range` on `lo` and reads the
/// kernel's acknowledgement.
fn add_local_route(range: VipRangeV6) -> io::Result<()> {
    let socket = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    let message = route_message(RTM_NEWROUTE, flags, range.base, range.prefix_len);
    rustix::net::sendto(
        &socket,
        &message,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )?;
    let mut answer = [0u8; 512];
    let (read, _) = rustix::net::recv(&socket, &mut answer[..], RecvFlags::empty())?;
    acknowledgement(&answer[..read.min(answer.len())])
}

/// An `RTM_*ROUTE` message: `nlmsghdr`, `rtmsg`, then the destination and
/// output interface attributes (each 4-byte aligned, in host byte order
/// but the address).
fn route_message(kind: u16, flags: u16, base: Ipv6Addr, prefix_len: u8) -> Vec<u8> {
    const LEN: u32 = 16 + 12 + 20 + 8;
    let mut message = Vec::with_capacity(LEN as usize);
    message.extend_from_slice(&LEN.to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    message.extend_from_slice(&[
        AF_INET6,
        prefix_len,
        0, // source length
        0, // tos
        RT_TABLE_LOCAL,
        RTPROT_STATIC,
        RT_SCOPE_HOST,
        RTN_LOCAL,
    ]);
    message.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    message.extend_from_slice(&20u16.to_ne_bytes());
    message.extend_from_slice(&RTA_DST.to_ne_bytes());
    message.extend_from_slice(&base.octets());
    message.extend_from_slice(&8u16.to_ne_bytes());
    message.extend_from_slice(&RTA_OIF.to_ne_bytes());
    message.extend_from_slice(&LOOPBACK_INDEX.to_ne_bytes());
    message
}

/// Reads the kernel's `NLMSG_ERROR` answer: error 0 is success, a negative
/// one an errno.
fn acknowledgement(answer: &[u8]) -> io::Result<()> {
    let field = |at: usize| -> io::Result<[u8; 4]> {
        answer
            .get(at..at + 4)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short netlink answer"))
    };
    let kind = u16::from_ne_bytes([field(4)?[0], field(4)?[1]]);
    if kind != NLMSG_ERROR {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink answer type {kind}"),
        ));
    }
    match i32::from_ne_bytes(field(16)?) {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(-errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_message_names_the_range_on_lo() {
        let message = route_message(RTM_NEWROUTE, NLM_F_REQUEST, "fd77::".parse().unwrap(), 112);
        assert_eq!(message.len(), 56);
        assert_eq!(u32::from_ne_bytes(message[..4].try_into().unwrap()), 56);
        assert_eq!(message[16..24], [10u8, 112, 0, 0, 255, 4, 254, 2]);
        assert_eq!(message[32..34], [0xfdu8, 0x77]);
        assert_eq!(message[52..56], 1u32.to_ne_bytes());
    }

    #[test]
    fn acknowledgements_read_the_errno() {
        let mut answer = [0u8; 36];
        answer[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert!(acknowledgement(&answer).is_ok());
        answer[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        let error = acknowledgement(&answer).expect_err("EPERM");
        assert_eq!(error.raw_os_error(), Some(1));
        assert!(acknowledgement(&answer[..8]).is_err(), "too short");
    }
}
