//! The tests' one HTTP/1 client: a request on a new connection, read to
//! the server's close, every step (connect, write, read) bounded. The
//! shapes below are thin views of one exchange.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::wait::WAIT;

/// Sends `request` to `addr` on a new connection and reads until the
/// server closes. Returns what arrived, and the first error on the way: a
/// server that answers and closes before reading the whole request (a 413)
/// can make the write fail or end the read with a reset, after its answer
/// arrived.
fn talk(addr: SocketAddr, request: &[u8], timeout: Duration) -> (String, Option<String>) {
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(stream) => stream,
        Err(e) => return (String::new(), Some(format!("connect {addr}: {e}"))),
    };
    let mut failure = None;
    if let Err(e) = stream
        .set_read_timeout(Some(timeout))
        .and(stream.set_write_timeout(Some(timeout)))
    {
        return (String::new(), Some(e.to_string()));
    }
    if let Err(e) = stream.write_all(request) {
        failure = Some(format!("send to {addr}: {e}"));
    }
    let mut response = Vec::new();
    if let Err(e) = stream.read_to_end(&mut response) {
        failure.get_or_insert(format!("read from {addr}: {e}"));
    }
    (String::from_utf8_lossy(&response).into_owned(), failure)
}

/// Sends `request` to `addr` on a new connection and returns everything
/// the server sent until it closed, or the first error.
pub fn exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<String, String> {
    match talk(addr, request, timeout) {
        (response, None) => Ok(response),
        (_, Some(error)) => Err(error),
    }
}

/// The status code of a raw response (0 if there is none).
pub fn status_of(response: &str) -> u16 {
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The body of a raw response.
pub fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\r\n").into_bytes()
}

fn parse_addr(addr: &str) -> SocketAddr {
    addr.parse().expect("a test address ip:port")
}

/// Sends `request` over TLS to lbd's API at `addr`, trusting the CA
/// certificate `ca_pem` (a node's `ca.crt`), and returns everything the
/// server sent until it closed, or the first error (`connect ...` when
/// nothing reached the server).
pub fn tls_exchange(
    addr: SocketAddr,
    ca_pem: &str,
    request: &[u8],
    timeout: Duration,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| format!("CA: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|e| format!("CA: {e}"))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("api.lbmesh.internal").map_err(|e| e.to_string())?;
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(|e| e.to_string())?;
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and(stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    tls.write_all(request)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut response = Vec::new();
    let read = tls.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    match read {
        Ok(_) => Ok(response),
        // A server that closes without a TLS close_notify still answered.
        Err(_) if !response.is_empty() => Ok(response),
        Err(e) => Err(format!("read from {addr}: {e}")),
    }
}

/// [`tls_exchange`] of raw bytes (a malformed or oversized request): the
/// raw response, whatever arrived; empty when nothing did.
pub fn tls_request(addr: &str, ca_pem: &str, request: &[u8]) -> String {
    tls_exchange(parse_addr(addr), ca_pem, request, WAIT).unwrap_or_default()
}

/// Sends raw bytes (a malformed or oversized request) and returns the raw
/// response, whatever arrived before an error; empty when nothing did.
pub fn raw_request(addr: &str, request: &[u8]) -> String {
    talk(parse_addr(addr), request, WAIT).0
}

/// A GET, blocking: the status and the whole raw response.
pub fn http_get_blocking(addr: &str, path: &str) -> (u16, String) {
    let response = raw_request(addr, &get_request(path));
    (status_of(&response), response)
}

/// A GET from an async test: the status and the body. Panics when the
/// server does not answer in time.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = get_request(path);
    let response = tokio::task::spawn_blocking(move || exchange(addr, &request, WAIT))
        .await
        .expect("the request's thread")
        .expect("an answer in time");
    let status = status_of(&response);
    assert_ne!(status, 0, "no HTTP status line from {addr}: {response:?}");
    (status, body_of(&response).to_owned())
}

/// One request through the mesh: the body of a 200 answer, or why there
/// was none.
pub fn get(addr: SocketAddr) -> Result<String, String> {
    let response = exchange(
        addr,
        b"GET / HTTP/1.0\r\nHost: mesh\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: no HTTP answer: {response:?}"))?;
    if status_of(head) != 200 {
        return Err(format!("{addr}: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.trim().to_owned())
}
