//! [`Client`]: one typed method per `/v1` route, on hyper's HTTP/1.1 client.
//!
//! # Flow
//!
//! ```text
//! typed method ─> path from percent-encoded segments ─> raw(): connect (TCP, then TLS when
//!   the client has a TLS configuration; or the node's Unix socket), HTTP/1.1 handshake,
//!   one request (Connection: close), the whole answer read ─┐ all under one timeout
//!   2xx ─> the body decoded as the route's answer type <────┤
//!   else ─> the server's ErrorBody as ApiError::Status <────┘
//! ```
//!
//! `streamed` (a followed log) reads the head under the timeout and hands
//! the body over as it arrives; dropping it closes the connection.
//!
//! One request per connection: lbctl sends a few requests per command and
//! the daemon forwards a write now and then, so a pool would buy nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use lb_config::ServiceSpec;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use crate::answers::{CertificateAnswer, ClusterInfo, JoinToken, Member, Node, Removed, Role};
use crate::answers::{RenewAnswer, Service, ServiceStatus, Task, TaskLogs};
use crate::error::{ApiError, ErrorBody};
use crate::requests::IDEMPOTENCY_KEY;
use crate::requests::{CertificateRequest, JoinRequest, NodeUpdate, RenewRequest, Scale};

/// Longest wait for a whole answer: a write that reaches a node during an
/// election waits there for a leader (up to 10 s) before it is forwarded.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What stays unencoded in a path segment: RFC 3986's unreserved
/// characters. Everything else, `/` and space included, is `%XX`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A client of one node's API.
#[derive(Debug, Clone)]
pub struct Client {
    /// `host:port`, without the scheme: where to connect and the `Host`
    /// header.
    authority: String,
    /// The control token, sent as `Authorization: Bearer`.
    token: Option<String>,
    /// TLS to the node (what it trusts, and what it presents), or plain.
    tls: Option<Arc<ClientConfig>>,
    /// The node's local socket instead of TCP.
    socket: Option<PathBuf>,
}

impl Client {
    /// A client of `host` (`host:port` or `http://host:port`).
    pub fn new(host: &str, token: Option<String>) -> Result<Self, ApiError> {
        let authority = host.strip_prefix("http://").unwrap_or(host);
        let authority = authority.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(ApiError::InvalidHost {
                host: host.to_owned(),
            });
        }
        Ok(Self {
            authority: authority.to_owned(),
            token,
            tls: None,
            socket: None,
        })
    }

    /// The same client over TLS with `config`: a node's own credentials
    /// (node to node), or lbctl's pinned CA.
    pub fn with_tls(mut self, config: Arc<ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// A client of the node's local Unix socket (`DATA_DIR/lbd.sock`),
    /// which needs no token: its mode lets only lbd's user in.
    pub fn local(socket: PathBuf) -> Self {
        Self {
            authority: "localhost".to_owned(),
            token: None,
            tls: None,
            socket: Some(socket),
        }
    }

    /// `POST /v1/cluster/certificate`: a joiner's first certificate; the
    /// join token authenticates.
    pub async fn certificate(
        &self,
        request: &CertificateRequest,
    ) -> Result<CertificateAnswer, ApiError> {
        let path = v1_path(&["cluster", "certificate"]);
        self.call(Method::POST, path, encode(request)?).await
    }

    /// `POST /v1/cluster/renew`: a new certificate for the node whose
    /// certificate this client presents.
    pub async fn renew(&self, csr: &str) -> Result<RenewAnswer, ApiError> {
        let path = v1_path(&["cluster", "renew"]);
        let request = RenewRequest {
            csr: csr.to_owned(),
        };
        self.call(Method::POST, path, encode(&request)?).await
    }

    /// `GET /v1/cluster`.
    pub async fn cluster_info(&self) -> Result<ClusterInfo, ApiError> {
        self.call(Method::GET, v1_path(&["cluster"]), Bytes::new())
            .await
    }

    /// `GET /v1/cluster/join-token/{role}`.
    pub async fn join_token(&self, role: Role) -> Result<JoinToken, ApiError> {
        let path = v1_path(&["cluster", "join-token", role.as_str()]);
        self.call(Method::GET, path, Bytes::new()).await
    }

    /// `POST /v1/cluster/join-token/{role}/rotate`: the new token.
    pub async fn rotate_join_token(&self, role: Role) -> Result<JoinToken, ApiError> {
        let path = v1_path(&["cluster", "join-token", role.as_str(), "rotate"]);
        self.call(Method::POST, path, Bytes::new()).await
    }

    /// `POST /v1/cluster/join`; the join token authenticates.
    pub async fn join(&self, request: &JoinRequest) -> Result<Member, ApiError> {
        let path = v1_path(&["cluster", "join"]);
        self.call(Method::POST, path, encode(request)?).await
    }

    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<Vec<Node>, ApiError> {
        self.call(Method::GET, v1_path(&["nodes"]), Bytes::new())
            .await
    }

    /// `GET /v1/nodes/{name or id}`.
    pub async fn node(&self, name: &str) -> Result<Node, ApiError> {
        self.call(Method::GET, v1_path(&["nodes", name]), Bytes::new())
            .await
    }

    /// `GET /v1/nodes/{name or id}/tasks`.
    pub async fn node_tasks(&self, name: &str) -> Result<Vec<Task>, ApiError> {
        let path = v1_path(&["nodes", name, "tasks"]);
        self.call(Method::GET, path, Bytes::new()).await
    }

    /// `POST /v1/nodes/{name or id}`.
    pub async fn update_node(&self, name: &str, update: &NodeUpdate) -> Result<Member, ApiError> {
        let path = v1_path(&["nodes", name]);
        self.call(Method::POST, path, encode(update)?).await
    }

    /// `DELETE /v1/nodes/{name or id}`; `force` removes a node that is not
    /// down.
    pub async fn remove_node(&self, name: &str, force: bool) -> Result<Removed, ApiError> {
        let mut path = v1_path(&["nodes", name]);
        if force {
            path.push_str("?force=true");
        }
        self.call(Method::DELETE, path, Bytes::new()).await
    }

    /// `GET /v1/services`.
    pub async fn services(&self) -> Result<Vec<ServiceStatus>, ApiError> {
        self.call(Method::GET, v1_path(&["services"]), Bytes::new())
            .await
    }

    /// `GET /v1/services/{name}`.
    pub async fn service(&self, name: &str) -> Result<ServiceStatus, ApiError> {
        let path = v1_path(&["services", name]);
        self.call(Method::GET, path, Bytes::new()).await
    }

    /// `GET /v1/services/{name}/tasks`.
    pub async fn service_tasks(&self, name: &str) -> Result<Vec<Task>, ApiError> {
        let path = v1_path(&["services", name, "tasks"]);
        self.call(Method::GET, path, Bytes::new()).await
    }

    /// `POST /v1/services`.
    pub async fn create_service(&self, spec: &ServiceSpec) -> Result<Service, ApiError> {
        let path = v1_path(&["services"]);
        self.call(Method::POST, path, encode(spec)?).await
    }

    /// `PUT /v1/services/{spec.name}`: the whole new spec.
    pub async fn update_service(&self, spec: &ServiceSpec) -> Result<Service, ApiError> {
        let path = v1_path(&["services", &spec.name]);
        self.call(Method::PUT, path, encode(spec)?).await
    }

    /// `POST /v1/services/{name}/scale`.
    pub async fn scale_service(&self, name: &str, replicas: i64) -> Result<Service, ApiError> {
        let path = v1_path(&["services", name, "scale"]);
        self.call(Method::POST, path, encode(&Scale { replicas })?)
            .await
    }

    /// `POST /v1/services/{name}/rollback`.
    pub async fn rollback_service(&self, name: &str) -> Result<Service, ApiError> {
        let path = v1_path(&["services", name, "rollback"]);
        self.call(Method::POST, path, Bytes::new()).await
    }

    /// `GET /v1/tasks/{id}/logs[?tail=N]`.
    pub async fn task_logs(&self, id: &str, tail: Option<usize>) -> Result<TaskLogs, ApiError> {
        let mut path = v1_path(&["tasks", id, "logs"]);
        if let Some(tail) = tail {
            path.push_str(&format!("?tail={tail}"));
        }
        self.call(Method::GET, path, Bytes::new()).await
    }

    /// `DELETE /v1/services/{name}`.
    pub async fn remove_service(&self, name: &str) -> Result<Removed, ApiError> {
        let path = v1_path(&["services", name]);
        self.call(Method::DELETE, path, Bytes::new()).await
    }

    /// Sends `body` to `path_and_query` (already encoded), with
    /// `idempotency_key` as the [`IDEMPOTENCY_KEY`] header if given, and
    /// returns the answer as it came, whatever its status: for passing a
    /// request on unchanged.
    pub async fn raw(
        &self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<(StatusCode, Bytes), ApiError> {
        let request = self.request(method, path_and_query, body, idempotency_key)?;
        let exchange = async {
            let stream = self.connect().await?;
            self.exchange(stream, request).await
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(self.timeout()))
    }

    /// `GET path_and_query` whose answer's body is read as it arrives,
    /// without a deadline (a followed log): connecting and the answer's
    /// head are under the usual timeout, the body is the caller's to read
    /// for as long as it lasts. Dropping the [`Streamed`] closes the
    /// connection.
    pub async fn streamed(&self, path_and_query: &str) -> Result<Streamed, ApiError> {
        let request = self.request(Method::GET, path_and_query, Bytes::new(), None)?;
        let head = async {
            let stream = self.connect().await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|source| self.exchange_error(source))?;
            let connection = AbortOnDrop(tokio::spawn(async move {
                let _ = connection.await;
            }));
            let response = sender
                .send_request(request)
                .await
                .map_err(|source| self.exchange_error(source))?;
            Ok(Streamed {
                status: response.status(),
                body: response.into_body(),
                _connection: connection,
            })
        };
        tokio::time::timeout(TIMEOUT, head)
            .await
            .unwrap_or_else(|_| Err(self.timeout()))
    }

    /// `GET /v1/tasks/{id}/logs?follow=true[&tail=N]`: the task's output
    /// as it grows, until the task stops.
    pub async fn follow_task_logs(
        &self,
        id: &str,
        tail: Option<usize>,
    ) -> Result<Streamed, ApiError> {
        let mut path = v1_path(&["tasks", id, "logs"]);
        path.push_str("?follow=true");
        if let Some(tail) = tail {
            path.push_str(&format!("&tail={tail}"));
        }
        let mut streamed = self.streamed(&path).await?;
        if streamed.status.is_success() {
            return Ok(streamed);
        }
        // An error answer is one small JSON body.
        let mut answer = Vec::new();
        let read = async {
            while let Some(chunk) = streamed.next_chunk().await {
                answer.extend_from_slice(&chunk?);
            }
            Ok::<(), ApiError>(())
        };
        tokio::time::timeout(TIMEOUT, read)
            .await
            .unwrap_or_else(|_| Err(self.timeout()))?;
        Err(status_error(streamed.status, &answer))
    }

    /// A request to this node, with its headers.
    fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<Request<Full<Bytes>>, ApiError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(HOST, &self.authority)
            .header(CONNECTION, "close")
            .header(CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(key) = idempotency_key {
            request = request.header(IDEMPOTENCY_KEY, key);
        }
        request
            .body(Full::new(body))
            .map_err(|source| ApiError::Request {
                path: path_and_query.to_owned(),
                source,
            })
    }

    /// A connection to the node: its local socket, TCP, or TLS over TCP.
    async fn connect(&self) -> Result<Box<dyn Connection>, ApiError> {
        let connect_error = |source| ApiError::Connect {
            host: self.authority.clone(),
            source,
        };
        if let Some(socket) = &self.socket {
            let stream = UnixStream::connect(socket).await.map_err(connect_error)?;
            return Ok(Box::new(stream));
        }
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(connect_error)?;
        let Some(config) = &self.tls else {
            return Ok(Box::new(stream));
        };
        let name = ServerName::try_from(lbmesh_tls::API_SERVER_NAME)
            .map_err(|e| connect_error(std::io::Error::other(e)))?;
        let stream = TlsConnector::from(config.clone())
            .connect(name, stream)
            .await
            .map_err(|source| ApiError::Tls {
                host: self.authority.clone(),
                source,
            })?;
        Ok(Box::new(stream))
    }

    /// One request and its whole answer over an open connection.
    async fn exchange(
        &self,
        stream: Box<dyn Connection>,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), ApiError> {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| self.exchange_error(source))?;
        let answer = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok((status, body))
        };
        // The connection does the I/O while the answer is awaited; with
        // `Connection: close` it ends once the answer is read. Its own
        // error, if any, is the answer's too.
        let (answer, _connection) = tokio::join!(answer, connection);
        answer.map_err(|source| self.exchange_error(source))
    }

    fn timeout(&self) -> ApiError {
        ApiError::Timeout {
            host: self.authority.clone(),
            after: TIMEOUT,
        }
    }

    /// A request whose 2xx answer is a `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Bytes,
    ) -> Result<T, ApiError> {
        let (status, answer) = self.raw(method, &path, body, None).await?;
        if !status.is_success() {
            return Err(status_error(status, &answer));
        }
        serde_json::from_slice(&answer).map_err(|source| ApiError::BadAnswer {
            host: self.authority.clone(),
            path,
            source,
        })
    }

    fn exchange_error(&self, source: hyper::Error) -> ApiError {
        ApiError::Exchange {
            host: self.authority.clone(),
            source,
        }
    }
}

/// What the client talks over: a Unix socket, TCP or TLS.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection for T {}

/// An answer whose body is read as it arrives ([`Client::streamed`]).
/// Dropping it closes the connection, so the server sees the client go.
pub struct Streamed {
    pub status: StatusCode,
    body: Incoming,
    /// The task that does the connection's I/O.
    _connection: AbortOnDrop,
}

impl Streamed {
    /// The body's next bytes; `None` once the server ended it.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ApiError>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => return Some(Ok(data)),
                    // Trailers carry nothing lbmesh sends.
                    Err(_) => continue,
                },
                Err(source) => return Some(Err(ApiError::Stream { source })),
            }
        }
    }
}

/// A spawned task that ends when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `/v1/` and the segments, each percent-encoded: a name with a space or a
/// `/` stays one segment.
fn v1_path(segments: &[&str]) -> String {
    let mut path = String::from("/v1");
    for segment in segments {
        path.push('/');
        path.extend(utf8_percent_encode(segment, SEGMENT));
    }
    path
}

fn encode(body: &impl Serialize) -> Result<Bytes, ApiError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(ApiError::Encode)
}

/// An error status as [`ApiError::Status`]: the server's field and reason,
/// or the raw answer when it is not an [`ErrorBody`] (a proxy's page, an
/// older server).
fn status_error(status: StatusCode, answer: &[u8]) -> ApiError {
    match serde_json::from_slice::<ErrorBody>(answer) {
        Ok(ErrorBody { error }) => ApiError::Status {
            status: status.as_u16(),
            field: error.field,
            reason: error.reason,
        },
        Err(_) => ApiError::Status {
            status: status.as_u16(),
            field: "response".to_owned(),
            reason: format!(
                "HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(answer)
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn path_segments_are_encoded_one_by_one() {
        assert_eq!(v1_path(&["services", "a b"]), "/v1/services/a%20b");
        assert_eq!(
            v1_path(&["services", "app/tasks"]),
            "/v1/services/app%2Ftasks"
        );
        assert_eq!(
            v1_path(&["services", "web-1.x_y~", "tasks"]),
            "/v1/services/web-1.x_y~/tasks"
        );
        assert_eq!(v1_path(&["nodes", "é?#%"]), "/v1/nodes/%C3%A9%3F%23%25");
    }

    #[test]
    fn hosts_with_or_without_scheme() {
        let plain = Client::new("127.0.0.1:9900", None).expect("host:port");
        assert_eq!(plain.authority, "127.0.0.1:9900");
        let scheme = Client::new("http://127.0.0.1:9900/", None).expect("http://");
        assert_eq!(scheme.authority, "127.0.0.1:9900");
        for bad in ["", "http://", "https://127.0.0.1:9900", "127.0.0.1:9900/v1"] {
            assert!(
                matches!(Client::new(bad, None), Err(ApiError::InvalidHost { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    /// Accepts one connection on 127.0.0.1:0, answers it with `answer` and
    /// hands back the request head it read.
    async fn one_shot_server(answer: &'static [u8]) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let served = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).await.expect("read head");
                head.push(byte[0]);
            }
            stream.write_all(answer).await.expect("write answer");
            String::from_utf8(head).expect("utf-8 head")
        });
        (addr, served)
    }

    #[tokio::test]
    async fn an_error_answer_names_field_and_reason() {
        let (addr, served) = one_shot_server(
            b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n\
              {\"error\": {\"field\": \"name\", \"reason\": \"no service named x\"}}",
        )
        .await;
        let client = Client::new(&addr, Some("secret".to_owned())).expect("client");
        let error = client.service("a b").await.expect_err("a 404");
        assert_eq!(error.to_string(), "name: no service named x");
        assert!(matches!(error, ApiError::Status { status: 404, .. }));
        let head = served.await.expect("server");
        assert!(
            head.starts_with("GET /v1/services/a%20b HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("authorization: Bearer secret\r\n"), "{head}");
        assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");
    }

    #[tokio::test]
    async fn a_chunked_answer_is_decoded() {
        let (addr, served) = one_shot_server(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              a\r\n{\"removed\"\r\n8\r\n: \"web\"}\r\n0\r\n\r\n",
        )
        .await;
        let client = Client::new(&format!("http://{addr}"), None).expect("client");
        let removed = client.remove_node("web", true).await.expect("removed");
        assert_eq!(removed.removed, "web");
        let head = served.await.expect("server");
        assert!(
            head.starts_with("DELETE /v1/nodes/web?force=true HTTP/1.1\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn a_body_of_another_shape_is_a_bad_answer() {
        let (addr, _served) =
            one_shot_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                .await;
        let client = Client::new(&addr, None).expect("client");
        let error = client.cluster_info().await.expect_err("not a ClusterInfo");
        assert!(matches!(error, ApiError::BadAnswer { .. }), "{error}");
    }

    #[tokio::test]
    async fn nothing_listening_names_the_host() {
        // fixed-port-ok: port 1 on loopback, where nothing listens.
        let client = Client::new("127.0.0.1:1", None).expect("client");
        let error = client.services().await.expect_err("refused");
        assert!(
            error
                .to_string()
                .starts_with("cannot connect to 127.0.0.1:1: "),
            "{error}"
        );
    }
}
