//! UDP test backends and clients: an echo server that remembers which
//! flows (by a tag its clients put in each payload) it served.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Bytes at the start of each payload that name its flow: the echo
/// backends record them.
pub const TAG: usize = 4;

/// A UDP echo server on 127.0.0.1 that answers every datagram with itself
/// and records the tag and the source of each.
pub struct UdpEcho {
    pub addr: SocketAddr,
    /// Tag → datagrams seen.
    tags: Arc<Mutex<HashMap<[u8; TAG], usize>>>,
    /// Source addresses (lbd's session sockets) seen.
    sources: Arc<Mutex<HashSet<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl UdpEcho {
    pub async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp echo");
        let addr = socket.local_addr().expect("echo address");
        let tags = Arc::new(Mutex::new(HashMap::new()));
        let sources = Arc::new(Mutex::new(HashSet::new()));
        let (seen_tags, seen_sources) = (Arc::clone(&tags), Arc::clone(&sources));
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 65_536];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buffer).await else {
                    continue;
                };
                if len >= TAG {
                    let mut tag = [0u8; TAG];
                    tag.copy_from_slice(&buffer[..TAG]);
                    *seen_tags.lock().expect("tags").entry(tag).or_insert(0) += 1;
                }
                seen_sources.lock().expect("sources").insert(from);
                let _ = socket.send_to(&buffer[..len], from).await;
            }
        });
        Self {
            addr,
            tags,
            sources,
            task,
        }
    }

    /// The tags this backend has seen.
    pub fn tags(&self) -> HashSet<[u8; TAG]> {
        self.tags.lock().expect("tags").keys().copied().collect()
    }

    /// Datagrams it has echoed.
    pub fn datagrams(&self) -> usize {
        self.tags.lock().expect("tags").values().sum()
    }

    /// Distinct source addresses: one per lbd session.
    pub fn sources(&self) -> usize {
        self.sources.lock().expect("sources").len()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `payload` from `client` to `to` and waits up to `wait` for a
/// datagram back from `to`; `None` when none came.
pub async fn udp_exchange(
    client: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    client.send_to(payload, to).await.ok()?;
    let mut buffer = vec![0u8; 65_536];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (len, from) = tokio::time::timeout_at(deadline, client.recv_from(&mut buffer))
            .await
            .ok()?
            .ok()?;
        // A late echo of an earlier try from another address is skipped.
        if from == to {
            return Some(buffer[..len].to_vec());
        }
    }
}

/// A port free for UDP on every one of `ips` a moment ago.
pub fn free_udp_port_on(ips: &[IpAddr]) -> u16 {
    for _ in 0..100 {
        let port = fastrand::u16(20_000..40_000);
        if ips
            .iter()
            .all(|ip| std::net::UdpSocket::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no common free udp port");
}
