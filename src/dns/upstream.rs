//! Names that are not the cluster's go to the node's own resolvers: the
//! `nameserver` lines of `/etc/resolv.conf` (without the responder's own
//! address, which would loop), or the `--dns-upstream` addresses.
//!
//! A query is sent as it came, on a socket of its own (UDP for a UDP
//! client, TCP for a TCP one), to each upstream in turn until one answers
//! with the query's id, each try bounded by [`TRY_TIMEOUT`]; the answer
//! goes back as the upstream sent it. No upstream answering: SERVFAIL.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream has to answer (a stub resolver retries after
/// about 5 s, so two upstreams fit in one of its tries).
pub const TRY_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest answer taken from an upstream over UDP (EDNS's usual size).
const MAX_UDP_ANSWER: usize = 4096;

/// The DNS port upstream resolvers listen on.
pub const DNS_PORT: u16 = 53; // fixed-port-ok: DNS

/// How the client asked, and so how the query goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The `nameserver` addresses of a resolv.conf text, without `own`.
pub fn from_resolv_conf(text: &str, own: IpAddr) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|word| word.parse::<IpAddr>().ok())
        .filter(|ip| *ip != own)
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .collect()
}

/// Sends `query` to each of `upstreams` in turn; the first answer with
/// the query's id, or `None` when none answered.
pub async fn forward(
    query: &[u8],
    upstreams: &[SocketAddr],
    transport: Transport,
) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for upstream in upstreams {
        let attempt = async {
            match transport {
                Transport::Udp => over_udp(query, *upstream).await,
                Transport::Tcp => over_tcp(query, *upstream).await,
            }
        };
        match tokio::time::timeout(TRY_TIMEOUT, attempt).await {
            Ok(Ok(answer)) if answer.get(..2) == Some(id) => return Some(answer),
            _ => continue,
        }
    }
    None
}

async fn over_udp(query: &[u8], upstream: SocketAddr) -> io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut answer = vec![0; MAX_UDP_ANSWER];
    let len = socket.recv(&mut answer).await?;
    answer.truncate(len);
    Ok(answer)
}

async fn over_tcp(query: &[u8], upstream: SocketAddr) -> io::Result<Vec<u8>> {
    let len = u16::try_from(query.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query over 64 KiB"))?;
    let mut stream = TcpStream::connect(upstream).await?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let answer_len = stream.read_u16().await?;
    let mut answer = vec![0; usize::from(answer_len)];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_without_our_own() {
        let text = "# generated\nsearch example.org\nnameserver 10.0.0.2\nnameserver  198.18.0.0\n\
                    nameserver fd00::1\nnameserver bogus\noptions ndots:2\n";
        assert_eq!(
            from_resolv_conf(text, "198.18.0.0".parse().unwrap()),
            [
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(), // fixed-port-ok: parsed, not bound
                "[fd00::1]:53".parse().unwrap()               // fixed-port-ok: parsed, not bound
            ]
        );
    }
}
