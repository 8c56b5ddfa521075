//! PROXY protocol headers (HAProxy's spec, versions 1 and 2) that tell a
//! backend the client's real address, which a TCP proxy otherwise hides.
//!
//! Headers are written into a fixed stack buffer: no allocation per connection.

use std::net::SocketAddr;

use lb_config::ProxyProtocol;

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];

/// Longest header we write: a v1 line for two full IPv6 addresses is 104
/// bytes; a v2 header for IPv6 is 52.
pub const MAX_HEADER_LEN: usize = 108;

/// A header ready to send, held on the stack.
pub struct Header {
    bytes: [u8; MAX_HEADER_LEN],
    len: usize,
}

impl Header {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The header for a connection from `client` to `local()` (the address the
/// client connected to), or `None` when the service sends none. `local` is
/// asked only when a header is written: finding the real address behind a
/// wildcard listener costs a system call.
pub fn header(
    version: ProxyProtocol,
    client: SocketAddr,
    local: impl FnOnce() -> SocketAddr,
) -> Option<Header> {
    match version {
        ProxyProtocol::None => None,
        ProxyProtocol::V1 => Some(v1(client, local())),
        ProxyProtocol::V2 => Some(v2(client, local())),
    }
}

fn v1(client: SocketAddr, local: SocketAddr) -> Header {
    use std::io::Write;
    let mut bytes = [0u8; MAX_HEADER_LEN];
    let mut cursor = std::io::Cursor::new(&mut bytes[..]);
    // The addresses of one header must be of one family; a v4 client on a
    // v6 listener (mapped address) is reported as v4 when possible.
    let (src, dst) = (canonical(client), canonical(local));
    let written = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => write!(
            cursor,
            "PROXY TCP4 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => write!(
            cursor,
            "PROXY TCP6 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
        _ => write!(cursor, "PROXY UNKNOWN\r\n"),
    };
    // The buffer is sized for the longest line, so the write cannot run out.
    debug_assert!(written.is_ok());
    let len = cursor.position() as usize;
    Header { bytes, len }
}

fn v2(client: SocketAddr, local: SocketAddr) -> Header {
    let mut bytes = [0u8; MAX_HEADER_LEN];
    bytes[..12].copy_from_slice(&V2_SIGNATURE);
    bytes[12] = 0x21; // version 2, command PROXY
    let len = match (canonical(client), canonical(local)) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            bytes[13] = 0x11; // AF_INET, STREAM
            bytes[14..16].copy_from_slice(&12u16.to_be_bytes());
            bytes[16..20].copy_from_slice(&s.ip().octets());
            bytes[20..24].copy_from_slice(&d.ip().octets());
            bytes[24..26].copy_from_slice(&s.port().to_be_bytes());
            bytes[26..28].copy_from_slice(&d.port().to_be_bytes());
            28
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            bytes[13] = 0x21; // AF_INET6, STREAM
            bytes[14..16].copy_from_slice(&36u16.to_be_bytes());
            bytes[16..32].copy_from_slice(&s.ip().octets());
            bytes[32..48].copy_from_slice(&d.ip().octets());
            bytes[48..50].copy_from_slice(&s.port().to_be_bytes());
            bytes[50..52].copy_from_slice(&d.port().to_be_bytes());
            52
        }
        _ => {
            bytes[12] = 0x20; // version 2, command LOCAL: no address block
            bytes[13] = 0x00;
            16
        }
    };
    Header { bytes, len }
}

/// A v4-mapped v6 address as v4, so both ends of a header share a family.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_tcp4_line() {
        let h = header(
            ProxyProtocol::V1,
            "192.0.2.1:56324".parse().unwrap(),
            || "198.51.100.7:443".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(
            h.as_bytes(),
            b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"
        );
    }

    #[test]
    fn v1_longest_tcp6_line_fits() {
        let a = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535"
            .parse()
            .unwrap();
        let h = header(ProxyProtocol::V1, a, || a).unwrap();
        assert!(h.as_bytes().ends_with(b"65535 65535\r\n"));
        assert_eq!(h.as_bytes().len(), 104);
    }

    #[test]
    fn v2_tcp4_block() {
        let h = header(ProxyProtocol::V2, "10.1.2.3:1000".parse().unwrap(), || {
            "10.9.8.7:80".parse().unwrap()
        })
        .unwrap();
        let b = h.as_bytes();
        assert_eq!(&b[..12], &V2_SIGNATURE);
        assert_eq!(&b[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&b[16..28], &[10, 1, 2, 3, 10, 9, 8, 7, 0x03, 0xe8, 0, 80]);
    }

    #[test]
    fn mixed_families_are_canonicalised() {
        let h = header(
            ProxyProtocol::V1,
            "[::ffff:10.0.0.1]:5".parse().unwrap(),
            || "10.0.0.2:6".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(h.as_bytes(), b"PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n");
        assert!(header(
            ProxyProtocol::None,
            "1.1.1.1:1".parse().unwrap(),
            || unreachable!("no header, so no local address is needed")
        )
        .is_none());
    }
}
