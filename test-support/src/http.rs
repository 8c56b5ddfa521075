//! The tests' one HTTP/1 client: a request on a new connection, read to
//! the server's close, every step bounded by `WAIT`. The shapes below are
//! thin views of [`exchange`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::wait::WAIT;

/// Sends `request` to `addr` on a new connection and returns everything
/// the server sent until it closed.
pub fn exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    Ok(response)
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

/// Sends raw bytes (a malformed or oversized request) and returns the raw
/// response, empty when the server closed without one.
pub fn raw_request(addr: &str, request: &[u8]) -> String {
    exchange(parse_addr(addr), request, WAIT).unwrap_or_default()
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
