//! `GET /v1/tasks/{id}/logs[?tail=N][&follow=true]`: a task's output, from
//! any node.
//!
//! ```text
//! task id ─> the registry's task record ─> its node is this one?
//!   yes: process task (runtime id pid:N) ─> DATA_DIR/tasks/<id>.log (the process runtime's file)
//!        docker task ─> the engine's container logs (stdout and stderr)
//!        ─> the last N lines with ?tail=N ─> TaskLogs
//!        follow: the last N lines (all without a tail), then what the task writes, as it
//!                comes, in a chunked text/plain answer:
//!                process task: the file read every FOLLOW_POLL, until the registry
//!                              says the task ended (then what is left of the file)
//!                docker task:  the engine's logs with follow=true, until the container stops
//!   no:  the same request, with the caller's token, to that node's API (mutual TLS);
//!        follow: that node's answer relayed chunk by chunk
//! ```
//!
//! A task without a runtime id (pending, never started) has no output yet;
//! a task whose node is gone from the registry cannot be asked.
//!
//! A followed log is a body stream, not a spawned task: it lives exactly as
//! long as hyper holds the answer's body, which it drops when the client
//! goes (its connection's EOF ends the connection). The relaying node's
//! stream owns its connection to the task's node, so dropping it closes that
//! connection and the task's node drops its stream in turn. Every open
//! stream is counted ([`open_log_streams`]: `lbmesh_api_log_streams`).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use lbmesh_api::{Client, Streamed, TaskLogs};
use raft_state::registry::RegistryNode;
use raft_state::task::TaskRecord;
use tokio::io::AsyncReadExt;

use super::respond::{error, full, json_response, ApiResponse};
use super::routes::Context;

/// How often a followed process log looks for more output: a tail's
/// delay, one read of a file that has not grown.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Most bytes a followed log sends in one chunk.
const FOLLOW_CHUNK: usize = 64 * 1024;

/// Followed logs this node serves now (its own tasks' and relayed ones).
static OPEN_LOG_STREAMS: AtomicUsize = AtomicUsize::new(0);

/// How many followed logs this node serves now.
pub fn open_log_streams() -> usize {
    OPEN_LOG_STREAMS.load(Ordering::Relaxed)
}

/// One open followed log, counted from its making to its drop.
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        OPEN_LOG_STREAMS.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        OPEN_LOG_STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the query asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct LogsQuery {
    /// The last N lines only.
    tail: Option<usize>,
    /// Keep sending what the task writes.
    follow: bool,
}

/// Serves one logs request for the task `id`.
pub async fn task_logs(
    context: &Context<'_>,
    id: &str,
    query: &str,
    token: Option<String>,
) -> ApiResponse {
    let asked = match logs_query(query) {
        Ok(asked) => asked,
        Err((field, reason)) => return error(StatusCode::BAD_REQUEST, field, reason),
    };
    let state = context.registry.local().state;
    let Some(task) = state.tasks().get(id) else {
        return error(StatusCode::NOT_FOUND, "task", format!("no task {id:?}"));
    };
    let Some(node) = task.node else {
        return error(
            StatusCode::NOT_FOUND,
            "task",
            "the task is not placed on a node yet",
        );
    };
    if node != context.registry.id {
        let Some(api_addr) = state.nodes.get(&node).map(|n| n.api_addr) else {
            return error(StatusCode::NOT_FOUND, "task", "the task's node is gone");
        };
        return forward(context, api_addr, id, &asked, token).await;
    }
    let tasks_dir = context.pki.data_dir().join("tasks");
    if asked.follow {
        return match follow_local(context.registry, task, &tasks_dir, asked.tail).await {
            Ok(stream) => streamed(stream),
            Err(reason) => error(StatusCode::SERVICE_UNAVAILABLE, "logs", reason),
        };
    }
    match read_local(task, &tasks_dir, asked.tail).await {
        Ok(logs) => json_response(
            StatusCode::OK,
            &TaskLogs {
                task: task.id.clone(),
                logs,
            },
        ),
        Err(reason) => error(StatusCode::SERVICE_UNAVAILABLE, "logs", reason),
    }
}

/// `tail=N` and `follow=true|false` from the query; the error names the
/// parameter.
fn logs_query(query: &str) -> Result<LogsQuery, (&'static str, String)> {
    let mut asked = LogsQuery::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("tail", n)) => {
                let n = n
                    .parse()
                    .map_err(|_| ("tail", format!("{n:?} is not a number of lines")))?;
                asked.tail = Some(n);
            }
            Some(("follow", flag)) => {
                asked.follow = match flag {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(("follow", format!("{flag:?} is not true or false"))),
                };
            }
            _ => return Err(("query", format!("unknown query parameter {pair:?}"))),
        }
    }
    Ok(asked)
}

/// A `text/plain` answer sent as `stream` makes it, counted while open.
fn streamed(
    stream: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) -> ApiResponse {
    let open = OpenStream::new();
    let frames = stream.map(move |chunk| {
        // The count goes with the stream, whoever drops it.
        let _open = &open;
        chunk.map(Frame::data)
    });
    let mut response = hyper::Response::new(StreamBody::new(frames).boxed_unsync());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The request as it came, to the node that runs the task.
async fn forward(
    context: &Context<'_>,
    api_addr: std::net::SocketAddr,
    id: &str,
    asked: &LogsQuery,
    token: Option<String>,
) -> ApiResponse {
    let client = match Client::new(&api_addr.to_string(), token) {
        Ok(client) => client.with_tls(context.pki.credentials().client()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "node", e.to_string()),
    };
    if asked.follow {
        return match client.follow_task_logs(id, asked.tail).await {
            Ok(upstream) => streamed(relay(upstream)),
            // The task's node's own refusal, passed on as it said it.
            Err(lbmesh_api::ApiError::Status {
                status,
                field,
                reason,
            }) => error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                &field,
                reason,
            ),
            Err(e) => error(
                StatusCode::BAD_GATEWAY,
                "node",
                format!("the task's node at {api_addr} did not answer: {e}"),
            ),
        };
    }
    let mut path = format!("/v1/tasks/{id}/logs");
    if let Some(tail) = asked.tail {
        path.push_str(&format!("?tail={tail}"));
    }
    match client.raw(Method::GET, &path, Bytes::new(), None).await {
        Ok((status, body)) => {
            let mut response = hyper::Response::new(full(body));
            *response.status_mut() = status;
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            "node",
            format!("the task's node at {api_addr} did not answer: {e}"),
        ),
    }
}

/// The output of a task this node runs.
async fn read_local(
    task: &TaskRecord,
    tasks_dir: &Path,
    tail: Option<usize>,
) -> Result<String, String> {
    let Some(runtime_id) = task.runtime_id.as_deref() else {
        return Ok(String::new());
    };
    let text = if runtime_id.starts_with("pid:") {
        let path = tasks_dir.join(format!("{}.log", task.id));
        match tokio::fs::read(&path).await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            // The runtime removes the file with the stopped task.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    } else {
        docker_logs(runtime_id, tail).await?
    };
    Ok(last_lines(&text, tail))
}

/// A followed log of a task this node runs: its last `tail` lines (all
/// without a tail), then what it writes until it stops.
async fn follow_local(
    registry: &Arc<RegistryNode>,
    task: &TaskRecord,
    tasks_dir: &Path,
    tail: Option<usize>,
) -> Result<LogStream, String> {
    let Some(runtime_id) = task.runtime_id.as_deref() else {
        // Not started yet: nothing to follow (the task's next run is
        // another task).
        return Ok(futures_util::stream::empty().boxed());
    };
    if !runtime_id.starts_with("pid:") {
        return docker_follow(runtime_id, tail);
    }
    let path = tasks_dir.join(format!("{}.log", task.id));
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(futures_util::stream::empty().boxed())
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut start = Vec::new();
    file.read_to_end(&mut start)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let first = Bytes::from(last_lines(&String::from_utf8_lossy(&start), tail));
    let follow = FileFollow {
        file,
        buffer: vec![0; FOLLOW_CHUNK],
        registry: Arc::clone(registry),
        task: task.id.clone(),
        last_pass: false,
    };
    let rest = futures_util::stream::unfold(Some(follow), |follow| async move {
        let mut follow = follow?;
        match follow.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(follow))),
            Ok(None) => None,
            // One error, then the end.
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok(futures_util::stream::once(async { Ok(first) })
        .chain(rest)
        .boxed())
}

/// A followed log's chunks.
type LogStream = futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A process task's log file, read on from where the last read ended.
struct FileFollow {
    file: tokio::fs::File,
    /// One read's room, kept across reads.
    buffer: Vec<u8>,
    registry: Arc<RegistryNode>,
    task: String,
    /// The task has ended: the next read to the end of the file is the last.
    last_pass: bool,
}

impl FileFollow {
    /// The file's next bytes, waiting for the task to write them; `None`
    /// once the task has ended and its file is read to the end.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, std::io::Error> {
        loop {
            let read = self.file.read(&mut self.buffer).await?;
            if read > 0 {
                return Ok(Some(Bytes::copy_from_slice(&self.buffer[..read])));
            }
            if self.last_pass {
                return Ok(None);
            }
            if self.task_ended() {
                self.last_pass = true;
                continue;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }

    /// Whether the registry says the task no longer runs (or forgot it).
    fn task_ended(&self) -> bool {
        self.registry
            .local()
            .state
            .tasks()
            .get(&self.task)
            .is_none_or(|task| task.state.is_terminal())
    }
}

/// The chunks of another node's followed log, as they arrive.
fn relay(upstream: Streamed) -> LogStream {
    futures_util::stream::unfold(Some(upstream), |upstream| async move {
        let mut upstream = upstream?;
        match upstream.next_chunk().await? {
            Ok(chunk) => Some((Ok(chunk), Some(upstream))),
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
        }
    })
    .boxed()
}

/// A container's output as the engine sends it, until the container stops.
fn docker_follow(container: &str, tail: Option<usize>) -> Result<LogStream, String> {
    let docker = bollard::Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
    let tail = tail.map_or_else(|| "all".to_owned(), |n| n.to_string());
    let options = bollard::query_parameters::LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .follow(true)
        .tail(&tail)
        .build();
    // The stream borrows nothing of `docker` once made, but keep the client
    // with it for as long as it is read.
    let logs = docker.logs(container, Some(options));
    Ok(logs
        .map(move |chunk| {
            let _docker = &docker;
            chunk
                .map(|output| output.into_bytes())
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .boxed())
}

/// A container's stdout and stderr as the engine keeps them.
async fn docker_logs(container: &str, tail: Option<usize>) -> Result<String, String> {
    let docker = bollard::Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
    let tail = tail.map_or_else(|| "all".to_owned(), |n| n.to_string());
    let options = bollard::query_parameters::LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail(&tail)
        .build();
    let mut stream = docker.logs(container, Some(options));
    let mut out = Vec::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.map_err(|e| e.to_string())?.into_bytes());
        }
        Ok::<(), String>(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .map_err(|_| "the engine did not send the logs within 10s".to_owned())??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The last `tail` lines of `text` (all of it without a tail).
fn last_lines(text: &str, tail: Option<usize>) -> String {
    let Some(tail) = tail else {
        return text.to_owned();
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(tail);
    lines[start..].iter().map(|l| format!("{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_takes_the_last_lines_and_refuses_bad_queries() {
        assert_eq!(last_lines("a\nb\nc\n", Some(2)), "b\nc\n");
        assert_eq!(last_lines("a\nb\n", Some(5)), "a\nb\n");
        assert_eq!(last_lines("a\nb", None), "a\nb");
        assert_eq!(logs_query(""), Ok(LogsQuery::default()));
        assert_eq!(
            logs_query("tail=3&follow=true"),
            Ok(LogsQuery {
                tail: Some(3),
                follow: true
            })
        );
        assert_eq!(logs_query("tail=x").map_err(|e| e.0), Err("tail"));
        assert_eq!(logs_query("follow=yes").map_err(|e| e.0), Err("follow"));
        assert_eq!(logs_query("since=1").map_err(|e| e.0), Err("query"));
    }
}
